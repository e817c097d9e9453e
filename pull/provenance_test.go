package pull

import (
	"context"
	"errors"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/opencontainers/go-digest"

	"github.com/guest-puller/guest-puller/internal/errdefs"
	"github.com/guest-puller/guest-puller/unpack"
)

// TestPlainDescriptorProvenance: what a plain layer descriptor may reuse,
// decided in the pipeline over a cache in memory (no root): only a layer
// whose content is public. A layer the cache knows only from decryption,
// even of a blob with the very digest the descriptor names, makes the pull
// fetch and verify its own blob; a blob that does not yield the diff_id
// then fails as an integrity error and leaves the cached layer as it was.
func TestPlainDescriptorProvenance(t *testing.T) {
	ctx := context.Background()
	secret := map[string]string{"secret": "decrypted content"}
	for _, tc := range []struct {
		name    string
		seed    func(blob digest.Digest) unpack.Source
		fetched bool
		err     error
	}{
		{"public layer", func(digest.Digest) unpack.Source { return unpack.Source{Blob: digest.FromString("another plain blob")} }, false, nil},
		{"decrypted layer, another blob", func(digest.Digest) unpack.Source {
			return unpack.Source{Blob: digest.FromString("ciphertext"), Decrypted: true}
		}, true, nil},
		{"decrypted layer, this digest as ciphertext", func(b digest.Digest) unpack.Source { return unpack.Source{Blob: b, Decrypted: true} }, true, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			img := image(t, tarLayer(t, map[string]string{"a": "A"}))
			ref := f.push("prov/app:1", img)
			layers, _ := img.Layers()
			blob, _ := layers[0].Digest()
			diffID, _ := layers[0].DiffID()
			d := digest.Digest(diffID.String())
			f.mem.seed(d, map[string]string{"a": "A"}, tc.seed(digest.Digest(blob.String())))

			res, err := f.puller(acceptAll).Pull(ctx, Request{Image: ref, ContainerID: "c"})
			if err != nil {
				t.Fatal(err)
			}
			if len(res.Layers) != 1 {
				t.Fatalf("%d layers in the result", len(res.Layers))
			}
			l := res.Layers[0]
			if l.Cached == tc.fetched || l.Encrypted {
				t.Errorf("layer cached %v, encrypted %v; want cached %v, not encrypted", l.Cached, l.Encrypted, !tc.fetched)
			}
			if n := f.gets.count(blob.String()); n != boolInt(tc.fetched) {
				t.Errorf("blob fetched %d times, want %d", n, boolInt(tc.fetched))
			}
			layer, _ := f.mem.layer(d)
			if !unpack.Reusable(layer.provenance, unpack.Source{Blob: digest.FromString("any plain blob")}) {
				t.Errorf("after the pull the layer is not public: provenance %+v", layer.provenance)
			}
		})
	}

	t.Run("decrypted layer, a blob that does not yield it", func(t *testing.T) {
		f := newFixture(t)
		// The image claims the cached layer's diff_id for a layer of its
		// own: the descriptor is plain, the blob honest, the claim false.
		img := image(t, tarLayer(t, map[string]string{"decoy": "nothing"}))
		cf, _ := img.ConfigFile()
		claimed := v1.Hash{Algorithm: "sha256", Hex: digest.FromString("the victim's diff_id").Encoded()}
		img = withDiffID(t, img, cf, claimed)
		ref := f.push("prov/spoof:1", img)
		d := digest.Digest(claimed.String())
		f.mem.seed(d, secret, unpack.Source{Blob: digest.FromString("ciphertext"), Decrypted: true})
		_, err := f.puller(acceptAll).Pull(ctx, Request{Image: ref, ContainerID: "spoof"})
		if !errors.Is(err, errdefs.ErrIntegrity) {
			t.Fatalf("Pull = %v, want an integrity failure", err)
		}
		if _, made := f.mem.bundles["spoof"]; made {
			t.Error("a bundle was made")
		}
		layer, _ := f.mem.layer(d)
		if len(layer.provenance) != 1 || layer.files["secret"] != "decrypted content" {
			t.Errorf("the cached layer changed: %+v", layer)
		}
	})
}

func withDiffID(t *testing.T, img v1.Image, cf *v1.ConfigFile, d v1.Hash) v1.Image {
	t.Helper()
	cf = cf.DeepCopy()
	cf.RootFS.DiffIDs[0] = d
	out, err := mutate.ConfigFile(img, cf)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}
