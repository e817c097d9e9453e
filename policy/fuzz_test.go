package policy

import (
	"context"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
)

// FuzzLoad: a policy file, which may come from the KBS or a path the
// host provides, either loads or is refused as a configuration error; a
// policy that loads decides on any image without panicking, with every
// reason on one line, and never allows in a scope that rejects.
func FuzzLoad(f *testing.F) {
	_, file, _, _ := runtime.Caller(0)
	if example, err := os.ReadFile(filepath.Join(filepath.Dir(file), "..", "policy.example.json")); err == nil {
		f.Add(example)
	}
	k := newKey(f, "p256")
	for _, s := range []string{
		`{"default":[{"type":"insecureAcceptAnything"}]}`,
		`{"default":[{"type":"reject"}],"transports":{"docker":{"Registry.Example.com:443/x":[{"type":"encrypted","layers":"any"}]}}}`,
		`{"default":[{"type":"sigstoreThreshold","threshold":1,"keys":[{"name":"a","keyData":"` + k.b64() + `"}],"signedIdentity":{"type":"matchRepoDigestOrExact"}}]}`,
		`{"default":[{"type":"signedBy","keyType":"GPGKeys","keyPath":"k.gpg","signedIdentity":{"type":"remapIdentity","prefix":"a.io/x","signedPrefix":"b.io/y"}}]}`,
		`{"default":[{"type":"sigstoreSigned","keyPath":"k.pub","signedIdentity":{"type":"exactReference","dockerReference":"a.io/x:1"}}],"transports":{"oci":{"/x":[{"type":"reject"}]}}}`,
		`{"default":[{"type":"sigstoreSigned","fulcio":{"caData":"AA==","oidcIssuer":"https://x","subjectEmail":"a@b"},"rekorPublicKeyData":"AA=="}]}`,
	} {
		f.Add([]byte(s))
	}
	refs := []name.Reference{}
	for _, s := range []string{"registry.example.com/confidential/app:1", "Registry.Example.com:443/x/y:2", "busybox", "a.io/x@sha256:0123456789012345678901234567890123456789012345678901234567890123"} {
		ref, err := name.ParseReference(s)
		if err != nil {
			f.Fatal(err)
		}
		refs = append(refs, ref)
	}
	read := func(context.Context, string) ([]byte, error) { return k.pem, nil }
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := Load(context.Background(), data, LoadOptions{Read: read})
		if err != nil {
			return
		}
		for _, ref := range refs {
			refusal, err := p.RejectsOutright(ref)
			if err != nil {
				t.Fatal(err)
			}
			d, err := p.Evaluate(context.Background(), Image{Ref: ref, ManifestDigest: hash('a'), LayerMediaTypes: []string{"application/vnd.oci.image.layer.v1.tar+gzip+encrypted"}})
			if err != nil {
				t.Fatal(err)
			}
			if refusal != nil && d.Allowed {
				t.Fatalf("%s: allowed under scope %q, which rejects outright", ref, d.Scope)
			}
			for _, r := range d.Requirements {
				if strings.ContainsAny(r.Reason, "\n\r") {
					t.Fatalf("reason spans lines: %q", r.Reason)
				}
			}
		}
	})
}
