package unpack

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/guest-puller/guest-puller/internal/testutil/isolate"
)

// TestMain lets tests re-execute this binary as a second process (see
// helperCmd) that shares a cache with the test.
func TestMain(m *testing.M) {
	if name := os.Getenv(helperEnv); name != "" {
		os.Exit(runHelper(name, strings.Split(os.Getenv(helperArgsEnv), "\x1f")))
	}
	// The tests mount overlays, FUSE and loop filesystems: in a mount
	// namespace of their own, none outlives a binary killed midway.
	if code, ran := isolate.OwnMountNamespace(); ran {
		os.Exit(code)
	}
	os.Exit(m.Run())
}

// entry is one tar entry of a test layer.
type entry struct {
	name     string
	typ      byte
	body     string
	link     string
	mode     int64
	uid, gid int
	xattrs   map[string]string
	major    int64
	minor    int64
}

var testTime = time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC)

func dirE(name string, mode int64) entry { return entry{name: name, typ: tar.TypeDir, mode: mode} }
func fileE(name, body string, mode int64) entry {
	return entry{name: name, typ: tar.TypeReg, body: body, mode: mode}
}
func symlinkE(name, target string) entry {
	return entry{name: name, typ: tar.TypeSymlink, link: target, mode: 0o777}
}
func hardlinkE(name, target string) entry { return entry{name: name, typ: tar.TypeLink, link: target} }
func whiteoutE(name string) entry         { return entry{name: name, typ: tar.TypeReg, mode: 0o644} }
func charE(name string, major, minor int64) entry {
	return entry{name: name, typ: tar.TypeChar, mode: 0o666, major: major, minor: minor}
}

func (e entry) owned(uid, gid int) entry { e.uid, e.gid = uid, gid; return e }
func (e entry) xattr(k, v string) entry {
	m := map[string]string{k: v}
	for k2, v2 := range e.xattrs {
		m[k2] = v2
	}
	e.xattrs = m
	return e
}

// tarLayer builds an uncompressed layer from entries.
func tarLayer(t testing.TB, entries ...entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		hdr := &tar.Header{
			Name:     e.name,
			Typeflag: e.typ,
			Linkname: e.link,
			Mode:     e.mode,
			Uid:      e.uid,
			Gid:      e.gid,
			Size:     int64(len(e.body)),
			ModTime:  testTime,
			Devmajor: e.major,
			Devminor: e.minor,
			Format:   tar.FormatPAX,
		}
		if e.typ != tar.TypeReg {
			hdr.Size = 0
		}
		if len(e.xattrs) > 0 {
			hdr.PAXRecords = map[string]string{}
			for k, v := range e.xattrs {
				hdr.PAXRecords["SCHILY.xattr."+k] = v
			}
		}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatalf("tar header %s: %v", e.name, err)
		}
		if hdr.Size > 0 {
			if _, err := tw.Write([]byte(e.body)); err != nil {
				t.Fatalf("tar body %s: %v", e.name, err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func diffIDOf(b []byte) digest.Digest {
	return digest.NewDigestFromEncoded(digest.SHA256, fmt.Sprintf("%x", sha256.Sum256(b)))
}

// openCache opens a fresh cache in a test directory.
func openCache(t testing.TB) *Cache {
	t.Helper()
	c, err := Open(context.Background(), t.TempDir())
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// commitLayer applies and commits one layer the way pull/ does.
func commitLayer(t testing.TB, c *Cache, layer []byte) digest.Digest {
	t.Helper()
	ctx := context.Background()
	d := diffIDOf(layer)
	release, err := c.LockLayer(ctx, d)
	if err != nil {
		t.Fatalf("LockLayer: %v", err)
	}
	defer release()
	if c.HasLayer(d) {
		return d
	}
	s, err := c.Stage(d)
	if err != nil {
		t.Fatalf("Stage: %v", err)
	}
	if err := s.Apply(ctx, bytes.NewReader(layer)); err != nil {
		s.Abort()
		t.Fatalf("Apply: %v", err)
	}
	if err := s.Commit(); err != nil {
		t.Fatalf("Commit: %v", err)
	}
	return d
}

func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("this test needs root (mounts, device nodes, ownership)")
	}
}

func readFile(t testing.TB, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read %s: %v", path, err)
	}
	return string(b)
}
