package errdefs

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"google.golang.org/grpc/codes"
)

func TestMappings(t *testing.T) {
	for _, tc := range []struct {
		err  error
		exit int
		code codes.Code
	}{
		{nil, 0, codes.OK},
		{errors.New("connection refused"), 1, codes.Internal},
		{fmt.Errorf("policy: %w", ErrInvalidConfig), 2, codes.InvalidArgument},
		{fmt.Errorf("image x: %w", ErrRefused), 3, codes.PermissionDenied},
		{fmt.Errorf("layer y: %w", ErrDecrypt), 4, codes.FailedPrecondition},
		{fmt.Errorf("layer z: %w", fmt.Errorf("blob: %w", ErrIntegrity)), 5, codes.DataLoss},
		{fmt.Errorf("registry r: %w (401 Unauthorized)", ErrUnauthenticated), 1, codes.Unauthenticated},
		{fmt.Errorf("image i: %w", ErrNotFound), 1, codes.NotFound},
		{fmt.Errorf("bundle b: %w: container id b has a bundle at /a/b", ErrAlreadyExists), 2, codes.AlreadyExists},
		{fmt.Errorf("pull: %w", context.Canceled), 1, codes.Canceled},
		{fmt.Errorf("pull: %w", context.DeadlineExceeded), 1, codes.DeadlineExceeded},
		// A policy at a kbs:// URI that does not exist: the configuration
		// is wrong, whatever the KBS said.
		{fmt.Errorf("policy kbs:///a/b/c: %w: %w: %w", ErrInvalidConfig, ErrDecrypt, ErrNotFound), 2, codes.InvalidArgument},
	} {
		if got := ExitCode(tc.err); got != tc.exit {
			t.Errorf("ExitCode(%v) = %d, want %d", tc.err, got, tc.exit)
		}
		if got := GRPCCode(tc.err); got != tc.code {
			t.Errorf("GRPCCode(%v) = %v, want %v", tc.err, got, tc.code)
		}
	}
}

// TestKind: a kind given by Kind maps like a wrapped sentinel, and its
// text appears once in a message however many levels classify.
func TestKind(t *testing.T) {
	inner := errors.New("kbs get resource: 404 Not Found")
	for _, tc := range []struct {
		name string
		err  error
		msg  string
		exit int
	}{
		{"alone", Kind(ErrDecrypt, fmt.Errorf("kbs resource kbs:///a/b/c: %w", inner)),
			"kbs resource kbs:///a/b/c: kbs get resource: 404 Not Found", 4},
		{"named by the caller", fmt.Errorf("layer sha256:1: %w: no key unwraps it: %w", ErrDecrypt, Kind(ErrDecrypt, inner)),
			"layer sha256:1: cannot decrypt: no key unwraps it: kbs get resource: 404 Not Found", 4},
		{"already of the kind", Kind(ErrDecrypt, fmt.Errorf("x: %w", ErrDecrypt)), "x: cannot decrypt", 4},
		{"another kind first", fmt.Errorf("policy p: %w: %w", ErrInvalidConfig, Kind(ErrDecrypt, inner)),
			"policy p: invalid configuration: kbs get resource: 404 Not Found", 2},
		{"nil", Kind(ErrDecrypt, nil), "", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.err == nil {
				if tc.exit != 0 {
					t.Fatal("nil error")
				}
				return
			}
			if got := tc.err.Error(); got != tc.msg {
				t.Errorf("message %q, want %q", got, tc.msg)
			}
			if got := ExitCode(tc.err); got != tc.exit {
				t.Errorf("exit %d, want %d", got, tc.exit)
			}
			if !errors.Is(tc.err, inner) && tc.name != "already of the kind" {
				t.Errorf("%v does not wrap its cause", tc.err)
			}
		})
	}
}

// TestFromGRPC: a daemon's status code comes back as the kind that made
// it, so a client's exit code is the one `pull` would have given.
func TestFromGRPC(t *testing.T) {
	for _, tc := range []struct {
		code codes.Code
		exit int
	}{
		{codes.InvalidArgument, 2}, {codes.PermissionDenied, 3}, {codes.FailedPrecondition, 4},
		{codes.DataLoss, 5}, {codes.Unauthenticated, 1}, {codes.NotFound, 1}, {codes.AlreadyExists, 2},
		{codes.Internal, 1}, {codes.Unavailable, 1},
	} {
		err := FromGRPC(tc.code)
		if got := ExitCode(fmt.Errorf("daemon: %w", err)); err != nil && got != tc.exit || err == nil && tc.exit != 1 {
			t.Errorf("FromGRPC(%v) = %v: exit %d, want %d", tc.code, err, got, tc.exit)
		}
		if err != nil && GRPCCode(err) != tc.code {
			t.Errorf("FromGRPC(%v) = %v, which maps back to %v", tc.code, err, GRPCCode(err))
		}
	}
}
