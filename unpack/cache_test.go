package unpack

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sys/unix"

	"github.com/guest-puller/guest-puller/internal/errdefs"
)

func TestOpenLayout(t *testing.T) {
	root := filepath.Join(t.TempDir(), "cache")
	c, err := Open(context.Background(), root)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fi, err := os.Stat(root)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o700 {
		t.Errorf("cache root mode %v, want 0700", fi.Mode().Perm())
	}
	for _, d := range cacheDirs {
		fi, err := os.Stat(filepath.Join(root, d))
		if err != nil || fi.Mode().Perm() != 0o700 {
			t.Errorf("%s: %v %v, want a 0700 directory", d, fi, err)
		}
	}
	var l layout
	if err := readJSON(filepath.Join(root, layoutFile), &l); err != nil {
		t.Fatal(err)
	}
	want := layout{Version: 1, OverlayXattrs: "trusted"}
	if os.Geteuid() != 0 {
		want.OverlayXattrs = "user"
	}
	if l != want {
		t.Errorf("layout.json = %+v, want %+v", l, want)
	}

	// A shared directory with content is no place for decrypted layers,
	// and Open does not change it.
	shared := t.TempDir()
	os.WriteFile(filepath.Join(shared, "someone-elses"), nil, 0o644)
	os.Chmod(shared, os.ModeSticky|0o777)
	if _, err := Open(context.Background(), shared); !errors.Is(err, errdefs.ErrInvalidConfig) {
		t.Errorf("Open of a shared directory: %v, want ErrInvalidConfig", err)
	}
	if fi, _ := os.Stat(shared); fi.Mode() != os.ModeDir|os.ModeSticky|0o777 {
		t.Errorf("Open changed the mode of %s to %v", shared, fi.Mode())
	}
	// An empty one, or a cache someone loosened, is made private.
	for _, dir := range []string{t.TempDir(), root} {
		os.Chmod(dir, 0o755)
		c, err := Open(context.Background(), dir)
		if err != nil {
			t.Fatalf("Open of %s: %v", dir, err)
		}
		c.Close()
		if fi, _ := os.Stat(dir); fi.Mode().Perm() != 0o700 {
			t.Errorf("%s has mode %v after Open, want 0700", dir, fi.Mode().Perm())
		}
	}

	// A layout this code does not know is refused, not guessed at.
	if err := writeJSONAtomic(filepath.Join(root, layoutFile), layout{Version: 2, OverlayXattrs: "trusted"}); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(context.Background(), root); !errors.Is(err, errdefs.ErrInvalidConfig) {
		t.Errorf("Open with layout version 2: %v, want ErrInvalidConfig", err)
	}
}

// lockLog is a file each lock holder writes "start X" then "end X" to
// while holding the lock; serialized holders never interleave.
func checkSerialized(t *testing.T, path string, holders int) {
	t.Helper()
	lines := strings.Split(strings.TrimSpace(readFile(t, path)), "\n")
	if len(lines) != 2*holders {
		t.Fatalf("lock log has %d lines, want %d:\n%s", len(lines), 2*holders, strings.Join(lines, "\n"))
	}
	for i := 0; i < len(lines); i += 2 {
		who, ok := strings.CutPrefix(lines[i], "start ")
		if !ok || lines[i+1] != "end "+who {
			t.Fatalf("lock holders interleaved:\n%s", strings.Join(lines, "\n"))
		}
	}
}

