package verify

import (
	"errors"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"

	"github.com/guest-puller/guest-puller/internal/errdefs"
)

// TestParseRegistriesD: one file's content, as the confidential-data-hub's
// sigstore_config brings it, configures lookups like a directory holding
// that file.
func TestParseRegistriesD(t *testing.T) {
	rd, err := ParseRegistriesD("kbs:///default/sigstore-config/test", []byte(`
default-docker:
  sigstore: file:///var/lib/containers/sigstore
docker:
  quay.io/kata-containers:
    lookaside: https://signatures.example.com/kata
    use-sigstore-attachments: false
`))
	if err != nil {
		t.Fatal(err)
	}
	for ref, want := range map[string]string{
		"registry.example.com/app:1":        "file:///var/lib/containers/sigstore/app",
		"quay.io/kata-containers/busybox:1": "https://signatures.example.com/kata/kata-containers/busybox",
	} {
		r, _ := name.ParseReference(ref)
		u, err := rd.lookaside(r)
		if err != nil || u == nil || u.String() != want {
			t.Errorf("lookaside of %s = %v, %v; want %s", ref, u, err, want)
		}
	}
	kata, _ := name.ParseReference("quay.io/kata-containers/busybox:1")
	if use, err := rd.useSigstoreAttachments(kata); use || err != nil {
		t.Errorf("use-sigstore-attachments: false not applied (%v, %v)", use, err)
	}
	// As a file of a registries.d directory: what is wrong fails the
	// lookups it could configure, with an error naming the file.
	bad, err := ParseRegistriesD("kbs:///default/sigstore-config/bad", []byte("default-docker:\n  sigstore-x: file:///x\n"))
	if err != nil {
		t.Fatalf("ParseRegistriesD: %v", err)
	}
	_, err = bad.lookaside(kata)
	if !errors.Is(err, errdefs.ErrInvalidConfig) || !strings.Contains(err.Error(), "kbs:///default/sigstore-config/bad") {
		t.Errorf("bad file: lookup error %v, want a configuration error naming it", err)
	}
}
