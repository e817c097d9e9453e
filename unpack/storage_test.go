package unpack

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"

	"github.com/guest-puller/guest-puller/internal/errdefs"
	"github.com/guest-puller/guest-puller/internal/testutil/faultfs"
)

// The tests in this file give the cache storage that fails with EIO, as a
// sealed store does where the host changed a block (package faultfs does
// it on the host; tests/vm does it with dm-integrity in a guest).

// TestBundleOverUnreadableLayer: a layer that fails to read back while a
// bundle is made over it, in the copy fallback (a file's content) or in
// the overlay's setup (the layer's root), is an integrity failure naming
// that layer, which is removed from the cache; nothing of the bundle is
// left, and once the layer is committed again the bundle is made.
func TestBundleOverUnreadableLayer(t *testing.T) {
	requireRoot(t)
	for _, tc := range []struct {
		name   string
		mode   string
		broken string // where, in the middle layer's directory, storage fails
	}{
		{"copy, a file's content", RootfsCopy, "diff/sub"},
		{"overlay, the layer's root", RootfsOverlay, "diff"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			c := openCache(t)
			c.forceCopy = tc.mode == RootfsCopy
			tars := [][]byte{
				tarLayer(t, fileE("a", "A", 0o644)),
				tarLayer(t, dirE("sub/", 0o755), fileE("sub/b", "B", 0o644)),
				tarLayer(t, fileE("c", "C", 0o644)),
			}
			var layers []digest.Digest
			for _, l := range tars {
				layers = append(layers, commitLayer(t, c, l))
			}
			bad := layers[1]
			faultfs.MountEIO(t, filepath.Join(c.layerDir(bad.Encoded()), tc.broken))

			cfg := testImageConfig()
			cfg.Config.User = ""
			spec := BundleSpec{ID: "c1", Image: "img", ManifestDigest: digest.FromString("m"), Layers: layers, Config: cfg}
			_, err := c.CreateBundle(ctx, spec)
			if !errors.Is(err, errdefs.ErrIntegrity) || !strings.Contains(err.Error(), "layer "+bad.String()) {
				t.Fatalf("CreateBundle over an unreadable layer: %v; want an integrity failure naming layer %s", err, bad)
			}
			if msg := err.Error(); strings.Contains(msg, layers[0].String()) || strings.Contains(msg, layers[2].String()) || strings.Contains(msg, "\n") {
				t.Errorf("the error names layers that read back, or is not one line: %q", msg)
			}
			for i, d := range layers {
				if got, want := c.HasLayer(d), d != bad; got != want {
					t.Errorf("layer %d committed: %v, want %v", i, got, want)
				}
			}
			if _, err := c.readBundle("c1"); !errors.Is(err, errdefs.ErrNotFound) {
				t.Errorf("the failed bundle's record: %v, want none", err)
			}
			if _, err := os.Lstat(c.path(dirBundles, "c1")); !os.IsNotExist(err) {
				t.Errorf("the failed bundle's directory: %v, want none", err)
			}
			// The removed layer may not delete (its content does not read),
			// which must not keep the cache from opening: the next command's
			// Open empties trash/.
			if again, err := Open(ctx, c.Root()); err != nil {
				t.Errorf("Open after a layer was removed for failing to read: %v", err)
			} else {
				again.Close()
			}

			// The next pull fetches the layer again; the bundle is made.
			if commitLayer(t, c, tars[1]) != bad {
				t.Fatal("the layer fetched again has another diff_id")
			}
			b, err := c.CreateBundle(ctx, spec)
			if err != nil {
				t.Fatalf("CreateBundle over the layer fetched again: %v", err)
			}
			t.Cleanup(func() { unmountAll(b.Rootfs) })
			if b.RootfsType != tc.mode {
				t.Errorf("rootfs type %s, want %s", b.RootfsType, tc.mode)
			}
			for name, want := range map[string]string{"a": "A", "sub/b": "B", "c": "C"} {
				if got := readFile(t, filepath.Join(b.Rootfs, name)); got != want {
					t.Errorf("%s = %q, want %q", name, got, want)
				}
			}
		})
	}
}

