package unpack

import (
	"archive/tar"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/opencontainers/go-digest"
	ispec "github.com/opencontainers/image-spec/specs-go/v1"
	rspec "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/guest-puller/guest-puller/internal/errdefs"
	"github.com/guest-puller/guest-puller/internal/fspath"
)

func testImageConfig() ispec.Image {
	return ispec.Image{
		Platform: ispec.Platform{OS: "linux", Architecture: "amd64"},
		Config: ispec.ImageConfig{
			User:       "app:staff",
			Env:        []string{"PATH=/usr/local/bin:/usr/bin:/bin", "GREETING=hello world"},
			Entrypoint: []string{"/bin/tool", "--serve"},
			Cmd:        []string{"--port", "8080"},
			WorkingDir: "/data",
		},
	}
}

// threeLayers is an image whose layers exercise what a merged rootfs must
// get right: owners, modes, links, devices, xattrs, and whiteouts and
// opaque directories across layers.
func threeLayers(t testing.TB) [][]byte {
	base := tarLayer(t,
		dirE("./", 0o755),
		dirE("etc/", 0o755),
		fileE("etc/passwd", "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n", 0o644),
		fileE("etc/group", "root:x:0:\nstaff:x:50:app\napp:x:1000:\n", 0o644),
		fileE("etc/old.conf", "old", 0o644),
		dirE("bin/", 0o755),
		fileE("bin/tool", "#!/bin/sh\n", 0o4755),
		dirE("tmp/", 0o1777),
		dirE("data/", 0o750).owned(1234, 5678),
		fileE("data/file", "v1", 0o640).owned(1234, 5678),
		dirE("opq/", 0o755),
		fileE("opq/a", "a", 0o644),
		dirE("opq/sub/", 0o755),
		fileE("opq/sub/b", "b", 0o644),
		dirE("gone/", 0o755),
		fileE("gone/x", "x", 0o644),
		symlinkE("link", "etc/passwd"),
		symlinkE("abslink", "/etc/passwd"),
		dirE("hard/", 0o755),
		fileE("hard/a", "same inode", 0o644),
		hardlinkE("hard/b", "hard/a"),
		dirE("dev/", 0o755),
		charE("dev/null", 1, 3),
		entry{name: "dev/fifo", typ: tar.TypeFifo, mode: 0o600},
		fileE("swap", "file in base", 0o644),
		dirE("forged/", 0o755),
		fileE("forged/keep", "still here", 0o644),
		dirE("swapdir/", 0o755),
		fileE("swapdir/child", "c", 0o644),
	)
	middle := tarLayer(t,
		dirE("etc/", 0o755),
		whiteoutE("etc/.wh.old.conf"),
		fileE("etc/new.conf", "new", 0o600),
		whiteoutE(".wh.gone"),
		dirE("opq/", 0o755),
		whiteoutE("opq/.wh..wh..opq"),
		fileE("opq/c", "c", 0o644),
		dirE("data/", 0o750).owned(1234, 5678),
		fileE("data/file", "v2", 0o640).owned(1234, 5678).xattr("user.note", "from layer 2"),
		// An image's own overlay xattr must not act on our overlay.
		dirE("forged/", 0o755).xattr("trusted.overlay.opaque", "y"),
	)
	top := tarLayer(t,
		dirE("swap/", 0o711),
		fileE("swap/inner", "dir now", 0o644),
		fileE("swapdir", "file now", 0o644),
		dirE("home/", 0o755),
		dirE("home/app/", 0o700).owned(1000, 1000),
	)
	return [][]byte{base, middle, top}
}

