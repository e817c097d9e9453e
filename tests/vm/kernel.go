package vm

import (
	"debug/elf"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// CacheDirEnv names the directory where scripts/setup unpacks the guest
// kernel; DefaultCacheDir is used when it is unset.
const (
	CacheDirEnv     = "GUEST_PULLER_VM_CACHE"
	DefaultCacheDir = "/var/cache/guest-puller/vm"
)

// Kernel is an unpacked Debian linux-image package.
type Kernel struct {
	// Root is where the .deb was unpacked (dpkg-deb -x).
	Root string
	// Release is the kernel release, like 6.1.0-57-amd64.
	Release string
	// Image is the bootable kernel (boot/vmlinuz-<release>).
	Image string

	modules map[string]string // module name (with '_') -> .ko path
}

// CacheDir is the directory scripts/setup fills.
func CacheDir() string {
	if d := os.Getenv(CacheDirEnv); d != "" {
		return d
	}
	return DefaultCacheDir
}

// FindKernel opens the kernel scripts/setup unpacked under dir: dir/current
// links to the unpacked package.
func FindKernel(dir string) (*Kernel, error) {
	root, err := filepath.EvalSymlinks(filepath.Join(dir, "current"))
	if err != nil {
		return nil, fmt.Errorf("no guest kernel under %s (run scripts/setup): %w", dir, err)
	}
	images, _ := filepath.Glob(filepath.Join(root, "boot", "vmlinuz-*"))
	if len(images) != 1 {
		return nil, fmt.Errorf("guest kernel %s: want one boot/vmlinuz-*, found %d (run scripts/setup)", root, len(images))
	}
	k := &Kernel{Root: root, Image: images[0], Release: strings.TrimPrefix(filepath.Base(images[0]), "vmlinuz-"), modules: map[string]string{}}
	modDir := filepath.Join(root, "lib", "modules", k.Release)
	err = filepath.WalkDir(modDir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && strings.HasSuffix(p, ".ko") {
			k.modules[moduleName(strings.TrimSuffix(d.Name(), ".ko"))] = p
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("guest kernel modules: %w", err)
	}
	return k, nil
}

// moduleName is the kernel's spelling of a module name: '-' and '_' are
// the same to it.
func moduleName(s string) string { return strings.ReplaceAll(s, "-", "_") }

// Modules returns the .ko files that load the named modules, each after
// the modules it depends on (the "depends" of its .modinfo: the .deb ships
// no modules.dep, since depmod runs at install). Modules built into the
// kernel are not files and need no loading: naming one is an error, so a
// typo does not pass silently.
func (k *Kernel) Modules(names ...string) ([]string, error) {
	var order []string
	state := map[string]int{} // 1: visiting, 2: done
	var visit func(name, from string) error
	visit = func(name, from string) error {
		name = moduleName(name)
		switch state[name] {
		case 1:
			return fmt.Errorf("module %s: dependency cycle", name)
		case 2:
			return nil
		}
		path, ok := k.modules[name]
		if !ok {
			return fmt.Errorf("module %s (needed by %s) is not in %s", name, from, k.Root)
		}
		state[name] = 1
		deps, err := moduleDepends(path)
		if err != nil {
			return err
		}
		for _, d := range deps {
			if err := visit(d, name); err != nil {
				return err
			}
		}
		state[name] = 2
		order = append(order, path)
		return nil
	}
	for _, n := range names {
		if err := visit(n, "the test"); err != nil {
			return nil, err
		}
	}
	return order, nil
}

// moduleDepends reads the "depends=" entry of a module's .modinfo section.
func moduleDepends(path string) ([]string, error) {
	f, err := elf.Open(path)
	if err != nil {
		return nil, fmt.Errorf("module %s: %w", path, err)
	}
	defer f.Close()
	sec := f.Section(".modinfo")
	if sec == nil {
		return nil, fmt.Errorf("module %s: no .modinfo section", path)
	}
	data, err := sec.Data()
	if err != nil {
		return nil, fmt.Errorf("module %s: %w", path, err)
	}
	for _, kv := range strings.Split(string(data), "\x00") {
		if v, ok := strings.CutPrefix(kv, "depends="); ok {
			if v == "" {
				return nil, nil
			}
			return strings.Split(v, ","), nil
		}
	}
	return nil, errors.New("module " + path + ": .modinfo has no depends entry")
}
