package securemount

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// mapperOn reports whether /dev/mapper/name is open on dev (sysfs: the
// crypt device's stack reaches dev). A name in use on another device is
// an error: it is not ours to take.
func mapperOn(name, dev string) (bool, error) {
	var st unix.Stat_t
	if err := unix.Stat("/dev/mapper/"+name, &st); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return false, nil
		}
		return false, fmt.Errorf("sealed store: /dev/mapper/%s: %w", name, err)
	}
	var dst unix.Stat_t
	if err := unix.Stat(dev, &dst); err != nil {
		return false, fmt.Errorf("sealed store %s: %w", dev, err)
	}
	if lower, ok := lowest(st.Rdev); ok && lower == dst.Rdev {
		return true, nil
	}
	return false, fmt.Errorf("sealed store %s: /dev/mapper/%s is already open on another device", dev, name)
}

// lowest follows a device-mapper device's slaves down to the device at
// the bottom of its stack (crypt over integrity over the disk).
func lowest(rdev uint64) (uint64, bool) {
	for range 8 {
		dir := fmt.Sprintf("/sys/dev/block/%d:%d/slaves", unix.Major(rdev), unix.Minor(rdev))
		names, err := os.ReadDir(dir)
		if err != nil || len(names) == 0 {
			return rdev, true
		}
		if len(names) != 1 {
			return 0, false
		}
		data, err := os.ReadFile(filepath.Join(dir, names[0].Name(), "dev"))
		if err != nil {
			return 0, false
		}
		var maj, min uint32
		if _, err := fmt.Sscanf(strings.TrimSpace(string(data)), "%d:%d", &maj, &min); err != nil {
			return 0, false
		}
		rdev = unix.Mkdev(maj, min)
	}
	return 0, false
}

// mountedFrom reports whether mountPoint is the root of a mount of dev.
func mountedFrom(mountPoint, dev string) (bool, error) {
	var mst, dst unix.Stat_t
	if err := unix.Stat(mountPoint, &mst); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return false, nil
		}
		return false, fmt.Errorf("sealed store: %s: %w", mountPoint, err)
	}
	if err := unix.Stat(dev, &dst); err != nil {
		return false, fmt.Errorf("sealed store: %s: %w", dev, err)
	}
	if mst.Dev != dst.Rdev {
		return false, nil
	}
	var parent unix.Stat_t
	if err := unix.Stat(filepath.Dir(mountPoint), &parent); err != nil {
		return false, err
	}
	return parent.Dev != mst.Dev || parent.Ino == mst.Ino, nil
}

// Describe tells whether path is on a sealed store, and which: the
// filesystem holding path is on a LUKS2 crypt device (device-mapper uuid
// CRYPT-LUKS2-…), whose stack is followed down to the host's device. It
// returns nil for any other filesystem.
func Describe(path string) (*Store, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	sys := fmt.Sprintf("/sys/dev/block/%d:%d/dm", unix.Major(st.Dev), unix.Minor(st.Dev))
	uuid, err := os.ReadFile(filepath.Join(sys, "uuid"))
	if err != nil || !strings.HasPrefix(string(uuid), "CRYPT-LUKS2-") {
		return nil, nil
	}
	name, err := os.ReadFile(filepath.Join(sys, "name"))
	if err != nil {
		return nil, err
	}
	s := &Store{Mapper: "/dev/mapper/" + strings.TrimSpace(string(name)), MountPoint: mountPointOf(st.Dev)}
	// A crypt device over an integrity device is authenticated.
	slaves, _ := os.ReadDir(filepath.Join(sys, "..", "slaves"))
	for _, sl := range slaves {
		u, _ := os.ReadFile(filepath.Join(sys, "..", "slaves", sl.Name(), "dm", "uuid"))
		if strings.HasPrefix(string(u), "CRYPT-INTEGRITY-") {
			s.Integrity = integrityAlg
		}
	}
	if low, ok := lowest(st.Dev); ok {
		s.Device = deviceName(low)
	}
	return s, nil
}

// deviceName is /dev/<kernel name> of a block device number.
func deviceName(rdev uint64) string {
	data, err := os.ReadFile(fmt.Sprintf("/sys/dev/block/%d:%d/uevent", unix.Major(rdev), unix.Minor(rdev)))
	if err == nil {
		for _, line := range strings.Split(string(data), "\n") {
			if v, ok := strings.CutPrefix(line, "DEVNAME="); ok {
				return "/dev/" + v
			}
		}
	}
	return fmt.Sprintf("%d:%d", unix.Major(rdev), unix.Minor(rdev))
}

// mountPointOf is the first mount point of the filesystem dev in this
// mount namespace ("" if none).
func mountPointOf(dev uint64) string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return ""
	}
	defer f.Close()
	want := fmt.Sprintf("%d:%d", unix.Major(dev), unix.Minor(dev))
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 4 && fields[2] == want && fields[3] == "/" {
			return fields[4]
		}
	}
	return ""
}