func TestBundleRootfs(t *testing.T) {
	requireRoot(t)
	for _, mode := range []string{RootfsOverlay, RootfsCopy} {
		t.Run(mode, func(t *testing.T) {
			ctx := context.Background()
			c := openCache(t)
			c.forceCopy = mode == RootfsCopy
			var diffIDs []digest.Digest
			for _, l := range threeLayers(t) {
				diffIDs = append(diffIDs, commitLayer(t, c, l))
			}
			b, err := c.CreateBundle(ctx, BundleSpec{ID: "ctr1", Image: "example.com/app:1", ManifestDigest: digest.FromString("m"), Layers: diffIDs, Config: testImageConfig()})
			if err != nil {
				t.Fatalf("CreateBundle: %v", err)
			}
			t.Cleanup(func() { unmountAll(b.Rootfs) })
			if b.RootfsType != mode {
				t.Fatalf("RootfsType = %q, want %q", b.RootfsType, mode)
			}
			if b.Dir != filepath.Join(c.Root(), "bundles", "ctr1") || b.Rootfs != filepath.Join(b.Dir, "rootfs") {
				t.Errorf("bundle at %s rootfs %s", b.Dir, b.Rootfs)
			}
			if mounted, _ := isMountPoint(b.Rootfs); mounted != (mode == RootfsOverlay) {
				t.Errorf("rootfs mounted = %v", mounted)
			}
			// Nothing of the bundle stays open once it is made (the user
			// database was read to resolve the image's user): kata
			// unmounts the rootfs, without MNT_DETACH, when the container
			// ends.
			if open := openFilesUnder(t, b.Dir); len(open) != 0 {
				t.Errorf("after CreateBundle this process still has open: %v", open)
			}
			checkMergedRootfs(t, b.Rootfs)

			if mode == RootfsOverlay {
				// Writes land in the container's upper dir, never in the
				// shared layers.
				if err := os.WriteFile(filepath.Join(b.Rootfs, "etc/passwd"), []byte("changed"), 0o644); err != nil {
					t.Fatal(err)
				}
				if got := readFile(t, filepath.Join(c.layerDir(diffIDs[0].Encoded()), layerDiffDir, "etc/passwd")); strings.Contains(got, "changed") {
					t.Error("a write into the rootfs changed the cached layer")
				}
				if got := readFile(t, filepath.Join(c.containerDir("ctr1"), "upper", "etc/passwd")); got != "changed" {
					t.Errorf("upper/etc/passwd = %q", got)
				}
			}
		})
	}
}

// openFilesUnder lists this process's open file descriptors that refer to
// dir or anything below it.
func openFilesUnder(t *testing.T, dir string) []string {
	t.Helper()
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	var open []string
	for _, fd := range fds {
		target, err := os.Readlink(filepath.Join("/proc/self/fd", fd.Name()))
		if err == nil && fspath.Within(target, dir) {
			open = append(open, fd.Name()+" -> "+target)
		}
	}
	return open
}

func checkMergedRootfs(t *testing.T, rootfs string) {
	t.Helper()
	p := func(rel string) string { return filepath.Join(rootfs, rel) }
	for rel, want := range map[string]string{
		"etc/new.conf": "new",
		"opq/c":        "c",
		"data/file":    "v2",
		"hard/a":       "same inode",
		"swap/inner":   "dir now",
		"swapdir":      "file now",
		"link":         "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n",
		"bin/tool":     "#!/bin/sh\n",
		"etc/group":    "root:x:0:\nstaff:x:50:app\napp:x:1000:\n",
		"hard/b":       "same inode",
	} {
		if got := readFile(t, p(rel)); got != want {
			t.Errorf("%s = %q, want %q", rel, got, want)
		}
	}
	for _, rel := range []string{"etc/old.conf", "gone", "opq/a", "opq/sub", "swapdir/child"} {
		if _, err := os.Lstat(p(rel)); !errors.Is(err, os.ErrNotExist) && !errors.Is(err, unix.ENOTDIR) {
			t.Errorf("%s should be gone: %v", rel, err)
		}
	}
	for rel, want := range map[string]string{"link": "etc/passwd", "abslink": "/etc/passwd"} {
		if got, err := os.Readlink(p(rel)); err != nil || got != want {
			t.Errorf("readlink %s = %q, %v; want %q", rel, got, err, want)
		}
	}
	type attrs struct {
		mode     os.FileMode
		uid, gid uint32
	}
	for rel, want := range map[string]attrs{
		".":            {os.ModeDir | 0o755, 0, 0},
		"bin/tool":     {os.ModeSetuid | 0o755, 0, 0},
		"tmp":          {os.ModeDir | os.ModeSticky | 0o777, 0, 0},
		"data":         {os.ModeDir | 0o750, 1234, 5678},
		"data/file":    {0o640, 1234, 5678},
		"etc/new.conf": {0o600, 0, 0},
		"swap":         {os.ModeDir | 0o711, 0, 0},
		"home/app":     {os.ModeDir | 0o700, 1000, 1000},
		"dev/fifo":     {os.ModeNamedPipe | 0o600, 0, 0},
		"dev/null":     {os.ModeDevice | os.ModeCharDevice | 0o666, 0, 0},
	} {
		fi, err := os.Lstat(p(rel))
		if err != nil {
			t.Errorf("%s: %v", rel, err)
			continue
		}
		st := fi.Sys().(*syscall.Stat_t)
		if got := (attrs{fi.Mode(), st.Uid, st.Gid}); got != want {
			t.Errorf("%s: mode %v owner %d:%d, want mode %v owner %d:%d", rel, got.mode, got.uid, got.gid, want.mode, want.uid, want.gid)
		}
	}
	var st unix.Stat_t
	if err := unix.Lstat(p("dev/null"), &st); err == nil && (unix.Major(st.Rdev) != 1 || unix.Minor(st.Rdev) != 3) {
		t.Errorf("dev/null is device %d:%d, want 1:3", unix.Major(st.Rdev), unix.Minor(st.Rdev))
	}
	a, errA := os.Lstat(p("hard/a"))
	b, errB := os.Lstat(p("hard/b"))
	if errA != nil || errB != nil || !os.SameFile(a, b) {
		t.Errorf("hard/a and hard/b are not one file: %v %v", errA, errB)
	}
	buf := make([]byte, 64)
	if n, err := unix.Lgetxattr(p("data/file"), "user.note", buf); err != nil || string(buf[:n]) != "from layer 2" {
		t.Errorf("xattr user.note of data/file = %q, %v", buf[:max(n, 0)], err)
	}
	// No trace of the layer format (whiteouts, opaque markers) shows.
	names, err := dirNames(p("opq"))
	if err != nil || !slices.Equal(names, []string{"c"}) {
		t.Errorf("opq holds %v, %v; want only c", names, err)
	}
	if _, err := unix.Lgetxattr(p("opq"), "trusted.overlay.opaque", buf); err == nil {
		t.Error("opq shows the trusted.overlay.opaque marker")
	}
}

