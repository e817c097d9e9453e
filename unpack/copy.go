package unpack

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// flattener merges layer directories in overlayfs format into one plain
// directory tree, giving the view overlayfs would: whiteouts (0:0 character
// devices) delete, opaque directories hide what is below them, an upper
// non-directory replaces a lower directory and vice versa. It only writes
// below dst and never follows a symlink: each path's parent was made a
// real directory by an earlier step of the same walk.
type flattener struct {
	dst string
	// ns is the overlay xattr namespace of the layers ("trusted." or
	// "user.").
	ns       string
	rootless bool
	// dirs holds each directory's mode and times from the topmost layer
	// that has it. They are set last, once nothing more is added below:
	// a read-only directory would stop an unprivileged copy from adding
	// to it, and adding changes its mtime.
	dirs map[string]dirAttrs
	// lock, if set, holds layer i (of the layers flattened) against other
	// flatteners while its modes are opened up (rootless; see openUp).
	lock func(ctx context.Context, i int) (unlock func(), err error)
	// opened are the layer directories whose mode openUp widened, to be
	// restored when the layer is done.
	opened []openedDir
}

type openedDir struct {
	path string
	mode uint32
}

type dirAttrs struct {
	mode  uint32
	times [2]unix.Timespec
}

type inodeKey struct{ dev, ino uint64 }

func (f *flattener) flatten(ctx context.Context, layers []string) error {
	f.dirs = map[string]dirAttrs{}
	for i, l := range layers {
		if err := f.mergeLayer(ctx, i, l); err != nil {
			return err
		}
	}
	dirs := make([]string, 0, len(f.dirs))
	for d := range f.dirs {
		dirs = append(dirs, d)
	}
	// Deepest first, so finishing a child does not touch a parent
	// already finished.
	sort.Slice(dirs, func(i, j int) bool { return strings.Count(dirs[i], "/") > strings.Count(dirs[j], "/") })
	for _, d := range dirs {
		a, p := f.dirs[d], filepath.Join(f.dst, d)
		if err := unix.Fchmodat(unix.AT_FDCWD, p, a.mode&0o7777, 0); err != nil {
			return fmt.Errorf("copy rootfs: mode of %s: %w", d, err)
		}
		if err := unix.UtimesNanoAt(unix.AT_FDCWD, p, a.times[:], unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return fmt.Errorf("copy rootfs: times of %s: %w", d, err)
		}
	}
	return nil
}

// removed forgets the directories at and below rel, which a whiteout, an
// opaque directory or a replacing file removed.
func (f *flattener) removed(rel string, self bool) {
	for d := range f.dirs {
		if (self && d == rel) || strings.HasPrefix(d, rel+"/") || rel == "." && d != "." {
			delete(f.dirs, d)
		}
	}
}

// mergeLayer merges layer i, whose directory is src. Without privileges,
// directories and files whose mode keeps their owner out (a directory 0644
// cannot be walked, a file 0000 cannot be read) are opened up for the
// owner while the layer is copied, under the layer's lock, and given their
// mode back afterwards, whatever happened.
func (f *flattener) mergeLayer(ctx context.Context, i int, src string) (err error) {
	if !f.rootless {
		return f.merge(ctx, src)
	}
	if f.lock != nil {
		unlock, err := f.lock(ctx, i)
		if err != nil {
			return fmt.Errorf("copy rootfs: %w", err)
		}
		defer unlock()
	}
	defer func() {
		// Deepest first: a restored parent may shut its children out.
		for j := len(f.opened) - 1; j >= 0; j-- {
			o := f.opened[j]
			if rerr := unix.Fchmodat(unix.AT_FDCWD, o.path, o.mode, 0); rerr != nil && err == nil {
				err = fmt.Errorf("copy rootfs: restore the mode of %s: %w", o.path, rerr)
			}
		}
		f.opened = f.opened[:0]
	}()
	return f.merge(ctx, src)
}

// openUp gives the owner (this process: rootless layers are its own) the
// access bits want on path, if it lacks them, and remembers to take them
// back. It reports the mode path had.
func (f *flattener) openUp(path string, st *syscall.Stat_t, want uint32) error {
	mode := st.Mode & 0o7777
	if mode&want == want {
		return nil
	}
	if err := unix.Fchmodat(unix.AT_FDCWD, path, mode|want, 0); err != nil {
		return &os.PathError{Op: "chmod", Path: path, Err: err}
	}
	f.opened = append(f.opened, openedDir{path: path, mode: mode})
	return nil
}

