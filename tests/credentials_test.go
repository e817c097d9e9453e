package tests

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/guest-puller/guest-puller/api/agentpb"
	"github.com/guest-puller/guest-puller/api/cdhpb"
	"github.com/guest-puller/guest-puller/internal/testutil"
)

// snoop is a registry host the attacker runs: it asks every client for
// basic credentials and writes down each Authorization header it gets.
type snoop struct {
	host string

	mu       sync.Mutex
	requests int
	auths    []string
}

func startSnoop(t *testing.T) *snoop {
	t.Helper()
	s := &snoop{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		s.requests++
		if a := r.Header.Get("Authorization"); a != "" {
			s.auths = append(s.auths, a)
		}
		s.mu.Unlock()
		w.Header().Set("WWW-Authenticate", `Basic realm="snoop"`)
		http.Error(w, `{"errors":[{"code":"UNAUTHORIZED"}]}`, http.StatusUnauthorized)
	}))
	t.Cleanup(srv.Close)
	s.host = strings.TrimPrefix(srv.URL, "http://")
	return s
}

func (s *snoop) seen() (requests int, auths []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.requests, append([]string(nil), s.auths...)
}

// sawCreds reports whether any Authorization header carried user:pass.
func (s *snoop) sawCreds(user, pass string) bool {
	_, auths := s.seen()
	want := "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pass))
	for _, a := range auths {
		if a == want {
			return true
		}
	}
	return false
}

// TestCredentialsBoundToTheirRegistry (issue 8, hole 4): credentials given
// for one pull (--creds, kata's source_creds) go to the registry the
// request names and to nowhere else: not to a registries.conf mirror the
// guest tries first (a different registry, which a host may run), which
// gets no credentials and is passed over. The daemon refuses credentials
// meant for every request (a config file's "creds"): the host picks the
// image name, so it would pick where they go.
func TestCredentialsBoundToTheirRegistry(t *testing.T) {
	const user, pass = "bound", "B0und-To-Its-Registry"
	private := testutil.StartRegistry(t, testutil.RegistryOptions{User: user, Password: pass})
	private.Push(t, testutil.BuildImage(t, smallImage(t, "bound")), "team/app:1")
	mirror := startSnoop(t)
	e := newEnv(t)
	conf := e.write("registries.conf", fmt.Sprintf(`
[[registry]]
prefix = "registry.example.com"
location = %q
insecure = true

[[registry.mirror]]
location = %q
insecure = true
`, private.Host, mirror.host))
	pol := e.write("policy.json", acceptAll)
	const image = "registry.example.com/team/app:1"

	t.Run("pull --creds", func(t *testing.T) {
		e.pull(image, "--policy", pol, "--registries-conf", conf, "--creds", user+":"+pass, "--container-id", "cli")
		if n, _ := mirror.seen(); n == 0 {
			t.Fatal("the mirror was never tried: the test proves nothing")
		}
		if mirror.sawCreds(user, pass) {
			t.Error("--creds were sent to the mirror, another registry than the one the pull names")
		}
	})

	t.Run("daemon source_creds", func(t *testing.T) {
		d := startDaemon(t, e, "--policy", pol, "--registries-conf", conf)
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		before, _ := mirror.seen()
		agent := agentpb.NewImageClient(d.client)
		if _, err := agent.PullImage(ctx, &agentpb.PullImageRequest{Image: image, ContainerId: "kata-1", SourceCreds: user + ":" + pass}); err != nil {
			t.Fatalf("PullImage with source_creds: %v\n%s", err, d.logs.String())
		}
		if n, _ := mirror.seen(); n == before {
			t.Fatal("the mirror was never tried: the test proves nothing")
		}
		if mirror.sawCreds(user, pass) {
			t.Error("source_creds were sent to the mirror")
		}
		if strings.Contains(d.logs.String(), pass) {
			t.Error("the daemon logged source_creds")
		}
	})

	t.Run("daemon refuses creds for every request", func(t *testing.T) {
		cfg := e.write("daemon.json", fmt.Sprintf(`{"policy":%q,"creds":%q}`, pol, user+":"+pass))
		code, stderr := serveBriefly(t, "--config", cfg, "--cache", e.cache, "--socket", e.dir+"/refused.sock")
		if code != 2 || !strings.Contains(stderr, "creds") || !strings.Contains(stderr, "auth-file") {
			t.Errorf("serve with creds in its config: exit %d, want 2 pointing to auth-file: %s", code, stderr)
		}
		if strings.Contains(stderr, pass) {
			t.Errorf("the refusal prints the password: %s", stderr)
		}
		if code, stderr := serveBriefly(t, "--creds", user+":"+pass, "--policy", pol, "--cache", e.cache, "--socket", e.dir+"/refused.sock"); code != 2 {
			t.Errorf("serve --creds: exit %d, want 2 (no such flag): %s", code, stderr)
		}
	})
}