func TestBundleConfig(t *testing.T) {
	requireRoot(t)
	ctx := context.Background()
	c := openCache(t)
	var diffIDs []digest.Digest
	for _, l := range threeLayers(t) {
		diffIDs = append(diffIDs, commitLayer(t, c, l))
	}
	dir := filepath.Join(t.TempDir(), "bundle")
	cfg := testImageConfig()
	cfg.Config.Volumes = map[string]struct{}{"/var/cache": {}}
	b, err := c.CreateBundle(ctx, BundleSpec{ID: "ctr1", Dir: dir, Image: "example.com/app:1", ManifestDigest: digest.FromString("m"), Layers: diffIDs, Config: cfg})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unmountAll(b.Rootfs) })
	if b.Dir != dir || b.Rootfs != filepath.Join(dir, "rootfs") {
		t.Errorf("bundle %+v, want it at %s", b, dir)
	}
	var spec rspec.Spec
	if err := json.Unmarshal([]byte(readFile(t, filepath.Join(dir, "config.json"))), &spec); err != nil {
		t.Fatal(err)
	}
	if spec.Root.Path != "rootfs" {
		t.Errorf("root.path = %q", spec.Root.Path)
	}
	u := spec.Process.User
	if u.UID != 1000 || u.GID != 50 {
		t.Errorf("user %d:%d, want 1000:50 (app:staff through the image's passwd and group)", u.UID, u.GID)
	}
	if want := []string{"/bin/tool", "--serve", "--port", "8080"}; !slices.Equal(spec.Process.Args, want) {
		t.Errorf("args %q, want %q", spec.Process.Args, want)
	}
	if spec.Process.Cwd != "/data" {
		t.Errorf("cwd %q", spec.Process.Cwd)
	}
	for _, want := range []string{"PATH=/usr/local/bin:/usr/bin:/bin", "GREETING=hello world", "HOME=/home/app"} {
		if !slices.Contains(spec.Process.Env, want) {
			t.Errorf("env %q lacks %q", spec.Process.Env, want)
		}
	}
	if !slices.ContainsFunc(spec.Mounts, func(m rspec.Mount) bool { return m.Destination == "/var/cache" }) {
		t.Errorf("volume /var/cache has no mount: %+v", spec.Mounts)
	}
	// The overlay's upper dir stays inside the cache.
	if _, err := os.Stat(filepath.Join(c.containerDir("ctr1"), "upper")); err != nil {
		t.Errorf("upper dir: %v", err)
	}
	if names, _ := dirNames(dir); !slices.Equal(names, []string{"config.json", "rootfs"}) {
		t.Errorf("bundle dir holds %v", names)
	}
}

