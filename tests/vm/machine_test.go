package vm

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// helperEnv makes this test binary, run again by TestMachineStopsWithTest,
// boot a guest and then fail ("fail") or wait to be killed ("kill").
const helperEnv = "GUEST_PULLER_VM_HELPER"

// TestMachineStopsWithTest checks that a guest's QEMU and swtpm end with
// the test that started them when it does not end well: a test failing
// midway, whose cleanups kill them by pid while the binary goes on to its
// next test, and a test binary killed outright, as go test's -timeout
// does, whose children the kernel kills (their parent-death signal). Both
// are this test binary run again, booting a guest that never answers;
// nothing of theirs may outlive them: no process, no mount, no loop device
// on their files.
func TestMachineStopsWithTest(t *testing.T) {
	run := func(mode string) {
		t.Run(mode, func(t *testing.T) {
			// The helper's temporary files (its TPM state, QEMU's sockets)
			// go here; a short path, as unix sockets need.
			tmp, err := os.MkdirTemp("", "vmh-")
			if err != nil {
				t.Fatal(err)
			}
			defer os.RemoveAll(tmp)
			mounts := mountsUnder(t, tmp)

			self, err := os.Executable()
			if err != nil {
				t.Fatal(err)
			}
			cmd := exec.Command(self, "-test.run=^TestMachineHelper$", "-test.v", "-test.count=1")
			cmd.Env = append(os.Environ(), helperEnv+"="+mode, "TMPDIR="+tmp, AccelEnv+"=tcg")
			var out bytes.Buffer
			pr, pw, err := os.Pipe()
			if err != nil {
				t.Fatal(err)
			}
			cmd.Stdout, cmd.Stderr = pw, pw
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			pw.Close()
			pids := make(chan []int, 1)
			failed := make(chan struct{}, 1)
			lines := make(chan struct{})
			go func() {
				defer close(lines)
				re := regexp.MustCompile(`vm: qemu pid (\d+), swtpm pid (\d+)`)
				sc := bufio.NewScanner(pr)
				for sc.Scan() {
					out.WriteString(sc.Text() + "\n")
					if m := re.FindStringSubmatch(sc.Text()); m != nil {
						q, _ := strconv.Atoi(m[1])
						s, _ := strconv.Atoi(m[2])
						pids <- []int{q, s}
					}
					if strings.Contains(sc.Text(), helperFailed) {
						failed <- struct{}{}
					}
				}
			}()
			var started []int
			select {
			case started = <-pids:
			case <-time.After(2 * time.Minute):
				cmd.Process.Kill()
			}
			check := func() {
				for _, pid := range started {
					if name := waitGone(pid, 10*time.Second); name != "" {
						t.Errorf("%s (pid %d) outlived the helper's %s", name, pid, mode)
						syscall.Kill(pid, syscall.SIGKILL)
					}
				}
			}
			if started != nil && mode == "fail" {
				select {
				case <-failed:
					// The test failed; the binary lives on.
					check()
				case <-time.After(2 * time.Minute):
					t.Errorf("the helper's test did not fail")
				}
			}
			// What go test's -timeout does (and the end of the failed
			// helper): the binary ends, no cleanup runs.
			cmd.Process.Kill()
			err = cmd.Wait()
			<-lines
			if started == nil {
				t.Fatalf("the helper never started its guest: %v\n%s", err, out.String())
			}
			if mode == "fail" && !strings.Contains(out.String(), "guest did not come up within") {
				t.Errorf("the helper's test did not fail midway\n%s", out.String())
			}
			if ee, ok := err.(*exec.ExitError); !ok || !ee.Sys().(syscall.WaitStatus).Signaled() {
				t.Errorf("the helper was not killed: %v", err)
			}
			check()
			if after := mountsUnder(t, tmp); after != mounts {
				t.Errorf("mounts under %s: %q before the helper, %q after", tmp, mounts, after)
			}
			if loops := loopsOn(tmp); len(loops) != 0 {
				t.Errorf("loop devices left on the helper's files: %v", loops)
			}
			if t.Failed() {
				t.Logf("helper output:\n%s", out.String())
			}
		})
	}
	run("fail")
	run("kill")
}

// TestMachineHelper is the guest TestMachineStopsWithTest fails or kills;
// run by itself, without helperEnv, it does nothing.
func TestMachineHelper(t *testing.T) {
	mode := os.Getenv(helperEnv)
	if mode == "" {
		return
	}
	dir := t.TempDir()
	b := NewInitramfs()
	b.CopyFile("bin/busybox", "/bin/busybox", 0o755)
	b.File("init", []byte("#!/bin/busybox sh\nexec /bin/busybox sleep 3600\n"), 0o755)
	initramfs := filepath.Join(dir, "initramfs.cpio")
	if err := b.WriteFile(initramfs); err != nil {
		t.Fatal(err)
	}
	state := filepath.Join(dir, "tpm")
	if err := os.Mkdir(state, 0o700); err != nil {
		t.Fatal(err)
	}
	cfg := Config{Kernel: kernel, Initramfs: initramfs, MemoryMiB: 256, CPUs: 1, TPMState: state}
	if mode == "kill" {
		Boot(t, cfg) // killed while it waits for the agent
		return
	}
	// The guest never answers: Boot fails the test midway. The binary
	// lives on, as it does to run the next test, and is killed once
	// TestMachineStopsWithTest has looked.
	t.Run("boot", func(t *testing.T) {
		cfg.BootTimeout = 2 * time.Second
		Boot(t, cfg)
	})
	t.Log(helperFailed)
	time.Sleep(2 * time.Minute)
}

// helperFailed is what TestMachineHelper says once its test has failed.
const helperFailed = "vm helper: the test failed and its cleanups ran"

// waitGone waits until pid is no longer a QEMU or swtpm process, and
// returns "" then, or its name if it still is one at the deadline.
func waitGone(pid int, timeout time.Duration) string {
	for deadline := time.Now().Add(timeout); ; {
		cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		name := filepath.Base(string(bytes.SplitN(cmdline, []byte{0}, 2)[0]))
		stat, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		zombie := bytes.Contains(stat, []byte(") Z "))
		if err != nil || zombie || (name != "qemu-system-x86_64" && name != "swtpm") {
			return ""
		}
		if time.Now().After(deadline) {
			return name
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// mountsUnder lists the mount points at or below dir.
func mountsUnder(t *testing.T, dir string) string {
	t.Helper()
	data, err := os.ReadFile("/proc/self/mounts")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) > 1 && (f[1] == dir || strings.HasPrefix(f[1], dir+"/")) {
			out = append(out, f[1])
		}
	}
	return strings.Join(out, " ")
}

// loopsOn lists the loop devices whose backing file is below dir.
func loopsOn(dir string) []string {
	files, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	var out []string
	for _, f := range files {
		if b, err := os.ReadFile(f); err == nil && strings.HasPrefix(strings.TrimSpace(string(b)), dir+"/") {
			out = append(out, strings.Split(f, "/")[3])
		}
	}
	return out
}
