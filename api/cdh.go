package api

import (
	"context"
	"errors"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/guest-puller/guest-puller/api/cdhpb"
	"github.com/guest-puller/guest-puller/internal/errdefs"
	"github.com/guest-puller/guest-puller/internal/untrusted"
)

// This file serves the confidential-data-hub's services other than image
// pulls: KBS resources, sealed secrets and secure mounts.

// ResourceGetter returns the plaintext of a KBS resource named
// kbs:///repo/type/tag, attesting first when needed.
type ResourceGetter interface {
	GetResource(ctx context.Context, uri string) ([]byte, error)
}

// SecretUnsealer returns the plaintext of a sealed secret
// ("sealed." + JWS compact form).
type SecretUnsealer interface {
	Unseal(ctx context.Context, secret []byte) ([]byte, error)
}

// SecureMounter mounts storage the host provides so that the host can
// neither read nor change what the guest writes to it, as the
// confidential-data-hub's SecureMountService does for kata-agent.
type SecureMounter interface {
	SecureMount(ctx context.Context, req *cdhpb.SecureMountRequest) error
}

func (s cdhService) GetResource(ctx context.Context, req *cdhpb.GetResourceRequest) (*cdhpb.GetResourceResponse, error) {
	if s.opts.Resources == nil {
		return nil, status.Error(codes.Unimplemented, "GetResource: no Key Broker Service is configured (run guest-puller as the confidential-data-hub, `guest-puller cdh`, with [kbc] set)")
	}
	if req.ResourcePath == "" {
		return nil, status.Error(codes.InvalidArgument, "ResourcePath is empty")
	}
	start := time.Now()
	data, err := s.opts.Resources.GetResource(ctx, req.ResourcePath)
	attrs := []any{"api", "api.GetResourceService", "resource", untrusted.Text(req.ResourcePath), "duration", time.Since(start).Round(time.Millisecond)}
	if err != nil {
		s.opts.Log.Warn("get resource failed", append(attrs, "exit", errdefs.ExitCode(err), "error", untrusted.Escape(err.Error()))...)
		if errors.Is(err, errdefs.ErrNotFound) {
			// The one thing asked for does not exist: that, rather than
			// the general "cannot decrypt" of a failed KBS request.
			return nil, status.Error(codes.NotFound, untrusted.Escape(err.Error()))
		}
		return nil, toStatus(err)
	}
	// The resource is a secret: its size is all the log says of it.
	s.opts.Log.Info("served resource", append(attrs, "bytes", len(data))...)
	return &cdhpb.GetResourceResponse{Resource: data}, nil
}

func (s cdhService) UnsealSecret(ctx context.Context, req *cdhpb.UnsealSecretInput) (*cdhpb.UnsealSecretOutput, error) {
	if s.opts.Secrets == nil {
		return nil, status.Error(codes.Unimplemented, "UnsealSecret: sealed secrets are not configured (run guest-puller as the confidential-data-hub, `guest-puller cdh`)")
	}
	start := time.Now()
	plain, err := s.opts.Secrets.Unseal(ctx, req.Secret)
	attrs := []any{"api", "api.SealedSecretService", "duration", time.Since(start).Round(time.Millisecond)}
	if err != nil {
		s.opts.Log.Warn("unseal failed", append(attrs, "exit", errdefs.ExitCode(err), "error", untrusted.Escape(err.Error()))...)
		return nil, toStatus(err)
	}
	s.opts.Log.Info("unsealed secret", append(attrs, "bytes", len(plain))...)
	return &cdhpb.UnsealSecretOutput{Plaintext: plain}, nil
}

func (s cdhService) SecureMount(ctx context.Context, req *cdhpb.SecureMountRequest) (*cdhpb.SecureMountResponse, error) {
	if s.opts.Mounts == nil {
		return nil, status.Errorf(codes.Unimplemented,
			"SecureMount of volume_type %s at %s: not implemented: guest-puller has no secure storage driver yet (the sealed layer store will serve LUKS2 block devices here)",
			untrusted.Quote(req.VolumeType), untrusted.Quote(req.MountPoint))
	}
	start := time.Now()
	err := s.opts.Mounts.SecureMount(ctx, req)
	attrs := []any{"api", "api.SecureMountService", "volume_type", untrusted.Text(req.VolumeType), "mount_point", untrusted.Text(req.MountPoint), "duration", time.Since(start).Round(time.Millisecond)}
	if err != nil {
		s.opts.Log.Warn("secure mount failed", append(attrs, "exit", errdefs.ExitCode(err), "error", untrusted.Escape(err.Error()))...)
		return nil, toStatus(err)
	}
	s.opts.Log.Info("secure mount", attrs...)
	return &cdhpb.SecureMountResponse{}, nil
}