func TestBundleUserLookupStaysInRootfs(t *testing.T) {
	requireRoot(t)
	ctx := context.Background()
	c := openCache(t)
	// A host file the image points /etc/passwd at, naming "app" as 4242.
	host := t.TempDir()
	os.WriteFile(filepath.Join(host, "passwd"), []byte("app:x:4242:4242::/:/bin/sh\n"), 0o644)
	layer := tarLayer(t,
		dirE("etc/", 0o755),
		symlinkE("etc/passwd", filepath.Join(host, "passwd")),
	)
	d := commitLayer(t, c, layer)
	cfg := testImageConfig()
	cfg.Config.User = "app"
	b, err := c.CreateBundle(ctx, BundleSpec{ID: "evil", Image: "evil", Layers: []digest.Digest{d}, Config: cfg})
	if b != nil {
		unmountAll(b.Rootfs)
	}
	if err == nil {
		spec := readFile(t, filepath.Join(b.Dir, "config.json"))
		t.Fatalf("user app resolved through a host file: %s", spec)
	}
	if !strings.Contains(err.Error(), "app") {
		t.Errorf("error does not say which user: %v", err)
	}
	// The failed bundle leaves nothing behind.
	if _, err := os.Lstat(c.path(dirBundles, "evil")); !os.IsNotExist(err) {
		t.Errorf("failed bundle dir remains: %v", err)
	}
	if _, err := os.Lstat(c.containerDir("evil")); !os.IsNotExist(err) {
		t.Errorf("failed bundle record remains: %v", err)
	}
}

func TestCreateBundleIdempotentNeverReplaces(t *testing.T) {
	requireRoot(t)
	ctx := context.Background()
	c := openCache(t)
	l1 := commitLayer(t, c, tarLayer(t, fileE("v", "one", 0o644)))
	l2 := commitLayer(t, c, tarLayer(t, fileE("v", "two", 0o644)))
	cfg := testImageConfig()
	cfg.Config.User = ""
	spec := BundleSpec{ID: "ctr", Image: "img:1", ManifestDigest: digest.FromString("m1"), Layers: []digest.Digest{l1}, Config: cfg}
	b1, err := c.CreateBundle(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unmountAll(b1.Rootfs) })
	// The container writes; the same bundle again keeps that state, also
	// when the image is named by digest rather than by tag.
	os.WriteFile(filepath.Join(b1.Rootfs, "state"), []byte("running"), 0o644)
	spec.Image = "img@" + spec.ManifestDigest.String()
	b2, err := c.CreateBundle(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	if *b2 != *b1 || readFile(t, filepath.Join(b2.Rootfs, "state")) != "running" {
		t.Errorf("same ID and manifest made a new bundle: %+v", b2)
	}
	if n := countMounts(t, b1.Rootfs); n != 1 {
		t.Errorf("%d mounts on the rootfs, want 1", n)
	}

	// Another image under the same ID, or the same ID in another
	// directory, is refused: the live bundle and its writes stay.
	other := spec
	other.ManifestDigest, other.Layers = digest.FromString("m2"), []digest.Digest{l2}
	elsewhere := spec
	elsewhere.Dir = filepath.Join(t.TempDir(), "ctr")
	for name, s := range map[string]BundleSpec{"another image": other, "another dir": elsewhere} {
		_, err := c.CreateBundle(ctx, s)
		if !errors.Is(err, errdefs.ErrAlreadyExists) || errdefs.ExitCode(err) != 2 {
			t.Errorf("%s under a live bundle's ID: %v, want ErrAlreadyExists (exit 2)", name, err)
		}
	}
	if got := readFile(t, filepath.Join(b1.Rootfs, "v")) + readFile(t, filepath.Join(b1.Rootfs, "state")); got != "onerunning" {
		t.Errorf("refused requests changed the live bundle: %q", got)
	}
	if _, err := os.Lstat(elsewhere.Dir); !os.IsNotExist(err) {
		t.Errorf("refused request made its directory: %v", err)
	}

	// A rootfs unmounted behind our back is mounted again over the
	// container's own upper directory: its writes are still there.
	if err := unix.Unmount(b1.Rootfs, 0); err != nil {
		t.Fatal(err)
	}
	b3, err := c.CreateBundle(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	if *b3 != *b1 || readFile(t, filepath.Join(b3.Rootfs, "state")) != "running" || readFile(t, filepath.Join(b3.Rootfs, "v")) != "one" {
		t.Errorf("remounted bundle %+v lost the container's writes", b3)
	}

	// Once the container is gone (rootfs unmounted, directory deleted),
	// its ID is free for another image; nothing of the old one shows.
	if err := unix.Unmount(b1.Rootfs, 0); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(b1.Dir); err != nil {
		t.Fatal(err)
	}
	b4, err := c.CreateBundle(ctx, other)
	if err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, filepath.Join(b4.Rootfs, "v")); got != "two" {
		t.Errorf("new bundle shows v = %q", got)
	}
	if _, err := os.Lstat(filepath.Join(b4.Rootfs, "state")); !os.IsNotExist(err) {
		t.Error("new bundle shows the old container's writes")
	}
}