func TestLockLayerSerializesCachesAndProcesses(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	log := filepath.Join(t.TempDir(), "log")
	d := digest.FromString("layer")

	c1, err := Open(ctx, root)
	if err != nil {
		t.Fatal(err)
	}
	defer c1.Close()
	c2, err := Open(ctx, root)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()

	release, err := c1.LockLayer(ctx, d)
	if err != nil {
		t.Fatal(err)
	}
	appendLine(log, "start cache1")

	// Another Cache in this process, and another process, both wait.
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		r, err := c2.LockLayer(ctx, d)
		if err != nil {
			t.Error(err)
			return
		}
		appendLine(log, "start cache2")
		appendLine(log, "end cache2")
		r()
	}()
	cmd := helperCmd(t, "", "locklayer", root, d.String(), log, "process")
	sc, _, stderr := startHelper(t, cmd)
	if line := expectLine(t, sc, stderr); line != "waiting" {
		t.Fatalf("helper said %q", line)
	}
	// Give both waiters time to (wrongly) get the lock; if locking were
	// broken, their lines would land between cache1's.
	time.Sleep(300 * time.Millisecond)
	appendLine(log, "end cache1")
	release()
	release() // idempotent

	wg.Wait()
	if err := cmd.Wait(); err != nil {
		t.Fatalf("helper: %v; stderr: %s", err, stderr)
	}
	checkSerialized(t, log, 3)
}

func TestLockLayerHonoursContext(t *testing.T) {
	c := openCache(t)
	d := digest.FromString("layer")
	release, err := c.LockLayer(context.Background(), d)
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := c.LockLayer(ctx, d); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("LockLayer on a held lock with an ending context: %v, want DeadlineExceeded", err)
	}
	// A different layer is not blocked.
	r2, err := c.LockLayer(ctx, digest.FromString("other"))
	if err != nil {
		t.Fatalf("LockLayer on another layer: %v", err)
	}
	r2()
}

func TestOpenRemovesStaleStagingOnly(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	d := digest.FromString("layer")

	// A pull that was killed mid-apply.
	crashed := helperCmd(t, "", "stage", root, d.String(), "crash")
	out, err := crashed.Output()
	if err != nil {
		t.Fatalf("helper: %v", err)
	}
	stale := strings.TrimSpace(string(out))
	if _, err := os.Stat(filepath.Join(stale, layerDiffDir, "half-applied")); err != nil {
		t.Fatalf("helper left no staging directory: %v", err)
	}

	// A pull still running in another process.
	holder := helperCmd(t, "", "stage", root, d.String(), "hold")
	sc, stdin, stderr := startHelper(t, holder)
	live := expectLine(t, sc, stderr)

	c, err := Open(ctx, root)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if _, err := os.Lstat(stale); !os.IsNotExist(err) {
		t.Errorf("stale staging %s survived Open: %v", stale, err)
	}
	if _, err := os.Stat(filepath.Join(live, layerDiffDir, "half-applied")); err != nil {
		t.Errorf("Open removed the live staging of another process: %v", err)
	}

	// Once that process dies too, its staging goes at the next Open.
	stdin.Close()
	if err := holder.Wait(); err != nil {
		t.Fatalf("helper: %v; stderr: %s", err, stderr)
	}
	c, err = Open(ctx, root)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if _, err := os.Lstat(live); !os.IsNotExist(err) {
		t.Errorf("staging of the dead process survived Open: %v", err)
	}
	if names, _ := dirNames(filepath.Join(root, dirStaging)); len(names) != 0 {
		t.Errorf("staging/ not empty: %v", names)
	}
	if c.HasLayer(d) {
		t.Error("a never-committed layer is in the cache")
	}
}

func TestStagingCommitAbort(t *testing.T) {
	ctx := context.Background()
	c := openCache(t)
	content := strings.Repeat("content ", 500)
	layer := tarLayer(t, fileE("a", content, 0o644))
	d := diffIDOf(layer)

	// Abort (a failed check) leaves nothing.
	s, err := c.Stage(d)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Apply(ctx, strings.NewReader(string(layer))); err != nil {
		t.Fatal(err)
	}
	if err := s.Abort(); err != nil {
		t.Fatal(err)
	}
	if c.HasLayer(d) {
		t.Fatal("aborted layer is in the cache")
	}
	if names, _ := dirNames(c.path(dirStaging)); len(names) != 0 {
		t.Errorf("staging/ after Abort: %v", names)
	}

	// A failed Apply cannot be committed.
	s, err = c.Stage(d)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Apply(ctx, strings.NewReader(string(layer[:2000]))); err == nil {
		t.Fatal("Apply of a tar truncated in a file succeeded")
	}
	if err := s.Commit(); err == nil {
		t.Fatal("Commit after a failed Apply succeeded")
	}
	s.Abort()
	if c.HasLayer(d) {
		t.Fatal("failed layer is in the cache")
	}

	// Commit makes it visible, with its size.
	commitLayer(t, c, layer)
	if !c.HasLayer(d) {
		t.Fatal("committed layer missing")
	}
	if got := readFile(t, filepath.Join(c.layerDir(d.Encoded()), layerDiffDir, "a")); got != content {
		t.Errorf("layer file = %q", got)
	}
	l, err := c.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(l.Layers) != 1 || l.Layers[0].DiffID != d || l.Layers[0].Size != int64(len(content)) {
		t.Errorf("List layers = %+v", l.Layers)
	}
}

