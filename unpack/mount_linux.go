package unpack

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// errNoFsconfig means the kernel cannot take overlay layers one by one
// (fsopen, or "lowerdir+" before Linux 6.8).
var errNoFsconfig = errors.New("kernel lacks fsconfig lowerdir+")

// mountOverlay mounts at target an overlay of lowers (topmost first) with
// the given upper and work directories. It adds the layers one at a time
// through fsconfig, so the number of layers is not limited by mount(2)'s
// one page of options; kernels without that get mount(2).
func mountOverlay(target string, lowers []string, upper, work string, userXattr bool) error {
	err := mountOverlayFsconfig(target, lowers, upper, work, userXattr)
	if errors.Is(err, errNoFsconfig) {
		return mountOverlayLegacy(target, lowers, upper, work, userXattr)
	}
	return err
}

func mountOverlayFsconfig(target string, lowers []string, upper, work string, userXattr bool) error {
	fsfd, err := unix.Fsopen("overlay", unix.FSOPEN_CLOEXEC)
	if errors.Is(err, unix.ENOSYS) {
		return errNoFsconfig
	}
	if err != nil {
		return fmt.Errorf("fsopen overlay: %w", err)
	}
	defer unix.Close(fsfd)

	for i, l := range lowers {
		err := fsconfigDir(fsfd, "lowerdir+", l)
		if i == 0 && errors.Is(err, unix.EINVAL) {
			return errNoFsconfig
		}
		if err != nil {
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

// mountOverlayLegacy is mount(2), whose options must fit one page.
func mountOverlayLegacy(target string, lowers []string, upper, work string, userXattr bool) error {
	esc := make([]string, len(lowers))
	for i, l := range lowers {
		esc[i] = escapeOverlayPath(l)
	}
	data := "lowerdir=" + strings.Join(esc, ":") + ",upperdir=" + escapeOverlayPath(upper) + ",workdir=" + escapeOverlayPath(work)
	if userXattr {
		data += ",userxattr"
	}
	if len(data) >= os.Getpagesize() {
		return fmt.Errorf("overlay of %d layers at %s: mount options exceed one page and this kernel lacks fsconfig lowerdir+", len(lowers), target)
	}
	if err := unix.Mount("overlay", target, "overlay", 0, data); err != nil {
		return fmt.Errorf("mount overlay at %s: %w", target, err)
	}
	return nil
}

// escapeOverlayPath escapes the separators of overlay's mount options.
func escapeOverlayPath(p string) string {
	return strings.NewReplacer(`\`, `\\`, `:`, `\:`, `,`, `\,`).Replace(p)
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