// TestCreateBundleDirectories: a bundle directory is the caller's to make
// empty (as kata-agent does) or CreateBundle's to make; one holding
// anything else is refused, and a directory reused by another container
// id after its bundle went reclaims the old record without touching the
// new bundle.
func TestCreateBundleDirectories(t *testing.T) {
	requireRoot(t)
	ctx := context.Background()
	c := openCache(t)
	l := commitLayer(t, c, tarLayer(t, fileE("f", "x", 0o644)))
	cfg := testImageConfig()
	cfg.Config.User = ""
	spec := func(id, dir string) BundleSpec {
		return BundleSpec{ID: id, Dir: dir, Image: "img", ManifestDigest: digest.FromString("m"), Layers: []digest.Digest{l}, Config: cfg}
	}
	kata := t.TempDir()

	// An empty directory made by the caller stays when the bundle goes.
	made := filepath.Join(kata, "made")
	if err := os.Mkdir(made, 0o700); err != nil {
		t.Fatal(err)
	}
	b, err := c.CreateBundle(ctx, spec("a", made))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unmountAll(b.Rootfs) })
	if names, _ := dirNames(made); !slices.Equal(names, []string{"config.json", "rootfs"}) {
		t.Errorf("bundle dir holds %v", names)
	}

	// Another id in a live bundle's directory: refused.
	if _, err := c.CreateBundle(ctx, spec("b", made)); !errors.Is(err, errdefs.ErrAlreadyExists) {
		t.Errorf("second id in a live bundle's dir: %v, want ErrAlreadyExists", err)
	}

	// The container ends; its directory is made again, empty, for a
	// container with another id.
	if err := unix.Unmount(b.Rootfs, 0); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(made); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(made, 0o700); err != nil {
		t.Fatal(err)
	}
	b2, err := c.CreateBundle(ctx, spec("b", made))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unmountAll(b2.Rootfs) })
	if _, err := c.readBundle("a"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("the displaced bundle's record: %v, want it reclaimed", err)
	}
	if _, err := os.Lstat(c.containerDir("a")); !os.IsNotExist(err) {
		t.Errorf("the displaced bundle's upper dir: %v, want it reclaimed", err)
	}
	if rep, err := c.GC(ctx); err != nil || len(rep.Bundles) != 0 {
		t.Errorf("GC after the reuse: %+v %v; want nothing removed", rep, err)
	}
	if got := readFile(t, filepath.Join(b2.Rootfs, "f")); got != "x" {
		t.Errorf("new bundle's rootfs: f = %q", got)
	}
}

func countMounts(t *testing.T, path string) int {
	t.Helper()
	n := 0
	for _, line := range strings.Split(readFile(t, "/proc/self/mountinfo"), "\n") {
		if f := strings.Fields(line); len(f) > 4 && f[4] == path {
			n++
		}
	}
	return n
}

func TestCreateBundleRefusesBadSpecs(t *testing.T) {
	ctx := context.Background()
	c := openCache(t)
	l := commitLayer(t, c, tarLayer(t, fileE("f", "x", 0o644)))
	outside := t.TempDir()
	if err := os.Symlink(c.path(dirLayers), filepath.Join(outside, "link")); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		spec BundleSpec
		want error
	}{
		{"slash in id", BundleSpec{ID: "a/b"}, errdefs.ErrInvalidConfig},
		{"dotdot id", BundleSpec{ID: "a..b"}, errdefs.ErrInvalidConfig},
		{"dot id", BundleSpec{ID: "."}, errdefs.ErrInvalidConfig},
		{"empty id", BundleSpec{ID: ""}, errdefs.ErrInvalidConfig},
		{"space in id", BundleSpec{ID: "a b"}, errdefs.ErrInvalidConfig},
		{"long id", BundleSpec{ID: strings.Repeat("a", 201)}, errdefs.ErrInvalidConfig},
		{"dir inside cache", BundleSpec{ID: "x", Dir: filepath.Join(c.Root(), "layers")}, errdefs.ErrInvalidConfig},
		{"dir above cache", BundleSpec{ID: "x", Dir: filepath.Dir(c.Root())}, errdefs.ErrInvalidConfig},
		{"dir through a symlink into the cache", BundleSpec{ID: "x", Dir: filepath.Join(outside, "link", "b")}, errdefs.ErrInvalidConfig},
		{"layer not committed", BundleSpec{ID: "x", Dir: filepath.Join(outside, "b"), Layers: []digest.Digest{l, digest.FromString("nope")}}, errdefs.ErrNotFound},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.spec.Config = testImageConfig()
			if _, err := c.CreateBundle(ctx, tc.spec); !errors.Is(err, tc.want) {
				t.Errorf("CreateBundle: %v, want %v", err, tc.want)
			}
		})
	}
	if _, err := os.Lstat(filepath.Join(outside, "b")); !os.IsNotExist(err) {
		t.Errorf("refused bundle created its dir: %v", err)
	}
	for _, id := range []string{"abc", "0123456789abcdef", "my_ctr-1.2", strings.Repeat("f", 200)} {
		if err := ValidateBundleID(id); err != nil {
			t.Errorf("ValidateBundleID(%q): %v", id, err)
		}
	}
}

