// Package fspath compares filesystem paths the way a mount or a bundle
// directory must be checked against the cache: lexically, and with the
// symlinks of what already exists resolved, since mount(2) and os.MkdirAll
// follow them. It owns no files and touches none but to read links.
package fspath
