package vm

import (
	"fmt"
	"os"
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
	return m.Run()
}