// TestBundleManyLayers mounts more layers than mount(2)'s one page of
// options could name by path, through each way a kernel takes overlay
// layers: fsconfig's lowerdir+ where the kernel has it (Linux 6.8+), and
// forced here, the classic lowerdir= that older kernels have (the VM test
// in tests/vm runs it on a 6.1 kernel, found by the probe).
func TestBundleManyLayers(t *testing.T) {
	requireRoot(t)
	ctx := context.Background()
	const n = 300
	for _, api := range []overlayAPI{overlayProbe, overlayClassic} {
		t.Run(api.String(), func(t *testing.T) {
			c := openCache(t)
			c.forceOverlay = api
			var diffIDs []digest.Digest
			for i := range n {
				diffIDs = append(diffIDs, commitLayer(t, c, tarLayer(t,
					fileE(fmt.Sprintf("layer-%03d", i), fmt.Sprint(i), 0o644),
					fileE("top", fmt.Sprint(i), 0o644),
				)))
			}
			if spelled := n * len(c.layerDir(diffIDs[0].Encoded())+"/diff:"); spelled < 4*4096 {
				t.Fatalf("test needs lowerdir paths far longer than a page, has %d bytes", spelled)
			}
			cfg := testImageConfig()
			cfg.Config.User = ""
			b, err := c.CreateBundle(ctx, BundleSpec{ID: "many", Image: "many", Layers: diffIDs, Config: cfg})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { unmountAll(b.Rootfs) })
			if b.RootfsType != RootfsOverlay {
				t.Fatalf("RootfsType %q", b.RootfsType)
			}
			if api == overlayClassic {
				// mount(2) was given short names: the kernel shows them.
				opts := mountOptions(t, b.Rootfs)
				if !regexp.MustCompile(`(^|,)lowerdir=[0-9]+(:[0-9]+){299},upperdir=[0-9]+,workdir=[0-9]+`).MatchString(opts) {
					t.Errorf("overlay options %q are not the classic lowerdir= of %d descriptor names", opts, n)
				}
			}
			if got := readFile(t, filepath.Join(b.Rootfs, "top")); got != fmt.Sprint(n-1) {
				t.Errorf("top = %q, want the topmost layer's %d", got, n-1)
			}
			for i := range n {
				if _, err := os.Stat(filepath.Join(b.Rootfs, fmt.Sprintf("layer-%03d", i))); err != nil {
					t.Errorf("layer %d missing from the rootfs: %v", i, err)
				}
			}
			// The rootfs is writable, and writes go to the container's upper
			// directory.
			if err := os.WriteFile(filepath.Join(b.Rootfs, "top"), []byte("written"), 0o644); err != nil {
				t.Fatal(err)
			}
			if got := readFile(t, filepath.Join(c.containerDir("many"), "upper", "top")); got != "written" {
				t.Errorf("upper/top = %q", got)
			}
		})
	}
}

// mountOptions is the superblock options of the mount at path, from
// /proc/self/mountinfo.
func mountOptions(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		fields := strings.Fields(line)
		if len(fields) > 4 && fields[4] == path {
			return fields[len(fields)-1]
		}
	}
	t.Fatalf("%s is not in mountinfo", path)
	return ""
}

