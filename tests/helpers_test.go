package tests

import (
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/guest-puller/guest-puller/internal/testutil"
)

// pushIndex writes to ref an image index of the images (platform → pushed
// reference) and returns the index digest. skopeo cannot assemble an index
// from separate images; go-containerregistry writes it to the same real
// registry.
func pushIndex(t *testing.T, reg *testutil.Registry, ref string, images map[string]string) string {
	t.Helper()
	opts := []remote.Option{}
	if reg.User != "" {
		opts = append(opts, remote.WithAuth(&authn.Basic{Username: reg.User, Password: reg.Password}))
	}
	var adds []mutate.IndexAddendum
	for platform, src := range images {
		r, err := name.ParseReference(src, name.Insecure)
		if err != nil {
			t.Fatal(err)
		}
		img, err := remote.Image(r, opts...)
		if err != nil {
			t.Fatal(err)
		}
		os, arch, _ := strings.Cut(platform, "/")
		adds = append(adds, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: os, Architecture: arch}}})
	}
	idx := mutate.IndexMediaType(mutate.AppendManifests(empty.Index, adds...), "application/vnd.oci.image.index.v1+json")
	dst, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.WriteIndex(dst, idx, opts...); err != nil {
		t.Fatal(err)
	}
	d, err := idx.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d.String()
}
