package faultfs

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/guest-puller/guest-puller/internal/testutil/isolate"
)

// TestMain runs the tests in a mount namespace of their own: what they
// mount must not outlive a binary killed midway.
func TestMain(m *testing.M) {
	if code, ran := isolate.OwnMountNamespace(); ran {
		os.Exit(code)
	}
	os.Exit(m.Run())
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("this test needs root (mounts)")
	}
}

func TestMountEIO(t *testing.T) {
	requireRoot(t)
	tmp := t.TempDir()
	t.Run("mounted", func(t *testing.T) {
		dir := filepath.Join(tmp, "a", "broken")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		MountEIO(t, dir)
		if _, err := os.Lstat(dir); !errors.Is(err, unix.EIO) {
			t.Errorf("lstat of the root: %v, want EIO", err)
		}
		if _, err := os.ReadDir(dir); !errors.Is(err, unix.EIO) {
			t.Errorf("readdir: %v, want EIO", err)
		}
		if _, err := os.ReadFile(filepath.Join(dir, "f")); !errors.Is(err, unix.EIO) {
			t.Errorf("read a file in it: %v, want EIO", err)
		}
		// The mount moves with its parent; the cleanup finds it there.
		if err := os.Rename(filepath.Join(tmp, "a"), filepath.Join(tmp, "b")); err != nil {
			t.Fatal(err)
		}
	})
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(data), tmp) {
		t.Errorf("a mount is left under %s after the test:\n%s", tmp, data)
	}
}

func TestDiskFailNewBlocks(t *testing.T) {
	requireRoot(t)
	dir := t.TempDir()
	d := NewDisk(t, dir, 16<<20)
	old := filepath.Join(dir, "old")
	if err := os.WriteFile(old, []byte("written before"), 0o644); err != nil {
		t.Fatal(err)
	}
	d.FailNewBlocks()
	if b, err := os.ReadFile(old); err != nil || string(b) != "written before" {
		t.Errorf("a file written before: %q, %v", b, err)
	}
	f, err := os.Create(filepath.Join(dir, "new"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write([]byte("new data")); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); !errors.Is(err, unix.EIO) {
		t.Errorf("fsync of a new file: %v, want EIO", err)
	}
}
