package isolate

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"syscall"
)

// mountNSEnv marks a test binary already running in a mount namespace of
// its own (OwnMountNamespace).
const mountNSEnv = "GUEST_PULLER_TEST_MOUNT_NS"

// OwnMountNamespace runs this test binary again, with the same arguments,
// in a mount namespace of its own, and returns its exit code and true for
// TestMain to exit with. Run there (or not as root, where no namespace can
// be made), it returns false, and TestMain runs the tests.
//
// Every mount the tests make, and the processes they start (a pull's
// overlay, a FUSE or loop mount), then lives in that namespace, which the
// kernel takes down with everything mounted in it when the binary and its
// children end, however they end. A test's cleanups unmount what it
// mounted; this covers the binary killed before they run (go test's
// -timeout, a signal), which otherwise leaves mounts under /tmp that no
// one removes. Mounts do not propagate out (the namespace's mounts are
// private), so the host's /proc/mounts never shows them.
func OwnMountNamespace() (code int, ran bool) {
	if os.Getenv(mountNSEnv) != "" || os.Geteuid() != 0 {
		return 0, false
	}
	self, err := os.Executable()
	if err != nil {
		fmt.Fprintln(os.Stderr, "testutil: cannot re-run the test binary in a mount namespace:", err)
		return 0, false
	}
	cmd := exec.Command(self, os.Args[1:]...)
	cmd.Env = append(os.Environ(), mountNSEnv+"=1")
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	// Unshareflags CLONE_NEWNS also makes every mount private in the child
	// before it runs; the child dies with this process.
	cmd.SysProcAttr = &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS, Pdeathsig: syscall.SIGKILL}
	err = cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0, true
	case errors.As(err, &ee):
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			fmt.Fprintf(os.Stderr, "testutil: the test binary was killed by %v\n", ws.Signal())
			return 128 + int(ws.Signal()), true
		}
		return ee.ExitCode(), true
	default:
		fmt.Fprintln(os.Stderr, "testutil: cannot re-run the test binary in a mount namespace:", err)
		return 0, false
	}
}

// DieWithTest makes cmd, a helper a test starts (a registry, a daemon, a
// TPM simulator), be killed when the test binary ends, even if the test's
// cleanup never runs: go test's -timeout ends the binary with a panic,
// and a helper left running would hold its port and files for good.
func DieWithTest(cmd *exec.Cmd) {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
}
