package securemount

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/guest-puller/guest-puller/internal/errdefs"
	"github.com/guest-puller/guest-puller/internal/untrusted"
)

// CDHMountRoot is where kata-agent asks for secure mounts (its trusted
// image storage is /run/kata-containers/image): a SecureMount request
// names a mount point below it or is refused.
const CDHMountRoot = "/run/kata-containers"

// CDHRequest is a SecureMountService request, as the confidential-data-hub
// takes it (guest-components' secure-mount-with-block-device.md).
type CDHRequest struct {
	VolumeType string
	Options    map[string]string
	Flags      []string
	MountPoint string
}

// KeyFunc returns the key a SecureMount request names: "kbs:///…",
// "sealed.…" (a sealed secret) or "file://…".
type KeyFunc func(ctx context.Context, uri string) ([]byte, error)

// cdhOptions are the options of the block-device volume type; anything
// else is refused.
var cdhOptions = map[string]bool{
	"deviceId": true, "devicePath": true, "sourceType": true, "targetType": true,
	"encryptionType": true, "key": true, "dataIntegrity": true, "filesystemType": true,
	"mapperName": true, "mkfsOpts": true,
}

var mapperNamePattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$`)

// ServeCDH serves one SecureMountService request with the code of the
// sealed layer store. Its options are untrusted input (the host writes
// the pod spec kata-agent forwards): only the block-device volume type with
// LUKS2, a block device of the guest's (not a device-mapper device) and a
// mount point below CDHMountRoot are taken; every other option is refused.
// mkfsOpts, which CDH passes to mkfs verbatim, is read as the few ext4
// choices kata-agent makes there (parseMkfsOpts).
func ServeCDH(ctx context.Context, req CDHRequest, keys KeyFunc) (*Store, error) {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("secure mount: %w: %s", errdefs.ErrInvalidConfig, fmt.Sprintf(format, args...))
	}
	if req.VolumeType != "block-device" {
		return nil, bad("volume_type %q: only \"block-device\" is served", req.VolumeType)
	}
	if len(req.Flags) != 0 {
		return nil, bad("flags %q: the block-device volume type takes none", req.Flags)
	}
	o := req.Options
	for k := range o {
		if !cdhOptions[k] {
			return nil, bad("option %q is not one of the block-device options", k)
		}
	}
	if o["encryptionType"] != "luks2" {
		return nil, bad("encryptionType %q: only \"luks2\" is served", o["encryptionType"])
	}
	integrity := false
	switch o["dataIntegrity"] {
	case "", "false":
	case "true":
		integrity = true
	default:
		return nil, bad("dataIntegrity %q: want \"true\" or \"false\"", o["dataIntegrity"])
	}
	persistent := false
	switch o["sourceType"] {
	case "empty":
	case "encrypted":
		persistent = true
	default:
		return nil, bad("sourceType %q: want \"empty\" or \"encrypted\"", o["sourceType"])
	}
	fileSystem := false
	switch o["targetType"] {
	case "device":
	case "fileSystem":
		fileSystem = true
		if fs := o["filesystemType"]; fs != "ext4" {
			return nil, bad("filesystemType %q: only \"ext4\" is served", fs)
		}
	default:
		return nil, bad("targetType %q: want \"device\" or \"fileSystem\"", o["targetType"])
	}
	mp, err := checkMountPoint(req.MountPoint)
	if err != nil {
		return nil, err
	}
	ext4, err := parseMkfsOpts(o["mkfsOpts"])
	if err != nil {
		return nil, err
	}
	if !fileSystem && o["mkfsOpts"] != "" {
		return nil, bad("mkfsOpts with targetType \"device\": no filesystem is made")
	}
	name := o["mapperName"]
	if name == "" {
		var b [8]byte
		rand.Read(b[:])
		name = "cdh-" + hex.EncodeToString(b[:])
	} else if !mapperNamePattern.MatchString(name) {
		return nil, bad("mapperName %q: want 1-64 of [A-Za-z0-9_.-]", name)
	}
	dev, err := cdhDevice(o["deviceId"], o["devicePath"])
	if err != nil {
		return nil, err
	}

	opts := Options{Device: dev, Name: name, NoIntegrity: !integrity, Persistent: persistent, Ext4: ext4}
	if fileSystem {
		opts.MountPoint = mp
	}
	if uri := o["key"]; uri != "" {
		key, err := keys(ctx, uri)
		if err != nil {
			return nil, fmt.Errorf("secure mount: key %s: %w", uri, err)
		}
		defer clear(key)
		if len(key) == 0 {
			return nil, bad("key %s is empty", uri)
		}
		opts.Key = key
	} else if persistent {
		return nil, bad("sourceType \"encrypted\" needs a key")
	}
	if persistent && !isLUKS(ctx, dev) {
		return nil, fmt.Errorf("secure mount: %w: sourceType \"encrypted\", but %s holds no LUKS2 store", errdefs.ErrInvalidConfig, dev)
	}
	st, err := Mount(ctx, opts)
	if err != nil {
		return nil, err
	}
	if !fileSystem {
		// The device itself, by a symlink at the mount point, as CDH does.
		if err := os.MkdirAll(filepath.Dir(mp), 0o755); err == nil {
			err = os.Symlink(st.Mapper, mp)
		}
		if err != nil {
			Unmount(ctx, st)
			return nil, fmt.Errorf("secure mount: %w", err)
		}
		st.MountPoint = ""
	}
	return st, nil
}

// checkMountPoint accepts a clean absolute path below CDHMountRoot whose
// existing part resolves, symlinks followed, below it too, and returns it
// without the one trailing slash it may have (kata-agent asks for
// "/run/kata-containers/image/").
func checkMountPoint(mp string) (string, error) {
	if len(mp) > 1 {
		mp = strings.TrimSuffix(mp, "/")
	}
	if !filepath.IsAbs(mp) || filepath.Clean(mp) != mp || !strings.HasPrefix(mp, CDHMountRoot+"/") {
		return "", fmt.Errorf("secure mount: %w: mount_point %q is not a clean path below %s", errdefs.ErrInvalidConfig, mp, CDHMountRoot)
	}
	p := mp
	for {
		if real, err := filepath.EvalSymlinks(p); err == nil {
			if real != CDHMountRoot && !strings.HasPrefix(real, CDHMountRoot+"/") {
				return "", fmt.Errorf("secure mount: %w: mount_point %q leads outside %s (to %s)", errdefs.ErrInvalidConfig, mp, CDHMountRoot, real)
			}
			return mp, nil
		}
		if p == CDHMountRoot || p == "/" {
			return mp, nil
		}
		p = filepath.Dir(p)
	}
}

// cdhDevice finds the block device a request names by number (deviceId,
// "MAJ:MIN", preferred as CDH prefers it) or path, and refuses anything
// but a disk or partition of the guest's.
func cdhDevice(id, path string) (string, error) {
	var rdev uint64
	switch {
	case id != "":
		var maj, min uint32
		if n, err := fmt.Sscanf(id, "%d:%d", &maj, &min); err != nil || n != 2 || fmt.Sprintf("%d:%d", maj, min) != id {
			return "", fmt.Errorf("secure mount: %w: deviceId %q is not MAJ:MIN", errdefs.ErrInvalidConfig, id)
		}
		rdev = unix.Mkdev(maj, min)
	case path != "":
		if !strings.HasPrefix(filepath.Clean(path), "/dev/") {
			return "", fmt.Errorf("secure mount: %w: devicePath %q is not below /dev", errdefs.ErrInvalidConfig, path)
		}
		var st unix.Stat_t
		if err := unix.Stat(path, &st); err != nil {
			return "", fmt.Errorf("secure mount: %w: devicePath %q: %w", errdefs.ErrInvalidConfig, path, err)
		}
		if st.Mode&unix.S_IFMT != unix.S_IFBLK {
			return "", fmt.Errorf("secure mount: %w: devicePath %q is not a block device", errdefs.ErrInvalidConfig, path)
		}
		rdev = st.Rdev
	default:
		return "", fmt.Errorf("secure mount: %w: neither deviceId nor devicePath is set", errdefs.ErrInvalidConfig)
	}
	sys := fmt.Sprintf("/sys/dev/block/%d:%d", unix.Major(rdev), unix.Minor(rdev))
	if _, err := os.Stat(sys); err != nil {
		return "", fmt.Errorf("secure mount: %w: no block device %d:%d", errdefs.ErrInvalidConfig, unix.Major(rdev), unix.Minor(rdev))
	}
	if _, err := os.Stat(sys + "/dm"); err == nil {
		return "", fmt.Errorf("secure mount: %w: %d:%d is a device-mapper device, not a disk of the guest's", errdefs.ErrInvalidConfig, unix.Major(rdev), unix.Minor(rdev))
	} else if !errors.Is(err, os.ErrNotExist) {
		return "", err
	}
	return deviceName(rdev), nil
}

// uuidPattern is a UUID as mke2fs -U takes it (no "random", "time" or
// "clear": mke2fs picks a random one when none is given).
var uuidPattern = regexp.MustCompile(`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)

