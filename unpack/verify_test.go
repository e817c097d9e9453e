package unpack

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"

	"github.com/guest-puller/guest-puller/internal/errdefs"
)

// ino is a file's inode number: in an overlay, the layer's file's.
func ino(t *testing.T, path string) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

// TestVerifyLayer reads good layers back, and checks what follows the
// eviction of one that failed to (TestVerifyLayerUnreadable has the EIO
// itself): the layer is gone, and a live bundle over it is mounted again
// over the layer fetched anew, its container's writes kept.
func TestVerifyLayer(t *testing.T) {
	requireRoot(t)
	ctx := context.Background()
	c := openCache(t)
	l1Tar := tarLayer(t, fileE("a", "A", 0o644))
	l2Tar := tarLayer(t, dirE("d/", 0o755), fileE("d/b", "B", 0o644), symlinkE("link", "d/b"))
	l1, l2 := commitLayer(t, c, l1Tar), commitLayer(t, c, l2Tar)
	for _, d := range []digest.Digest{l1, l2} {
		if err := c.VerifyLayer(ctx, d); err != nil {
			t.Fatalf("VerifyLayer(%s) of an intact layer: %v", d, err)
		}
	}
	cfg := testImageConfig()
	cfg.Config.User = ""
	spec := BundleSpec{ID: "c1", Image: "img", ManifestDigest: digest.FromString("m"), Layers: []digest.Digest{l1, l2}, Config: cfg}
	b, err := c.CreateBundle(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unmountAll(b.Rootfs) })
	before := ino(t, filepath.Join(b.Rootfs, "d/b"))
	if err := os.WriteFile(filepath.Join(b.Rootfs, "mine"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}

	if removed, err := c.evictLayer(ctx, l2.Encoded(), l2); !removed || err != nil {
		t.Fatal(err)
	}
	if c.hasLayer(l2.Encoded()) {
		t.Fatal("the evicted layer is still committed")
	}
	if _, err := c.CreateBundle(ctx, spec); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("bundle over an evicted layer: %v, want errdefs.ErrNotFound", err)
	}
	if commitLayer(t, c, l2Tar) != l2 {
		t.Fatal("the layer fetched again has another diff_id")
	}
	b2, err := c.CreateBundle(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	if ino(t, filepath.Join(b2.Rootfs, "d/b")) == before {
		t.Error("the stale rootfs was returned as it was, still over the evicted layer")
	}
	for name, want := range map[string]string{"mine": "x", "d/b": "B", "a": "A"} {
		if got := readFile(t, filepath.Join(b2.Rootfs, name)); got != want {
			t.Errorf("%s = %q, want %q", name, got, want)
		}
	}
	rec, err := c.readBundle("c1")
	if err != nil || rec.Stale {
		t.Errorf("bundle record after the remount: %+v, %v", rec, err)
	}
}
