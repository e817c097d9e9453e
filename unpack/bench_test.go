package unpack

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// benchLayer is an uncompressed layer of files files of size bytes each,
// spread over directories of 100.
func benchLayer(b *testing.B, files, size int) []byte {
	b.Helper()
	var buf bytes.Buffer
	buf.Grow(files * (size + 1024))
	tw := tar.NewWriter(&buf)
	body := bytes.Repeat([]byte("0123456789abcdef"), size/16+1)[:size]
	for i := range files {
		if i%100 == 0 {
			if err := tw.WriteHeader(&tar.Header{Name: fmt.Sprintf("d%04d/", i/100), Typeflag: tar.TypeDir, Mode: 0o755, ModTime: testTime}); err != nil {
				b.Fatal(err)
			}
		}
		hdr := &tar.Header{Name: fmt.Sprintf("d%04d/f%06d", i/100, i), Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(size), ModTime: testTime}
		if err := tw.WriteHeader(hdr); err != nil {
			b.Fatal(err)
		}
		if _, err := tw.Write(body); err != nil {
			b.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		b.Fatal(err)
	}
	return buf.Bytes()
}

// BenchmarkApply measures Staging.Apply's throughput (bytes of tar per
// second) and allocations on a large generated layer.
func BenchmarkApply(b *testing.B) {
	for _, bc := range []struct {
		name        string
		files, size int
	}{
		{"64x1MiB", 64, 1 << 20},
		{"4000x4KiB", 4000, 4 << 10},
	} {
		b.Run(bc.name, func(b *testing.B) {
			layer := benchLayer(b, bc.files, bc.size)
			d := diffIDOf(layer)
			c := benchCache(b)
			ctx := context.Background()
			b.SetBytes(int64(len(layer)))
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				s, err := c.Stage(d)
				if err != nil {
					b.Fatal(err)
				}
				if err := s.Apply(ctx, bytes.NewReader(layer)); err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				if err := s.Abort(); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
			}
		})
	}
}

// BenchmarkFlatten measures the copy fallback: merging a committed layer
// into a plain directory.
func BenchmarkFlatten(b *testing.B) {
	for _, bc := range []struct {
		name        string
		files, size int
	}{
		{"64x1MiB", 64, 1 << 20},
		{"4000x4KiB", 4000, 4 << 10},
	} {
		b.Run(bc.name, func(b *testing.B) {
			c := benchCache(b)
			layer := benchLayer(b, bc.files, bc.size)
			commitLayer(b, c, layer)
			diff := filepath.Join(c.layerDir(diffIDOf(layer).Encoded()), layerDiffDir)
			ctx := context.Background()
			b.SetBytes(int64(bc.files * bc.size))
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				dst := filepath.Join(c.Root(), fmt.Sprint("flat-", i))
				if err := os.Mkdir(dst, 0o755); err != nil {
					b.Fatal(err)
				}
				f := &flattener{dst: dst, ns: c.overlayNS(), rootless: c.rootless}
				if err := f.flatten(ctx, []string{diff}); err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				if err := os.RemoveAll(dst); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
			}
		})
	}
}

// benchCache opens a cache on tmpfs when the machine has one, as the
// default root /run/guest-puller is in a guest: on a disk filesystem the
// benchmark would mostly measure its inode creation.
func benchCache(b *testing.B) *Cache {
	b.Helper()
	var st unix.Statfs_t
	if err := unix.Statfs("/dev/shm", &st); err != nil || st.Type != unix.TMPFS_MAGIC {
		return openCache(b)
	}
	dir, err := os.MkdirTemp("/dev/shm", "unpack-bench-")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(dir) })
	c, err := Open(context.Background(), dir)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	return c
}
