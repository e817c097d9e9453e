package unpack

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
)

// TestLayerProvenance: DESIGN.md's layer provenance rules, over every
// combination of what the cache knows of a layer and what the pull brings.
// An encrypted blob reuses a layer only if that exact blob was decrypted
// into it; a plain blob reuses a layer only if some plain blob was verified
// to yield it.
func TestLayerProvenance(t *testing.T) {
	c := openCache(t)
	ctx := context.Background()
	lease := c.NewLease()
	defer lease.Release()
	commit := func(layer []byte, src Source) digest.Digest {
		d := diffIDOf(layer)
		release, err := c.LockLayer(ctx, d)
		if err != nil {
			t.Fatal(err)
		}
		defer release()
		s, err := lease.Stage(d, src)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Apply(ctx, bytes.NewReader(layer)); err != nil {
			t.Fatal(err)
		}
		if err := s.Commit(); err != nil {
			t.Fatal(err)
		}
		return d
	}
	encBlob, plainBlob, other := digest.FromString("ciphertext"), digest.FromString("plain blob"), digest.FromString("another blob")
	decrypted := commit(tarLayer(t, fileE("secret", "s", 0o600)), Source{Blob: encBlob, Decrypted: true, Key: "k1"})
	public := commit(tarLayer(t, fileE("plain", "p", 0o644)), Source{Blob: plainBlob})
	for _, tc := range []struct {
		name              string
		diffID            digest.Digest
		src               Source
		present, reusable bool
	}{
		{"decrypted layer, its own blob decrypted again", decrypted, Source{encBlob, true, "k1"}, true, true},
		// Anyone may wrap a key of their own for the same blob.
		{"decrypted layer, its own blob under another key", decrypted, Source{encBlob, true, "k2"}, true, false},
		// Hole 2: the ciphertext's digest under a plain media type.
		{"decrypted layer, its own blob as plain", decrypted, Source{encBlob, false, ""}, true, false},
		{"decrypted layer, another encrypted blob", decrypted, Source{other, true, "k1"}, true, false},
		{"decrypted layer, another plain blob", decrypted, Source{other, false, ""}, true, false},
		// Hole 1: a genuine encrypted blob whose config claims a plain layer.
		{"public layer, an encrypted blob", public, Source{encBlob, true, "k1"}, true, false},
		{"public layer, its own plain blob as encrypted", public, Source{plainBlob, true, "k1"}, true, false},
		{"public layer, its own plain blob", public, Source{plainBlob, false, ""}, true, true},
		{"public layer, another plain blob", public, Source{other, false, ""}, true, true},
		{"absent", digest.FromString("nothing"), Source{other, false, ""}, false, false},
	} {
		present, reusable := lease.Layer(tc.diffID, tc.src)
		if present != tc.present || reusable != tc.reusable {
			t.Errorf("%s: Layer = %v, %v; want %v, %v", tc.name, present, reusable, tc.present, tc.reusable)
		}
	}

	// A plain blob verified to yield the decrypted layer makes it public.
	if err := lease.AddSource(decrypted, Source{Blob: other}); err != nil {
		t.Fatal(err)
	}
	if _, reusable := lease.Layer(decrypted, Source{Blob: digest.FromString("yet another")}); !reusable {
		t.Error("a layer with a verified plain source is not public")
	}
	if _, reusable := lease.Layer(decrypted, Source{Blob: encBlob, Decrypted: true, Key: "k1"}); !reusable {
		t.Error("AddSource forgot the first source")
	}
	if _, reusable := lease.Layer(decrypted, Source{Blob: other, Decrypted: true, Key: "k1"}); reusable {
		t.Error("a plain source counts for an encrypted blob of the same digest")
	}
	if err := lease.AddSource(decrypted, Source{Blob: other}); err != nil {
		t.Fatal(err)
	}
	var m layerMeta
	if err := readJSON(filepath.Join(c.layerDir(decrypted.Encoded()), layerMetaFile), &m); err != nil {
		t.Fatal(err)
	}
	if len(m.Provenance) != 2 {
		t.Errorf("provenance %+v, want the two sources once each", m.Provenance)
	}
}

