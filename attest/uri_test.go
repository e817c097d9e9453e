package attest

import (
	"errors"
	"testing"

	"github.com/guest-puller/guest-puller/internal/errdefs"
)

func TestParseResourceURI(t *testing.T) {
	tests := []struct {
		in   string
		want ResourceURI
		ok   bool
	}{
		{"kbs:///default/key/1", ResourceURI{"default", "key", "1"}, true},
		{"kbs://kbs.example:8080/default/key/1", ResourceURI{"default", "key", "1"}, true},
		{"kbs:///my-repo/image_kek/v1.2", ResourceURI{"my-repo", "image_kek", "v1.2"}, true},
		{"kbs:///a/b/..c", ResourceURI{"a", "b", "..c"}, true},
		{"kbs:///default/key", ResourceURI{}, false},
		{"kbs:///default/key/1/extra", ResourceURI{}, false},
		{"kbs:///default/key/", ResourceURI{}, false},
		{"kbs:///default//1", ResourceURI{}, false},
		{"kbs:///../key/1", ResourceURI{}, false},
		{"kbs:///default/../1", ResourceURI{}, false},
		{"kbs:///default/key/..", ResourceURI{}, false},
		{"kbs:///default/key/.", ResourceURI{}, false},
		{"kbs:///default/key/...", ResourceURI{}, false},
		{"kbs:///default/key%2F1/x", ResourceURI{}, false},
		{"kbs:///default/key/%2e%2e", ResourceURI{}, false},
		{"kbs:///default/key/a b", ResourceURI{}, false},
		{"kbs:///default/key/1?version=2", ResourceURI{}, false},
		{"kbs:///default/key/1#frag", ResourceURI{}, false},
		{"kbs://user@host/default/key/1", ResourceURI{}, false},
		{"kbs:default/key/1", ResourceURI{}, false},
		{"https:///default/key/1", ResourceURI{}, false},
		{"/default/key/1", ResourceURI{}, false},
		{"", ResourceURI{}, false},
	}
	for _, tt := range tests {
		got, err := ParseResourceURI(tt.in)
		if tt.ok {
			if err != nil || got != tt.want {
				t.Errorf("ParseResourceURI(%q) = %+v, %v; want %+v", tt.in, got, err, tt.want)
			}
			if got.String() != "kbs:///"+tt.want.Repo+"/"+tt.want.Type+"/"+tt.want.Tag {
				t.Errorf("String() = %q", got.String())
			}
			continue
		}
		if err == nil {
			t.Errorf("ParseResourceURI(%q) = %+v, want an error", tt.in, got)
		} else if !errors.Is(err, errdefs.ErrInvalidConfig) {
			t.Errorf("ParseResourceURI(%q) error %v does not wrap ErrInvalidConfig", tt.in, err)
		}
	}
}
