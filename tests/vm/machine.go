package vm

import (
	"bufio"
	"bytes"
	"context"
	_ "embed"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/guest-puller/guest-puller/internal/testutil"
	"github.com/guest-puller/guest-puller/tests/vm/wire"
)

//go:embed init.sh
var initScript []byte

// Config describes one guest.
type Config struct {
	Kernel    *Kernel
	Initramfs string // from Initramfs.WriteFile
	// MemoryMiB is the guest's RAM (default 1024); CPUs its vCPUs (2).
	MemoryMiB int
	CPUs      int
	// Disks are raw disk image files attached as virtio-blk, in order:
	// /dev/vda, /dev/vdb, …
	Disks []string
	// TPMState is a swtpm state directory; the guest gets that TPM as
	// tpm-tis (/dev/tpm0, /dev/tpmrm0). "" means no TPM.
	TPMState string
	// BootTimeout bounds the time until the guest's agent answers
	// (default 3 minutes: TCG on a shared machine).
	BootTimeout time.Duration
}

// Machine is a running guest.
type Machine struct {
	t   testing.TB
	dir string
	// Kernel is the release the guest reported.
	Kernel string

	qemu  *process
	swtpm *process

	conn     net.Conn
	r        *bufio.Reader
	nextID   int
	deadline time.Time // the test's, less time for cleaning up
}

// process is a child the test must kill by pid, whatever happens.
type process struct {
	cmd  *exec.Cmd
	done chan struct{}
	err  error
	once sync.Once
}

func startProcess(cmd *exec.Cmd) (*process, error) {
	// If the test binary dies without running its cleanups (go test's
	// -timeout panics), the kernel kills the child.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &process{cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// exited reports whether the process has ended.
func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// kill stops the process by its pid (never by name) and waits for it:
// SIGTERM first, to let it end cleanly, then SIGKILL. (swtpm loses
// nothing to SIGKILL either: it writes its permanent state at every
// change, to a new file renamed over the old, and its volatile state is
// not carried across a restart of QEMU, which starts the TPM anew.)
func (p *process) kill() {
	p.once.Do(func() {
		if !p.exited() {
			p.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-p.done:
				return
			case <-time.After(5 * time.Second):
			}
			p.cmd.Process.Kill()
		}
		<-p.done
	})
}