// TestRejectScopeNeverContactsTheRegistry (issue 8, hole 4): an image in a
// scope whose requirements reject it is refused (exit 3, PermissionDenied)
// before any request to its registry, by pull, policy check and the
// daemon: the name alone decides, and a host that picks names learns
// nothing, nor gets a connection from the guest.
func TestRejectScopeNeverContactsTheRegistry(t *testing.T) {
	watched := startSnoop(t)
	e := newEnv(t)
	pol := e.write("policy.json", fmt.Sprintf(`{"default":[{"type":"insecureAcceptAnything"}],
		"transports":{"docker":{"%s/forbidden":[{"type":"reject"}],
		"%s/signed-or-rejected":[{"type":"encrypted"},{"type":"reject"}]}}}`, watched.host, watched.host))
	args := []string{"--policy", pol, "--insecure-registry", watched.host}
	for _, image := range []string{watched.host + "/forbidden/app:1", watched.host + "/signed-or-rejected/app:1"} {
		msg := e.pullFails(3, image, args...)
		if !strings.Contains(msg, "reject") {
			t.Errorf("refusal does not say the scope rejects: %s", msg)
		}
		c := e.gp(append([]string{"policy", "check", image}, args...)...)
		if c.Code != 3 || !strings.Contains(c.Stdout, "[FAIL] reject") || !strings.Contains(c.Stdout, "not fetched") {
			t.Errorf("policy check: exit %d, want 3 with the reject requirement and no manifest:\n%s%s", c.Code, c.Stdout, c.Stderr)
		}
		cj := e.gp(append([]string{"policy", "check", image, "--json"}, args...)...)
		if cj.Code != 3 || !strings.Contains(cj.Stdout, `"allowed": false`) {
			t.Errorf("policy check --json: exit %d:\n%s%s", cj.Code, cj.Stdout, cj.Stderr)
		}
	}
	d := startDaemon(t, e, args...)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, err := cdhpb.NewImagePullServiceClient(d.client).PullImage(ctx, &cdhpb.ImagePullRequest{ImageUrl: watched.host + "/forbidden/app:1", BundlePath: e.dir + "/bundles/forbidden"})
	if status.Code(err) != codes.PermissionDenied {
		t.Errorf("daemon: %v, want PermissionDenied", err)
	}
	if n, _ := watched.seen(); n != 0 {
		t.Errorf("the registry of a rejected image got %d requests, want none", n)
	}

	// The same registry outside the scope is contacted: the watch works.
	e.pullFails(1, watched.host+"/elsewhere/app:1", args...)
	if n, _ := watched.seen(); n == 0 {
		t.Error("a pull outside the rejecting scope never reached the registry: the test proves nothing")
	}
}

// serveBriefly runs `guest-puller serve` that is expected to refuse to
// start; one that serves anyway is stopped after a few seconds and
// reported as exit -1.
func serveBriefly(t *testing.T, args ...string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bins["guest-puller"], append([]string{"serve"}, args...)...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	err := cmd.Run()
	if ctx.Err() != nil {
		return -1, "still serving after 10s: " + stderr.String()
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode(), stderr.String()
	}
	if err != nil {
		t.Fatal(err)
	}
	return 0, stderr.String()
}
