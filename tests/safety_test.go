package tests

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/guest-puller/guest-puller/internal/testutil"
)

// canary is a host directory that a malicious layer tries to reach.
type canary struct {
	dir string
}

func newCanary(t *testing.T) *canary {
	c := &canary{dir: filepath.Join(t.TempDir(), "canary")}
	if err := os.MkdirAll(c.dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, content := range map[string]string{"secret": "host secret", "victim": "do not delete"} {
		if err := os.WriteFile(filepath.Join(c.dir, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return c
}

// intact fails the test if anything in the canary directory changed:
// files added, removed, rewritten, or hardlinked from elsewhere.
func (c *canary) intact(t *testing.T) {
	t.Helper()
	entries, err := os.ReadDir(c.dir)
	if err != nil {
		t.Fatalf("canary dir: %v", err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if !slices.Equal(names, []string{"secret", "victim"}) {
		t.Errorf("canary dir now holds %v", names)
	}
	for name, want := range map[string]string{"secret": "host secret", "victim": "do not delete"} {
		p := filepath.Join(c.dir, name)
		got, err := os.ReadFile(p)
		if err != nil || string(got) != want {
			t.Errorf("canary %s: %q %v", name, got, err)
			continue
		}
		var st syscall.Stat_t
		if err := syscall.Lstat(p, &st); err == nil && st.Nlink != 1 {
			t.Errorf("canary %s has %d links: a layer linked to it", name, st.Nlink)
		}
	}
}

// TestMaliciousLayers pulls layers crafted to reach outside the rootfs.
// Each either is refused as unsafe content (exit 5, nothing cached) or is
// confined to the rootfs (the entry lands inside it); in no case does
// anything outside change.
func TestMaliciousLayers(t *testing.T) {
	reg := testutil.StartRegistry(t, testutil.RegistryOptions{})
	c := newCanary(t)
	abs := strings.TrimPrefix(c.dir, "/")
	up := strings.Repeat("../", 32)
	for _, tc := range []struct {
		name    string
		layers  [][]testutil.Entry
		refused bool
		// inside, for a confined case, is where the entry must land
		// within the rootfs.
		inside string
	}{
		{
			name:    "dot-dot traversal",
			layers:  [][]testutil.Entry{{testutil.File(up+abs+"/planted", "pwned", 0o644)}},
			refused: true,
		},
		{
			name:   "absolute path",
			layers: [][]testutil.Entry{{testutil.File("/"+abs+"/planted", "pwned", 0o644)}},
			inside: abs + "/planted",
		},
		{
			name: "symlinked parent",
			layers: [][]testutil.Entry{{
				testutil.Symlink("esc", c.dir),
				testutil.File("esc/planted", "pwned", 0o644),
			}},
			inside: abs + "/planted",
		},
		{
			name: "symlinked parent across layers",
			layers: [][]testutil.Entry{
				{testutil.Symlink("esc", c.dir)},
				{testutil.File("esc/planted", "pwned", 0o644)},
			},
			inside: "esc/planted",
		},
		{
			name:    "hardlink out",
			layers:  [][]testutil.Entry{{testutil.Hardlink("stolen", up+abs+"/secret")}},
			refused: true,
		},
		{
			name:    "absolute hardlink",
			layers:  [][]testutil.Entry{{testutil.Hardlink("stolen", "/"+abs+"/secret")}},
			refused: true, // the target does not exist inside the layer
		},
		{
			name: "hardlink through a symlink",
			layers: [][]testutil.Entry{{
				testutil.Symlink("s", c.dir),
				testutil.Hardlink("stolen", "s/secret"),
			}},
			refused: true,
		},
		{
			name:    "whiteout out",
			layers:  [][]testutil.Entry{{testutil.File("x", "x", 0o644)}, {testutil.Whiteout(up + abs + "/victim")}},
			refused: true,
		},
		{
			name: "whiteout through a symlink",
			layers: [][]testutil.Entry{
				{testutil.Symlink("s", c.dir)},
				{testutil.Symlink("s", c.dir), testutil.Whiteout("s/victim")},
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var spec testutil.ImageSpec
			for _, l := range tc.layers {
				spec.Layers = append(spec.Layers, testutil.Tar(t, l...))
			}
			repo := "evil/" + strings.ReplaceAll(tc.name, " ", "-")
			ref := reg.Push(t, testutil.BuildImage(t, spec), repo+":1")
			e := newEnv(t)
			args := []string{"--policy", e.write("policy.json", acceptAll), "--insecure-registry", reg.Host}
			if tc.refused {
				msg := e.pullFails(5, ref, args...)
				if !strings.Contains(msg, "layer sha256:") {
					t.Errorf("refusal does not name the layer: %s", msg)
				}
				if l := e.cacheLs(); len(l.Images) != 0 {
					t.Errorf("image recorded after refusal: %+v", l.Images)
				}
				assertNoStaging(t, e.cache)
			} else {
				res := e.pull(ref, args...)
				if tc.inside != "" {
					if got, err := os.ReadFile(filepath.Join(res.Rootfs, tc.inside)); err != nil || string(got) != "pwned" {
						t.Errorf("confined entry not at rootfs/%s: %q %v", tc.inside, got, err)
					}
				}
			}
			c.intact(t)
		})
	}
}
