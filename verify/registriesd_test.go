package verify

import (
	"errors"
	"path/filepath"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/guest-puller/guest-puller/internal/errdefs"
)

func TestRegistriesDLookup(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "a.yaml"), `
default-docker:
  lookaside: https://default.example.com/sigs
  use-sigstore-attachments: true
docker:
  registry.example.com:
    lookaside: https://registry.example.com/sigs
  registry.example.com/team:
    lookaside-staging: file:///staging
  registry.example.com/team/app:
    sigstore: file:///var/lib/sigs/
  registry.example.com/team/app:v2:
    lookaside: http://tagged.example.com
  "*.mirror.example.com":
    lookaside: https://wild.example.com
    use-sigstore-attachments: false
  docker.io/library:
    lookaside: https://hub.example.com
`)
	writeFile(t, filepath.Join(dir, "b.yaml"), `
docker:
  quay.example.com/off:
    use-sigstore-attachments: false
  quay.example.com/off/on:
    use-sigstore-attachments: true
  SPELLED.Example.com:443:
    lookaside: https://spelled.example.com
`)
	writeFile(t, filepath.Join(dir, "notes.txt"), "not: [yaml")
	rd, err := LoadRegistriesD(dir)
	if err != nil {
		t.Fatal(err)
	}
	d, err := v1.NewHash("sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef")
	if err != nil {
		t.Fatal(err)
	}
	sig := "@sha256=" + d.Hex + "/signature-2"

	for _, tc := range []struct {
		ref  string
		want string
	}{
		{"registry.example.com/team/app:v1", "file:///var/lib/sigs/team/app" + sig},
		{"registry.example.com/team/app:v2", "http://tagged.example.com/team/app" + sig},
		// team names only a staging location: the registry's applies.
		{"registry.example.com/team/other:v1", "https://registry.example.com/sigs/team/other" + sig},
		{"eu.mirror.example.com/x/y:v1", "https://wild.example.com/x/y" + sig},
		{"busybox", "https://hub.example.com/library/busybox" + sig},
		{"other.example.org/x@" + d.String(), "https://default.example.com/sigs/x" + sig},
		// Every spelling of a host is the same registry.
		{"Registry.Example.com:443/team/app:v1", "file:///var/lib/sigs/team/app" + sig},
		{"EU.Mirror.example.com/x/y:v1", "https://wild.example.com/x/y" + sig},
		{"Spelled.example.com/x:v1", "https://spelled.example.com/x" + sig},
	} {
		t.Run("lookaside "+tc.ref, func(t *testing.T) {
			base, err := rd.lookaside(mustRef(t, tc.ref))
			if err != nil {
				t.Fatal(err)
			}
			if base == nil {
				t.Fatal("no lookaside")
			}
			if got := lookasideURL(base, d, 2).String(); got != tc.want {
				t.Fatalf("got  %s\nwant %s", got, tc.want)
			}
		})
	}

	for _, tc := range []struct {
		repo string
		want bool
	}{
		{"quay.example.com/off/x", false},
		{"quay.example.com/off/on/x", true},
		{"eu.mirror.example.com/x", false},
		{"registry.example.com/x", true},
	} {
		t.Run("attachments "+tc.repo, func(t *testing.T) {
			if got := rd.useSigstoreAttachments(mustRepo(t, tc.repo)); got != tc.want {
				t.Fatalf("useSigstoreAttachments = %v, want %v", got, tc.want)
			}
		})
	}

	t.Run("defaults", func(t *testing.T) {
		empty, err := LoadRegistriesD(filepath.Join(t.TempDir(), "missing"))
		if err != nil {
			t.Fatalf("missing directory: %v", err)
		}
		for _, rd := range []*RegistriesD{nil, empty} {
			if !rd.useSigstoreAttachments(mustRepo(t, "example.com/x")) {
				t.Error("attachments are off by default")
			}
			if base, err := rd.lookaside(mustRef(t, "example.com/x:v1")); base != nil || err != nil {
				t.Errorf("lookaside by default = %v, %v", base, err)
			}
		}
		off := lookasideConfig(t, "default-docker:\n  use-sigstore-attachments: false\n")
		if off.useSigstoreAttachments(mustRepo(t, "example.com/x")) {
			t.Error("default-docker use-sigstore-attachments: false is not honored")
		}
	})
}

func TestLoadRegistriesDErrors(t *testing.T) {
	for _, tc := range []struct {
		name  string
		files map[string]string
	}{
		{"unknown top-level field", map[string]string{"a.yaml": "dockr:\n  example.com:\n    lookaside: https://x\n"}},
		{"unknown namespace field", map[string]string{"a.yaml": "docker:\n  example.com:\n    lookasid: https://x\n"}},
		{"malformed YAML", map[string]string{"a.yaml": "docker: [unclosed\n"}},
		{"wrong type", map[string]string{"a.yaml": "docker:\n  example.com:\n    use-sigstore-attachments: maybe\n"}},
		{"unsupported scheme", map[string]string{"a.yaml": "default-docker:\n  lookaside: ftp://example.com/sigs\n"}},
		{"file URL of another host", map[string]string{"a.yaml": "default-docker:\n  sigstore: file://otherhost/sigs\n"}},
		{"relative file URL", map[string]string{"a.yaml": "default-docker:\n  lookaside: file:sigs\n"}},
		{"duplicate key", map[string]string{"a.yaml": "docker:\n  example.com:\n    lookaside: https://a\n  example.com:\n    lookaside: https://b\n"}},
		{"two documents", map[string]string{"a.yaml": "docker: {}\n---\ndocker: {}\n"}},
		{"namespace in two files", map[string]string{
			"a.yaml": "docker:\n  example.com:\n    lookaside: https://a\n",
			"b.yaml": "docker:\n  example.com:\n    lookaside: https://b\n",
		}},
		{"default-docker in two files", map[string]string{
			"a.yaml": "default-docker:\n  lookaside: https://a\n",
			"b.yaml": "default-docker:\n  lookaside: https://b\n",
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			for name, content := range tc.files {
				writeFile(t, filepath.Join(dir, name), content)
			}
			_, err := LoadRegistriesD(dir)
			if !errors.Is(err, errdefs.ErrInvalidConfig) {
				t.Fatalf("LoadRegistriesD = %v, want an error wrapping ErrInvalidConfig", err)
			}
		})
	}
}
