package faultfs

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

// The FUSE protocol, as far as a filesystem that fails everything needs it
// (include/uapi/linux/fuse.h).
const (
	fuseForget      = 2
	fuseInit        = 26
	fuseInterrupt   = 36
	fuseBatchForget = 42

	fuseInHeaderSize  = 40 // len, opcode, unique, nodeid, uid, gid, pid, extlen, padding
	fuseOutHeaderSize = 16 // len, error, unique
	fuseInitOutSize   = 64
	fuseMaxWrite      = 4096
	// The kernel wants read buffers of at least 8 KiB plus a write's
	// worth of data.
	fuseReadBuffer = 64 << 10
)

// MountEIO mounts at dir (an existing directory) a filesystem whose every
// operation, from the first lookup or stat of its root on, fails with EIO.
// It is unmounted when the test ends.
func MountEIO(t testing.TB, dir string) {
	t.Helper()
	fd, err := unix.Open("/dev/fuse", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("faultfs: open /dev/fuse: %v", err)
	}
	source := "faultfs-" + randomHex(8)
	opts := fmt.Sprintf("fd=%d,rootmode=40000,user_id=0,group_id=0,allow_other", fd)
	if err := unix.Mount(source, dir, "fuse.faultfs", unix.MS_NOSUID|unix.MS_NODEV, opts); err != nil {
		unix.Close(fd)
		t.Fatalf("faultfs: mount fuse at %s: %v", dir, err)
	}
	var wg sync.WaitGroup
	wg.Go(func() { serveEIO(fd) })
	t.Cleanup(func() {
		// Unmounting ends the server's reads with ENODEV; the mount is
		// found by its source, wherever a rename has taken it since.
		unmountSource(t, source)
		wg.Wait()
		unix.Close(fd)
	})
}

// serveEIO answers the kernel's requests on fd: INIT as a filesystem with
// no optional features, anything else that expects an answer with EIO.
func serveEIO(fd int) {
	buf := make([]byte, fuseReadBuffer)
	for {
		n, err := unix.Read(fd, buf)
		switch {
		case errors.Is(err, unix.EINTR), errors.Is(err, unix.EAGAIN), errors.Is(err, unix.ENOENT):
			continue // interrupted, or a request withdrawn
		case err != nil:
			return // ENODEV: unmounted
		case n < fuseInHeaderSize:
			continue
		}
		le := binary.LittleEndian
		opcode, unique := le.Uint32(buf[4:]), le.Uint64(buf[8:])
		var reply []byte
		switch opcode {
		case fuseForget, fuseBatchForget, fuseInterrupt:
			continue // no answer expected
		case fuseInit:
			out := make([]byte, fuseInitOutSize)
			le.PutUint32(out[0:], 7)  // major
			le.PutUint32(out[4:], 31) // minor
			le.PutUint32(out[20:], fuseMaxWrite)
			le.PutUint32(out[24:], 1) // time_gran
			reply = header(unique, 0, out)
		default:
			reply = header(unique, -int32(unix.EIO), nil)
		}
		if _, err := unix.Write(fd, reply); errors.Is(err, unix.ENODEV) {
			return
		}
	}
}

func header(unique uint64, errno int32, payload []byte) []byte {
	b := make([]byte, fuseOutHeaderSize, fuseOutHeaderSize+len(payload))
	le := binary.LittleEndian
	le.PutUint32(b[0:], uint32(fuseOutHeaderSize+len(payload)))
	le.PutUint32(b[4:], uint32(errno))
	le.PutUint64(b[8:], unique)
	return append(b, payload...)
}

// Disk is an ext4 filesystem on a loop device, mounted at a directory.
type Disk struct {
	t      testing.TB
	dir    string
	image  string
	device string
}

// NewDisk makes an ext4 filesystem of size bytes (in an image file in a
// temporary directory), attaches it to a loop device and mounts it at dir,
// an existing directory. The filesystem has no journal, so that what is
// written goes straight to its place on the device. It is unmounted and
// detached when the test ends.
func NewDisk(t testing.TB, dir string, size int64) *Disk {
	t.Helper()
	d := &Disk{t: t, dir: dir, image: filepath.Join(t.TempDir(), "disk.img")}
	if err := os.WriteFile(d.image, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(d.image, size); err != nil {
		t.Fatal(err)
	}
	run(t, "mkfs.ext4", "-q", "-F", "-O", "^has_journal", d.image)
	d.device = strings.TrimSpace(run(t, "losetup", "--find", "--show", d.image))
	source := d.device
	t.Cleanup(func() {
		unmountSource(t, source)
		if out, err := exec.Command("losetup", "--detach", d.device).CombinedOutput(); err != nil {
			t.Errorf("faultfs: losetup --detach %s: %v: %s", d.device, err, out)
		}
	})
	if err := unix.Mount(d.device, dir, "ext4", 0, ""); err != nil {
		t.Fatalf("faultfs: mount %s at %s: %v", d.device, dir, err)
	}
	return d
}

// FailNewBlocks makes every block not in use now unwritable: it writes
// everything out, then cuts the device short at the first free block.
// What is on the disk still reads back; the first write of a block
// allocated from now on (a new file's data, at fsync or syncfs) fails
// with EIO.
func (d *Disk) FailNewBlocks() {
	t := d.t
	t.Helper()
	f, err := os.Open(d.dir)
	if err != nil {
		t.Fatal(err)
	}
	err = unix.Syncfs(int(f.Fd()))
	f.Close()
	if err != nil {
		t.Fatalf("faultfs: syncfs %s: %v", d.dir, err)
	}
	// The block bitmaps on the device are current after the sync.
	out := run(t, "dumpe2fs", d.device)
	blockSize, first := int64(0), int64(-1)
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if v, ok := strings.CutPrefix(line, "Block size:"); ok {
			blockSize, _ = strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		}
		if v, ok := strings.CutPrefix(line, "Free blocks: "); ok && first < 0 && v != "" && v[0] >= '0' && v[0] <= '9' {
			first, _ = strconv.ParseInt(strings.FieldsFunc(v, func(r rune) bool { return r == '-' || r == ',' })[0], 10, 64)
		}
	}
	if blockSize == 0 || first <= 0 {
		t.Fatalf("faultfs: no block size or free block in dumpe2fs %s", d.device)
	}
	if err := os.Truncate(d.image, first*blockSize); err != nil {
		t.Fatal(err)
	}
	run(t, "losetup", "--set-capacity", d.device)
}

// unmountSource lazily unmounts every mount of source, wherever it is now.
func unmountSource(t testing.TB, source string) {
	t.Helper()
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Errorf("faultfs: %v", err)
		return
	}
	for _, line := range strings.Split(string(data), "\n") {
		// ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS [OPTIONAL…] - TYPE SOURCE SUPER
		pre, post, ok := strings.Cut(line, " - ")
		if !ok {
			continue
		}
		fields, tail := strings.Fields(pre), strings.Fields(post)
		if len(fields) < 5 || len(tail) < 2 || tail[1] != source {
			continue
		}
		mp := unescape(fields[4])
		if err := unix.Unmount(mp, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
			t.Errorf("faultfs: unmount %s: %v", mp, err)
		}
	}
}

func unescape(s string) string {
	return strings.NewReplacer(`\040`, " ", `\011`, "\t", `\012`, "\n", `\134`, `\`).Replace(s)
}

func run(t testing.TB, name string, args ...string) string {
	t.Helper()
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("faultfs: %s %s: %v: %s", name, strings.Join(args, " "), err, stderr.String())
	}
	return stdout.String()
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}
