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
