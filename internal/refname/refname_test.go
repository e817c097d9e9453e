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
