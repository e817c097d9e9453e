// Package devkbstest starts the real parts that KBS tests need: a swtpm
// TPM simulator and the dev-kbs binary, each on a loopback port picked at
// run time and stopped when the test ends. A missing tool fails the test; it
// never skips it.
package devkbstest

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/guest-puller/guest-puller/internal/testutil/isolate"
)

const startTimeout = 20 * time.Second

// Swtpm is a running swtpm. Its control port is its command port + 1, as
// the mssim and swtpm TCTIs of tpm2-tools expect.
type Swtpm struct {
	// URI is the command port as mssim://127.0.0.1:PORT.
	URI string
	// TCTI is the TPM2TOOLS_TCTI value for tpm2-tools.
	TCTI string
	stop func()
}

// Stop kills swtpm and waits for it; the test's cleanup does the same for
// a TPM not stopped before.
func (s *Swtpm) Stop() { s.stop() }

// StartSwtpm starts swtpm with a fresh state directory.
func StartSwtpm(t testing.TB) *Swtpm {
	t.Helper()
	return StartSwtpmWithState(t, StateDir(t))
}

// StateDir returns a fresh directory for swtpm state, removed when the test
// ends. (t.TempDir's name follows the test's, and swtpm cannot take a path
// with a comma, as a subtest name may have.)
//
// It is on tmpfs (/dev/shm) where there is one: swtpm writes its state file
// within the TPM command that changes it, and a VM's firmware (SeaBIOS)
// gives TPM2_Startup, which does, 750 ms before it disables the TPM's owner
// and endorsement hierarchies for that boot (the guest then finds no AK:
// "TPM_RC_HIERARCHY"). On a disk the tests are writing gigabytes to, that
// write can wait on the filesystem's journal for longer.
func StateDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp(stateParent(), "swtpm-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// stateParent is /dev/shm when it is a tmpfs, else the temporary
// directory.
func stateParent() string {
	var st unix.Statfs_t
	if err := unix.Statfs("/dev/shm", &st); err == nil && st.Type == unix.TMPFS_MAGIC {
		return "/dev/shm"
	}
	return os.TempDir()
}

// StartSwtpmWithState starts swtpm on stateDir, so a test can restart a TPM
// and find its persistent objects again.
func StartSwtpmWithState(t testing.TB, stateDir string) *Swtpm {
	t.Helper()
	if strings.Contains(stateDir, ",") {
		t.Fatalf("swtpm state directory %q: swtpm options cannot hold a comma", stateDir)
	}
	bin, err := exec.LookPath("swtpm")
	if err != nil {
		t.Fatalf("swtpm is required (apt-get install swtpm): %v", err)
	}
	// The ports are free when picked but not reserved; a start that loses
	// the race exits at once and is retried on new ports.
	var lastErr error
	for attempt := 0; attempt < 10; attempt++ {
		cmdPort, ctrlPort, err := adjacentPorts()
		if err != nil {
			lastErr = err
			continue
		}
		cmd := exec.Command(bin, "socket", "--tpm2",
			"--tpmstate", "dir="+stateDir,
			"--server", fmt.Sprintf("type=tcp,port=%d,bindaddr=127.0.0.1", cmdPort),
			"--ctrl", fmt.Sprintf("type=tcp,port=%d,bindaddr=127.0.0.1", ctrlPort),
			"--flags", "not-need-init,startup-clear",
			"--log", "file="+filepath.Join(stateDir, "swtpm.log"))
		var stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stderr, &stderr
		isolate.DieWithTest(cmd)
		if err := cmd.Start(); err != nil {
			t.Fatalf("start swtpm: %v", err)
		}
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		addr := fmt.Sprintf("127.0.0.1:%d", cmdPort)
		if err := waitListening(addr, exited); err != nil {
			cmd.Process.Kill()
			log, _ := os.ReadFile(filepath.Join(stateDir, "swtpm.log"))
			lastErr = fmt.Errorf("%v: %s %s", err, bytes.TrimSpace(stderr.Bytes()), bytes.TrimSpace(log))
			continue
		}
		var once sync.Once
		stop := func() {
			once.Do(func() {
				cmd.Process.Kill()
				<-exited
			})
		}
		t.Cleanup(stop)
		return &Swtpm{URI: "mssim://" + addr, TCTI: fmt.Sprintf("swtpm:host=127.0.0.1,port=%d", cmdPort), stop: stop}
	}
	t.Fatalf("swtpm did not start: %v", lastErr)
	return nil
}

// adjacentPorts picks a free loopback port whose successor is free too.
func adjacentPorts() (int, int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, 0, fmt.Errorf("pick a port: %w", err)
	}
	defer l.Close()
	port := l.Addr().(*net.TCPAddr).Port
	l2, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port+1))
	if err != nil {
		return 0, 0, fmt.Errorf("port %d: %w", port+1, err)
	}
	l2.Close()
	return port, port + 1, nil
}

func waitListening(addr string, exited <-chan error) error {
	deadline := time.Now().Add(startTimeout)
	for time.Now().Before(deadline) {
		select {
		case err := <-exited:
			return fmt.Errorf("exited early: %v", err)
		default:
		}
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			c.Close()
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("nothing listening on %s after %v", addr, startTimeout)
}

// BuildDevKBS compiles cmd/dev-kbs into a temporary directory and returns
// the binary's path.
func BuildDevKBS(t testing.TB) string {
	t.Helper()
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("the go command is required to build dev-kbs: %v", err)
	}
	out := filepath.Join(t.TempDir(), "dev-kbs")
	cmd := exec.Command(gobin, "build", "-o", out, "github.com/guest-puller/guest-puller/cmd/dev-kbs")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build dev-kbs: %v\n%s", err, b)
	}
	return out
}

// DevKBS is a running dev-kbs process.
type DevKBS struct {
	// URL is the base URL, http(s)://127.0.0.1:PORT.
	URL string
	log *logBuffer
}

// Log returns what dev-kbs has logged so far.
func (k *DevKBS) Log() string { return k.log.String() }

// StartDevKBS runs the dev-kbs binary with args plus --listen
// 127.0.0.1:0 and returns once it serves. It is killed when the test ends.
func StartDevKBS(t testing.TB, bin string, args ...string) *DevKBS {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, bin, append([]string{"--listen", "127.0.0.1:0"}, args...)...)
	isolate.DieWithTest(cmd)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatalf("start dev-kbs: %v", err)
	}
	log := &logBuffer{}
	ready := make(chan string, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			line := sc.Text()
			log.add(line)
			if _, rest, ok := strings.Cut(line, "dev-kbs listening on "); ok && rest != "" {
				select {
				case ready <- strings.Fields(rest)[0]:
				default:
				}
			}
		}
	}()
	t.Cleanup(func() {
		cancel()
		<-done
		cmd.Wait()
	})
	select {
	case url := <-ready:
		return &DevKBS{URL: url, log: log}
	case <-done:
		t.Fatalf("dev-kbs exited before serving:\n%s", log)
	case <-time.After(startTimeout):
		t.Fatalf("dev-kbs did not start within %v:\n%s", startTimeout, log)
	}
	return nil
}

// WriteFile writes data to name in a fresh temporary directory and returns
// the path.
func WriteFile(t testing.TB, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}
