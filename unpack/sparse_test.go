package unpack

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"

	"github.com/guest-puller/guest-puller/internal/errdefs"
)

// sparseTar makes, with GNU tar, a layer holding one sparse file "sparse"
// of size bytes whose only data are the strings of data at their offsets.
// format is tar's --format and sparseVersion its --sparse-version (PAX
// only; "" for the old GNU 'S' entries).
func sparseTar(t *testing.T, format, sparseVersion string, size int64, data map[int64]string) []byte {
	t.Helper()
	dir := t.TempDir()
	p := filepath.Join(dir, "sparse")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	for off, s := range data {
		if _, err := f.WriteAt([]byte(s), off); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	f.Close()
	args := []string{"--sparse", "--format=" + format, "--owner=0", "--group=0", "-cf", "-", "-C", dir, "sparse"}
	if sparseVersion != "" {
		args = append([]string{"--sparse-version=" + sparseVersion}, args...)
	}
	out, err := exec.Command("tar", args...).Output()
	if err != nil {
		t.Fatalf("tar %v: %v", args, err)
	}
	return out
}

// allocated is the space a file occupies, in bytes.
func allocated(t *testing.T, path string) int64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}

// TestSparseEntriesKeepTheirHoles (issue 8, hole 3): a sparse file in any
// of GNU tar's formats is applied with its holes as holes: 1 GiB of size,
// a few bytes of data, next to nothing on disk; its data is where it was,
// and reads back as the file did. The copy fallback of a bundle keeps the
// holes too.
func TestSparseEntriesKeepTheirHoles(t *testing.T) {
	const size = 1 << 30
	data := map[int64]string{0: "head", size / 3: "middle", size - 5: "tail!"}
	for _, tc := range []struct{ name, format, version string }{
		{"gnu", "gnu", ""},
		{"pax 0.0", "posix", "0.0"},
		{"pax 0.1", "posix", "0.1"},
		{"pax 1.0", "posix", "1.0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			layer := sparseTar(t, tc.format, tc.version, size, data)
			if len(layer) > 1<<20 {
				t.Fatalf("tar wrote %d bytes: the file is not sparse in the archive", len(layer))
			}
			c := openCache(t)
			d := commitLayer(t, c, layer)
			p := filepath.Join(c.layerDir(d.Encoded()), layerDiffDir, "sparse")
			checkSparse(t, p, size, data)

			if os.Geteuid() == 0 {
				c.forceCopy = true
				cfg := testImageConfig()
				cfg.Config.User = ""
				b, err := c.CreateBundle(context.Background(), BundleSpec{ID: "sparse", Image: "example.com/sparse:1", ManifestDigest: digest.FromString("m"), Layers: []digest.Digest{d}, Config: cfg})
				if err != nil {
					t.Fatal(err)
				}
				checkSparse(t, filepath.Join(b.Rootfs, "sparse"), size, data)
			}
		})
	}
}

func checkSparse(t *testing.T, p string, size int64, data map[int64]string) {
	t.Helper()
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Size() != size {
		t.Errorf("%s: size %d, want %d", p, fi.Size(), size)
	}
	if a := allocated(t, p); a > 1<<20 {
		t.Errorf("%s occupies %d MiB for %d bytes of data: its holes were written", p, a>>20, len(data))
	}
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for off, want := range data {
		got := make([]byte, len(want))
		if _, err := f.ReadAt(got, off); err != nil || string(got) != want {
			t.Errorf("%s at %d: %q (%v), want %q", p, off, got, err, want)
		}
		// The bytes around the data are the holes': zeros.
		var b [1]byte
		for _, at := range []int64{off - 1, off + int64(len(want))} {
			if at < 0 || at >= size {
				continue
			}
			if _, err := f.ReadAt(b[:], at); err != nil || b[0] != 0 {
				t.Errorf("%s at %d: %q (%v), want a zero of a hole", p, at, b, err)
			}
		}
	}
}

// TestSparseSizeBounded: the holes of sparse files cost no space but time
// to read (archive/tar reads them as zeros), so a layer's sparse files may
// declare at most a bounded total size: past it the layer is refused as
// unsafe content, in no more time than the bound takes.
func TestSparseSizeBounded(t *testing.T) {
	c := openCache(t)
	c.maxSparse = 512 << 20
	layer := sparseTar(t, "posix", "1.0", 1<<30, map[int64]string{0: "x"})
	d := diffIDOf(layer)
	s, err := c.Stage(d)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Abort()
	err = s.Apply(context.Background(), bytes.NewReader(layer))
	if !errors.Is(err, errdefs.ErrIntegrity) || !strings.Contains(err.Error(), "sparse files declare more than") {
		t.Fatalf("Apply = %v, want an unsafe-content refusal of the sparse size", err)
	}
}
