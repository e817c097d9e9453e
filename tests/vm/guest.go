package vm

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
)

// GuestModules are the modules every guest loads, besides what the Debian
// kernel has built in (serial console, TPM TIS, tmpfs, devtmpfs):
// virtio for the disk and network, device-mapper with dm-crypt and
// dm-integrity and the ciphers of the sealed store (AES-XTS with
// HMAC-SHA256, composed by authenc; the kernel would ask modprobe, which a
// guest without modules.dep lacks), ext4, and overlay for bundles.
var GuestModules = []string{
	"virtio_pci", "virtio_net", "virtio_blk",
	"dm_mod", "dm_crypt", "dm_integrity",
	"xts", "authenc", "aesni_intel", "sha256_ssse3", "crc32c_intel",
	"ext4", "overlay",
}

// BuildStatic builds the module's command pkg (like "./cmd/guest-puller")
// as a static binary for the guest (CGO_ENABLED=0) into dir.
func BuildStatic(dir, pkg string) (string, error) {
	_, file, _, _ := runtime.Caller(0)
	root := filepath.Join(filepath.Dir(file), "..", "..")
	out := filepath.Join(dir, filepath.Base(pkg))
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", out, pkg)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build %s: %v\n%s", pkg, err, b)
	}
	return out, nil
}

// NewGuest returns the initramfs every test guest starts from: init, a
// static busybox, the kernel's modules (GuestModules in dependency order),
// cryptsetup and mke2fs with their shared libraries, and the static
// guest-puller (also installed as /usr/local/bin/confidential-data-hub,
// where kata-agent starts the CDH) and vmguest binaries. A test adds its
// inputs, and /etc/vmtest/start for what the guest's init should start.
func NewGuest(k *Kernel, guestPuller, vmguest string) (*Initramfs, error) {
	b := NewInitramfs()
	b.File("init", initScript, 0o755)
	for _, d := range []string{"proc", "sys", "dev", "run", "tmp", "etc", "root", "mnt"} {
		b.Dir(d, 0o755)
	}
	b.CharDevice("dev/console", 0o600, 5, 1)
	b.CopyFile("bin/busybox", "/bin/busybox", 0o755)
	b.Symlink("bin/sh", "busybox")

	mods, err := k.Modules(GuestModules...)
	if err != nil {
		return nil, err
	}
	var order []string
	for _, p := range mods {
		name := filepath.Base(p)
		b.CopyFile("lib/modules/"+name, p, 0o644)
		order = append(order, name)
	}
	b.File("lib/modules/order", []byte(strings.Join(order, "\n")+"\n"), 0o644)

	for name, src := range map[string]string{"usr/sbin/cryptsetup": "/usr/sbin/cryptsetup", "usr/sbin/mke2fs": "/usr/sbin/mke2fs"} {
		if err := b.Program(name, src); err != nil {
			return nil, fmt.Errorf("%w (run scripts/setup)", err)
		}
	}
	b.Symlink("usr/sbin/mkfs.ext4", "mke2fs")
	b.CopyFile("etc/mke2fs.conf", "/etc/mke2fs.conf", 0o644)

	b.CopyFile("usr/local/bin/guest-puller", guestPuller, 0o755)
	b.Symlink("usr/local/bin/confidential-data-hub", "guest-puller")
	b.CopyFile("usr/local/bin/vmguest", vmguest, 0o755)
	return b, nil
}