// parseMkfsOpts reads CDH's mkfsOpts, which CDH hands to mkfs verbatim, as
// the ext4 choices kata-agent makes there: "-E lazy_journal_init" for its
// trusted image storage; "-O ^has_journal -m 0 -i 163840 -I 128" for
// block emptyDirs; "-U UUID" for a snapshotter's writable layer. Anything
// else is refused: the options are untrusted, and mke2fs has options that
// would read blocks never written (a refusal to mount, on dm-integrity) or
// change what the store is. -E lazy_journal_init and lazy_itable_init are
// taken and overruled: on dm-integrity a journal or inode table left
// unwritten reads back as I/O errors, so the store always writes both.
func parseMkfsOpts(s string) (Ext4Options, error) {
	var o Ext4Options
	bad := func(format string, args ...any) (Ext4Options, error) {
		return Ext4Options{}, fmt.Errorf("secure mount: %w: mkfsOpts %s: %s", errdefs.ErrInvalidConfig, untrusted.Quote(s), fmt.Sprintf(format, args...))
	}
	f := strings.Fields(s)
	if len(f)%2 != 0 {
		return bad("want flag and value pairs")
	}
	number := func(flag, v string, min, max int) (int, error) {
		n, err := strconv.Atoi(v)
		if err != nil || n < min || n > max {
			return 0, fmt.Errorf("%s %s: want a number from %d to %d", flag, untrusted.Quote(v), min, max)
		}
		return n, nil
	}
	for i := 0; i < len(f); i += 2 {
		flag, v := f[i], f[i+1]
		var err error
		switch flag {
		case "-E":
			for _, e := range strings.Split(v, ",") {
				name, val, _ := strings.Cut(e, "=")
				if (name != "lazy_journal_init" && name != "lazy_itable_init") || (val != "" && val != "0" && val != "1") {
					return bad("-E %s: only lazy_journal_init and lazy_itable_init are taken", untrusted.Quote(e))
				}
			}
		case "-O":
			for _, feature := range strings.Split(v, ",") {
				if feature != "^has_journal" {
					return bad("-O %s: only ^has_journal is taken", untrusted.Quote(feature))
				}
				o.NoJournal = true
			}
		case "-m":
			var n int
			if n, err = number(flag, v, 0, 50); err == nil {
				o.ReservedPercent = &n
			}
		case "-i":
			o.BytesPerInode, err = number(flag, v, 1024, 64<<20)
		case "-I":
			if o.InodeSize, err = number(flag, v, 128, 1024); err == nil && o.InodeSize&(o.InodeSize-1) != 0 {
				err = fmt.Errorf("-I %s: want a power of two", untrusted.Quote(v))
			}
		case "-U":
			if !uuidPattern.MatchString(v) {
				err = fmt.Errorf("-U %s: want a UUID", untrusted.Quote(v))
			}
			o.UUID = v
		default:
			return bad("%s: only -E lazy_journal_init, -O ^has_journal, -m, -i, -I and -U are taken", untrusted.Quote(flag))
		}
		if err != nil {
			return bad("%v", err)
		}
	}
	return o, nil
}
