package verify

import (
	"net/url"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// FuzzRegistriesD: a registries.d file (a directory the guest reads, or
// the confidential-data-hub's sigstore config from the KBS) parses, or
// fails the lookups of what it configures, without panicking; a lookaside
// location it yields is an absolute http(s) or file URL under which the
// repository's signatures are named, never outside it.
func FuzzRegistriesD(f *testing.F) {
	for _, s := range []string{
		"default-docker:\n  lookaside: https://sigs.example.com/\n  use-sigstore-attachments: true\n",
		"docker:\n  registry.example.com/team:\n    lookaside: file:///var/lib/sigs\n  \"*.example.com\":\n    use-sigstore-attachments: false\n",
		"docker:\n  Registry.Example.com:443:\n    sigstore: http://sigs.local/x\n    sigstore-staging: file:///tmp/s\n",
		"docker: [1, 2]\n",
		"a: &a [*a, *a]\n",
		"docker:\n  x:\n    lookaside: ftp://nope\n---\ndocker: {}\n",
	} {
		f.Add([]byte(s))
	}
	refs := []name.Reference{}
	for _, s := range []string{"registry.example.com/team/app:1", "x.example.com/a/b@sha256:0123456789012345678901234567890123456789012345678901234567890123", "busybox"} {
		ref, err := name.ParseReference(s)
		if err != nil {
			f.Fatal(err)
		}
		refs = append(refs, ref)
	}
	d := v1.Hash{Algorithm: "sha256", Hex: strings.Repeat("ab", 32)}
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := ParseRegistriesD("fuzz.yaml", data)
		if err != nil {
			t.Fatalf("ParseRegistriesD returned an error (it is documented never to): %v", err)
		}
		for _, ref := range refs {
			r.useSigstoreAttachments(ref)
			base, err := r.lookaside(ref)
			if err != nil || base == nil {
				continue
			}
			u := lookasideURL(base, d, 1)
			if u.Scheme != "http" && u.Scheme != "https" && u.Scheme != "file" {
				t.Fatalf("lookaside %s has scheme %q", u.Redacted(), u.Scheme)
			}
			p, err := url.PathUnescape(u.EscapedPath())
			if err != nil || !strings.Contains(p, "/"+ref.Context().RepositoryStr()+"@") || strings.Contains(p, "/../") {
				t.Fatalf("lookaside %s does not name %s's signatures below its base", u.Redacted(), ref)
			}
		}
	})
}
