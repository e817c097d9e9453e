// Package isolate keeps what a test binary starts from outliving it: the
// mounts its tests make (OwnMountNamespace) and the helper processes they
// start (DieWithTest), also when the binary is killed before its tests'
// cleanups run (go test's -timeout, a signal). A leaf: the standard
// library only, so that any package's tests may use it.
package isolate