func (f *flattener) merge(ctx context.Context, src string) error {
	// Hardlinks within a layer stay hardlinks in the copy.
	links := map[inodeKey]string{}
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		st := fi.Sys().(*syscall.Stat_t)
		if f.rootless && d.IsDir() {
			// Before WalkDir reads it: its entries need r and x.
			if err := f.openUp(p, st, 0o500); err != nil {
				return fmt.Errorf("copy rootfs: %s: %w", rel, err)
			}
		}
		target := filepath.Join(f.dst, rel)
		if err := f.entry(p, rel, target, fi, st, links); err != nil {
			return fmt.Errorf("copy rootfs: %s: %w", rel, err)
		}
		return nil
	})
}

func (f *flattener) entry(src, rel, target string, fi fs.FileInfo, st *syscall.Stat_t, links map[inodeKey]string) error {
	mode := fi.Mode()
	if fi.IsDir() {
		return f.dir(src, rel, target, fi, st)
	}
	// A whiteout, or a non-directory: either way what is at target goes.
	if cur, err := os.Lstat(target); err == nil {
		if cur.IsDir() {
			f.removed(rel, true)
		}
		if err := removeAll(target); err != nil {
			return err
		}
	}
	if mode&fs.ModeCharDevice != 0 && st.Rdev == 0 {
		return nil // whiteout
	}
	switch {
	case mode.IsRegular():
		key := inodeKey{uint64(st.Dev), st.Ino}
		if first, ok := links[key]; ok && st.Nlink > 1 {
			return os.Link(first, target)
		}
		if f.rootless {
			if err := f.openUp(src, st, 0o400); err != nil {
				return err
			}
		}
		if err := copyFile(src, target); err != nil {
			return err
		}
		if st.Nlink > 1 {
			links[key] = target
		}
	case mode&fs.ModeSymlink != 0:
		link, err := os.Readlink(src)
		if err != nil {
			return err
		}
		if err := os.Symlink(link, target); err != nil {
			return err
		}
	default: // devices, fifos, sockets
		if err := unix.Mknod(target, st.Mode, int(st.Rdev)); err != nil {
			return &os.PathError{Op: "mknod", Path: target, Err: err}
		}
	}
	if err := f.meta(src, target, fi, st); err != nil {
		return err
	}
	ts := timesOf(st)
	return unix.UtimesNanoAt(unix.AT_FDCWD, target, ts[:], unix.AT_SYMLINK_NOFOLLOW)
}

func (f *flattener) dir(src, rel, target string, fi fs.FileInfo, st *syscall.Stat_t) error {
	cur, err := os.Lstat(target)
	switch {
	case err == nil && !cur.IsDir():
		if err := removeAll(target); err != nil {
			return err
		}
		fallthrough
	case isNotExist(err):
		if err := os.Mkdir(target, 0o700); err != nil {
			return err
		}
	case err != nil:
		return err
	case f.opaque(src):
		// An opaque directory hides everything the layers below put in it.
		f.removed(rel, false)
		names, err := dirNames(target)
		if err != nil {
			return err
		}
		for _, n := range names {
			if err := removeAll(filepath.Join(target, n)); err != nil {
				return err
			}
		}
	}
	if err := f.meta(src, target, fi, st); err != nil {
		return err
	}
	f.dirs[rel] = dirAttrs{mode: st.Mode, times: timesOf(st)}
	return nil
}

func (f *flattener) opaque(dir string) bool {
	buf := make([]byte, 8)
	n, err := unix.Lgetxattr(dir, f.ns+"overlay.opaque", buf)
	return err == nil && string(buf[:n]) == "y"
}