// TestLegacyLayerMeta: a layer committed before provenance was recorded
// per source is read conservatively: a confidential layer's sources count
// as decrypted, a plain layer's as plain.
func TestLegacyLayerMeta(t *testing.T) {
	c := openCache(t)
	secret := commitLayer(t, c, tarLayer(t, fileE("secret", "s", 0o600)))
	plain := commitLayer(t, c, tarLayer(t, fileE("plain", "p", 0o644)))
	blob := digest.FromString("old blob")
	for d, legacy := range map[digest.Digest]string{
		secret: `{"diffID":"` + secret.String() + `","size":1,"confidential":true,"sources":["` + blob.String() + `"]}`,
		plain:  `{"diffID":"` + plain.String() + `","size":1,"sources":["` + blob.String() + `"]}`,
	} {
		if err := os.WriteFile(filepath.Join(c.layerDir(d.Encoded()), layerMetaFile), []byte(legacy), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	lease := c.NewLease()
	defer lease.Release()
	for _, tc := range []struct {
		d        digest.Digest
		src      Source
		reusable bool
	}{
		// A legacy decrypted source names no key: the blob is decrypted
		// and verified again, then recorded with its key.
		{secret, Source{blob, true, "k1"}, false},
		{secret, Source{blob, false, ""}, false},
		{plain, Source{blob, false, ""}, true},
		{plain, Source{blob, true, "k1"}, false},
	} {
		if _, got := lease.Layer(tc.d, tc.src); got != tc.reusable {
			t.Errorf("legacy layer, source %+v: reusable %v, want %v", tc.src, got, tc.reusable)
		}
	}
	if err := lease.AddSource(secret, Source{Blob: digest.FromString("new plain")}); err != nil {
		t.Fatal(err)
	}
	var m layerMeta
	if err := readJSON(filepath.Join(c.layerDir(secret.Encoded()), layerMetaFile), &m); err != nil {
		t.Fatal(err)
	}
	want := []Source{{blob, true, ""}, {digest.FromString("new plain"), false, ""}}
	if m.LegacySources != nil || m.LegacyConfidential || len(m.Provenance) != 2 || m.Provenance[0] != want[0] || m.Provenance[1] != want[1] {
		t.Errorf("rewritten metadata %+v, want provenance %+v only", m, want)
	}
}

// TestLeasePins: a lease pins only layers that are there, GC takes none
// of them while it lives, and Release (on any outcome) gives them all back:
// no open file and, after GC, no lock file is left.
func TestLeasePins(t *testing.T) {
	c := openCache(t)
	ctx := context.Background()
	var layers []digest.Digest
	for i := range 20 {
		layers = append(layers, commitLayer(t, c, tarLayer(t, fileE("f", strings.Repeat("x", i+1), 0o644))))
	}
	baseline := len(openFilesUnder(t, c.Root()))
	gc, err := Open(ctx, c.Root()) // another process's view: its own locks
	if err != nil {
		t.Fatal(err)
	}
	defer gc.Close()

	lease := c.NewLease()
	for _, d := range layers {
		if present, _ := lease.Layer(d, Source{Blob: digest.FromString("b")}); !present {
			t.Fatalf("layer %s not found", d)
		}
	}
	// Layers that are not there are looked up too, as a failing pull of a
	// long manifest does: nothing is pinned for them.
	for i := range 50 {
		if present, _ := lease.Layer(digest.FromString(string(rune('a'+i))), Source{}); present {
			t.Fatal("an absent layer is present")
		}
	}
	if got := len(openFilesUnder(t, c.Root())) - baseline; got != len(layers) {
		t.Errorf("%d files open under the cache while %d layers are pinned", got, len(layers))
	}
	rep, err := gc.GC(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Layers) != 0 {
		t.Errorf("GC removed pinned layers %v", rep.Layers)
	}

	// A second lease of the same process shares the pins' files.
	second := c.NewLease()
	second.Layer(layers[0], Source{})
	lease.Release()
	if got := len(openFilesUnder(t, c.Root())) - baseline; got != 1 {
		t.Errorf("%d files open after the first lease ended, want 1 (the second lease's pin)", got)
	}
	second.Release()
	second.Release()
	if got := len(openFilesUnder(t, c.Root())) - baseline; got != 0 {
		t.Errorf("%d files still open under the cache after every lease ended", got)
	}
	rep, err = gc.GC(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Layers) != len(layers) {
		t.Errorf("GC removed %d layers after the leases ended, want all %d", len(rep.Layers), len(layers))
	}
	locks, err := os.ReadDir(filepath.Join(c.Root(), dirLocks))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range locks {
		if l.Name() != "cache.lock" {
			t.Errorf("lock file %s left after GC", l.Name())
		}
	}
}
