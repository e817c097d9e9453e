package securemount

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/guest-puller/guest-puller/internal/errdefs"
)

// KeySize is the length of the keys this package makes.
const KeySize = 32

// Options say what to mount.
type Options struct {
	// Device is the block device (a path such as /dev/vda).
	Device string
	// Name is the device-mapper name (/dev/mapper/<Name>).
	Name string
	// MountPoint is where the filesystem is mounted; "" exposes only the
	// device (/dev/mapper/<Name>).
	MountPoint string
	// Key unlocks the store. Nil makes a fresh key for a new store; that
	// store cannot be opened again once the guest forgets the key.
	Key []byte
	// Persistent opens the store already on Device if there is one (Key
	// is then required) instead of formatting the device anew.
	Persistent bool
	// NoIntegrity leaves out dm-integrity: confidentiality only, as
	// CDH's dataIntegrity=false asks.
	NoIntegrity bool
	// Ext4 shapes the filesystem a new store gets (CDH's mkfsOpts).
	Ext4 Ext4Options
}

// Ext4Options are the parts of a new store's ext4 a caller may choose:
// what kata-agent asks of the confidential-data-hub in mkfsOpts. None of
// them can make mke2fs read a block it did not write (see the package doc).
type Ext4Options struct {
	// NoJournal makes ext4 without a journal (-O ^has_journal).
	NoJournal bool
	// ReservedPercent is the share of blocks kept for root (-m); nil
	// keeps mke2fs's default.
	ReservedPercent *int
	// BytesPerInode (-i) and InodeSize (-I); 0 keeps mke2fs's default.
	BytesPerInode int
	InodeSize     int
	// UUID is the filesystem's UUID (-U); "" lets mke2fs pick one.
	UUID string
}

// args are mke2fs's arguments for o, besides the ones every store gets.
func (o Ext4Options) args() (features string, args []string) {
	if o.NoJournal {
		features = ",^has_journal"
	}
	if o.ReservedPercent != nil {
		args = append(args, "-m", strconv.Itoa(*o.ReservedPercent))
	}
	if o.BytesPerInode != 0 {
		args = append(args, "-i", strconv.Itoa(o.BytesPerInode))
	}
	if o.InodeSize != 0 {
		args = append(args, "-I", strconv.Itoa(o.InodeSize))
	}
	if o.UUID != "" {
		args = append(args, "-U", o.UUID)
	}
	return features, args
}

// Store is a mounted sealed store.
type Store struct {
	// Device is the host's block device, Mapper the opened plaintext one.
	Device string `json:"device"`
	Mapper string `json:"mapper"`
	// MountPoint is where its filesystem is mounted ("" for none).
	MountPoint string `json:"mountPoint,omitempty"`
	// Integrity is dm-integrity's algorithm ("" when off).
	Integrity string `json:"integrity,omitempty"`
	// Formatted is true when this Mount made the store; false when it
	// opened one or found it mounted already.
	Formatted bool `json:"-"`
}

// integrityAlg is cryptsetup's spelling of the integrity used.
const integrityAlg = "hmac-sha256"