func TestApplyStopsAtEndOfArchive(t *testing.T) {
	c := openCache(t)
	layer := tarLayer(t, fileE("a", "x", 0o644))
	trailing := strings.Repeat("\x00", 4096) + "garbage after the archive"
	r := strings.NewReader(string(layer) + trailing)
	s, err := c.Stage(diffIDOf(layer))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Abort()
	if err := s.Apply(context.Background(), r); err != nil {
		t.Fatal(err)
	}
	// archive/tar reads the two zero blocks of the end marker and no
	// further: the caller drains the rest for its diff_id hash.
	if r.Len() != len(trailing) {
		t.Errorf("Apply read %d bytes past the end-of-archive marker", len(trailing)-r.Len())
	}
}

func TestApplyHonoursContext(t *testing.T) {
	c := openCache(t)
	layer := tarLayer(t, fileE("a", strings.Repeat("x", 1<<20), 0o644))
	s, err := c.Stage(diffIDOf(layer))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Abort()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := s.Apply(ctx, strings.NewReader(string(layer))); !errors.Is(err, context.Canceled) {
		t.Errorf("Apply with a cancelled context: %v", err)
	}
}

func imageRecord(ref string, layers ...digest.Digest) ImageRecord {
	rec := ImageRecord{Ref: ref, ManifestDigest: digest.FromString("manifest " + ref), ConfigDigest: digest.FromString("config " + ref), Pulled: time.Now().UTC().Truncate(time.Second)}
	for _, d := range layers {
		rec.Layers = append(rec.Layers, LayerRecord{Digest: digest.FromString("blob " + d.String()), DiffID: d, MediaType: ispec.MediaTypeImageLayerGzip, Size: 1})
	}
	return rec
}

