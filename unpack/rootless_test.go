package unpack

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"
)

const nobody = 65534

type rootlessResult struct {
	RootfsType string
	Rootfs     string
	Skipped    []string
}

// rootlessScenario runs in a helper process as an unprivileged user:
// apply layers with a device node and whiteouts, then make a bundle.
func rootlessScenario(ctx context.Context, root string) (*rootlessResult, error) {
	c, err := Open(ctx, root)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	tb := &helperTB{}
	layers := [][]byte{
		tarLayer(tb,
			dirE("dev/", 0o755), charE("dev/null", 1, 3),
			dirE("etc/", 0o755), fileE("etc/passwd", "root:x:0:0::/root:/bin/sh\n", 0o644), fileE("etc/old", "old", 0o644),
			dirE("opq/", 0o755), fileE("opq/a", "a", 0o644),
			dirE("ro/", 0o555), fileE("ro/f", "f", 0o444),
		),
		tarLayer(tb,
			// A whiteout typed as a device is still a whiteout.
			dirE("etc/", 0o755), charE("etc/.wh.old", 0, 0),
			dirE("opq/", 0o755), whiteoutE("opq/.wh..wh..opq"), fileE("opq/b", "b", 0o644),
		),
	}
	res := &rootlessResult{}
	var diffIDs []digest.Digest
	for _, l := range layers {
		d := diffIDOf(l)
		s, err := c.Stage(d)
		if err != nil {
			return nil, err
		}
		if err := s.Apply(ctx, bytes.NewReader(l)); err != nil {
			return nil, err
		}
		res.Skipped = append(res.Skipped, s.Stats().SkippedDevices...)
		if err := s.Commit(); err != nil {
			return nil, err
		}
		diffIDs = append(diffIDs, d)
	}
	cfg := testImageConfig()
	cfg.Config.User = "root"
	b, err := c.CreateBundle(ctx, BundleSpec{ID: "rootless", Image: "img", Layers: diffIDs, Config: cfg})
	if err != nil {
		return nil, err
	}
	res.RootfsType, res.Rootfs = b.RootfsType, b.Rootfs
	// GC must be able to delete read-only directories of image content.
	if err := c.PutImage(ctx, imageRecord("img", diffIDs...)); err != nil {
		return nil, err
	}
	if err := c.RemoveImage(ctx, "img"); err != nil {
		return nil, err
	}
	return res, nil
}

// TestUnprivileged runs the cache as an unprivileged user, which may not
// mount overlay nor create device nodes: the bundle is a copy, devices
// are skipped and listed, whiteouts and opaque directories still apply.
func TestUnprivileged(t *testing.T) {
	requireRoot(t)
	// A directory the unprivileged user can reach, with a copy of this
	// test binary it can execute.
	base, err := os.MkdirTemp("", "unpack-unprivileged-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	if err := os.Chmod(base, 0o755); err != nil {
		t.Fatal(err)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	exe := filepath.Join(base, "unpack.test")
	if err := copyExecutable(self, exe); err != nil {
		t.Fatal(err)
	}
	root := filepath.Join(base, "cache")
	if err := os.Mkdir(root, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(root, nobody, nobody); err != nil {
		t.Fatal(err)
	}

	cmd := helperCmd(t, exe, "rootless", root)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: nobody}}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("unprivileged helper: %v; stderr: %s", err, stderr.String())
	}
	var res rootlessResult
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("helper output %q: %v", out, err)
	}

	if res.RootfsType != RootfsCopy {
		t.Errorf("RootfsType = %q, want copy (no mount privilege)", res.RootfsType)
	}
	if !slices.Equal(res.Skipped, []string{"dev/null"}) {
		t.Errorf("skipped devices %v, want [dev/null]", res.Skipped)
	}
	var l layout
	if err := readJSON(filepath.Join(root, layoutFile), &l); err != nil || l.OverlayXattrs != xattrsUser {
		t.Errorf("layout %+v %v, want user xattrs", l, err)
	}
	rootfs := res.Rootfs
	if _, err := os.Lstat(filepath.Join(rootfs, "dev/null")); !os.IsNotExist(err) {
		t.Errorf("dev/null exists in the rootfs: %v", err)
	}
	if got := readFile(t, filepath.Join(rootfs, "opq/b")); got != "b" {
		t.Errorf("opq/b = %q", got)
	}
	for _, gone := range []string{"etc/old", "opq/a"} {
		if _, err := os.Lstat(filepath.Join(rootfs, gone)); !os.IsNotExist(err) {
			t.Errorf("%s should be gone: %v", gone, err)
		}
	}
	var st unix.Stat_t
	if err := unix.Lstat(filepath.Join(rootfs, "ro/f"), &st); err != nil || st.Uid != nobody || st.Mode&0o777 != 0o444 {
		t.Errorf("ro/f: owner %d mode %o, %v; want the unprivileged user's, 0444", st.Uid, st.Mode&0o777, err)
	}
	if names, _ := dirNames(filepath.Join(rootfs, "opq")); !slices.Equal(names, []string{"b"}) {
		t.Errorf("opq holds %v, want [b]", names)
	}

	// And GC, run by that user after RemoveImage, removes it all,
	// read-only image directories included.
	gc := helperCmd(t, exe, "gc", root)
	gc.SysProcAttr = cmd.SysProcAttr
	gc.Stderr = &stderr
	if out, err := gc.Output(); err != nil {
		t.Fatalf("unprivileged gc: %v; stderr: %s", err, stderr.String())
	} else if want := `{"bundles":["rootless"],"layers":2}`; string(bytes.TrimSpace(out)) != want {
		t.Errorf("gc reported %s, want %s", out, want)
	}
	for _, d := range []string{dirLayers, dirBundles, dirContainers, dirTrash} {
		if names, _ := dirNames(filepath.Join(root, d)); len(names) != 0 {
			t.Errorf("%s/ after gc: %v", d, names)
		}
	}
}

func copyExecutable(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

func gcSummary(r *GCReport) string {
	b, _ := json.Marshal(r.Bundles)
	return fmt.Sprintf(`{"bundles":%s,"layers":%d}`, b, len(r.Layers))
}