// TestProbeOverlay checks that the probe finds what the running kernel
// offers: lowerdir+ from Linux 6.8 on, the classic option before.
func TestProbeOverlay(t *testing.T) {
	requireRoot(t)
	var uts unix.Utsname
	if err := unix.Uname(&uts); err != nil {
		t.Fatal(err)
	}
	release := unix.ByteSliceToString(uts.Release[:])
	var major, minor int
	if _, err := fmt.Sscanf(release, "%d.%d", &major, &minor); err != nil {
		t.Fatalf("kernel release %q: %v", release, err)
	}
	want := overlayClassic
	if major > 6 || major == 6 && minor >= 8 {
		want = overlayLowerdirPlus
	}
	got, err := probeOverlay(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if got != want {
		t.Errorf("probe on Linux %s: %v, want %v", release, got, want)
	}
}

// TestMountOverlayClassic covers the mount(2) path with directories whose
// paths would need escaping in the options, and a stack deeper than the
// kernel allows, which fails cleanly.
func TestMountOverlayClassic(t *testing.T) {
	requireRoot(t)
	base := filepath.Join(t.TempDir(), `a,b:c\d`)
	var lowers []string
	for i := range 3 {
		l := filepath.Join(base, fmt.Sprint("l", i))
		os.MkdirAll(l, 0o755)
		os.WriteFile(filepath.Join(l, "f"), []byte(fmt.Sprint(i)), 0o644)
		lowers = append(lowers, l)
	}
	upper, work, target := filepath.Join(base, "u"), filepath.Join(base, "w"), filepath.Join(base, "m")
	for _, d := range []string{upper, work, target} {
		os.Mkdir(d, 0o755)
	}
	if err := mountOverlayClassic(target, lowers, upper, work, false); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unmountAll(target) })
	if got := readFile(t, filepath.Join(target, "f")); got != "0" {
		t.Errorf("f = %q, want the first (topmost) lower's", got)
	}
	if wd, err := os.Getwd(); err != nil || wd == procFDDir {
		t.Errorf("the process's working directory changed: %q, %v", wd, err)
	}
	// A symlink is never followed to a layer.
	link := filepath.Join(base, "link")
	os.Symlink(lowers[1], link)
	if err := mountOverlayClassic(filepath.Join(base, "m3"), []string{link}, upper, work, false); !errors.Is(err, unix.ELOOP) && !errors.Is(err, unix.ENOTDIR) {
		t.Errorf("mount through a symlinked layer: %v, want ELOOP", err)
	}
	long := make([]string, 1100)
	for i := range long {
		long[i] = lowers[0]
	}
	if err := mountOverlayClassic(filepath.Join(base, "m2"), long, upper, work, false); err == nil || !strings.Contains(err.Error(), "page") {
		t.Errorf("classic mount of %d layers: %v, want a page-size error", len(long), err)
	}
}

func TestCreateBundleLeavesForeignContentAlone(t *testing.T) {
	ctx := context.Background()
	c := openCache(t)
	l := commitLayer(t, c, tarLayer(t, fileE("f", "x", 0o644)))
	cfg := testImageConfig()
	cfg.Config.User = ""
	elsewhere := t.TempDir()
	for name, setup := range map[string]func(dir string) error{
		"another file": func(dir string) error {
			os.Mkdir(dir, 0o755)
			return os.WriteFile(filepath.Join(dir, "notes.txt"), []byte("mine"), 0o644)
		},
		"config.json": func(dir string) error {
			os.Mkdir(dir, 0o755)
			return os.WriteFile(filepath.Join(dir, "config.json"), []byte("{}"), 0o644)
		},
		"empty rootfs": func(dir string) error {
			return os.MkdirAll(filepath.Join(dir, "rootfs"), 0o755)
		},
		"a file": func(dir string) error {
			return os.WriteFile(dir, []byte("mine"), 0o644)
		},
		"rootfs not empty": func(dir string) error {
			os.MkdirAll(filepath.Join(dir, "rootfs"), 0o755)
			return os.WriteFile(filepath.Join(dir, "rootfs", "precious"), []byte("mine"), 0o644)
		},
		"rootfs a symlink": func(dir string) error {
			os.Mkdir(dir, 0o755)
			return os.Symlink(elsewhere, filepath.Join(dir, "rootfs"))
		},
		"rootfs a file": func(dir string) error {
			os.Mkdir(dir, 0o755)
			return os.WriteFile(filepath.Join(dir, "rootfs"), []byte("mine"), 0o644)
		},
	} {
		t.Run(name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "bundle")
			if err := setup(dir); err != nil {
				t.Fatal(err)
			}
			before := treeOf(t, dir)
			_, err := c.CreateBundle(ctx, BundleSpec{ID: "x", Dir: dir, Image: "img", Layers: []digest.Digest{l}, Config: cfg})
			if !errors.Is(err, errdefs.ErrAlreadyExists) || errdefs.ExitCode(err) != 2 {
				t.Fatalf("CreateBundle over foreign content: %v, want ErrAlreadyExists (exit 2)", err)
			}
			if after := treeOf(t, dir); !slices.Equal(before, after) {
				t.Errorf("bundle dir changed from %v to %v", before, after)
			}
			if _, err := os.Lstat(c.containerDir("x")); !os.IsNotExist(err) {
				t.Errorf("refused bundle left its record: %v", err)
			}
		})
	}
}

