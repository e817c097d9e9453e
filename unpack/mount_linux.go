package unpack

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// overlayAPI is how this kernel takes an overlay's lower layers.
type overlayAPI int

const (
	// overlayProbe: not known yet; probeOverlay finds out.
	overlayProbe overlayAPI = iota
	// overlayLowerdirPlus: fsconfig's "lowerdir+", one layer per call
	// (Linux 6.8 and later), so no option string limits the layers.
	overlayLowerdirPlus
	// overlayClassic: mount(2) with "lowerdir=a:b:…", all options in one
	// page (every kernel; the only way before 6.8).
	overlayClassic
)

func (a overlayAPI) String() string {
	switch a {
	case overlayLowerdirPlus:
		return "fsconfig lowerdir+"
	case overlayClassic:
		return "mount(2) lowerdir="
	}
	return "unknown"
}

// probeOverlay finds out which overlayAPI this kernel offers, trying the
// parameters on an overlay filesystem context that is never created. dir
// is an existing directory to offer as a layer. An error means overlay
// cannot be mounted at all (overlayUnavailable tells why).
func probeOverlay(dir string) (overlayAPI, error) {
	fsfd, err := unix.Fsopen("overlay", unix.FSOPEN_CLOEXEC)
	if errors.Is(err, unix.ENOSYS) {
		return overlayClassic, nil // before Linux 5.2: mount(2) only
	}
	if err != nil {
		// ENODEV: no overlay filesystem; EPERM: no privilege to mount.
		return overlayProbe, fmt.Errorf("fsopen overlay: %w", err)
	}
	defer unix.Close(fsfd)
	// Before Linux 6.5 overlay is on the legacy mount API, whose fsconfig
	// takes any parameter and leaves judging them to the final create:
	// there, "lowerdir+" would be accepted now and fail later. A flag that
	// no filesystem has tells that API apart, as only it accepts one.
	if unix.FsconfigSetFlag(fsfd, "guest-puller-probe") == nil {
		return overlayClassic, nil
	}
	// 6.5 to 6.7 check each parameter but have no "lowerdir+".
	if unix.FsconfigSetString(fsfd, "lowerdir+", dir) != nil {
		return overlayClassic, nil
	}
	return overlayLowerdirPlus, nil
}

// mountOverlay mounts at target an overlay of lowers (topmost first) with
// the given upper and work directories, through api.
func mountOverlay(api overlayAPI, target string, lowers []string, upper, work string, userXattr bool) error {
	if api == overlayLowerdirPlus {
		return mountOverlayFsconfig(target, lowers, upper, work, userXattr)
	}
	return mountOverlayClassic(target, lowers, upper, work, userXattr)
}

// mountOverlayFsconfig adds the layers one at a time through fsconfig, so
// their number is limited only by overlay's own stack depth.
func mountOverlayFsconfig(target string, lowers []string, upper, work string, userXattr bool) error {
	fsfd, err := unix.Fsopen("overlay", unix.FSOPEN_CLOEXEC)
	if err != nil {
		return fmt.Errorf("fsopen overlay: %w", err)
	}
	defer unix.Close(fsfd)

	for _, l := range lowers {
		if err := fsconfigDir(fsfd, "lowerdir+", l); err != nil {
			return fsconfigError(fsfd, "lowerdir+ "+l, err)
		}
	}
	if err := fsconfigDir(fsfd, "upperdir", upper); err != nil {
		return fsconfigError(fsfd, "upperdir", err)
	}
	if err := fsconfigDir(fsfd, "workdir", work); err != nil {
		return fsconfigError(fsfd, "workdir", err)
	}
	if userXattr {
		if err := unix.FsconfigSetFlag(fsfd, "userxattr"); err != nil {
			return fsconfigError(fsfd, "userxattr", err)
		}
	}
	if err := unix.FsconfigCreate(fsfd); err != nil {
		return fsconfigError(fsfd, "create", err)
	}
	mfd, err := unix.Fsmount(fsfd, unix.FSMOUNT_CLOEXEC, 0)
	if err != nil {
		return fsconfigError(fsfd, "fsmount", err)
	}
	defer unix.Close(mfd)
	if err := unix.MoveMount(mfd, "", unix.AT_FDCWD, target, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
		return fmt.Errorf("move_mount overlay to %s: %w", target, err)
	}
	return nil
}

// fsconfigDir passes a directory by file descriptor (Linux 6.13 and
// later: no path length or escaping concerns), else by path.
func fsconfigDir(fsfd int, key, dir string) error {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return &os.PathError{Op: "open", Path: dir, Err: err}
	}
	defer unix.Close(fd)
	err = unix.FsconfigSetFd(fsfd, key, fd)
	if errors.Is(err, unix.EINVAL) {
		err = unix.FsconfigSetString(fsfd, key, dir)
	}
	return err
}