// Mount formats (or, when Persistent and present, opens) opts.Device and
// mounts its filesystem. A store already open under opts.Name on that
// device and mounted at opts.MountPoint is returned as it is, so a second
// process uses the store the first made.
func Mount(ctx context.Context, opts Options) (*Store, error) {
	if err := checkName(opts.Name); err != nil {
		return nil, err
	}
	if err := checkBlockDevice(opts.Device); err != nil {
		return nil, err
	}
	key := opts.Key
	if key == nil {
		if opts.Persistent {
			return nil, fmt.Errorf("sealed store %s: %w: a persistent store needs a key", opts.Device, errdefs.ErrInvalidConfig)
		}
		key = make([]byte, KeySize)
		if _, err := rand.Read(key); err != nil {
			return nil, err
		}
		defer clear(key)
	}
	st := &Store{Device: opts.Device, Mapper: "/dev/mapper/" + opts.Name, MountPoint: opts.MountPoint}
	if !opts.NoIntegrity {
		st.Integrity = integrityAlg
	}

	open, err := mapperOn(opts.Name, opts.Device)
	if err != nil {
		return nil, err
	}
	if !open {
		format := true
		if opts.Persistent {
			format = !isLUKS(ctx, opts.Device)
		}
		if format {
			if err := luksFormat(ctx, opts.Device, key, !opts.NoIntegrity); err != nil {
				return nil, err
			}
			st.Formatted = true
		}
		if err := luksOpen(ctx, opts.Device, opts.Name, key, !opts.NoIntegrity); err != nil {
			return nil, err
		}
		if st.Formatted && opts.MountPoint != "" {
			if err := mkfs(ctx, st.Mapper, opts.Ext4); err != nil {
				luksClose(ctx, opts.Name)
				return nil, err
			}
		}
	}
	if opts.MountPoint == "" {
		return st, nil
	}
	if mounted, err := mountedFrom(opts.MountPoint, st.Mapper); err != nil || mounted {
		return st, err
	}
	if err := os.MkdirAll(opts.MountPoint, 0o700); err != nil {
		return nil, fmt.Errorf("sealed store: %w", err)
	}
	if err := unix.Mount(st.Mapper, opts.MountPoint, "ext4", 0, ""); err != nil {
		if !open {
			luksClose(ctx, opts.Name)
		}
		return nil, fmt.Errorf("sealed store %s: mount %s at %s: %w", opts.Device, st.Mapper, opts.MountPoint, err)
	}
	return st, nil
}

// MountCache mounts the sealed store on device as the layer cache at
// root: formatted with a fresh key when key is nil, else opened when the
// device holds a store already (formatted otherwise). A new store's root
// is made what a new cache is: an empty directory only root reads.
func MountCache(ctx context.Context, device, root string, key []byte) (*Store, error) {
	name := "guest-puller-" + strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' {
			return r
		}
		return '_'
	}, filepath.Base(device))
	if key != nil && len(key) < KeySize {
		return nil, fmt.Errorf("sealed store %s: %w: a key of %d bytes, want at least %d", device, errdefs.ErrInvalidConfig, len(key), KeySize)
	}
	st, err := Mount(ctx, Options{Device: device, Name: name, MountPoint: root, Key: key, Persistent: key != nil})
	if err != nil || !st.Formatted {
		return st, err
	}
	if err := InitCacheRoot(root); err != nil {
		return nil, fmt.Errorf("sealed store %s: %w", device, err)
	}
	return st, nil
}

// InitCacheRoot makes the root of a filesystem just made what a new layer
// cache is: an empty directory only root reads (mkfs leaves lost+found and
// mode 0755, which unpack.Open refuses for a cache).
func InitCacheRoot(root string) error {
	if err := os.Remove(filepath.Join(root, "lost+found")); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return os.Chmod(root, 0o700)
}

// Unmount unmounts the store's filesystem (if mounted) and closes its
// device-mapper device.
func Unmount(ctx context.Context, st *Store) error {
	if st.MountPoint != "" {
		if err := unix.Unmount(st.MountPoint, 0); err != nil && !errors.Is(err, unix.EINVAL) {
			return fmt.Errorf("sealed store: unmount %s: %w", st.MountPoint, err)
		}
	}
	return luksClose(ctx, filepath.Base(st.Mapper))
}

func checkName(name string) error {
	if name == "" || len(name) > 100 || strings.ContainsAny(name, "/\x00") || name == "." || name == ".." || name == "control" {
		return fmt.Errorf("sealed store: %w: device-mapper name %q", errdefs.ErrInvalidConfig, name)
	}
	return nil
}

