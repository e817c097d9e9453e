package refname

import (
	"slices"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
)

func TestReference(t *testing.T) {
	const d = "sha256:0123456789012345678901234567890123456789012345678901234567890123"
	for in, want := range map[string]string{
		"busybox":                   "docker.io/library/busybox:latest",
		"index.docker.io/foo/bar:1": "docker.io/foo/bar:1",
		"docker.io/foo/bar@" + d:    "docker.io/foo/bar@" + d,
		"localhost:5000/a/b":        "localhost:5000/a/b:latest",
	} {
		ref, err := name.ParseReference(in)
		if err != nil {
			t.Fatal(err)
		}
		if got := Reference(ref); got != want {
			t.Errorf("Reference(%q) = %q, want %q", in, got, want)
		}
		if got, want := Repository(ref.Context()), want[:len(want)-len(ref.Identifier())-1]; got != want {
			t.Errorf("Repository(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestNamespaces(t *testing.T) {
	for in, want := range map[string][]string{
		"registry.example.com:5000/team/app": {"registry.example.com:5000/team/app", "registry.example.com:5000/team", "registry.example.com:5000", "*.example.com", "*.com"},
		"docker.io/library/busybox":          {"docker.io/library/busybox", "docker.io/library", "docker.io", "*.io"},
		"localhost/app":                      {"localhost/app", "localhost"},
	} {
		if got := Namespaces(in); !slices.Equal(got, want) {
			t.Errorf("Namespaces(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestHostSpellings(t *testing.T) {
	for in, want := range map[string]string{
		"Registry.Example.com":      "registry.example.com",
		"registry.example.com:443":  "registry.example.com",
		"REGISTRY.example.com:443":  "registry.example.com",
		"registry.example.com:5000": "registry.example.com:5000",
		"registry.example.com:4430": "registry.example.com:4430",
		"LocalHost:5000":            "localhost:5000",
		"[::1]:443":                 "[::1]",
	} {
		if got := Host(in); got != want {
			t.Errorf("Host(%q) = %q, want %q", in, got, want)
		}
	}
	for in, want := range map[string]string{
		"Registry.Example.com:443/Team/App:V1": "registry.example.com/Team/App:V1",
		"Registry.Example.com:443":             "registry.example.com",
		"*.Example.COM":                        "*.example.com",
		"registry.example.com:8443/x":          "registry.example.com:8443/x",
		"":                                     "",
	} {
		if got := Scope(in); got != want {
			t.Errorf("Scope(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestParseNormalizesHost: every spelling of one repository's host gives
// the same names for scope lookup, image records and the registry reached.
func TestParseNormalizesHost(t *testing.T) {
	const d = "sha256:0123456789012345678901234567890123456789012345678901234567890123"
	for in, want := range map[string]string{
		"Registry.Example.com/team/app:1":     "registry.example.com/team/app:1",
		"registry.example.com:443/team/app:1": "registry.example.com/team/app:1",
		"REGISTRY.EXAMPLE.COM:443/team/app":   "registry.example.com/team/app:latest",
		"Registry.Example.com/team/app@" + d:  "registry.example.com/team/app@" + d,
		"registry.example.com:5000/app:1":     "registry.example.com:5000/app:1",
		"Index.Docker.IO/library/busybox:1":   "docker.io/library/busybox:1",
	} {
		ref, err := Parse(in)
		if err != nil {
			t.Fatalf("Parse(%q): %v", in, err)
		}
		if got := Reference(ref); got != want {
			t.Errorf("Reference(Parse(%q)) = %q, want %q", in, got, want)
		}
		if reg := ref.Context().RegistryStr(); reg != Host(reg) {
			t.Errorf("Parse(%q) reaches registry %q, not its canonical spelling", in, reg)
		}
		if ns := Namespaces(Repository(ref.Context())); ns[len(ns)-1] == "" {
			t.Errorf("Namespaces: %q", ns)
		}
	}
	if _, err := Parse("registry.example.com/UPPER/app:1"); err == nil {
		t.Errorf("a repository path in upper case parsed; docker refuses it")
	}
}
