package tests

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/guest-puller/guest-puller/internal/testutil"
)

// TestKBSQuickstart runs docs/kbs-quickstart.md: every ```sh block, in
// order, in one bash with -euo pipefail, in an empty directory, with the
// guest-puller and dev-kbs under test first on PATH. Only the ports change
// (to free ones), so the page cannot drift from what works.
func TestKBSQuickstart(t *testing.T) {
	testutil.Need(t, "bash", "swtpm", "tpm2_readpublic", "docker-registry", "umoci", "curl", "busybox")
	doc, err := os.ReadFile(filepath.Join("..", "docs", "kbs-quickstart.md"))
	if err != nil {
		t.Fatal(err)
	}
	var blocks []string
	for _, m := range regexp.MustCompile("(?s)```sh\n(.*?)```").FindAllStringSubmatch(string(doc), -1) {
		blocks = append(blocks, m[1])
	}
	if len(blocks) < 8 {
		t.Fatalf("docs/kbs-quickstart.md has %d sh blocks; the quickstart has more steps", len(blocks))
	}
	script := "set -euo pipefail\n" + strings.Join(blocks, "\n")

	tpm := adjacentFreePorts(t)
	kbs, reg := testutil.FreePort(t), testutil.FreePort(t)
	for from, to := range map[string]string{
		"127.0.0.1:2321": fmt.Sprintf("127.0.0.1:%d", tpm),
		"port=2321":      fmt.Sprintf("port=%d", tpm),
		"port=2322":      fmt.Sprintf("port=%d", tpm+1),
		"127.0.0.1:8080": fmt.Sprintf("127.0.0.1:%d", kbs),
		"127.0.0.1:5000": fmt.Sprintf("127.0.0.1:%d", reg),
	} {
		if !strings.Contains(script, from) {
			t.Fatalf("the quickstart no longer says %q: update the port substitutions of this test", from)
		}
		script = strings.ReplaceAll(script, from, to)
	}
	for _, port := range []string{"2321", "2322", "8080", "5000"} {
		if regexp.MustCompile(`\b` + port + `\b`).MatchString(script) {
			t.Fatalf("the quickstart names port %s where this test does not substitute it", port)
		}
	}

	dir, err := os.MkdirTemp("", "quickstart-")
	if err != nil {
		t.Fatal(err)
	}
	var cmd *exec.Cmd
	t.Cleanup(func() {
		// The servers the page starts: bash's background jobs share its
		// process group; swtpm --daemon left it.
		if cmd != nil && cmd.Process != nil {
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		}
		if pid, err := os.ReadFile(filepath.Join(dir, "tpm", "swtpm.pid")); err == nil {
			if n, err := strconv.Atoi(strings.TrimSpace(string(pid))); err == nil {
				syscall.Kill(n, syscall.SIGKILL)
			}
		}
		testutil.UnmountUnder(t, dir)
		os.RemoveAll(dir)
	})

	// Output goes to a file, not a pipe: the servers the page leaves
	// running in the background hold bash's stdout, and Wait would wait
	// for them.
	outFile, err := os.CreateTemp("", "quickstart-output-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.Remove(outFile.Name())
	defer outFile.Close()
	binDir := filepath.Dir(bins["guest-puller"])
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd = exec.CommandContext(ctx, "bash", "-c", script)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "PATH="+binDir+":"+os.Getenv("PATH"))
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.Stdout, cmd.Stderr = outFile, outFile
	err = cmd.Run()
	output, _ := os.ReadFile(outFile.Name())
	logs := string(output)
	for _, f := range []string{"kbs.log", "registry.log"} {
		if b, err := os.ReadFile(filepath.Join(dir, f)); err == nil {
			logs += "\n--- " + f + "\n" + string(b)
		}
	}
	if err != nil {
		t.Fatalf("the quickstart failed (%v):\n%s", err, logs)
	}
	if !strings.Contains(string(output), "decrypted\n") {
		t.Errorf("the decrypted image's busybox did not run:\n%s", logs)
	}
}

// adjacentFreePorts picks a free loopback port whose successor is free
// too, as swtpm's server and control ports.
func adjacentFreePorts(t *testing.T) int {
	t.Helper()
	for range 20 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		l2, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port+1))
		l.Close()
		if err == nil {
			l2.Close()
			return port
		}
	}
	t.Fatal("no two adjacent free ports")
	return 0
}
