package unpack

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"os"
	"path"
	"path/filepath"
	"strings"
	"testing"

	"github.com/guest-puller/guest-puller/internal/errdefs"
)

// FuzzCleanName: a tar path from a layer is confined to the layer root:
// what cleanName accepts is clean, relative and does not climb.
func FuzzCleanName(f *testing.F) {
	for _, s := range []string{"etc/passwd", "/etc/passwd", "../x", "a/../../x", "/../x", "./a/./b/", "a//b", ".", "/", "..", "a/..", ".wh..wh..opq", "x\x00y"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		p, err := cleanName(name)
		if err != nil {
			var unsafe errUnsafe
			if !errors.As(err, &unsafe) {
				t.Fatalf("cleanName(%q) failed with %v, not an unsafe-content error", name, err)
			}
			return
		}
		if p != path.Clean(p) || path.IsAbs(p) || p == ".." || strings.HasPrefix(p, "../") {
			t.Fatalf("cleanName(%q) = %q: not clean, or absolute, or climbing", name, p)
		}
	})
}

// FuzzCheckEntry: every header a layer may hold is either refused as
// unsafe content or rewritten so that its name, and a hardlink's target,
// stay inside the layer root.
func FuzzCheckEntry(f *testing.F) {
	f.Add("etc/passwd", "", byte(tar.TypeReg))
	f.Add("link", "../../etc/shadow", byte(tar.TypeLink))
	f.Add("link", "/etc/shadow", byte(tar.TypeLink))
	f.Add("sym", "/etc/shadow", byte(tar.TypeSymlink))
	f.Add("a/.wh..", "", byte(tar.TypeReg))
	f.Add(".", "", byte(tar.TypeSymlink))
	f.Add("sparse", "", byte(tar.TypeGNUSparse))
	f.Add("dev", "", byte(tar.TypeBlock))
	f.Add("x", "", byte('Z'))
	root := f.TempDir()
	if err := os.WriteFile(filepath.Join(root, "existing"), []byte("x"), 0o644); err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, name, link string, typ byte) {
		hdr := &tar.Header{Name: name, Linkname: link, Typeflag: typ}
		if err := checkEntry(root, hdr); err != nil {
			return
		}
		if p := hdr.Name; p != path.Clean(p) || path.IsAbs(p) || p == ".." || strings.HasPrefix(p, "../") {
			t.Fatalf("entry %q accepted as %q", name, p)
		}
		if hdr.Typeflag == tar.TypeLink {
			if l := hdr.Linkname; path.IsAbs(l) || l == ".." || strings.HasPrefix(l, "../") || l == "." || l == hdr.Name {
				t.Fatalf("hardlink %q -> %q accepted with target %q", name, link, l)
			}
		}
	})
}

// FuzzApply: any byte stream as a layer's tar is applied, or refused, and
// nothing of it lands outside the staging directory: a directory next to
// the cache, which a layer escaping its root would reach first, stays
// empty.
func FuzzApply(f *testing.F) {
	for _, layer := range [][]byte{
		tarLayer(f, dirE("etc/", 0o755), fileE("etc/hostname", "box\n", 0o644), symlinkE("etc/link", "../../outside")),
		tarLayer(f, fileE("a", "a", 0o644), hardlinkE("b", "a"), whiteoutE(".wh.c"), dirE("d/", 0o700), whiteoutE("d/.wh..wh..opq")),
		tarLayer(f, symlinkE("up", "/"), fileE("up/escape", "x", 0o644)),
		tarLayer(f, fileE("../escape", "x", 0o644)),
		tarLayer(f, symlinkE("s", "/etc"), hardlinkE("h", "s/passwd")),
	} {
		f.Add(layer)
	}
	dir := f.TempDir()
	outside := filepath.Join(dir, "outside")
	if err := os.Mkdir(outside, 0o755); err != nil {
		f.Fatal(err)
	}
	c, err := Open(context.Background(), filepath.Join(dir, "cache"))
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { c.Close() })
	// Sparse files may declare up to 64 GiB, seconds of work each: too
	// slow for a fuzzer; the bound itself is what is tested here.
	c.maxSparse = 64 << 20
	f.Fuzz(func(t *testing.T, layer []byte) {
		s, err := c.Stage(diffIDOf(layer))
		if err != nil {
			t.Fatal(err)
		}
		err = s.Apply(context.Background(), bytes.NewReader(layer))
		if err != nil && errors.Is(err, errdefs.ErrIntegrity) && strings.Contains(err.Error(), "\n") {
			t.Fatalf("error spans lines: %q", err)
		}
		if aerr := s.Abort(); aerr != nil {
			t.Fatal(aerr)
		}
		if names, _ := dirNames(outside); len(names) != 0 {
			t.Fatalf("the layer wrote outside its root: %v", names)
		}
	})
}