// meta gives target src's owner, mode and xattrs. The overlay xattrs of
// the layer format are not copied; escaped ones ("overlay.overlay.x",
// the image's own overlay xattrs) are copied unescaped.
func (f *flattener) meta(src, target string, fi fs.FileInfo, st *syscall.Stat_t) error {
	if err := clearXattrs(target); err != nil {
		return err
	}
	names, err := listXattrs(src)
	if err != nil {
		return err
	}
	overlay := f.ns + "overlay."
	for _, name := range names {
		dstName := name
		if strings.HasPrefix(name, overlay) {
			sub, escaped := strings.CutPrefix(name, overlay+"overlay.")
			if !escaped {
				continue
			}
			dstName = overlay + sub
		}
		val, err := getXattr(src, name)
		if err != nil {
			return err
		}
		if err := unix.Lsetxattr(target, dstName, val, 0); err != nil {
			if f.rootless && errors.Is(err, unix.EPERM) {
				continue
			}
			return &os.PathError{Op: "setxattr " + dstName, Path: target, Err: err}
		}
	}
	if !f.rootless {
		if err := os.Lchown(target, int(st.Uid), int(st.Gid)); err != nil {
			return err
		}
	}
	if fi.Mode()&fs.ModeSymlink != 0 || fi.IsDir() {
		return nil // a directory's mode is set by flatten, last
	}
	// After chown, which clears setuid and setgid.
	return unix.Fchmodat(unix.AT_FDCWD, target, st.Mode&0o7777, 0)
}

func copyFile(src, dst string) error {
	in, err := os.OpenFile(src, os.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return err
	}
	if err := copyData(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// copyData copies in's content to out, both at offset 0, region by region
// of data (SEEK_DATA, SEEK_HOLE): a sparse file's holes stay holes in the
// copy, as they are in the layer. Each region goes through io.Copy between
// files, which uses copy_file_range: no pass through user space, and a
// reflink where the filesystem has them. Where the filesystem cannot say
// where data is, it is copied whole.
func copyData(out, in *os.File) error {
	fi, err := in.Stat()
	if err != nil {
		return err
	}
	size := fi.Size()
	for off := int64(0); off < size; {
		data, err := unix.Seek(int(in.Fd()), off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break // only a hole is left
		}
		if err != nil {
			if off > 0 {
				return &os.PathError{Op: "seek data", Path: in.Name(), Err: err}
			}
			if _, err := in.Seek(0, io.SeekStart); err != nil {
				return err
			}
			_, err := io.Copy(out, in)
			return err
		}
		hole, err := unix.Seek(int(in.Fd()), data, unix.SEEK_HOLE)
		if err != nil {
			return &os.PathError{Op: "seek hole", Path: in.Name(), Err: err}
		}
		if _, err := in.Seek(data, io.SeekStart); err != nil {
			return err
		}
		if _, err := out.Seek(data, io.SeekStart); err != nil {
			return err
		}
		if _, err := io.CopyN(out, in, hole-data); err != nil {
			return err
		}
		off = hole
	}
	return out.Truncate(size)
}

func listXattrs(path string) ([]string, error) {
	size, err := unix.Llistxattr(path, nil)
	if err != nil || size == 0 {
		if errors.Is(err, unix.ENOTSUP) {
			err = nil
		}
		return nil, wrapPath("listxattr", path, err)
	}
	buf := make([]byte, size)
	n, err := unix.Llistxattr(path, buf)
	if err != nil {
		return nil, wrapPath("listxattr", path, err)
	}
	var names []string
	for _, name := range strings.Split(string(buf[:n]), "\x00") {
		if name != "" {
			names = append(names, name)
		}
	}
	return names, nil
}

func getXattr(path, name string) ([]byte, error) {
	size, err := unix.Lgetxattr(path, name, nil)
	if err != nil {
		return nil, wrapPath("getxattr "+name, path, err)
	}
	buf := make([]byte, size)
	n, err := unix.Lgetxattr(path, name, buf)
	if err != nil {
		return nil, wrapPath("getxattr "+name, path, err)
	}
	return buf[:n], nil
}

func clearXattrs(path string) error {
	names, err := listXattrs(path)
	if err != nil {
		return err
	}
	for _, name := range names {
		if err := unix.Lremovexattr(path, name); err != nil && !errors.Is(err, unix.ENODATA) {
			return wrapPath("removexattr "+name, path, err)
		}
	}
	return nil
}

func wrapPath(op, path string, err error) error {
	if err == nil {
		return nil
	}
	return &os.PathError{Op: op, Path: path, Err: err}
}

func timesOf(st *syscall.Stat_t) [2]unix.Timespec {
	return [2]unix.Timespec{
		{Sec: st.Atim.Sec, Nsec: st.Atim.Nsec},
		{Sec: st.Mtim.Sec, Nsec: st.Mtim.Nsec},
	}
}
