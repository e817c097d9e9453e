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

// The walkthroughs in docs/ are their own tests: every ```sh block of a
// page runs, in order, in one bash with -euo pipefail, in an empty
// directory, with the guest-puller and dev-kbs under test first on PATH.
// Only the ports change (to free ones), so a page cannot drift from what
// works.

// TestGettingStarted runs docs/getting-started.md: plain, encrypted and
// signed pulls, refusals, the cache and the daemon.
func TestGettingStarted(t *testing.T) {
	testutil.Need(t, "bash", "docker-registry", "umoci", "skopeo", "openssl", "curl", "busybox")
	cosign := testutil.Cosign(t)
	out := runDoc(t, "getting-started.md", []string{filepath.Dir(cosign)}, map[string]string{
		"127.0.0.1:5000": fmt.Sprintf("127.0.0.1:%d", testutil.FreePort(t)),
	})
	// What the page says the reader will see.
	for _, want := range []string{
		"pulled into ",
		"the layer is encrypted and no decryption key or KBS is configured; give --decryption-key, or --kbs for a key a KBS releases after attestation\nexit code 4\n",
		"decision:  allowed\n  [ok  ] sigstoreSigned: signed by cosign.pub",
		"no signature by the policy's signers exists\nexit code 3\n",
		"decision:  refused\n  [FAIL] sigstoreSigned",
		"msg=serving",
		// The daemon, through cdh-client as kata-agent calls it: a
		// container pulled, run, unmounted without MNT_DETACH and
		// removed; what it left reclaimed; a refusal's exit code.
		"guest-puller dev, cache ",
		"reclaimed 1 bundles and 0 layers, 17 bytes", // "written by web-1\n"
		"no signature by the policy's signers exists (PermissionDenied)\nexit code 3\n",
		"removed 3 bundles and 1 layers",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("the page's output lacks %q:\n%s", want, out)
		}
	}
}

// TestKBSQuickstart runs docs/kbs-quickstart.md: swtpm, attest ak,
// dev-kbs, guest-puller encrypt, and a pull whose key the KBS hands out
// after a TPM quote.
func TestKBSQuickstart(t *testing.T) {
	testutil.Need(t, "bash", "swtpm", "tpm2_readpublic", "docker-registry", "umoci", "curl", "busybox")
	tpm := adjacentFreePorts(t)
	out := runDoc(t, "kbs-quickstart.md", nil, map[string]string{
		"127.0.0.1:2321": fmt.Sprintf("127.0.0.1:%d", tpm),
		"port=2321":      fmt.Sprintf("port=%d", tpm),
		"port=2322":      fmt.Sprintf("port=%d", tpm+1),
		"127.0.0.1:8080": fmt.Sprintf("127.0.0.1:%d", testutil.FreePort(t)),
		"127.0.0.1:5000": fmt.Sprintf("127.0.0.1:%d", testutil.FreePort(t)),
	})
	if !strings.Contains(out, "decrypted\n") {
		t.Errorf("the decrypted image's busybox did not run:\n%s", out)
	}
}

// runDoc runs the sh blocks of docs/page with ports replaced and path
// first on PATH, and returns their output (stdout and stderr). It fails
// the test if the page fails, and stops whatever the page left running.
func runDoc(t *testing.T, page string, path []string, ports map[string]string) string {
	t.Helper()
	doc, err := os.ReadFile(filepath.Join("..", "docs", page))
	if err != nil {
		t.Fatal(err)
	}
	var blocks []string
	for _, m := range regexp.MustCompile("(?s)```sh\n(.*?)```").FindAllStringSubmatch(string(doc), -1) {
		blocks = append(blocks, m[1])
	}
	if len(blocks) < 5 {
		t.Fatalf("docs/%s has %d sh blocks: not a walkthrough any more?", page, len(blocks))
	}
	script := "set -euo pipefail\n" + strings.Join(blocks, "\n")
	for from, to := range ports {
		if !strings.Contains(script, from) {
			t.Fatalf("docs/%s no longer says %q: update the port substitutions of this test", page, from)
		}
		script = strings.ReplaceAll(script, from, to)
	}
	for from := range ports {
		port := from[strings.LastIndexAny(from, ":=")+1:]
		if regexp.MustCompile(`\b` + port + `\b`).MatchString(script) {
			t.Fatalf("docs/%s names port %s where this test does not replace it", page, port)
		}
	}

	dir, err := os.MkdirTemp("", "doc-")
	if err != nil {
		t.Fatal(err)
	}
	var cmd *exec.Cmd
	t.Cleanup(func() {
		// The servers the page starts: bash's background jobs share its
		// process group; a daemonized swtpm left it and wrote its pid.
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
	outFile, err := os.CreateTemp("", "doc-output-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.Remove(outFile.Name())
	defer outFile.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd = exec.CommandContext(ctx, "bash", "-c", script)
	cmd.Dir = dir
	path = append([]string{filepath.Dir(bins["guest-puller"])}, path...)
	// HOME is the page's directory: what cosign keeps there goes with it.
	cmd.Env = append(os.Environ(), "PATH="+strings.Join(path, ":")+":"+os.Getenv("PATH"), "HOME="+dir)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.Stdout, cmd.Stderr = outFile, outFile
	runErr := cmd.Run()
	output, _ := os.ReadFile(outFile.Name())
	if runErr != nil {
		logs := string(output)
		for _, f := range []string{"kbs.log", "registry.log", "serve.log"} {
			if b, err := os.ReadFile(filepath.Join(dir, f)); err == nil {
				logs += "\n--- " + f + "\n" + string(b)
			}
		}
		t.Fatalf("docs/%s failed (%v):\n%s", page, runErr, logs)
	}
	out := string(output)
	if b, err := os.ReadFile(filepath.Join(dir, "serve.log")); err == nil {
		out += string(b)
	}
	return out
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