// fsconfigError adds the kernel's own explanation, which the fs context
// queues for reading, to a failed fsconfig step.
func fsconfigError(fsfd int, step string, err error) error {
	var msgs []string
	buf := make([]byte, 512)
	for range 8 {
		n, rerr := unix.Read(fsfd, buf)
		if rerr != nil || n <= 0 {
			break
		}
		msgs = append(msgs, strings.TrimSpace(string(buf[:n])))
	}
	if len(msgs) > 0 {
		return fmt.Errorf("overlay %s: %w (%s)", step, err, strings.Join(msgs, "; "))
	}
	return fmt.Errorf("overlay %s: %w", step, err)
}

// procFDDir is where a descriptor's number names the file it is open on.
const procFDDir = "/proc/self/fd"

// mountOverlayClassic is mount(2), whose options must fit in one page.
// Cache paths are about 100 bytes each, so spelled out they would fit
// some 40 layers. Instead each directory is opened (without following a
// symlink, as fsconfigDir does) and named by its descriptor's number,
// relative to /proc/self/fd, by a thread whose working directory is
// there: a few bytes per layer, so overlay's own limit of 500 layers comes
// first. The names need no escaping either.
func mountOverlayClassic(target string, lowers []string, upper, work string, userXattr bool) error {
	var fds []int
	defer func() {
		for _, fd := range fds {
			unix.Close(fd)
		}
	}()
	name := func(dir string) (string, error) {
		fd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			return "", &os.PathError{Op: "open", Path: dir, Err: err}
		}
		fds = append(fds, fd)
		return strconv.Itoa(fd), nil
	}
	names := make([]string, len(lowers))
	for i, l := range lowers {
		var err error
		if names[i], err = name(l); err != nil {
			return err
		}
	}
	u, err := name(upper)
	if err != nil {
		return err
	}
	w, err := name(work)
	if err != nil {
		return err
	}
	data := "lowerdir=" + strings.Join(names, ":") + ",upperdir=" + u + ",workdir=" + w
	if userXattr {
		data += ",userxattr"
	}
	if len(data) >= os.Getpagesize() {
		return fmt.Errorf("overlay of %d layers at %s: mount options exceed one page and this kernel lacks fsconfig lowerdir+", len(lowers), target)
	}
	return inDir(procFDDir, func() error {
		if err := unix.Mount("overlay", target, "overlay", 0, data); err != nil {
			return fmt.Errorf("mount overlay of %d layers at %s: %w", len(lowers), target, err)
		}
		return nil
	})
}

// inDir runs fn on an OS thread of its own whose working directory is dir,
// leaving the process's working directory alone.
func inDir(dir string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		// Never unlocked: a thread with its own working directory must not
		// run other goroutines, so it exits with this one.
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_FS); err != nil {
			errc <- fmt.Errorf("unshare CLONE_FS: %w", err)
			return
		}
		if err := unix.Chdir(dir); err != nil {
			errc <- &os.PathError{Op: "chdir", Path: dir, Err: err}
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// overlayUnavailable tells a mount failure that means "no overlay here"
// (no privilege, no overlay filesystem) from one that is a real error.
func overlayUnavailable(err error) bool {
	return errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES) || errors.Is(err, unix.ENODEV)
}

// isMountPoint reports whether path (not followed) is the root of a mount.
func isMountPoint(path string) (bool, error) {
	var stx unix.Statx_t
	err := unix.Statx(unix.AT_FDCWD, path, unix.AT_SYMLINK_NOFOLLOW|unix.AT_NO_AUTOMOUNT, unix.STATX_BASIC_STATS, &stx)
	if err != nil {
		return false, &os.PathError{Op: "statx", Path: path, Err: err}
	}
	if stx.Attributes_mask&unix.STATX_ATTR_MOUNT_ROOT != 0 {
		return stx.Attributes&unix.STATX_ATTR_MOUNT_ROOT != 0, nil
	}
	// Kernels before 5.8: a mount root of another filesystem than its
	// parent's (misses bind mounts of the same filesystem).
	var parent unix.Statx_t
	if err := unix.Statx(unix.AT_FDCWD, filepath.Dir(path), unix.AT_NO_AUTOMOUNT, unix.STATX_BASIC_STATS, &parent); err != nil {
		return false, &os.PathError{Op: "statx", Path: filepath.Dir(path), Err: err}
	}
	return stx.Dev_major != parent.Dev_major || stx.Dev_minor != parent.Dev_minor, nil
}

// unmountAll removes every mount stacked on path, lazily (MNT_DETACH)
// when a mount is busy, and never follows a symlink at path.
func unmountAll(path string) error {
	for range 16 {
		mounted, err := isMountPoint(path)
		if err != nil || !mounted {
			if errors.Is(err, os.ErrNotExist) {
				return nil
			}
			return err
		}
		err = unix.Unmount(path, unix.UMOUNT_NOFOLLOW)
		if errors.Is(err, unix.EBUSY) {
			err = unix.Unmount(path, unix.UMOUNT_NOFOLLOW|unix.MNT_DETACH)
		}
		if err != nil && !errors.Is(err, unix.EINVAL) {
			return fmt.Errorf("unmount %s: %w", path, err)
		}
	}
	return fmt.Errorf("unmount %s: still mounted after 16 unmounts", path)
}