// Boot starts swtpm (if asked) and QEMU, and returns once the guest's
// agent has said it is ready. Everything it started is killed when the
// test ends.
func Boot(t testing.TB, cfg Config) *Machine {
	t.Helper()
	if cfg.MemoryMiB == 0 {
		cfg.MemoryMiB = 1024
	}
	if cfg.CPUs == 0 {
		cfg.CPUs = 2
	}
	if cfg.BootTimeout == 0 {
		cfg.BootTimeout = 3 * time.Minute
	}
	// Unix socket paths are short (108 bytes) and swtpm's options cannot
	// hold a comma: a test's own TempDir may be neither.
	dir, err := os.MkdirTemp("", "vm-")
	if err != nil {
		t.Fatal(err)
	}
	m := &Machine{t: t, dir: dir}
	if d, ok := t.(interface{ Deadline() (time.Time, bool) }); ok {
		// Fail, and so clean up, before go test's -timeout panics.
		if dl, ok := d.Deadline(); ok {
			m.deadline = dl.Add(-30 * time.Second)
		}
	}
	t.Cleanup(func() {
		m.stop()
		if t.Failed() {
			t.Logf("guest console (last lines):\n%s", tail(m.Console(), 60))
			if log, err := os.ReadFile(filepath.Join(dir, "swtpm.log")); err == nil && len(log) > 0 {
				t.Logf("swtpm log (last lines):\n%s", tail(string(log), 20))
			}
		}
		os.RemoveAll(dir)
	})

	qemuArgs := []string{
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-machine", "pc", "-cpu", "max",
		"-m", fmt.Sprint(cfg.MemoryMiB), "-smp", fmt.Sprint(cfg.CPUs),
		"-kernel", cfg.Kernel.Image, "-initrd", cfg.Initramfs,
		"-append", "console=ttyS0 loglevel=4 panic=-1",
		"-chardev", "file,id=console,path=" + filepath.Join(dir, "console.log"),
		"-serial", "chardev:console",
		"-chardev", "socket,id=agent,path=" + filepath.Join(dir, "agent.sock"),
		"-serial", "chardev:agent",
		"-netdev", "user,id=net0",
		"-device", "virtio-net-pci,netdev=net0,romfile=",
	}
	accel, why := Accel(cfg.Kernel)
	t.Logf("vm: %s (%s), %d MiB, %d vCPUs, kernel %s", accel, why, cfg.MemoryMiB, cfg.CPUs, cfg.Kernel.Release)
	qemuArgs = append(qemuArgs, "-accel", accel)
	for i, disk := range cfg.Disks {
		id := fmt.Sprintf("disk%d", i)
		qemuArgs = append(qemuArgs,
			"-drive", "file="+disk+",if=none,id="+id+",format=raw,cache=writethrough",
			"-device", "virtio-blk-pci,drive="+id)
	}
	if cfg.TPMState != "" {
		sock := m.startSwtpm(cfg.TPMState)
		qemuArgs = append(qemuArgs,
			"-chardev", "socket,id=tpm,path="+sock,
			"-tpmdev", "emulator,id=tpm0,chardev=tpm",
			"-device", "tpm-tis,tpmdev=tpm0")
	}

	l, err := net.Listen("unix", filepath.Join(dir, "agent.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	qemu := exec.Command("qemu-system-x86_64", qemuArgs...)
	var qemuOut testutil.SyncBuffer
	qemu.Stdout, qemu.Stderr = &qemuOut, &qemuOut
	if m.qemu, err = startProcess(qemu); err != nil {
		t.Fatalf("start qemu (run scripts/setup): %v", err)
	}
	if m.swtpm != nil {
		t.Logf("vm: qemu pid %d, swtpm pid %d", m.qemu.cmd.Process.Pid, m.swtpm.cmd.Process.Pid)
	} else {
		t.Logf("vm: qemu pid %d", m.qemu.cmd.Process.Pid)
	}

	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := l.Accept()
		if err == nil {
			accepted <- c
		}
	}()
	select {
	case m.conn = <-accepted:
	case <-m.qemu.done:
		t.Fatalf("qemu exited at start: %v\n%s", m.qemu.err, qemuOut.String())
	case <-time.After(30 * time.Second):
		t.Fatalf("qemu did not connect the agent's serial port\n%s", qemuOut.String())
	}
	m.r = bufio.NewReaderSize(m.conn, 1<<20)

	start := time.Now()
	var hello wire.Hello
	if err := m.readLine(cfg.BootTimeout, &hello); err != nil || !hello.Ready {
		t.Fatalf("guest did not come up within %v: %v\n%s", cfg.BootTimeout, err, qemuOut.String())
	}
	m.Kernel = hello.Kernel
	t.Logf("vm: guest up after %v", time.Since(start).Round(100*time.Millisecond))
	if cfg.TPMState != "" {
		// A TPM command of the firmware's that failed at boot leaves the
		// TPM's hierarchies disabled for this boot: say that here, not
		// as an AK that seems lost in whatever test comes next.
		if r := m.Run(t, "vmguest", "tpm-hierarchies", "/dev/tpmrm0"); r.Code != 0 {
			t.Fatalf("the guest's TPM is unusable from boot on: %s (SeaBIOS gives TPM2_Startup 750 ms and disables the owner and endorsement hierarchies when a start-up command fails; swtpm was too slow to answer)", strings.TrimSpace(r.Stderr))
		}
	}
	return m
}

// startSwtpm runs swtpm on state for QEMU and returns its control socket.
func (m *Machine) startSwtpm(state string) string {
	m.t.Helper()
	sock := filepath.Join(m.dir, "swtpm.sock")
	cmd := exec.Command("swtpm", "socket", "--tpm2",
		"--tpmstate", "dir="+state,
		"--ctrl", "type=unixio,path="+sock,
		"--log", "file="+filepath.Join(m.dir, "swtpm.log"))
	var out testutil.SyncBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	p, err := startProcess(cmd)
	if err != nil {
		m.t.Fatalf("start swtpm (run scripts/setup): %v", err)
	}
	m.swtpm = p
	for deadline := time.Now().Add(20 * time.Second); ; {
		if _, err := os.Stat(sock); err == nil {
			return sock
		}
		if p.exited() || time.Now().After(deadline) {
			m.t.Fatalf("swtpm did not start: %v\n%s", p.err, out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// readLine reads the agent's next JSON line into v.
func (m *Machine) readLine(timeout time.Duration, v any) error {
	dl := time.Now().Add(timeout)
	if !m.deadline.IsZero() && m.deadline.Before(dl) {
		dl = m.deadline
	}
	m.conn.SetReadDeadline(dl)
	for {
		line, err := m.r.ReadBytes('\n')
		if err != nil {
			return err
		}
		line = bytes.TrimSpace(line)
		if len(line) == 0 || line[0] != '{' {
			continue // noise on the line before the agent started
		}
		return json.Unmarshal(line, v)
	}
}

// RunOptions are the less common parts of a command.
type RunOptions struct {
	Env   []string
	Stdin []byte
	// Timeout bounds the command in the guest (default 3 minutes).
	Timeout time.Duration
}

// Run runs argv in the guest and returns what it did; a command that could
// not run, or a guest that does not answer, fails the test.
func (m *Machine) Run(t testing.TB, argv ...string) testutil.Result {
	t.Helper()
	return m.RunWith(t, RunOptions{}, argv...)
}

// RunWith is Run with options.
func (m *Machine) RunWith(t testing.TB, opts RunOptions, argv ...string) testutil.Result {
	t.Helper()
	if opts.Timeout == 0 {
		opts.Timeout = 3 * time.Minute
	}
	m.nextID++
	req := wire.Request{ID: m.nextID, Argv: argv, Env: opts.Env, Stdin: opts.Stdin, TimeoutSeconds: int(opts.Timeout / time.Second)}
	if err := m.send(req); err != nil {
		t.Fatalf("guest %v: %v", argv, err)
	}
	for {
		var resp wire.Response
		// The guest kills the command at its timeout; allow for the answer.
		if err := m.readLine(opts.Timeout+time.Minute, &resp); err != nil {
			t.Fatalf("guest %v: no answer: %v", argv, err)
		}
		if resp.ID != req.ID {
			continue
		}
		if resp.Error != "" {
			t.Fatalf("guest %v: %s\nstderr: %s", argv, resp.Error, resp.Stderr)
		}
		return testutil.Result{Stdout: string(resp.Stdout), Stderr: string(resp.Stderr), Code: resp.Code}
	}
}

// Sh runs a shell script in the guest with the given arguments ($1…) and
// fails the test unless it succeeds; it returns the script's stdout.
func (m *Machine) Sh(t testing.TB, script string, args ...string) string {
	t.Helper()
	r := m.Run(t, append([]string{"sh", "-c", script, "sh"}, args...)...)
	if r.Code != 0 {
		t.Fatalf("guest: %s %q: exit %d\nstdout: %s\nstderr: %s", script, args, r.Code, r.Stdout, r.Stderr)
	}
	return r.Stdout
}

// WriteFile writes data to a file in the guest.
func (m *Machine) WriteFile(t testing.TB, path string, data []byte) {
	t.Helper()
	m.RunWith(t, RunOptions{Stdin: data}, "sh", "-c", `mkdir -p "$(dirname "$1")" && cat >"$1"`, "sh", path)
}

func (m *Machine) send(req wire.Request) error {
	data, err := json.Marshal(req)
	if err != nil {
		return err
	}
	m.conn.SetWriteDeadline(time.Now().Add(time.Minute))
	_, err = m.conn.Write(append(data, '\n'))
	return err
}

// PowerOff powers the guest off and waits for QEMU to exit, then stops its
// TPM. The guest's page cache is lost, as at a real power cut: sync first
// what must survive.
func (m *Machine) PowerOff(t testing.TB) {
	t.Helper()
	if err := m.send(wire.Request{ID: -1, Argv: []string{"poweroff", "-f"}, TimeoutSeconds: 30}); err != nil {
		t.Errorf("poweroff: %v", err)
	}
	select {
	case <-m.qemu.done:
	case <-time.After(time.Minute):
		t.Errorf("guest did not power off within a minute; killing qemu")
	}
	m.stop()
}

// stop kills QEMU and swtpm by pid (a no-op for those already gone).
func (m *Machine) stop() {
	if m.conn != nil {
		m.conn.Close()
	}
	if m.qemu != nil {
		m.qemu.kill()
	}
	if m.swtpm != nil {
		m.swtpm.kill()
	}
}

// Exited reports whether QEMU and swtpm have both ended.
func (m *Machine) Exited() bool {
	return (m.qemu == nil || m.qemu.exited()) && (m.swtpm == nil || m.swtpm.exited())
}

// Console is the guest's console output (ttyS0) so far.
func (m *Machine) Console() string {
	data, _ := os.ReadFile(filepath.Join(m.dir, "console.log"))
	return string(data)
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// AccelEnv forces QEMU's accelerator ("tcg" or "kvm") instead of detecting.
const AccelEnv = "GUEST_PULLER_VM_ACCEL"

var accelOnce struct {
	sync.Once
	accel, why string
}

// Accel is the accelerator guests boot with: KVM where /dev/kvm can boot
// the kernel, which a short probe boot finds out once per process, and
// TCG otherwise. (Some hosts offer a /dev/kvm that hangs a stock kernel
// early in its boot.)
func Accel(k *Kernel) (accel, why string) {
	accelOnce.Do(func() {
		accelOnce.accel, accelOnce.why = probeAccel(k)
	})
	return accelOnce.accel, accelOnce.why
}

func probeAccel(k *Kernel) (string, string) {
	switch a := os.Getenv(AccelEnv); a {
	case "tcg", "kvm":
		return a, AccelEnv + "=" + a
	case "":
	default:
		return "tcg", fmt.Sprintf("%s=%q is neither tcg nor kvm", AccelEnv, a)
	}
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return "tcg", "no usable /dev/kvm"
	}
	f.Close()
	// Boot the kernel alone: it panics at once for want of a root
	// filesystem, and says so on the console, if KVM can run it.
	const probeTimeout = 6 * time.Second
	ctx, cancel := context.WithTimeout(context.Background(), probeTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "qemu-system-x86_64",
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-accel", "kvm", "-cpu", "host", "-m", "256",
		"-kernel", k.Image, "-append", "console=ttyS0 earlyprintk=serial,ttyS0 panic=-1",
		"-serial", "stdio")
	cmd.WaitDelay = time.Second
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, _ := cmd.Output()
	if bytes.Contains(out, []byte("Linux version")) {
		return "kvm", "a probe boot with KVM reached the kernel"
	}
	return "tcg", fmt.Sprintf("/dev/kvm did not boot the kernel within %v", probeTimeout)
}
