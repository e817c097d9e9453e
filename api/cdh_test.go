package api

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/ttrpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/guest-puller/guest-puller/api/cdhpb"
	"github.com/guest-puller/guest-puller/internal/errdefs"
	"github.com/guest-puller/guest-puller/pull"
)

// serveTest serves s on a socket of its own and returns a client of it.
func serveTest(t *testing.T, s *Service) *ttrpc.Client {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "cdh.sock")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, s, sock) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		conn, err := net.Dial("unix", sock)
		if err == nil {
			c := ttrpc.NewClient(conn)
			t.Cleanup(func() { c.Close() })
			return c
		}
		if time.Now().After(deadline) {
			t.Fatalf("no server on %s: %v", sock, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

type resourceFunc func(ctx context.Context, uri string) ([]byte, error)

func (f resourceFunc) GetResource(ctx context.Context, uri string) ([]byte, error) {
	return f(ctx, uri)
}

type unsealFunc func(ctx context.Context, secret []byte) ([]byte, error)

func (f unsealFunc) Unseal(ctx context.Context, secret []byte) ([]byte, error) { return f(ctx, secret) }

// TestCDHServicesUnconfigured: `guest-puller serve` registers all four
// services of the confidential-data-hub, so kata-agent's clients get a
// status saying what is missing rather than ttrpc's "service not found".
func TestCDHServicesUnconfigured(t *testing.T) {
	c := serveTest(t, New(Options{Puller: func(context.Context) (*pull.Puller, error) {
		return nil, fmt.Errorf("policy kbs:///default/policy/1: %w: KBS unreachable", errdefs.ErrDecrypt)
	}}))
	ctx := context.Background()

	_, err := cdhpb.NewGetResourceServiceClient(c).GetResource(ctx, &cdhpb.GetResourceRequest{ResourcePath: "kbs:///a/b/c"})
	wantStatus(t, "GetResource", err, codes.Unimplemented, "no Key Broker Service")
	_, err = cdhpb.NewSealedSecretServiceClient(c).UnsealSecret(ctx, &cdhpb.UnsealSecretInput{Secret: []byte("sealed.x.y.z")})
	wantStatus(t, "UnsealSecret", err, codes.Unimplemented, "sealed secrets are not configured")
	_, err = cdhpb.NewSecureMountServiceClient(c).SecureMount(ctx, &cdhpb.SecureMountRequest{VolumeType: "BlockDevice", MountPoint: "/run/x"})
	wantStatus(t, "SecureMount", err, codes.Unimplemented, `volume_type "BlockDevice" at "/run/x": not implemented`)
	// A Puller that cannot be built fails the request with its cause.
	_, err = cdhpb.NewImagePullServiceClient(c).PullImage(ctx, &cdhpb.ImagePullRequest{ImageUrl: "registry.example.com/a:1", BundlePath: "/run/kata-containers/c1"})
	wantStatus(t, "PullImage", err, codes.FailedPrecondition, "KBS unreachable")
}

func TestCDHServices(t *testing.T) {
	secret := []byte("s3cr3t-plaintext")
	c := serveTest(t, New(Options{
		Resources: resourceFunc(func(_ context.Context, uri string) ([]byte, error) {
			if uri == "kbs:///default/key/1" {
				return secret, nil
			}
			return nil, fmt.Errorf("kbs resource %s: %w: not found", uri, errdefs.ErrDecrypt)
		}),
		Secrets: unsealFunc(func(_ context.Context, s []byte) ([]byte, error) {
			if string(s) == "sealed.good" {
				return secret, nil
			}
			return nil, fmt.Errorf("sealed secret: %w: malformed", errdefs.ErrInvalidConfig)
		}),
	}))
	ctx := context.Background()
	res := cdhpb.NewGetResourceServiceClient(c)
	got, err := res.GetResource(ctx, &cdhpb.GetResourceRequest{ResourcePath: "kbs:///default/key/1"})
	if err != nil || string(got.Resource) != string(secret) {
		t.Errorf("GetResource = %q, %v", got.GetResource(), err)
	}
	_, err = res.GetResource(ctx, &cdhpb.GetResourceRequest{ResourcePath: "kbs:///default/key/2"})
	wantStatus(t, "GetResource of a missing resource", err, codes.FailedPrecondition, "kbs resource kbs:///default/key/2")
	_, err = res.GetResource(ctx, &cdhpb.GetResourceRequest{})
	wantStatus(t, "GetResource without a path", err, codes.InvalidArgument, "ResourcePath is empty")

	sec := cdhpb.NewSealedSecretServiceClient(c)
	out, err := sec.UnsealSecret(ctx, &cdhpb.UnsealSecretInput{Secret: []byte("sealed.good")})
	if err != nil || string(out.Plaintext) != string(secret) {
		t.Errorf("UnsealSecret = %q, %v", out.GetPlaintext(), err)
	}
	_, err = sec.UnsealSecret(ctx, &cdhpb.UnsealSecretInput{Secret: []byte("sealed.bad")})
	wantStatus(t, "UnsealSecret of a malformed secret", err, codes.InvalidArgument, "malformed")
}

func wantStatus(t *testing.T, what string, err error, code codes.Code, msg string) {
	t.Helper()
	if err == nil {
		t.Errorf("%s: no error, want %v", what, code)
		return
	}
	st, _ := status.FromError(err)
	if st.Code() != code || !strings.Contains(st.Message(), msg) {
		t.Errorf("%s: %v, want %v containing %q", what, err, code, msg)
	}
}
