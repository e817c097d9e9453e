package api

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"github.com/guest-puller/guest-puller/internal/errdefs"
)

// socket is a unix socket this daemon created and serves. kata-agent
// finds the daemon by the socket's path alone, so the path is taken with
// care: never from a daemon that still answers on it, and on exit only the
// socket this daemon made is removed, never one another daemon has put
// there since.
type socket struct {
	*net.UnixListener
	path string
	// dev and ino identify the socket file this daemon bound.
	dev, ino uint64
	lock     *os.File
}

// staleDialTimeout bounds the probe of an existing socket: a daemon that
// holds the socket but does not accept within it counts as alive (the
// connection was queued), one that refuses it is gone.
const staleDialTimeout = 2 * time.Second

// listenSocket binds a unix socket at path, mode 0600, in a directory made
// 0700 if missing. A socket at path that accepts a connection is another
// daemon's: ErrAlreadyExists ("socket in use"). One that refuses it was
// left by a daemon that died, and is replaced. Anything else at path is
// not ours to remove. A lock file next to the socket (path + ".lock")
// makes two daemons starting at once take turns, so both cannot find the
// same stale socket and each remove the other's.
func listenSocket(path string) (_ *socket, err error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("socket %s: %w", path, err)
	}
	lock, err := lockSocket(path + ".lock")
	if err != nil {
		return nil, fmt.Errorf("socket %s: %w", path, err)
	}
	defer func() {
		if err != nil {
			unlockSocket(lock, path+".lock")
		}
	}()
	if err := removeStale(path); err != nil {
		return nil, fmt.Errorf("socket %s: %w", path, err)
	}
	// kata-agent waits for the socket's path to exist, then connects once:
	// the path must appear only once the socket listens, and only for root.
	// Binding creates the file before listen(2) and before any chmod, so
	// the socket is made at a name of its own in the same directory, made
	// ready there, and renamed into place. (A path too long for that
	// name is bound where it is.)
	bindAt := path + ".new"
	if len(bindAt) >= maxSocketPath {
		bindAt = path
	}
	if bindAt != path {
		// Left by a daemon killed while starting: the lock is ours now.
		if err := os.Remove(bindAt); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("socket %s: %w", path, err)
		}
	}
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: bindAt, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("socket %s: %w", path, err)
	}
	// Close must not unlink by path: see socket.Close.
	l.SetUnlinkOnClose(false)
	s := &socket{UnixListener: l, path: path, lock: lock}
	err = os.Chmod(bindAt, 0o600)
	if err == nil && bindAt != path {
		err = os.Rename(bindAt, path)
	}
	if err != nil {
		l.Close()
		os.Remove(bindAt)
		return nil, fmt.Errorf("socket %s: %w", path, err)
	}
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		s.Close()
		return nil, fmt.Errorf("socket %s: %w", path, err)
	}
	s.dev, s.ino = st.Dev, st.Ino
	return s, nil
}

// maxSocketPath is the room for a unix socket's path (sun_path), with its
// terminating NUL.
const maxSocketPath = len(unix.RawSockaddrUnix{}.Path)

// removeStale clears path for a new socket if what is there is a socket
// nobody answers on.
func removeStale(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if fi.Mode().Type() != os.ModeSocket {
		return fmt.Errorf("%w: %s is not a socket; not removing it", errdefs.ErrAlreadyExists, fi.Mode().Type())
	}
	conn, err := net.DialTimeout("unix", path, staleDialTimeout)
	if err == nil {
		conn.Close()
		return fmt.Errorf("%w: socket in use: another daemon serves it", errdefs.ErrAlreadyExists)
	}
	if !errors.Is(err, unix.ECONNREFUSED) {
		return fmt.Errorf("probe the existing socket: %w", err)
	}
	return os.Remove(path)
}

// Close stops listening and removes the socket file if it is still the one
// this daemon bound.
func (s *socket) Close() error {
	err := s.UnixListener.Close()
	if errors.Is(err, net.ErrClosed) {
		err = nil
	}
	var st unix.Stat_t
	if unix.Lstat(s.path, &st) == nil && st.Dev == s.dev && st.Ino == s.ino {
		if rerr := os.Remove(s.path); rerr != nil && !errors.Is(rerr, os.ErrNotExist) && err == nil {
			err = rerr
		}
	}
	if s.lock != nil {
		unlockSocket(s.lock, s.path+".lock")
		s.lock = nil
	}
	return err
}

// lockSocket takes the socket's lock file without waiting: a daemon that
// holds it serves (or is about to serve) the socket.
func lockSocket(path string) (*os.File, error) {
	for {
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
		if err != nil {
			return nil, fmt.Errorf("lock: %w", err)
		}
		if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
			f.Close()
			if errors.Is(err, unix.EWOULDBLOCK) {
				return nil, fmt.Errorf("%w: socket in use: another guest-puller holds %s", errdefs.ErrAlreadyExists, path)
			}
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		// The previous holder removes the file while holding it (see
		// unlockSocket): a lock on a removed file guards nothing.
		var a, b unix.Stat_t
		if unix.Fstat(int(f.Fd()), &a) == nil && unix.Lstat(path, &b) == nil && a.Dev == b.Dev && a.Ino == b.Ino {
			return f, nil
		}
		f.Close()
	}
}

func unlockSocket(f *os.File, path string) {
	os.Remove(path)
	f.Close()
}
