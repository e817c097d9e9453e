package tests

import (
	"encoding/json"
	"strings"
	"testing"

	ispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/guest-puller/guest-puller/internal/testutil"
)

// TestMediaTypesOneAuthority: `policy check` and `pull` agree on what an
// encrypted layer is. A manifest whose layers claim "+encrypted" media
// types that are no layer type guest-puller decrypts used to satisfy the
// policy's "encrypted" requirement in `policy check` (a suffix test) while
// `pull` refused the layers as unsupported; both now refuse it under the
// policy (exit 3), and a real encrypted type is still recognised by both.
func TestMediaTypesOneAuthority(t *testing.T) {
	reg := testutil.StartRegistry(t, testutil.RegistryOptions{})
	reg.Push(t, testutil.BuildImage(t, smallImage(t, "typed")), "types/app:1")
	var m ispec.Manifest
	if err := json.Unmarshal(reg.RawManifest(t, "types/app", "1"), &m); err != nil {
		t.Fatal(err)
	}
	bogus := forgeManifest(t, reg, "types/app", "bogus", m, func(f *ispec.Manifest) {
		for i := range f.Layers {
			f.Layers[i].MediaType = "application/vnd.example.layer.tar+encrypted"
		}
	})
	e := newEnv(t)
	pol := e.write("policy.json", `{"default":[{"type":"encrypted"}]}`)
	args := []string{"--policy", pol, "--insecure-registry", reg.Host}

	c := e.gp(append([]string{"policy", "check", bogus}, args...)...)
	if c.Code != 3 || !strings.Contains(c.Stdout, "layer 1 of 2 is not encrypted") {
		t.Errorf("policy check of unknown +encrypted types: exit %d, want 3 (not encrypted):\n%s%s", c.Code, c.Stdout, c.Stderr)
	}
	msg := e.pullFails(3, bogus, args...)
	if !strings.Contains(msg, "not encrypted") {
		t.Errorf("pull refusal does not say why: %s", msg)
	}

	// The same layers with a type the pipeline decrypts count as
	// encrypted for both (the pull then needs a key: exit 4).
	real := forgeManifest(t, reg, "types/app", "real", m, func(f *ispec.Manifest) {
		for i := range f.Layers {
			f.Layers[i].MediaType = "application/vnd.oci.image.layer.v1.tar+gzip+encrypted"
		}
	})
	if c := e.gp(append([]string{"policy", "check", real}, args...)...); c.Code != 0 {
		t.Errorf("policy check of ocicrypt types: exit %d, want 0:\n%s%s", c.Code, c.Stdout, c.Stderr)
	}
	e.pullFails(4, real, args...)
}
