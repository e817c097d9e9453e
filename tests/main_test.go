// Package tests holds guest-puller's integration tests: the real binary
// against Debian's docker-registry, images built with umoci and pushed,
// converted, encrypted and signed with skopeo, cosign and gpg, swtpm as the
// TPM and dev-kbs as the Key Broker Service, all started by the tests on
// loopback ports picked at run time.
package tests

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/guest-puller/guest-puller/internal/testutil"
	"github.com/guest-puller/guest-puller/internal/testutil/isolate"
)

// bins are the commands built once for all tests.
var bins map[string]string

func TestMain(m *testing.M) {
	if code, ran := isolate.OwnMountNamespace(); ran {
		os.Exit(code)
	}
	dir, err := os.MkdirTemp("", "guest-puller-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	bins, err = testutil.BuildCommands(dir, "./cmd/guest-puller", "./cmd/dev-kbs", "./cmd/cdh-client")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// env is one test's world: a cache directory whose mounts are undone at
// the end, and a policy.
type env struct {
	t     *testing.T
	cache string
	dir   string
}

func newEnv(t *testing.T) *env {
	t.Helper()
	dir := t.TempDir()
	e := &env{t: t, dir: dir, cache: filepath.Join(dir, "cache")}
	t.Cleanup(func() { testutil.UnmountUnder(t, dir) })
	return e
}

// write puts content in a file of the env's directory and returns its path.
func (e *env) write(name, content string) string {
	e.t.Helper()
	p := filepath.Join(e.dir, name)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		e.t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		e.t.Fatal(err)
	}
	return p
}

const acceptAll = `{"default":[{"type":"insecureAcceptAnything"}]}`

// gp runs guest-puller with the env's cache, given to the commands that
// have one.
func (e *env) gp(args ...string) testutil.Result {
	e.t.Helper()
	return testutil.Exec(e.t, nil, bins["guest-puller"], e.withCache(args)...)
}

// withCache adds the env's cache to the commands that take one.
func (e *env) withCache(args []string) []string {
	if len(args) > 0 && (args[0] == "pull" || args[0] == "serve" || args[0] == "cache") {
		args = append(args, "--cache", e.cache)
	}
	return args
}

// pull runs `guest-puller pull --json` and decodes the result; it fails the
// test unless the pull succeeded.
func (e *env) pull(image string, args ...string) pullResult {
	e.t.Helper()
	r := e.gp(append([]string{"pull", image, "--json", "--quiet"}, args...)...)
	if r.Code != 0 {
		e.t.Fatalf("pull %s: exit %d: %s", image, r.Code, r.Stderr)
	}
	var res pullResult
	if err := json.Unmarshal([]byte(r.Stdout), &res); err != nil {
		e.t.Fatalf("pull --json output: %v\n%s", err, r.Stdout)
	}
	return res
}

// pullFails runs a pull that must fail with the exit code want, with an
// error message that is one line on stderr; it returns the message.
func (e *env) pullFails(want int, image string, args ...string) string {
	e.t.Helper()
	r := e.gp(append([]string{"pull", image, "--quiet"}, args...)...)
	if r.Code != want {
		e.t.Fatalf("pull %s: exit %d, want %d; stderr: %s", image, r.Code, want, r.Stderr)
	}
	msg := strings.TrimSpace(r.Stderr)
	if strings.Count(msg, "\n") != 0 || !strings.HasPrefix(msg, "guest-puller: ") {
		e.t.Errorf("error is not one line starting with 'guest-puller: ': %q", msg)
	}
	if rep := repeatedContext(msg); len(rep) > 0 {
		e.t.Errorf("error says %q more than once: %s", rep, msg)
	}
	if r.Stdout != "" {
		e.t.Errorf("a failed pull printed on stdout: %q", r.Stdout)
	}
	return msg
}

type pullResult struct {
	Image          string `json:"image"`
	ManifestDigest string `json:"manifestDigest"`
	ConfigDigest   string `json:"configDigest"`
	Bundle         string `json:"bundle"`
	Rootfs         string `json:"rootfs"`
	RootfsType     string `json:"rootfsType"`
	Layers         []struct {
		Digest    string `json:"digest"`
		DiffID    string `json:"diffID"`
		MediaType string `json:"mediaType"`
		Encrypted bool   `json:"encrypted"`
		Cached    bool   `json:"cached"`
	} `json:"layers"`
	Policy struct {
		Scope        string `json:"scope"`
		Requirements []struct {
			Type   string `json:"type"`
			OK     bool   `json:"ok"`
			Reason string `json:"reason"`
		} `json:"requirements"`
	} `json:"policy"`
	Signatures []struct {
		KeyName  string `json:"keyName"`
		KeyID    string `json:"keyID"`
		Verified bool   `json:"verified"`
		// A keyless signature's signer.
		Issuer  string `json:"issuer"`
		Subject string `json:"subject"`
		Serial  string `json:"serial"`
	} `json:"signatures"`
}

// cacheListing is `guest-puller cache ls --json`.
type cacheListing struct {
	Images []struct {
		Ref            string `json:"ref"`
		ManifestDigest string `json:"manifestDigest"`
	} `json:"images"`
	Layers []struct {
		DiffID string `json:"diffID"`
		Size   int64  `json:"size"`
	} `json:"layers"`
	Bundles []struct {
		ID      string `json:"id"`
		Dir     string `json:"dir"`
		Removed bool   `json:"removed"`
	} `json:"bundles"`
	Store struct {
		Root   string `json:"root"`
		Sealed bool   `json:"sealed"`
		Device string `json:"device"`
	} `json:"store"`
}

func (e *env) cacheLs() cacheListing {
	e.t.Helper()
	r := e.gp("cache", "ls", "--json")
	if r.Code != 0 {
		e.t.Fatalf("cache ls: exit %d: %s", r.Code, r.Stderr)
	}
	var l cacheListing
	if err := json.Unmarshal([]byte(r.Stdout), &l); err != nil {
		e.t.Fatalf("cache ls --json: %v\n%s", err, r.Stdout)
	}
	return l
}
