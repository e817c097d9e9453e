package api

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/guest-puller/guest-puller/internal/errdefs"
)

// answers reports whether something accepts connections at path.
func answers(path string) bool {
	c, err := net.Dial("unix", path)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// foreignListener serves path the way another program would: no lock
// file, just the socket.
func foreignListener(t *testing.T, path string) *net.UnixListener {
	t.Helper()
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	l.SetUnlinkOnClose(false)
	t.Cleanup(func() { l.Close() })
	return l
}

func TestListenSocket(t *testing.T) {
	dir := t.TempDir()

	t.Run("another daemon holds it", func(t *testing.T) {
		path := filepath.Join(dir, "ours.sock")
		first, err := listenSocket(path)
		if err != nil {
			t.Fatal(err)
		}
		defer first.Close()
		_, err = listenSocket(path)
		if !errors.Is(err, errdefs.ErrAlreadyExists) || !strings.Contains(err.Error(), "socket in use") {
			t.Fatalf("second listen: %v, want ErrAlreadyExists, socket in use", err)
		}
		if !answers(path) {
			t.Error("the first daemon's socket stopped answering")
		}
		if fi, err := os.Stat(path + ".lock"); err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("lock file: %v %v", fi, err)
		}
		if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("socket mode: %v %v", fi, err)
		}
	})

	t.Run("another program answers on it", func(t *testing.T) {
		path := filepath.Join(dir, "cdh.sock")
		foreignListener(t, path)
		_, err := listenSocket(path)
		if !errors.Is(err, errdefs.ErrAlreadyExists) || !strings.Contains(err.Error(), "socket in use") {
			t.Fatalf("listen over a live socket: %v, want ErrAlreadyExists, socket in use", err)
		}
		if !answers(path) {
			t.Error("the live socket was taken over")
		}
		if _, err := os.Lstat(path + ".lock"); !os.IsNotExist(err) {
			t.Errorf("refused listen left its lock file: %v", err)
		}
	})

	t.Run("stale socket is replaced", func(t *testing.T) {
		path := filepath.Join(dir, "stale.sock")
		foreignListener(t, path).Close() // a daemon killed without cleaning up
		if _, err := os.Lstat(path); err != nil {
			t.Fatal(err)
		}
		s, err := listenSocket(path)
		if err != nil {
			t.Fatalf("listen over a stale socket: %v", err)
		}
		defer s.Close()
		if !answers(path) {
			t.Error("the new socket does not answer")
		}
	})

	// kata-agent connects once, as soon as the path exists: the path
	// must come into being only as a socket that listens already (bind(2)
	// creates the file before listen(2)), so it arrives by a rename, never
	// by a create; and it is 0600 from the start.
	t.Run("appears only once it listens", func(t *testing.T) {
		fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(fd)
		if _, err := unix.InotifyAddWatch(fd, dir, unix.IN_CREATE|unix.IN_MOVED_TO|unix.IN_ATTRIB); err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(dir, "ready.sock")
		s, err := listenSocket(path)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		buf := make([]byte, 64<<10)
		n, err := unix.Read(fd, buf)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for off := 0; off+unix.SizeofInotifyEvent <= n; {
			ev := (*unix.InotifyEvent)(unsafe.Pointer(&buf[off]))
			name := strings.TrimRight(string(buf[off+unix.SizeofInotifyEvent:off+unix.SizeofInotifyEvent+int(ev.Len)]), "\x00")
			off += unix.SizeofInotifyEvent + int(ev.Len)
			if name != "ready.sock" {
				continue
			}
			switch {
			case ev.Mask&unix.IN_CREATE != 0:
				got = append(got, "create")
			case ev.Mask&unix.IN_MOVED_TO != 0:
				got = append(got, "rename")
			case ev.Mask&unix.IN_ATTRIB != 0:
				got = append(got, "chmod")
			}
		}
		if len(got) != 1 || got[0] != "rename" {
			t.Errorf("the socket's path came into being by %v; want a rename alone (a create is there before it listens)", got)
		}
		if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 || !answers(path) {
			t.Errorf("the socket: %v, %v, answers %v", fi, err, answers(path))
		}
	})

	t.Run("not a socket", func(t *testing.T) {
		path := filepath.Join(dir, "file")
		if err := os.WriteFile(path, []byte("data"), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := listenSocket(path); !errors.Is(err, errdefs.ErrAlreadyExists) {
			t.Errorf("listen over a regular file: %v, want ErrAlreadyExists", err)
		}
		if b, err := os.ReadFile(path); err != nil || string(b) != "data" {
			t.Errorf("the file was touched: %q %v", b, err)
		}
	})

	t.Run("close removes only its own socket", func(t *testing.T) {
		path := filepath.Join(dir, "own.sock")
		s, err := listenSocket(path)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		for _, p := range []string{path, path + ".lock"} {
			if _, err := os.Lstat(p); !os.IsNotExist(err) {
				t.Errorf("%s left after Close: %v", p, err)
			}
		}

		s, err = listenSocket(path)
		if err != nil {
			t.Fatal(err)
		}
		// Someone replaced the socket while this daemon ran.
		if err := os.Remove(path); err != nil {
			t.Fatal(err)
		}
		foreignListener(t, path)
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		if !answers(path) {
			t.Error("Close removed a socket it did not make")
		}
	})
}