func checkBlockDevice(dev string) error {
	var st unix.Stat_t
	if err := unix.Stat(dev, &st); err != nil {
		return fmt.Errorf("sealed store %s: %w: %w", dev, errdefs.ErrInvalidConfig, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFBLK {
		return fmt.Errorf("sealed store %s: %w: not a block device", dev, errdefs.ErrInvalidConfig)
	}
	return nil
}

// run runs a storage tool with stdin and returns its combined output.
func run(ctx context.Context, stdin []byte, name string, args ...string) error {
	path, err := exec.LookPath(name)
	if err != nil {
		return fmt.Errorf("sealed store: %s is required: %w", name, err)
	}
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.Stdin = bytes.NewReader(stdin)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		msg := strings.Join(strings.Fields(out.String()), " ")
		if len(msg) > 400 {
			msg = msg[:400] + "…"
		}
		return &toolError{tool: name, op: args[0], err: err, msg: msg}
	}
	return nil
}

type toolError struct {
	tool, op string
	err      error
	msg      string
}

func (e *toolError) Error() string {
	return fmt.Sprintf("%s %s: %v: %s", e.tool, e.op, e.err, e.msg)
}

func (e *toolError) Unwrap() error { return e.err }

// exitCode is the tool's exit status, or -1.
func (e *toolError) exitCode() int {
	var ee *exec.ExitError
	if errors.As(e.err, &ee) {
		return ee.ExitCode()
	}
	return -1
}

func isLUKS(ctx context.Context, dev string) bool {
	return run(ctx, nil, "cryptsetup", "isLuks", "--type", "luks2", dev) == nil
}

func luksFormat(ctx context.Context, dev string, key []byte, integrity bool) error {
	args := []string{"luksFormat", "--batch-mode", "--type", "luks2",
		"--cipher", "aes-xts-plain64", "--key-size", "512", "--sector-size", "4096",
		"--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", "--key-file", "-"}
	if integrity {
		args = append(args, "--integrity", integrityAlg, "--integrity-no-wipe")
	}
	if err := run(ctx, key, "cryptsetup", append(args, dev)...); err != nil {
		return fmt.Errorf("sealed store %s: format: %w", dev, err)
	}
	return nil
}

func luksOpen(ctx context.Context, dev, name string, key []byte, integrity bool) error {
	args := []string{"open", "--type", "luks2", "--key-file", "-"}
	if integrity {
		args = append(args, "--integrity-no-journal")
	}
	err := run(ctx, key, "cryptsetup", append(args, dev, name)...)
	var te *toolError
	if errors.As(err, &te) && te.exitCode() == 2 {
		// cryptsetup: "No key available with this passphrase".
		return fmt.Errorf("sealed store %s: %w: the key does not open it", dev, errdefs.ErrDecrypt)
	}
	if err != nil {
		return fmt.Errorf("sealed store %s: open: %w", dev, err)
	}
	return nil
}

func luksClose(ctx context.Context, name string) error {
	if _, err := os.Stat("/dev/mapper/" + name); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err := run(ctx, nil, "cryptsetup", "close", name); err != nil {
		return fmt.Errorf("sealed store: close %s: %w", name, err)
	}
	return nil
}

// mkfs makes ext4 on a freshly formatted device without reading a block
// that was never written (see the package doc).
func mkfs(ctx context.Context, dev string, ext4 Ext4Options) error {
	f, err := os.OpenFile(dev, os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("sealed store: %w", err)
	}
	size, err := f.Seek(0, 2)
	if err == nil {
		zero := make([]byte, 1<<20)
		if _, err = f.WriteAt(zero, 0); err == nil && size > 2<<20 {
			_, err = f.WriteAt(zero, size-int64(len(zero)))
		}
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("sealed store: initialize %s: %w", dev, err)
	}
	features, extra := ext4.args()
	args := append([]string{"-t", "ext4", "-q", "-F", "-O", "sparse_super2" + features,
		"-E", "num_backup_sb=0,nodiscard,lazy_itable_init=0,lazy_journal_init=0"}, extra...)
	if err := run(ctx, nil, "mke2fs", append(args, dev)...); err != nil {
		return fmt.Errorf("sealed store: %w", err)
	}
	return nil
}