// treeOf lists dir's tree with each entry's type and content.
func treeOf(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			t.Fatal(err)
		}
		rel, _ := filepath.Rel(dir, p)
		desc := rel + " " + d.Type().String()
		if d.Type().IsRegular() {
			desc += " " + readFile(t, p)
		}
		out = append(out, desc)
		return nil
	})
	return out
}

// TestBundleDirectoryRaces: a bundle directory that a new bundle is
// claiming, or has claimed, belongs to it: the reclaiming of an older
// record of that directory, by another request or by GC, never touches
// it.
func TestBundleDirectoryRaces(t *testing.T) {
	requireRoot(t)
	ctx := context.Background()
	c := openCache(t)
	l := commitLayer(t, c, tarLayer(t, fileE("f", "x", 0o644)))
	if err := c.PutImage(ctx, imageRecord("img", l)); err != nil {
		t.Fatal(err)
	}
	cfg := testImageConfig()
	cfg.Config.User = ""
	spec := func(id, image, dir string) BundleSpec {
		return BundleSpec{ID: id, Dir: dir, Image: image, ManifestDigest: digest.FromString(image), Layers: []digest.Digest{l}, Config: cfg}
	}
	kata := t.TempDir()
	mk := func(s BundleSpec) *Bundle {
		t.Helper()
		b, err := c.CreateBundle(ctx, s)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { unmountAll(b.Rootfs) })
		return b
	}
	end := func(b *Bundle) {
		t.Helper()
		if err := unix.Unmount(b.Rootfs, 0); err != nil {
			t.Fatal(err)
		}
		if err := os.RemoveAll(b.Dir); err != nil {
			t.Fatal(err)
		}
	}

	t.Run("a directory being claimed", func(t *testing.T) {
		// a's container ended; another request is making its bundle in
		// a's old directory right now (it holds the directory's lock and
		// has made the rootfs, not yet config.json).
		d2 := filepath.Join(kata, "d2")
		a := mk(spec("a", "img", d2))
		end(a)
		release, err := c.tryLockDir(d2)
		if err != nil {
			t.Fatal(err)
		}
		defer release()
		if err := os.MkdirAll(filepath.Join(d2, "rootfs"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d2, "rootfs", "theirs"), []byte("new"), 0o644); err != nil {
			t.Fatal(err)
		}
		// a again, elsewhere: its old record goes, d2 is left alone.
		mk(spec("a", "img", filepath.Join(kata, "d1")))
		if got := readFile(t, filepath.Join(d2, "rootfs", "theirs")); got != "new" {
			t.Errorf("the claimed directory's rootfs: theirs = %q", got)
		}
	})

	t.Run("a record left behind in a claimed directory", func(t *testing.T) {
		// o's container ended; x claims o's directory while o's id is
		// being made elsewhere by a request that fails (so nobody
		// reclaims o's record when x claims the directory).
		d := filepath.Join(kata, "d")
		o := mk(spec("o", "old-image", d))
		end(o)
		held, err := tryLock(c.bundleLock("o"), unix.LOCK_EX)
		if err != nil {
			t.Fatal(err)
		}
		x := mk(spec("x", "img", d))
		held.Close()
		if err := os.WriteFile(filepath.Join(x.Rootfs, "state"), []byte("x ran"), 0o644); err != nil {
			t.Fatal(err)
		}
		// o's image goes: GC takes o, and nothing of x.
		if err := c.PutImage(ctx, imageRecord("old-image", l)); err != nil {
			t.Fatal(err)
		}
		if err := c.RemoveImage(ctx, "old-image"); err != nil {
			t.Fatal(err)
		}
		rep, err := c.GC(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Contains(rep.Bundles, "o") || slices.Contains(rep.Bundles, "x") {
			t.Errorf("GC removed bundles %v, want o and not x", rep.Bundles)
		}
		if got := readFile(t, filepath.Join(x.Rootfs, "state")); got != "x ran" {
			t.Errorf("x's rootfs after o's reclaim: state = %q", got)
		}
		if mounted, _ := isMountPoint(x.Rootfs); !mounted {
			t.Error("x's rootfs was unmounted")
		}
	})
}
