package vm

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/guest-puller/guest-puller/internal/testutil"
	"github.com/guest-puller/guest-puller/internal/testutil/isolate"
)

// The binaries every test uses: static ones for the guest, host ones for
// the test's own side (dev-kbs, the key provider).
var (
	kernel   *Kernel
	guestBin map[string]string // static, for the guest
	hostBin  map[string]string
)

func TestMain(m *testing.M) {
	if code, ran := isolate.OwnMountNamespace(); ran {
		os.Exit(code)
	}
	os.Exit(run(m))
}

func run(m *testing.M) int {
	var err error
	if kernel, err = FindKernel(CacheDir()); err != nil {
		fmt.Fprintln(os.Stderr, "vm:", err)
		return 1
	}
	if os.Getenv(helperEnv) != "" {
		// A guest that TestMachineStopsWithTest fails or kills: it
		// needs no binaries.
		return m.Run()
	}
	// Find out KVM or TCG while the binaries build.
	go Accel(kernel)
	dir, err := os.MkdirTemp("", "guest-puller-vm-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	if err := os.Mkdir(dir+"/guest", 0o755); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	guestBin = map[string]string{}
	for _, pkg := range []string{"./cmd/guest-puller", "./tests/vm/vmguest"} {
		bin, err := BuildStatic(dir+"/guest", pkg)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		guestBin[pkg] = bin
	}
	if hostBin, err = testutil.BuildCommands(dir, "./cmd/guest-puller", "./cmd/dev-kbs"); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	mounts := mountPoints()
	code := m.Run()
	// Nothing the tests started may outlive them, whether they passed or
	// failed (their cleanups run either way): no process, no mount, no
	// loop device. The probe boot of Accel ends first.
	Accel(kernel)
	if left := leftovers(mounts); len(left) > 0 {
		fmt.Fprintf(os.Stderr, "vm: the tests left behind: %s\n", strings.Join(left, "; "))
		code = 1
	}
	return code
}

// mountPoints is the set of this process's mount points.
func mountPoints() map[string]bool {
	data, _ := os.ReadFile("/proc/self/mounts")
	set := map[string]bool{}
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) > 1 {
			set[f[1]] = true
		}
	}
	return set
}

// leftovers lists what the tests left behind: a child process of this
// binary still running, a mount point that was not there before, a loop
// device on a file of a test of this package's (their temporary
// directories are named after them, or vm-* and vmh-* for Boot's and
// TestMachineStopsWithTest's).
func leftovers(mountsBefore map[string]bool) []string {
	var left []string
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, st := range stats {
		data, err := os.ReadFile(st)
		if err != nil {
			continue
		}
		// pid (comm) state ppid …: comm may hold spaces and parentheses.
		i := bytes.LastIndexByte(data, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(data[i+1:]))
		if len(f) > 1 && f[0] != "Z" && f[1] == strconv.Itoa(os.Getpid()) {
			left = append(left, fmt.Sprintf("process %s %s", filepath.Base(filepath.Dir(st)), data[bytes.IndexByte(data, '(')+1:i]))
		}
	}
	for mp := range mountPoints() {
		if !mountsBefore[mp] {
			left = append(left, "mount "+mp)
		}
	}
	files, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		rel, err := filepath.Rel(os.TempDir(), strings.TrimSpace(string(b)))
		if err != nil || strings.HasPrefix(rel, "..") {
			continue
		}
		top := strings.Split(rel, "/")[0]
		for _, p := range []string{"TestGuest", "TestSealedStore", "TestMachine", "TestModulesOrder", "BenchmarkSealedPull", "vm-", "vmh-"} {
			if strings.HasPrefix(top, p) {
				left = append(left, fmt.Sprintf("loop device %s on %s", strings.Split(f, "/")[3], strings.TrimSpace(string(b))))
				break
			}
		}
	}
	return left
}
