package unpack

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// Locks are flock(2) locks on files under <root>/locks. flock belongs to
// the open file description, so two Caches in one process exclude each
// other exactly as two processes do, and a lock dies with its process.

// errLocked is returned by tryLock when another holder has the lock.
var errLocked = errors.New("lock held by another process")

// Polling bounds for blocking locks: flock cannot be interrupted by a
// context, so a blocked caller retries a non-blocking lock instead.
const (
	lockPollMin = 2 * time.Millisecond
	lockPollMax = 100 * time.Millisecond
)

// tryLock takes the flock how (unix.LOCK_SH or unix.LOCK_EX) on path,
// creating the file, without waiting. It returns errLocked when the lock
// is held elsewhere.
func tryLock(path string, how int) (*os.File, error) {
	for {
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
		if err != nil {
			return nil, fmt.Errorf("open lock: %w", err)
		}
		if err := unix.Flock(int(f.Fd()), how|unix.LOCK_NB); err != nil {
			f.Close()
			if errors.Is(err, unix.EWOULDBLOCK) {
				return nil, errLocked
			}
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		// A holder may have unlinked the file (see unlockAndRemove) between
		// our open and flock; our lock would then be on an orphan inode
		// nobody else can see. Retry on the file now at path.
		same, err := isSameFile(f, path)
		if err != nil {
			f.Close()
			return nil, err
		}
		if same {
			return f, nil
		}
		f.Close()
	}
}

// lock is tryLock that waits, polling, until the lock is free or ctx ends.
func lock(ctx context.Context, path string, how int) (*os.File, error) {
	wait := lockPollMin
	for {
		f, err := tryLock(path, how)
		if !errors.Is(err, errLocked) {
			return f, err
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("wait for lock: %w", ctx.Err())
		case <-t.C:
		}
		wait = min(2*wait, lockPollMax)
	}
}

// unlockAndRemove removes the lock file while still holding it, so no
// waiter can take a lock on the removed inode (tryLock re-checks), then
// releases it.
func unlockAndRemove(f *os.File, path string) {
	_ = os.Remove(path)
	f.Close()
}

func isSameFile(f *os.File, path string) (bool, error) {
	var a, b unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &a); err != nil {
		return false, fmt.Errorf("stat lock %s: %w", path, err)
	}
	if err := unix.Lstat(path, &b); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return false, nil
		}
		return false, fmt.Errorf("stat lock %s: %w", path, err)
	}
	return a.Dev == b.Dev && a.Ino == b.Ino, nil
}
