package unpack

import (
	"slices"
	"testing"
)

func TestRuntimeEnv(t *testing.T) {
	for _, tc := range []struct {
		name             string
		image, generated []string
		want             []string
	}{{
		name:      "the image's HOME is kept, not replaced by the passwd entry's",
		image:     []string{"PATH=/app/bin", "HOME=/data"},
		generated: []string{"PATH=/app/bin", "TERM=xterm", "HOME=/data/home-from-passwd"},
		want:      []string{"PATH=/app/bin", "HOME=/data", "TERM=xterm"},
	}, {
		name:      "HOME from passwd only when the image sets none",
		image:     []string{"GREETING=hello world"},
		generated: []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm", "GREETING=hello world", "HOME=/home/app"},
		want:      []string{"GREETING=hello world", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm", "HOME=/home/app"},
	}, {
		name:      "order, duplicates and empty values verbatim",
		image:     []string{"B=2", "A=1", "B=3", "EMPTY=", "X==y"},
		generated: []string{"B=3", "A=1", "EMPTY=", "X==y", "TERM=xterm"},
		want:      []string{"B=2", "A=1", "B=3", "EMPTY=", "X==y", "TERM=xterm"},
	}, {
		name: "no image env",
		want: []string{},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			if got := runtimeEnv(tc.image, tc.generated); !slices.Equal(got, tc.want) {
				t.Errorf("runtimeEnv(%q, %q) = %q, want %q", tc.image, tc.generated, got, tc.want)
			}
		})
	}
}
