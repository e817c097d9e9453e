package fspath

import (
	"path/filepath"
	"strings"
)

// Within reports whether path is dir or below it. Both are absolute; they
// need not be clean.
func Within(path, dir string) bool {
	rel, err := filepath.Rel(dir, path)
	return err == nil && rel != ".." && !strings.HasPrefix(rel, "../")
}

// ResolveExisting resolves the symlinks of the longest existing prefix of
// path, which need not exist yet: where a directory about to be made, or a
// mount point, would really be.
func ResolveExisting(path string) string {
	rest := ""
	for p := path; ; p = filepath.Dir(p) {
		if r, err := filepath.EvalSymlinks(p); err == nil {
			return filepath.Join(r, rest)
		}
		if p == filepath.Dir(p) {
			return path
		}
		rest = filepath.Join(filepath.Base(p), rest)
	}
}
