package api

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/ttrpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

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
	c := serveTest(t, New(Options{Puller: func(context.Context) (*pull.Puller, func(), error) {
		return nil, nil, fmt.Errorf("policy kbs:///default/policy/1: %w: KBS unreachable", errdefs.ErrDecrypt)
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

// TestCDHWireContract pins the confidential-data-hub's messages to
// guest-components' protos/confidential-data-hub/api.proto: package,
// services, and every field's name, number and type, which is what
// kata-agent's generated clients put on the wire.
func TestCDHWireContract(t *testing.T) {
	type field struct {
		name   string
		number protowire.Number
		kind   protoreflect.Kind
		card   protoreflect.Cardinality
	}
	str, bytes, rep := protoreflect.StringKind, protoreflect.BytesKind, protoreflect.Repeated
	opt := protoreflect.Optional
	for _, tc := range []struct {
		msg    proto.Message
		name   string
		fields []field
	}{
		{&cdhpb.UnsealSecretInput{}, "api.UnsealSecretInput", []field{{"secret", 1, bytes, opt}}},
		{&cdhpb.UnsealSecretOutput{}, "api.UnsealSecretOutput", []field{{"plaintext", 1, bytes, opt}}},
		{&cdhpb.GetResourceRequest{}, "api.GetResourceRequest", []field{{"ResourcePath", 1, str, opt}}},
		{&cdhpb.GetResourceResponse{}, "api.GetResourceResponse", []field{{"Resource", 1, bytes, opt}}},
		{&cdhpb.SecureMountRequest{}, "api.SecureMountRequest", []field{
			{"volume_type", 1, str, opt}, {"options", 2, protoreflect.MessageKind, rep}, {"flags", 3, str, rep}, {"mount_point", 4, str, opt},
		}},
		{&cdhpb.SecureMountResponse{}, "api.SecureMountResponse", nil},
		{&cdhpb.ImagePullRequest{}, "api.ImagePullRequest", []field{{"image_url", 1, str, opt}, {"bundle_path", 2, str, opt}}},
		{&cdhpb.ImagePullResponse{}, "api.ImagePullResponse", []field{{"manifest_digest", 1, str, opt}}},
	} {
		d := tc.msg.ProtoReflect().Descriptor()
		if string(d.FullName()) != tc.name {
			t.Errorf("%s is %s on the wire", tc.name, d.FullName())
		}
		if d.Fields().Len() != len(tc.fields) {
			t.Errorf("%s has %d fields, want %d", tc.name, d.Fields().Len(), len(tc.fields))
		}
		for _, f := range tc.fields {
			fd := d.Fields().ByName(protoreflect.Name(f.name))
			if fd == nil || fd.Number() != f.number || fd.Kind() != f.kind || fd.Cardinality() != f.card {
				t.Errorf("%s.%s: %v, want number %d, %v, %v", tc.name, f.name, fd, f.number, f.kind, f.card)
			}
		}
	}
	if m := (&cdhpb.SecureMountRequest{}).ProtoReflect().Descriptor().Fields().ByName("options"); !m.IsMap() || m.MapKey().Kind() != str || m.MapValue().Kind() != str {
		t.Error("SecureMountRequest.options is not map<string, string>")
	}
	// The services and methods, as ttrpc names them on the wire: each
	// reaches a handler, not ttrpc's "service X" or "method X".
	c := serveTest(t, New(Options{Puller: func(context.Context) (*pull.Puller, func(), error) { return nil, nil, errors.New("none") }}))
	for _, m := range []struct{ service, method string }{
		{"api.SealedSecretService", "UnsealSecret"},
		{"api.GetResourceService", "GetResource"},
		{"api.SecureMountService", "SecureMount"},
		{"api.ImagePullService", "PullImage"},
	} {
		err := c.Call(context.Background(), m.service, m.method, &cdhpb.SecureMountResponse{}, &cdhpb.SecureMountResponse{})
		if st, _ := status.FromError(err); st.Message() == "service "+m.service || st.Message() == "method "+m.method {
			t.Errorf("%s/%s is not served: %v", m.service, m.method, err)
		}
	}
	// and the check above can tell.
	err := c.Call(context.Background(), "api.NoSuchService", "X", &cdhpb.SecureMountResponse{}, &cdhpb.SecureMountResponse{})
	if st, _ := status.FromError(err); st.Message() != "service api.NoSuchService" {
		t.Errorf("an unknown service answers %v", err)
	}
}
