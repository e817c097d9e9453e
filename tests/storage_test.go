package tests

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	guestpullerv1 "github.com/guest-puller/guest-puller/api/v1"
	"github.com/guest-puller/guest-puller/internal/testutil"
	"github.com/guest-puller/guest-puller/internal/testutil/faultfs"
)

// TestUnreadableCachedLayer: a cached layer whose storage fails with EIO
// (as a sealed store's does where the host changed a block; faultfs makes
// one on the host) when a bundle is made over it is exit 5 on the command
// line and DataLoss from the daemon, naming the layer; the layer is
// removed, and the next pull fetches it again and succeeds.
func TestUnreadableCachedLayer(t *testing.T) {
	reg := testutil.StartRegistry(t, testutil.RegistryOptions{})
	ref := reg.Push(t, testutil.BuildImage(t, testutil.ImageSpec{Layers: [][]byte{
		testutil.Tar(t, testutil.File("base", "base layer", 0o644)),
		testutil.Tar(t, testutil.File("app", "app layer", 0o644)),
	}}), "storage/app:1")
	e := newEnv(t)
	args := []string{"--policy", e.write("policy.json", acceptAll), "--insecure-registry", reg.Host}
	first := e.pull(ref, append(args, "--container-id", "c1")...)
	if len(first.Layers) != 2 {
		t.Fatalf("pulled %d layers, want 2", len(first.Layers))
	}
	app := first.Layers[1].DiffID
	breakLayer := func() {
		t.Helper()
		faultfs.MountEIO(t, filepath.Join(e.cache, "layers", strings.TrimPrefix(app, "sha256:"), "diff"))
	}

	breakLayer()
	msg := e.pullFails(5, ref, append(args, "--container-id", "c2")...)
	if !strings.Contains(msg, "layer "+app) || !strings.Contains(msg, "removed from the cache") {
		t.Errorf("pull over an unreadable layer: %q; want it to name layer %s, removed", msg, app)
	}
	again := e.pull(ref, append(args, "--container-id", "c2")...)
	if !again.Layers[0].Cached || again.Layers[1].Cached {
		t.Errorf("pull after the removal: cached %v, %v; want the base reused and the app layer fetched again", again.Layers[0].Cached, again.Layers[1].Cached)
	}

	// The daemon says DataLoss.
	d := startDaemon(t, e, args...)
	breakLayer()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	native := guestpullerv1.NewGuestPullerClient(d.client)
	_, err := native.Pull(ctx, &guestpullerv1.PullRequest{Image: ref, ContainerId: "c3"})
	if st, _ := status.FromError(err); st.Code() != codes.DataLoss || !strings.Contains(st.Message(), "layer "+app) {
		t.Fatalf("daemon pull over an unreadable layer: %v; want DataLoss naming layer %s", err, app)
	}
	resp, err := native.Pull(ctx, &guestpullerv1.PullRequest{Image: ref, ContainerId: "c3"})
	if err != nil {
		t.Fatalf("daemon pull after the removal: %v", err)
	}
	if resp.Layers[1].Cached {
		t.Error("the daemon reused the removed layer")
	}
}
