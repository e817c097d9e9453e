package testutil

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/guest-puller/guest-puller/internal/testutil/isolate"
)

// BuildCommands builds the module's commands (package paths relative to the
// module root, e.g. "./cmd/guest-puller") into dir and returns their paths
// by base name. Call it from TestMain.
func BuildCommands(dir string, pkgs ...string) (map[string]string, error) {
	_, file, _, _ := runtime.Caller(0)
	root := filepath.Join(filepath.Dir(file), "..", "..")
	out := map[string]string{}
	for _, p := range pkgs {
		bin := filepath.Join(dir, filepath.Base(p))
		cmd := exec.Command("go", "build", "-o", bin, p)
		cmd.Dir = root
		if b, err := cmd.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("go build %s: %v\n%s", p, err, b)
		}
		out[filepath.Base(p)] = bin
	}
	return out, nil
}

// Result is what a command did.
type Result struct {
	Stdout, Stderr string
	Code           int
	// PeakRSS is the command's peak resident set size in bytes, when it
	// was run by ExecMeasured.
	PeakRSS int64
}

// MiB formats a byte count for messages about memory.
func MiB(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

// Exec runs bin with args and env, and returns its output and exit code;
// it fails the test only if the command could not run at all.
func Exec(t testing.TB, env []string, bin string, args ...string) Result {
	t.Helper()
	return execCmd(t, env, nil, bin, args...)
}

// ExecMeasured is Exec that also measures the command's peak resident set
// (Result.PeakRSS), with MeasurePeakRSS.
func ExecMeasured(t testing.TB, env []string, bin string, args ...string) Result {
	t.Helper()
	var peak func() int64
	res := execCmd(t, env, func(cmd *exec.Cmd) { peak = MeasurePeakRSS(t, cmd) }, bin, args...)
	res.PeakRSS = peak()
	return res
}

// MeasurePeakRSS makes cmd (not started yet) run under GNU time, and
// returns a func that, once cmd has finished, returns its peak resident
// set size in bytes. The kernel's own figure for a child of a Go process
// (ru_maxrss from wait4) is of no use: the child shares its parent's
// memory until it execs (vfork), and the high-water mark of that memory,
// the test process's own peak, survives the exec. GNU time's child is
// forked from a small process, so its figure is the command's.
func MeasurePeakRSS(t testing.TB, cmd *exec.Cmd) func() int64 {
	t.Helper()
	const gnuTime = "/usr/bin/time"
	Need(t, gnuTime)
	out := filepath.Join(t.TempDir(), "maxrss")
	cmd.Args = append([]string{gnuTime, "-q", "-f", "%M", "-o", out, cmd.Path}, cmd.Args[1:]...)
	cmd.Path = gnuTime
	if cmd.Cancel != nil {
		// A cancelled command kills GNU time and the command together.
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	}
	return func() int64 {
		t.Helper()
		data, err := os.ReadFile(out)
		if err != nil {
			t.Fatalf("peak RSS of %s: %v", cmd.Args[6], err)
		}
		fields := strings.Fields(string(data))
		var kib int64
		if len(fields) == 0 {
			t.Fatalf("peak RSS of %s: GNU time wrote %q", cmd.Args[6], data)
		}
		if _, err := fmt.Sscan(fields[len(fields)-1], &kib); err != nil {
			t.Fatalf("peak RSS of %s: GNU time wrote %q", cmd.Args[6], data)
		}
		return kib << 10
	}
}

func execCmd(t testing.TB, env []string, prepare func(*exec.Cmd), bin string, args ...string) Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	isolate.DieWithTest(cmd)
	cmd.Env = append(os.Environ(), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if prepare != nil {
		prepare(cmd)
	}
	err := cmd.Run()
	res := Result{Stdout: stdout.String(), Stderr: stderr.String()}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		res.Code = ee.ExitCode()
	default:
		t.Fatalf("%s %s: %v", bin, strings.Join(args, " "), err)
	}
	return res
}

// UnmountUnder lazily unmounts every mount at or below dir, deepest first.
// Register it with t.Cleanup after creating dir so it runs before dir is
// removed.
func UnmountUnder(t testing.TB, dir string) {
	t.Helper()
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		t.Errorf("mountinfo: %v", err)
		return
	}
	defer f.Close()
	var mounts []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		mp := unescapeMount(fields[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			mounts = append(mounts, mp)
		}
	}
	sort.Slice(mounts, func(i, j int) bool { return len(mounts[i]) > len(mounts[j]) })
	for _, mp := range mounts {
		if err := unix.Unmount(mp, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
			t.Errorf("unmount %s: %v", mp, err)
		}
	}
}

// Mounts lists the mount points at or below dir.
func Mounts(t testing.TB, dir string) []string {
	t.Helper()
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, line := range strings.Split(string(data), "\n") {
		fields := strings.Fields(line)
		if len(fields) < 5 {
			continue
		}
		mp := unescapeMount(fields[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			out = append(out, mp)
		}
	}
	return out
}

func unescapeMount(s string) string {
	return strings.NewReplacer(`\040`, " ", `\011`, "\t", `\012`, "\n", `\134`, `\`).Replace(s)
}

// SyncBuffer is a bytes.Buffer safe for a process's output goroutines and
// a test reading it at once.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
