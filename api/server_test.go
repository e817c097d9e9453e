package api

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/guest-puller/guest-puller/internal/errdefs"
)

func TestToStatus(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want codes.Code
	}{
		{fmt.Errorf("x: %w", errdefs.ErrInvalidConfig), codes.InvalidArgument},
		{fmt.Errorf("x: %w", errdefs.ErrRefused), codes.PermissionDenied},
		{fmt.Errorf("x: %w", errdefs.ErrDecrypt), codes.FailedPrecondition},
		{fmt.Errorf("x: %w", errdefs.ErrIntegrity), codes.DataLoss},
		{fmt.Errorf("x: %w", errdefs.ErrNotFound), codes.NotFound},
		{fmt.Errorf("x: %w", errdefs.ErrAlreadyExists), codes.AlreadyExists},
		{fmt.Errorf("x: %w", context.Canceled), codes.Canceled},
		{errors.New("connection refused"), codes.Internal},
	} {
		err := toStatus(tc.err)
		if got := status.Code(err); got != tc.want {
			t.Errorf("toStatus(%v) = %v, want %v", tc.err, got, tc.want)
		}
		if st, _ := status.FromError(err); st.Message() != tc.err.Error() {
			t.Errorf("message %q, want %q", st.Message(), tc.err.Error())
		}
	}
}
