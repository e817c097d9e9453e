package tests

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestMakeFmt: `make test` checks formatting first, right after setup and
// before vet and the tests, and the check fails on an unformatted file or
// one gofmt cannot parse, naming it, and passes on a formatted tree.
func TestMakeFmt(t *testing.T) {
	makefile, err := filepath.Abs(filepath.Join("..", "Makefile"))
	if err != nil {
		t.Fatal(err)
	}
	plan, err := exec.Command("make", "-n", "-f", makefile, "-C", "..", "test").Output()
	if err != nil {
		t.Fatalf("make -n test: %v", err)
	}
	steps := string(plan)
	setup, fmtStep, vet, test := strings.Index(steps, "scripts/setup"), strings.Index(steps, "gofmt -l"), strings.Index(steps, " vet "), strings.Index(steps, " test -race")
	if setup < 0 || fmtStep < 0 || vet < 0 || test < 0 || !(setup < fmtStep && fmtStep < vet && vet < test) {
		t.Errorf("make test's steps: want setup, gofmt, vet, test in that order, got:\n%s", steps)
	}

	for _, c := range []struct {
		name, src string
		fails     bool
	}{
		{"formatted.go", "package x\n\nfunc f() {}\n", false},
		{"unformatted.go", "package x\nfunc  f( ) {}\n", true},
		{"broken.go", "package x\nfunc {\n", true},
	} {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, "ok.go"), []byte("package x\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, c.name), []byte(c.src), 0o644); err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command("make", "-s", "-f", makefile, "-C", dir, "fmt").CombinedOutput()
		switch {
		case c.fails && err == nil:
			t.Errorf("%s: make fmt passed", c.name)
		case !c.fails && err != nil:
			t.Errorf("%s: make fmt: %v\n%s", c.name, err, out)
		case c.fails && (!strings.Contains(string(out), c.name) || strings.Contains(string(out), "ok.go")):
			t.Errorf("%s: make fmt should name that file alone:\n%s", c.name, out)
		}
	}
}

// TestMakeDemo: `make demo` does what the README's "Try it" says, in the
// words it prints: the encrypted image decrypted into the cache, the
// public one fetching its own blobs though the same layers are cached
// (known only from decryption), the signed one taking both from the
// cache, the unsigned one refused, and exit 0 with the refusal shown.
func TestMakeDemo(t *testing.T) {
	out, err := exec.Command("make", "-s", "-C", "..", "demo").CombinedOutput()
	if err != nil {
		t.Fatalf("make demo: %v\n%s", err, out)
	}
	for _, want := range []string{
		`(?m)^pulled +registry\.example\.com/encrypted/hello:1\.0 in \S+ \(0 of 2 layers from the cache\)$`,
		`(?m)^pulled +registry\.example\.com/public/hello:1\.0 in \S+ \(0 of 2 layers from the cache\)$`,
		`(?m)^pulled +registry\.example\.com/signed/hello:1\.0 in \S+ \(2 of 2 layers from the cache\)$`,
		`(?m)^refused +registry\.example\.com/signed/unsigned:1\.0, as policy\.example\.json wants\n +\(exit code 3: `,
	} {
		if !regexp.MustCompile(want).Match(out) {
			t.Errorf("make demo's output does not match %s:\n%s", want, out)
		}
	}
}
