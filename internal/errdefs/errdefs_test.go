package errdefs

import (
	"errors"
	"fmt"
	"testing"
)

func TestExitCode(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want int
	}{
		{nil, 0},
		{errors.New("connection refused"), 1},
		{fmt.Errorf("policy: %w", ErrInvalidConfig), 2},
		{fmt.Errorf("image x: %w", ErrRefused), 3},
		{fmt.Errorf("layer y: %w", ErrDecrypt), 4},
		{fmt.Errorf("layer z: %w", fmt.Errorf("blob: %w", ErrIntegrity)), 5},
	} {
		if got := ExitCode(tc.err); got != tc.want {
			t.Errorf("ExitCode(%v) = %d, want %d", tc.err, got, tc.want)
		}
	}
}
