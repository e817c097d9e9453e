package verify

import (
	"errors"
	"path/filepath"
	"strings"
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
			got, err := rd.useSigstoreAttachments(mustRef(t, tc.repo+":v1"))
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
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
			if use, err := rd.useSigstoreAttachments(mustRef(t, "example.com/x:v1")); !use || err != nil {
				t.Errorf("attachments by default = %v, %v; want on", use, err)
			}
			if base, err := rd.lookaside(mustRef(t, "example.com/x:v1")); base != nil || err != nil {
				t.Errorf("lookaside by default = %v, %v", base, err)
			}
		}
		off := lookasideConfig(t, "default-docker:\n  use-sigstore-attachments: false\n")
		if use, _ := off.useSigstoreAttachments(mustRef(t, "example.com/x:v1")); use {
			t.Error("default-docker use-sigstore-attachments: false is not honored")
		}
	})
}

// TestRegistriesDBroken: a file that is wrong never fails the load. What is
// wrong inside one namespace fails the lookups that reach that namespace,
// naming the file; lookups decided by a more specific namespace, and other
// namespaces, are unaffected. A file whose namespaces cannot be read fails
// every lookup.
func TestRegistriesDBroken(t *testing.T) {
	const good = "good.yaml"
	goodFile := `
docker:
  good.example.com:
    lookaside: https://good.example.com/sigs
    use-sigstore-attachments: false
  bad.example.com/team/fine:
    lookaside: https://fine.example.com/sigs
    use-sigstore-attachments: true
`
	for _, tc := range []struct {
		name  string
		files map[string]string
		// everything is true when even good.example.com fails.
		everything bool
		want       string
	}{
		{"unknown namespace field", map[string]string{"a.yaml": "docker:\n  bad.example.com:\n    lookasid: https://x\n"}, false, "field lookasid not found"},
		{"wrong type", map[string]string{"a.yaml": "docker:\n  bad.example.com:\n    use-sigstore-attachments: maybe\n"}, false, "cannot unmarshal"},
		{"unsupported scheme", map[string]string{"a.yaml": "docker:\n  bad.example.com:\n    lookaside: ftp://example.com/sigs\n"}, false, `unsupported scheme "ftp"`},
		{"file URL of another host", map[string]string{"a.yaml": "docker:\n  bad.example.com:\n    sigstore: file://otherhost/sigs\n"}, false, "names another host"},
		{"relative file URL", map[string]string{"a.yaml": "docker:\n  bad.example.com:\n    lookaside: file:sigs\n"}, false, "not absolute"},
		{"namespace in two files", map[string]string{
			"a.yaml": "docker:\n  bad.example.com:\n    lookaside: https://a\n",
			"b.yaml": "docker:\n  bad.example.com:\n    lookaside: https://b\n",
		}, false, `docker namespace "bad.example.com" is defined in`},
		{"default-docker in two files", map[string]string{
			"a.yaml": "default-docker:\n  lookaside: https://a\n",
			"b.yaml": "default-docker:\n  lookaside: https://b\n",
		}, false, "default-docker is defined in"},
		{"unknown top-level field", map[string]string{"a.yaml": "dockr:\n  bad.example.com:\n    lookaside: https://x\n"}, true, `unknown field "dockr"`},
		{"malformed YAML", map[string]string{"a.yaml": "docker: [unclosed\n"}, true, "a.yaml"},
		{"duplicate namespace in a file", map[string]string{"a.yaml": "docker:\n  bad.example.com:\n    lookaside: https://a\n  bad.example.com:\n    lookaside: https://b\n"}, true, "defined twice"},
		{"two documents", map[string]string{"a.yaml": "docker: {}\n---\ndocker: {}\n"}, true, "more than one YAML document"},
		{"docker not a mapping", map[string]string{"a.yaml": "docker: [bad.example.com]\n"}, true, "docker must be a mapping"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			writeFile(t, filepath.Join(dir, good), goodFile)
			for name, content := range tc.files {
				writeFile(t, filepath.Join(dir, name), content)
			}
			rd, err := LoadRegistriesD(dir)
			if err != nil {
				t.Fatalf("LoadRegistriesD = %v: a bad file must not fail the load", err)
			}
			wantErr := func(what string, err error) {
				t.Helper()
				if !errors.Is(err, errdefs.ErrInvalidConfig) || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), dir) {
					t.Errorf("%s: error %v, want one wrapping ErrInvalidConfig, naming the file and containing %q", what, err, tc.want)
				}
			}
			bad := mustRef(t, "bad.example.com/team/app:v1")
			if tc.name == "default-docker in two files" {
				bad = mustRef(t, "elsewhere.example.org/app:v1")
			}
			_, err = rd.lookaside(bad)
			wantErr("lookaside of the broken namespace", err)
			_, err = rd.useSigstoreAttachments(bad)
			wantErr("attachments of the broken namespace", err)

			base, err := rd.lookaside(mustRef(t, "good.example.com/app:v1"))
			use, err2 := rd.useSigstoreAttachments(mustRef(t, "good.example.com/app:v1"))
			if tc.everything {
				wantErr("lookaside elsewhere", err)
				wantErr("attachments elsewhere", err2)
				return
			}
			if err != nil || base == nil || base.String() != "https://good.example.com/sigs/app" || err2 != nil || use {
				t.Errorf("another namespace: lookaside %v, %v; attachments %v, %v", base, err, use, err2)
			}
			if tc.name == "default-docker in two files" {
				return
			}
			// A more specific namespace decides before the broken one
			// is reached.
			fine := mustRef(t, "bad.example.com/team/fine/app:v1")
			base, err = rd.lookaside(fine)
			use, err2 = rd.useSigstoreAttachments(fine)
			if err != nil || base == nil || err2 != nil || !use {
				t.Errorf("more specific namespace: lookaside %v, %v; attachments %v, %v", base, err, use, err2)
			}
		})
	}
}
