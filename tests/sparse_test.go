package tests

import (
	"archive/tar"
	"bytes"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/guest-puller/guest-puller/internal/testutil"
)

// tmpfsCache mounts a tmpfs of size bytes as the env's cache: guest RAM,
// as in a confidential guest without a sealed store. newEnv unmounts it.
func tmpfsCache(t *testing.T, e *env, size string) {
	t.Helper()
	if err := os.MkdirAll(e.cache, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", e.cache, "tmpfs", 0, "size="+size+",mode=0700"); err != nil {
		t.Fatalf("mount tmpfs: %v", err)
	}
}

// used is the space taken on the filesystem holding dir.
func used(t *testing.T, dir string) int64 {
	t.Helper()
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	return int64(st.Blocks-st.Bfree) * st.Bsize
}

// TestSparseFileInSmallTmpfs (issue 8, hole 3): a layer holding an 8 GiB
// sparse file with a few bytes of data (GNU tar's --sparse) unpacks into a
// 512 MiB tmpfs cache and occupies about nothing: its holes stay holes.
// Before, archive/tar's expansion was written out as 8 GiB of zeros,
// before any digest was checked.
func TestSparseFileInSmallTmpfs(t *testing.T) {
	const size = 8 << 30
	dir := t.TempDir()
	p := filepath.Join(dir, "sparse")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt([]byte("begin"), 0)
	f.WriteAt([]byte("end"), size-3)
	f.Close()
	layer, err := exec.Command("tar", "--sparse", "--format=gnu", "--owner=0", "--group=0", "-cf", "-", "-C", dir, "sparse").Output()
	if err != nil {
		t.Fatal(err)
	}
	reg := testutil.StartRegistry(t, testutil.RegistryOptions{})
	ref := reg.Push(t, testutil.BuildImage(t, testutil.ImageSpec{Layers: [][]byte{layer}}), "sparse/app:1")
	e := newEnv(t)
	tmpfsCache(t, e, "512m")
	res := e.pull(ref, "--policy", e.write("policy.json", acceptAll), "--insecure-registry", reg.Host)
	fi, err := os.Stat(filepath.Join(res.Rootfs, "sparse"))
	if err != nil || fi.Size() != size {
		t.Fatalf("rootfs/sparse: %v, %v; want %d bytes", fi, err, int64(size))
	}
	if u := used(t, e.cache); u > 16<<20 {
		t.Errorf("the cache tmpfs holds %d MiB after unpacking a sparse file with 8 bytes of data", u>>20)
	}
	sf, err := os.Open(filepath.Join(res.Rootfs, "sparse"))
	if err != nil {
		t.Fatal(err)
	}
	defer sf.Close()
	for off, want := range map[int64]string{0: "begin", size - 3: "end"} {
		got := make([]byte, len(want))
		if _, err := sf.ReadAt(got, off); err != nil || string(got) != want {
			t.Errorf("rootfs/sparse at %d: %q, %v; want %q", off, got, err, want)
		}
	}
}

// TestFullTmpfsFailsCleanly (issue 8, hole 3): a layer that needs more
// space than the cache has (100 MiB of data, not sparse, into a 64 MiB
// tmpfs) fails with exit 1 saying there is no space left, and leaves
// nothing of itself in the cache: no layer, no staging directory, no
// image record.
func TestFullTmpfsFailsCleanly(t *testing.T) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	if err := tw.WriteHeader(&tar.Header{Name: "zeros", Typeflag: tar.TypeReg, Mode: 0o644, Size: 100 << 20}); err != nil {
		t.Fatal(err)
	}
	if _, err := io.CopyN(tw, zeroReader{}, 100<<20); err != nil {
		t.Fatal(err)
	}
	tw.Close()
	reg := testutil.StartRegistry(t, testutil.RegistryOptions{})
	ref := reg.Push(t, testutil.BuildImage(t, testutil.ImageSpec{Layers: [][]byte{
		testutil.Tar(t, testutil.File("small", "fits", 0o644)),
		buf.Bytes(),
	}}), "full/app:1")
	e := newEnv(t)
	tmpfsCache(t, e, "64m")
	msg := e.pullFails(1, ref, "--policy", e.write("policy.json", acceptAll), "--insecure-registry", reg.Host)
	if !strings.Contains(msg, "no space left") || !strings.Contains(msg, "full/app") {
		t.Errorf("error does not say the cache is full for this image: %s", msg)
	}
	assertNoStaging(t, e.cache)
	l := e.cacheLs()
	if len(l.Images) != 0 || len(l.Bundles) != 0 {
		t.Errorf("a failed pull left records: %+v", l)
	}
	for _, layer := range l.Layers {
		if layer.Size > 1<<20 {
			t.Errorf("a partial layer of %d bytes is in the cache", layer.Size)
		}
	}
	if u := used(t, e.cache); u > 4<<20 {
		t.Errorf("the cache tmpfs still holds %d MiB after the failed pull", u>>20)
	}
}

type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}
