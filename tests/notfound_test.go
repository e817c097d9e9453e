package tests

import (
	"context"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/guest-puller/guest-puller/api/cdhpb"
	guestpullerv1 "github.com/guest-puller/guest-puller/api/v1"
	"github.com/guest-puller/guest-puller/internal/testutil"
)

// TestNotFoundOneSentinel: an image the registry does not have is one kind
// of error (errdefs.ErrNotFound) wherever it is reported: exit 1 with "not
// found" from the command line, gRPC NotFound from the daemon, as for an
// image the cache does not have.
func TestNotFoundOneSentinel(t *testing.T) {
	reg := testutil.StartRegistry(t, testutil.RegistryOptions{})
	reg.Push(t, testutil.BuildImage(t, smallImage(t, "here")), "found/app:1")
	e := newEnv(t)
	args := []string{"--policy", e.write("policy.json", acceptAll), "--insecure-registry", reg.Host}
	missing := reg.Host + "/found/app:missing"

	msg := e.pullFails(1, missing, args...)
	if !strings.Contains(msg, "not found") || !strings.Contains(msg, "found/app") {
		t.Errorf("error does not say the image is not found: %s", msg)
	}

	d := startDaemon(t, e, args...)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, err := cdhpb.NewImagePullServiceClient(d.client).PullImage(ctx, &cdhpb.ImagePullRequest{ImageUrl: missing, BundlePath: e.dir + "/bundles/missing"})
	if status.Code(err) != codes.NotFound {
		t.Errorf("daemon pull of a missing image: %v, want NotFound", err)
	}
	_, err = guestpullerv1.NewGuestPullerClient(d.client).RemoveImage(ctx, &guestpullerv1.RemoveImageRequest{Image: missing})
	if status.Code(err) != codes.NotFound {
		t.Errorf("daemon removal of an image not in the cache: %v, want NotFound", err)
	}
}
