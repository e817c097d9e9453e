package vm

import (
	"bufio"
	"debug/elf"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
)

// Initramfs is the file tree of a guest's initramfs, written as an
// uncompressed newc cpio archive (the kernel unpacks it without a
// decompressor, which under TCG saves seconds of boot).
type Initramfs struct {
	entries map[string]cpioEntry
}

type cpioEntry struct {
	mode   uint32    // type and permission bits
	rdev   [2]uint32 // a device node's major and minor
	data   []byte    // regular file content, or a symlink's target
	source string    // regular file content from this host file instead
}

// File types in cpio's mode field.
const (
	cpioDir     = 0o040000
	cpioRegular = 0o100000
	cpioSymlink = 0o120000
	cpioCharDev = 0o020000
)

// NewInitramfs returns an empty tree.
func NewInitramfs() *Initramfs {
	return &Initramfs{entries: map[string]cpioEntry{}}
}

// Dir adds a directory and its parents.
func (b *Initramfs) Dir(name string, perm os.FileMode) {
	name = clean(name)
	if name == "" {
		return
	}
	b.Dir(path.Dir(name), 0o755)
	if _, ok := b.entries[name]; !ok {
		b.entries[name] = cpioEntry{mode: cpioDir | uint32(perm.Perm())}
	}
}

// File adds a file with the given content.
func (b *Initramfs) File(name string, data []byte, perm os.FileMode) {
	name = clean(name)
	b.Dir(path.Dir(name), 0o755)
	b.entries[name] = cpioEntry{mode: cpioRegular | uint32(perm.Perm()), data: data}
}

// CopyFile adds the host file src (symlinks followed) as name.
func (b *Initramfs) CopyFile(name, src string, perm os.FileMode) {
	name = clean(name)
	b.Dir(path.Dir(name), 0o755)
	b.entries[name] = cpioEntry{mode: cpioRegular | uint32(perm.Perm()), source: src}
}

// Symlink adds a symbolic link.
func (b *Initramfs) Symlink(name, target string) {
	name = clean(name)
	b.Dir(path.Dir(name), 0o755)
	b.entries[name] = cpioEntry{mode: cpioSymlink | 0o777, data: []byte(target)}
}

// CharDevice adds a character device node, for the few the kernel needs
// before init can mount devtmpfs (/dev/console).
func (b *Initramfs) CharDevice(name string, perm os.FileMode, major, minor uint32) {
	name = clean(name)
	b.Dir(path.Dir(name), 0o755)
	b.entries[name] = cpioEntry{mode: cpioCharDev | uint32(perm.Perm()), rdev: [2]uint32{major, minor}}
}

// libDirs are where the guest's dynamic loader looks without an
// ld.so.cache (Debian's multiarch defaults), and where libraries are
// looked up on the host.
var libDirs = []string{"/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib"}

// Program adds the host executable src as name, with its ELF interpreter
// and every shared library it needs, transitively.
func (b *Initramfs) Program(name, src string) error {
	b.CopyFile(name, src, 0o755)
	seen := map[string]bool{}
	var add func(file string) error
	add = func(file string) error {
		f, err := elf.Open(file)
		if err != nil {
			return fmt.Errorf("initramfs: %s: %w", file, err)
		}
		defer f.Close()
		for _, p := range f.Progs {
			if p.Type != elf.PT_INTERP {
				continue
			}
			interp, err := io.ReadAll(p.Open())
			if err != nil {
				return fmt.Errorf("initramfs: %s: interpreter: %w", file, err)
			}
			ip := strings.TrimRight(string(interp), "\x00")
			if !seen[ip] {
				seen[ip] = true
				b.CopyFile(ip, ip, 0o755)
			}
		}
		needed, err := f.ImportedLibraries()
		if err != nil {
			return fmt.Errorf("initramfs: %s: %w", file, err)
		}
		for _, lib := range needed {
			if seen[lib] {
				continue
			}
			seen[lib] = true
			found := ""
			for _, d := range libDirs {
				if _, err := os.Stat(filepath.Join(d, lib)); err == nil {
					found = filepath.Join(d, lib)
					break
				}
			}
			if found == "" {
				return fmt.Errorf("initramfs: %s needs %s, which is in none of %v", file, lib, libDirs)
			}
			b.CopyFile(path.Join(libDirs[0], lib), found, 0o755)
			if err := add(found); err != nil {
				return err
			}
		}
		return nil
	}
	return add(src)
}

// WriteFile writes the archive to file.
func (b *Initramfs) WriteFile(file string) (err error) {
	f, err := os.Create(file)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}()
	w := bufio.NewWriterSize(f, 1<<20)
	names := make([]string, 0, len(b.entries))
	for n := range b.entries {
		names = append(names, n)
	}
	slices.Sort(names) // parents before their children
	for i, n := range names {
		if err := b.writeEntry(w, uint32(i+1), n, b.entries[n]); err != nil {
			return fmt.Errorf("initramfs %s: %w", n, err)
		}
	}
	if err := writeCpioHeader(w, 0, "TRAILER!!!", 0, 0, [2]uint32{}); err != nil {
		return err
	}
	return w.Flush()
}

func (b *Initramfs) writeEntry(w io.Writer, ino uint32, name string, e cpioEntry) error {
	var body io.Reader = strings.NewReader(string(e.data))
	size := int64(len(e.data))
	if e.source != "" {
		src, err := os.Open(e.source)
		if err != nil {
			return err
		}
		defer src.Close()
		fi, err := src.Stat()
		if err != nil {
			return err
		}
		body, size = src, fi.Size()
	}
	if size > 1<<32-1 {
		return fmt.Errorf("%d bytes is too large for cpio", size)
	}
	if err := writeCpioHeader(w, ino, name, e.mode, uint32(size), e.rdev); err != nil {
		return err
	}
	if n, err := io.Copy(w, body); err != nil || n != size {
		return fmt.Errorf("copied %d of %d bytes: %v", n, size, err)
	}
	return pad4(w, size)
}

// writeCpioHeader writes a newc header and the name.
func writeCpioHeader(w io.Writer, ino uint32, name string, mode, size uint32, rdev [2]uint32) error {
	nlink := uint32(1)
	if mode&0o170000 == cpioDir {
		nlink = 2
	}
	_, err := fmt.Fprintf(w, "070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%s\x00",
		ino, mode, 0, 0, nlink, 0, size, 0, 0, rdev[0], rdev[1], len(name)+1, 0, name)
	if err != nil {
		return err
	}
	return pad4(w, int64(110+len(name)+1))
}

func pad4(w io.Writer, n int64) error {
	if r := n % 4; r != 0 {
		_, err := w.Write(make([]byte, 4-r))
		return err
	}
	return nil
}

// clean makes name relative to the archive root ("/bin/sh" -> "bin/sh").
func clean(name string) string {
	name = strings.TrimPrefix(path.Clean("/"+name), "/")
	return name
}