// TestBundleStorageFailureElsewhere: an I/O error that is not a layer's
// (here the bundle directory's own storage) removes no layer.
func TestBundleStorageFailureElsewhere(t *testing.T) {
	requireRoot(t)
	c := openCache(t)
	l := commitLayer(t, c, tarLayer(t, fileE("a", "A", 0o644)))
	dir := filepath.Join(t.TempDir(), "bundle")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	faultfs.MountEIO(t, dir)
	cfg := testImageConfig()
	cfg.Config.User = ""
	_, err := c.CreateBundle(context.Background(), BundleSpec{ID: "c1", Dir: dir, Image: "img", ManifestDigest: digest.FromString("m"), Layers: []digest.Digest{l}, Config: cfg})
	if !errors.Is(err, unix.EIO) || strings.Contains(err.Error(), "removed from the cache") {
		t.Fatalf("CreateBundle into a directory that fails to read: %v; want its EIO, no layer removed", err)
	}
	if !c.HasLayer(l) {
		t.Error("a layer that reads back was removed")
	}
}

// TestVerifyLayerUnreadable: reading a layer back before reuse fails on
// the first unreadable entry, as an integrity failure; the layer is gone.
func TestVerifyLayerUnreadable(t *testing.T) {
	requireRoot(t)
	c := openCache(t)
	l := commitLayer(t, c, tarLayer(t, dirE("sub/", 0o755), fileE("sub/b", "B", 0o644)))
	faultfs.MountEIO(t, filepath.Join(c.layerDir(l.Encoded()), "diff", "sub"))
	release, err := c.LockLayer(context.Background(), l)
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	err = c.VerifyLayer(context.Background(), l)
	if !errors.Is(err, errdefs.ErrIntegrity) || !strings.Contains(err.Error(), "layer "+l.String()) {
		t.Fatalf("VerifyLayer of an unreadable layer: %v; want an integrity failure naming it", err)
	}
	if c.HasLayer(l) {
		t.Error("the unreadable layer is still committed")
	}

	// A layer whose own directory fails cannot be moved out: the error
	// says so rather than that it is gone.
	l2 := commitLayer(t, c, tarLayer(t, fileE("c", "C", 0o644)))
	faultfs.MountEIO(t, c.layerDir(l2.Encoded()))
	release2, err := c.LockLayer(context.Background(), l2)
	if err != nil {
		t.Fatal(err)
	}
	defer release2()
	err = c.VerifyLayer(context.Background(), l2)
	if !errors.Is(err, errdefs.ErrIntegrity) || !strings.Contains(err.Error(), "could not be removed") || strings.Contains(err.Error(), "it is removed") {
		t.Errorf("VerifyLayer of a layer whose directory fails: %v; want an integrity failure saying it could not be removed", err)
	}
}

// TestCommitStorageFailure: an I/O error while a layer is committed (its
// record and content written out) is an integrity failure naming the
// layer, and the failed Commit leaves nothing: no layer, no staging
// directory, no lock.
func TestCommitStorageFailure(t *testing.T) {
	requireRoot(t)
	ctx := context.Background()
	mnt := t.TempDir()
	disk := faultfs.NewDisk(t, mnt, 32<<20)
	c, err := Open(ctx, filepath.Join(mnt, "cache"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	layer := tarLayer(t, fileE("a", strings.Repeat("A", 64<<10), 0o644))
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
	if err := s.Apply(ctx, bytes.NewReader(layer)); err != nil {
		t.Fatal(err)
	}
	disk.FailNewBlocks()
	err = s.Commit()
	if !errors.Is(err, errdefs.ErrIntegrity) || !errors.Is(err, unix.EIO) || !strings.HasPrefix(err.Error(), "commit: ") {
		t.Fatalf("Commit on storage that fails: %v; want an integrity failure (EIO) of the commit", err)
	}
	if c.HasLayer(d) {
		t.Error("the layer is committed after a failed Commit")
	}
	for _, sub := range []string{dirStaging, dirLayers} {
		if names, err := dirNames(c.path(sub)); err != nil || len(names) != 0 {
			t.Errorf("%s/ after a failed Commit: %v, %v; want empty", sub, names, err)
		}
	}
	if locks, _ := filepath.Glob(c.path(dirLocks, "staging-*")); len(locks) != 0 {
		t.Errorf("staging locks left: %v", locks)
	}
	if err := s.Abort(); err != nil {
		t.Errorf("Abort after a failed Commit: %v, want a no-op", err)
	}
}
