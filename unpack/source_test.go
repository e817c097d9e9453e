package unpack

import (
	"bytes"
	"context"
	"testing"

	"github.com/opencontainers/go-digest"
)

// TestConfidentialLayerReuse: a layer made by decrypting a blob is reused
// only for blobs verified to yield it; a plain layer for any blob.
func TestConfidentialLayerReuse(t *testing.T) {
	c := openCache(t)
	ctx := context.Background()
	commit := func(layer []byte, blob digest.Digest, confidential bool) digest.Digest {
		d := diffIDOf(layer)
		release, err := c.LockLayer(ctx, d)
		if err != nil {
			t.Fatal(err)
		}
		defer release()
		s, err := c.Stage(d)
		if err != nil {
			t.Fatal(err)
		}
		s.SetSource(blob, confidential)
		if err := s.Apply(ctx, bytes.NewReader(layer)); err != nil {
			t.Fatal(err)
		}
		if err := s.Commit(); err != nil {
			t.Fatal(err)
		}
		return d
	}
	secret := commit(tarLayer(t, fileE("secret", "s", 0o600)), digest.FromString("encrypted blob"), true)
	plain := commit(tarLayer(t, fileE("plain", "p", 0o644)), digest.FromString("plain blob"), false)
	other := digest.FromString("a blob that claims the diff_id")
	for _, tc := range []struct {
		name              string
		diffID, blob      digest.Digest
		present, reusable bool
	}{
		{"confidential, its own blob", secret, digest.FromString("encrypted blob"), true, true},
		{"confidential, another blob", secret, other, true, false},
		{"plain, another blob", plain, other, true, true},
		{"absent", digest.FromString("nothing"), other, false, false},
	} {
		present, reusable := c.Layer(tc.diffID, tc.blob)
		if present != tc.present || reusable != tc.reusable {
			t.Errorf("%s: Layer = %v, %v; want %v, %v", tc.name, present, reusable, tc.present, tc.reusable)
		}
	}
	if err := c.AddLayerSource(secret, other); err != nil {
		t.Fatal(err)
	}
	if _, reusable := c.Layer(secret, other); !reusable {
		t.Error("a verified source is not reusable")
	}
	if _, reusable := c.Layer(secret, digest.FromString("encrypted blob")); !reusable {
		t.Error("AddLayerSource forgot the first source")
	}
}