func TestGC(t *testing.T) {
	requireRoot(t)
	ctx := context.Background()
	root := t.TempDir()
	c, err := Open(ctx, root)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	l1 := commitLayer(t, c, tarLayer(t, fileE("only-a", "1", 0o644)))
	l2 := commitLayer(t, c, tarLayer(t, fileE("shared", "22", 0o644)))
	l3 := commitLayer(t, c, tarLayer(t, fileE("only-b", "333", 0o644)))
	l4 := commitLayer(t, c, tarLayer(t, fileE("bundle-only", "4444", 0o644)))
	l5 := commitLayer(t, c, tarLayer(t, fileE("orphan", "55555", 0o644)))
	if err := c.PutImage(ctx, imageRecord("a", l1, l2)); err != nil {
		t.Fatal(err)
	}
	if err := c.PutImage(ctx, imageRecord("b", l2, l3)); err != nil {
		t.Fatal(err)
	}
	cfg := testImageConfig()
	cfg.Config.User = ""
	mk := func(id, image string, layers ...digest.Digest) *Bundle {
		b, err := c.CreateBundle(ctx, BundleSpec{ID: id, Image: image, ManifestDigest: digest.FromString("manifest " + image), Layers: layers, Config: cfg})
		if err != nil {
			t.Fatalf("CreateBundle %s: %v", id, err)
		}
		t.Cleanup(func() { unmountAll(b.Rootfs) })
		return b
	}
	ba := mk("ctr-a", "a", l1, l2)
	bb := mk("ctr-b", "b", l2, l3)
	bc := mk("ctr-c", "c", l4) // its image has no record, yet it is live
	bd := mk("ctr-d", "c", l4)
	// What the containers write goes to their upper directories: GC
	// counts what it frees of it (a new file, and a file copied up and
	// rewritten), and nothing of a live container's.
	written := map[string]string{
		filepath.Join(ba.Rootfs, "written"): strings.Repeat("a", 1000),
		filepath.Join(ba.Rootfs, "shared"):  "abc",
		filepath.Join(bd.Rootfs, "log"):     strings.Repeat("d", 20),
		filepath.Join(bb.Rootfs, "live"):    strings.Repeat("b", 300),
	}
	for p, content := range written {
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	const freedUpper = 1000 + 3 + 20
	// The user deleted ctr-d's bundle: GC takes it.
	if err := unmountAll(bd.Rootfs); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(bd.Dir); err != nil {
		t.Fatal(err)
	}
	c.Close() // drop pins: this process is done pulling

	list, err := Open(ctx, root)
	if err != nil {
		t.Fatal(err)
	}
	defer list.Close()
	if err := list.RemoveImage(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if err := list.RemoveImage(ctx, "a"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("RemoveImage of an unknown ref: %v, want errdefs.ErrNotFound", err)
	}
	l, err := list.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	refs := map[digest.Digest]int{}
	for _, li := range l.Layers {
		refs[li.DiffID] = li.Refs
	}
	wantRefs := map[digest.Digest]int{l1: 0, l2: 2, l3: 2, l4: 1, l5: 0}
	if !mapsEqual(refs, wantRefs) {
		t.Errorf("layer refs = %v, want %v", refs, wantRefs)
	}
	removed := map[string]bool{}
	for _, b := range l.Bundles {
		removed[b.ID] = b.Removed
	}
	if want := map[string]bool{"ctr-a": true, "ctr-b": false, "ctr-c": false, "ctr-d": true}; !mapsEqual(removed, want) {
		t.Errorf("bundles removed = %v, want %v", removed, want)
	}
	if len(l.Images) != 1 || l.Images[0].Ref != "b" {
		t.Errorf("images = %+v, want only b", l.Images)
	}

	// A layer another process is about to record (pinned) survives GC.
	pinner, err := Open(ctx, root)
	if err != nil {
		t.Fatal(err)
	}
	lease := pinner.NewLease()
	defer lease.Release()
	if present, _ := lease.Layer(l5, Source{Blob: digest.FromString("l5 blob")}); !present {
		t.Fatal("l5 missing")
	}
	report, err := list.GC(ctx)
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(report.Bundles)
	if !slices.Equal(report.Bundles, []string{"ctr-a", "ctr-d"}) {
		t.Errorf("GC removed bundles %v, want ctr-a ctr-d", report.Bundles)
	}
	if !slices.Equal(report.Layers, []digest.Digest{l1}) {
		t.Errorf("GC removed layers %v, want only %s", report.Layers, l1)
	}
	if report.FreedBytes != 1+freedUpper {
		t.Errorf("GC freed %d bytes, want %d: layer %s (1) and what ctr-a and ctr-d wrote (%d)", report.FreedBytes, 1+freedUpper, l1, freedUpper)
	}
	for d, want := range map[digest.Digest]bool{l1: false, l2: true, l3: true, l4: true, l5: true} {
		if got := list.hasLayer(d.Encoded()); got != want {
			t.Errorf("after GC, layer %s present = %v, want %v", d, got, want)
		}
	}
	if mounted, _ := isMountPoint(ba.Rootfs); mounted {
		t.Error("ctr-a's rootfs is still mounted")
	}
	for _, p := range []string{ba.Dir, filepath.Join(root, dirContainers, "ctr-a"), filepath.Join(root, dirContainers, "ctr-d")} {
		if _, err := os.Lstat(p); !os.IsNotExist(err) {
			t.Errorf("%s survived GC: %v", p, err)
		}
	}
	if got := readFile(t, filepath.Join(bb.Rootfs, "only-b")); got != "333" {
		t.Errorf("live bundle ctr-b: only-b = %q", got)
	}
	if got := readFile(t, filepath.Join(bc.Rootfs, "bundle-only")); got != "4444" {
		t.Errorf("live bundle ctr-c: bundle-only = %q", got)
	}

	// Unpinned, the orphan goes.
	pinner.Close()
	report, err = list.GC(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(report.Bundles) != 0 || !slices.Equal(report.Layers, []digest.Digest{l5}) || report.FreedBytes != 5 {
		t.Errorf("second GC = %+v, want only layer %s (5 bytes)", report, l5)
	}
	if names, _ := dirNames(filepath.Join(root, dirTrash)); len(names) != 0 {
		t.Errorf("trash not emptied: %v", names)
	}
	// Only locks of what is left remain.
	locks, _ := dirNames(filepath.Join(root, dirLocks))
	for _, f := range locks {
		for _, gone := range []string{l1.Encoded(), l5.Encoded(), "ctr-a", "ctr-d", "staging-"} {
			if strings.Contains(f, gone) {
				t.Errorf("lock file %s outlived what it guarded", f)
			}
		}
	}
	if !slices.Contains(locks, "layer-"+l2.Encoded()+".lock") || !slices.Contains(locks, "cache.lock") {
		t.Errorf("locks of live layers gone: %v", locks)
	}
}

func mapsEqual[K comparable, V comparable](a, b map[K]V) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

func TestOpenRemovesHalfMadeBundles(t *testing.T) {
	requireRoot(t)
	ctx := context.Background()
	root := t.TempDir()
	c, err := Open(ctx, root)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	l := commitLayer(t, c, tarLayer(t, fileE("f", "x", 0o644)))
	cfg := testImageConfig()
	cfg.Config.User = ""
	outside := filepath.Join(t.TempDir(), "bundle")
	var bundles []*Bundle
	for _, spec := range []BundleSpec{
		{ID: "half", Image: "img", Layers: []digest.Digest{l}, Config: cfg},
		{ID: "half-outside", Dir: outside, Image: "img", Layers: []digest.Digest{l}, Config: cfg},
		{ID: "whole", Image: "img", Layers: []digest.Digest{l}, Config: cfg},
	} {
		b, err := c.CreateBundle(ctx, spec)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { unmountAll(b.Rootfs) })
		bundles = append(bundles, b)
	}
	// A process killed after mounting the rootfs but before recording
	// the bundle ready leaves exactly this state on disk.
	for _, b := range bundles[:2] {
		rec, err := c.readBundle(b.ID)
		if err != nil {
			t.Fatal(err)
		}
		rec.State = bundleCreating
		if err := c.writeBundle(rec); err != nil {
			t.Fatal(err)
		}
	}
	// Until the next Open, List shows them removed: nobody is making them.
	l1, err := c.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range l1.Bundles {
		if want := b.ID != "whole"; b.Removed != want {
			t.Errorf("List: bundle %s removed = %v, want %v", b.ID, b.Removed, want)
		}
	}
	// One still being made (its lock held) is not removed.
	hold, err := tryLock(c.bundleLock("half"), unix.LOCK_EX)
	if err != nil {
		t.Fatal(err)
	}
	l1, err = c.List(ctx)
	hold.Close()
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range l1.Bundles {
		if b.ID == "half" && b.Removed {
			t.Error("List: a bundle being made shows as removed")
		}
	}

	// And one killed before writing anything but its container dir.
	if err := os.Mkdir(c.containerDir("norecord"), 0o700); err != nil {
		t.Fatal(err)
	}

	c2, err := Open(ctx, root)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	for _, b := range bundles[:2] {
		if mounted, _ := isMountPoint(b.Rootfs); mounted {
			t.Errorf("%s: rootfs still mounted", b.ID)
		}
		for _, p := range []string{b.Rootfs, filepath.Join(b.Dir, "config.json"), c.containerDir(b.ID)} {
			if _, err := os.Lstat(p); !os.IsNotExist(err) {
				t.Errorf("%s: %s survived Open: %v", b.ID, p, err)
			}
		}
	}
	if _, err := os.Lstat(c.containerDir("norecord")); !os.IsNotExist(err) {
		t.Errorf("record-less container dir survived Open: %v", err)
	}
	if got := readFile(t, filepath.Join(bundles[2].Rootfs, "f")); got != "x" {
		t.Errorf("the whole bundle was touched: f = %q", got)
	}
	l2, err := c2.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(l2.Bundles) != 1 || l2.Bundles[0].ID != "whole" || l2.Bundles[0].Removed {
		t.Errorf("bundles after Open: %+v", l2.Bundles)
	}
}

// TestGCFreedBytes: what GC reports freed is what it deleted, layers and
// what removed containers wrote, for both kinds of rootfs: an overlay's
// upper directory, and a copied rootfs (the whole container filesystem,
// which GC deletes from the bundle directory).
func TestGCFreedBytes(t *testing.T) {
	requireRoot(t)
	for _, mode := range []string{RootfsOverlay, RootfsCopy} {
		t.Run(mode, func(t *testing.T) {
			ctx := context.Background()
			c := openCache(t)
			c.forceCopy = mode == RootfsCopy
			layer := commitLayer(t, c, tarLayer(t, fileE("base", strings.Repeat("l", 10), 0o644)))
			if err := c.PutImage(ctx, imageRecord("img", layer)); err != nil {
				t.Fatal(err)
			}
			cfg := testImageConfig()
			cfg.Config.User = ""
			b, err := c.CreateBundle(ctx, BundleSpec{ID: "ctr", Image: "img", ManifestDigest: digest.FromString("manifest img"), Layers: []digest.Digest{layer}, Config: cfg})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { unmountAll(b.Rootfs) })
			if b.RootfsType != mode {
				t.Fatalf("RootfsType = %q, want %q", b.RootfsType, mode)
			}
			if err := os.WriteFile(filepath.Join(b.Rootfs, "written"), []byte(strings.Repeat("w", 100)), 0o644); err != nil {
				t.Fatal(err)
			}
			if err := c.RemoveImage(ctx, "img"); err != nil {
				t.Fatal(err)
			}
			c.Close() // this process is done pulling: no pins
			c, err = Open(ctx, c.Root())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			rep, err := c.GC(ctx)
			if err != nil {
				t.Fatal(err)
			}
			// The layer (10), what the container wrote (100), and with a
			// copy, the layer's file copied into the rootfs (10).
			want := int64(10 + 100)
			if mode == RootfsCopy {
				want += 10
			}
			if !slices.Equal(rep.Bundles, []string{"ctr"}) || !slices.Equal(rep.Layers, []digest.Digest{layer}) || rep.FreedBytes != want {
				t.Errorf("GC = %+v, want bundle ctr, layer %s, %d bytes freed", rep, layer, want)
			}
		})
	}
}

func TestGCDetachesBusyMount(t *testing.T) {
	requireRoot(t)
	ctx := context.Background()
	c := openCache(t)
	l := commitLayer(t, c, tarLayer(t, fileE("f", "x", 0o644)))
	if err := c.PutImage(ctx, imageRecord("img", l)); err != nil {
		t.Fatal(err)
	}
	cfg := testImageConfig()
	cfg.Config.User = ""
	b, err := c.CreateBundle(ctx, BundleSpec{ID: "busy", Image: "img", Layers: []digest.Digest{l}, Config: cfg})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unmountAll(b.Rootfs) })
	// A container process still has a file open: umount says EBUSY.
	f, err := os.Open(filepath.Join(b.Rootfs, "f"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := c.RemoveImage(ctx, "img"); err != nil {
		t.Fatal(err)
	}
	report, err := c.GC(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(report.Bundles, []string{"busy"}) {
		t.Errorf("GC removed bundles %v, want busy", report.Bundles)
	}
	if n := countMounts(t, b.Rootfs); n != 0 {
		t.Errorf("rootfs still mounted %d times", n)
	}
	if _, err := os.Lstat(b.Dir); !os.IsNotExist(err) {
		t.Errorf("bundle dir survived: %v", err)
	}
	// The open file still reads: the mount was detached, not yanked.
	buf := make([]byte, 1)
	if _, err := f.Read(buf); err != nil || buf[0] != 'x' {
		t.Errorf("read from the detached mount: %q %v", buf, err)
	}
}

// TestGCGoesOnPastAStuckBundle: a bundle GC cannot take down is reported
// and kept, with its layers, and does not keep GC from the rest.
func TestGCGoesOnPastAStuckBundle(t *testing.T) {
	requireRoot(t)
	ctx := context.Background()
	c := openCache(t)
	stuckLayer := commitLayer(t, c, tarLayer(t, fileE("stuck", "1", 0o644)))
	goneLayer := commitLayer(t, c, tarLayer(t, fileE("gone", "22", 0o644)))
	cfg := testImageConfig()
	cfg.Config.User = ""
	mk := func(id string, l digest.Digest) *Bundle {
		b, err := c.CreateBundle(ctx, BundleSpec{ID: id, Image: id, ManifestDigest: digest.FromString(id), Layers: []digest.Digest{l}, Config: cfg})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { unmountAll(b.Rootfs) })
		return b
	}
	stuck, gone := mk("stuck", stuckLayer), mk("gone", goneLayer)
	c.Close() // this process is done pulling: no pins
	// Both containers ended; stuck's rootfs has more mounts stacked on it
	// than unmountAll takes down.
	t.Cleanup(func() { unmountAll(stuck.Rootfs) })
	for range 17 {
		if err := unix.Mount("tmpfs", stuck.Rootfs, "tmpfs", 0, ""); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Remove(filepath.Join(stuck.Dir, "config.json")); err != nil {
		t.Fatal(err)
	}
	if err := unmountAll(gone.Rootfs); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(gone.Dir); err != nil {
		t.Fatal(err)
	}

	c2, err := Open(ctx, c.Root())
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	report, err := c2.GC(ctx)
	if err == nil || !strings.Contains(err.Error(), "stuck") {
		t.Errorf("GC error: %v, want one naming the stuck bundle", err)
	}
	if !slices.Equal(report.Bundles, []string{"gone"}) || !slices.Equal(report.Layers, []digest.Digest{goneLayer}) {
		t.Errorf("GC removed bundles %v and layers %v; want [gone] and [%s]", report.Bundles, report.Layers, goneLayer)
	}
	if !c2.hasLayer(stuckLayer.Encoded()) {
		t.Error("the stuck bundle's layer was removed")
	}
	if _, err := c2.readBundle("stuck"); err != nil {
		t.Errorf("the stuck bundle's record: %v", err)
	}
	if names, _ := dirNames(filepath.Join(c2.Root(), dirTrash)); len(names) != 0 {
		t.Errorf("trash left after GC: %v", names)
	}
}

// A cache that holds nothing is removed whole; one that holds a layer is
// left alone.
func TestRemoveIfEmpty(t *testing.T) {
	ctx := context.Background()
	root := filepath.Join(t.TempDir(), "cache")
	c, err := Open(ctx, root)
	if err != nil {
		t.Fatal(err)
	}
	if removed, err := c.RemoveIfEmpty(ctx); err != nil || !removed {
		t.Fatalf("RemoveIfEmpty of a new cache: %v, %v; want removed", removed, err)
	}
	c.Close()
	if _, err := os.Lstat(root); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("cache root still there: %v", err)
	}

	c = openCache(t)
	commitLayer(t, c, tarLayer(t, fileE("a", "x", 0o644)))
	if removed, err := c.RemoveIfEmpty(ctx); err != nil || removed {
		t.Fatalf("RemoveIfEmpty of a cache with a layer: %v, %v; want kept", removed, err)
	}
	if _, err := os.Stat(filepath.Join(c.Root(), layoutFile)); err != nil {
		t.Errorf("cache with a layer lost its layout: %v", err)
	}
}
