// Package testutil starts the real parts integration tests run against
// (Debian's docker-registry, images built with umoci and pushed with skopeo,
// flaky proxies) on loopback ports picked at run time, and stops them when
// the test ends. A missing tool fails the test: scripts/setup installs them.
package testutil

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/guest-puller/guest-puller/internal/testutil/isolate"
)

// Need fails the test unless every tool is on PATH.
func Need(t testing.TB, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is not installed (run scripts/setup): %v", tool, err)
		}
	}
}

// FreePort returns a loopback TCP port that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// Registry is a running docker-registry.
type Registry struct {
	// Host is 127.0.0.1:PORT.
	Host string
	// Storage is the registry's filesystem storage root.
	Storage string
	// User and Password are set when the registry requires them.
	User, Password string
}

// RegistryOptions configure StartRegistry.
type RegistryOptions struct {
	// User and Password turn on htpasswd authentication.
	User, Password string
}

// StartRegistry runs Debian's docker-registry on a free loopback port with
// its storage in a temporary directory.
func StartRegistry(t testing.TB, opts RegistryOptions) *Registry {
	t.Helper()
	Need(t, "docker-registry")
	dir := t.TempDir()
	r := &Registry{Storage: filepath.Join(dir, "storage"), User: opts.User, Password: opts.Password}
	var auth string
	if opts.User != "" {
		Need(t, "htpasswd")
		htpasswd := filepath.Join(dir, "htpasswd")
		out, err := exec.Command("htpasswd", "-Bbn", opts.User, opts.Password).Output()
		if err != nil {
			t.Fatalf("htpasswd: %v", err)
		}
		if err := os.WriteFile(htpasswd, out, 0o600); err != nil {
			t.Fatal(err)
		}
		auth = fmt.Sprintf("auth:\n  htpasswd:\n    realm: test-realm\n    path: %s\n", htpasswd)
	}
	var cmd *exec.Cmd
	var logs bytes.Buffer
	for attempt := 0; ; attempt++ {
		port := FreePort(t)
		r.Host = fmt.Sprintf("127.0.0.1:%d", port)
		cfg := fmt.Sprintf(`version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: %s
  delete:
    enabled: true
http:
  addr: %s
%s`, r.Storage, r.Host, auth)
		cfgPath := filepath.Join(dir, "config.yml")
		if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
			t.Fatal(err)
		}
		logs.Reset()
		cmd = exec.Command("docker-registry", "serve", cfgPath)
		isolate.DieWithTest(cmd)
		cmd.Stdout, cmd.Stderr = &logs, &logs
		if err := cmd.Start(); err != nil {
			t.Fatalf("start docker-registry: %v", err)
		}
		if err := waitHTTP(r.Host, 10*time.Second); err == nil {
			break
		} else if attempt == 3 {
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatalf("docker-registry did not start: %v\n%s", err, logs.String())
		}
		cmd.Process.Kill() // the port was taken in between: try another
		cmd.Wait()
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	return r
}

func waitHTTP(host string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		resp, err := http.Get("http://" + host + "/v2/")
		if err == nil {
			resp.Body.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return err
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// BlobPath is where the registry stores the blob with this digest.
func (r *Registry) BlobPath(digest string) string {
	algo, hex, _ := strings.Cut(digest, ":")
	return filepath.Join(r.Storage, "docker/registry/v2/blobs", algo, hex[:2], hex, "data")
}

// CredsFlag is "--dest-creds=USER:PASS" for skopeo, or nothing.
func (r *Registry) credsArgs(flag string) []string {
	if r.User == "" {
		return nil
	}
	return []string{flag + "=" + r.User + ":" + r.Password}
}

// Run runs a command, failing the test with its output if it fails.
func Run(t testing.TB, name string, args ...string) string {
	t.Helper()
	return RunEnv(t, nil, name, args...)
}

// RunEnv is Run with extra environment variables.
func RunEnv(t testing.TB, env []string, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), env...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) || err != nil {
			t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out.String())
		}
	}
	return out.String()
}
