package tests

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	guestpullerv1 "github.com/guest-puller/guest-puller/api/v1"
	"github.com/guest-puller/guest-puller/internal/devkbs/devkbstest"
	"github.com/guest-puller/guest-puller/internal/testutil"
)

// TestServeKBSDownAtStart: `guest-puller serve` whose policy and auth file
// are KBS resources starts while the KBS is down: the socket is up at
// once, a pull fails with FailedPrecondition naming the resource, and once
// dev-kbs is up the next pull succeeds, without a restart. A local policy
// that is missing or invalid still stops serve at start, exit 2.
func TestServeKBSDownAtStart(t *testing.T) {
	reg := testutil.StartRegistry(t, testutil.RegistryOptions{})
	ref := reg.Push(t, testutil.BuildImage(t, testutil.ImageSpec{Layers: [][]byte{
		testutil.Tar(t, testutil.File("hello", "from a KBS policy", 0o644)),
	}}), "servekbs/app:1")
	resources := t.TempDir()
	const policyURI, authURI = "kbs:///default/policy/1", "kbs:///default/auth/1"
	testutil.WriteResource(t, resources, "default/policy/1", []byte(acceptAll))
	testutil.WriteResource(t, resources, "default/auth/1", []byte(`{"auths":{}}`))
	port := testutil.FreePort(t)
	kbsURL := fmt.Sprintf("http://127.0.0.1:%d", port)

	e := newEnv(t)
	start := time.Now()
	d := startDaemon(t, e, "--policy", policyURI, "--auth-file", authURI, "--kbs", kbsURL, "--attester", "sample", "--insecure-registry", reg.Host)
	t.Logf("socket up %v after start, with the KBS down", time.Since(start).Round(time.Millisecond))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	native := guestpullerv1.NewGuestPullerClient(d.client)

	_, err := native.Pull(ctx, &guestpullerv1.PullRequest{Image: ref, ContainerId: "first"})
	if st, _ := status.FromError(err); st.Code() != codes.FailedPrecondition || !strings.Contains(st.Message(), policyURI) {
		t.Fatalf("a pull with the KBS down: %v; want FailedPrecondition naming %s", err, policyURI)
	}
	devkbstest.StartDevKBS(t, bins["dev-kbs"], "--resources", resources, "--allow-sample", "--listen", fmt.Sprintf("127.0.0.1:%d", port))
	resp, err := native.Pull(ctx, &guestpullerv1.PullRequest{Image: ref, ContainerId: "second"})
	if err != nil {
		t.Fatalf("the pull after the KBS came up: %v\n%s", err, d.logs.String())
	}
	if got, err := os.ReadFile(filepath.Join(resp.Rootfs, "hello")); err != nil || string(got) != "from a KBS policy" {
		t.Errorf("rootfs/hello = %q, %v", got, err)
	}
	if d.cmd.ProcessState != nil {
		t.Error("the daemon exited")
	}

	// A local policy is read at start: missing or invalid, serve stops.
	for name, policy := range map[string]string{
		"missing": filepath.Join(e.dir, "no-such-policy.json"),
		"invalid": e.write("bad-policy.json", `{"default":[{"type":"acceptEverything"}]}`),
	} {
		socket := filepath.Join(e.dir, name, "cdh.sock")
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		cmd := exec.CommandContext(ctx, bins["guest-puller"], "serve", "--socket", socket, "--cache", filepath.Join(e.dir, name, "cache"), "--policy", policy, "--kbs", kbsURL)
		out, err := cmd.CombinedOutput()
		cancel()
		code := -1
		if cmd.ProcessState != nil {
			code = cmd.ProcessState.ExitCode()
		}
		if code != 2 || !strings.Contains(string(out), policy) {
			t.Errorf("serve with a %s local policy: exit %d (%v): %s; want exit 2 naming it", name, code, err, out)
		}
		if _, err := os.Stat(socket); !os.IsNotExist(err) {
			t.Errorf("serve with a %s local policy left a socket: %v", name, err)
		}
	}
}
