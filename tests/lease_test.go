package tests

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/guest-puller/guest-puller/internal/config"
	"github.com/guest-puller/guest-puller/internal/errdefs"
	"github.com/guest-puller/guest-puller/internal/testutil"
	"github.com/guest-puller/guest-puller/pull"
)

// TestFailedPullLeavesNoPins (issue 8, hole 5): pins belong to a pull. A
// long-lived Puller (the daemon's) pulls a 200-layer image, then fails on
// an image with the same 200 layers and one forged diff_id: when Pull
// returns, no file under the cache is open any more, and once the first
// image is gone, `cache gc` removes every layer and every layer lock file.
// Before leases, the failed pull kept one open pin per layer for the life
// of the process, and GC could remove none of them.
func TestFailedPullLeavesNoPins(t *testing.T) {
	const layers = 200
	reg := testutil.StartRegistry(t, testutil.RegistryOptions{})
	img, err := random.Image(256, layers)
	if err != nil {
		t.Fatal(err)
	}
	img = testutil.LinuxAMD64(t, img)
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	bad := cf.DeepCopy()
	bad.RootFS.DiffIDs[layers-1] = v1.Hash{Algorithm: "sha256", Hex: strings.Repeat("0", 64)}
	forged, err := mutate.ConfigFile(img, bad)
	if err != nil {
		t.Fatal(err)
	}
	good := reg.Host + "/lease/app:good"
	for ref, i := range map[string]v1.Image{good: img, reg.Host + "/lease/app:forged": forged} {
		r, err := name.ParseReference(ref, name.Insecure)
		if err != nil {
			t.Fatal(err)
		}
		if err := remote.Write(r, i); err != nil {
			t.Fatal(err)
		}
	}

	e := newEnv(t)
	ctx := context.Background()
	p, err := config.Open(ctx, config.Config{
		Policy:             e.write("policy.json", acceptAll),
		Cache:              e.cache,
		InsecureRegistries: []string{reg.Host},
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	bundle := filepath.Join(e.dir, "bundle")
	res, err := p.Pull(ctx, pull.Request{Image: good, ContainerID: "good", BundleDir: bundle})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Layers) != layers {
		t.Fatalf("%d layers pulled, want %d", len(res.Layers), layers)
	}
	if open := openUnder(t, e.cache); len(open) != 0 {
		t.Errorf("%d files under the cache still open after a successful pull: %v", len(open), open[:min(3, len(open))])
	}

	_, err = p.Pull(ctx, pull.Request{Image: reg.Host + "/lease/app:forged", ContainerID: "forged"})
	if !errors.Is(err, errdefs.ErrIntegrity) {
		t.Fatalf("forged pull: %v, want an integrity failure", err)
	}
	if open := openUnder(t, e.cache); len(open) != 0 {
		t.Errorf("%d files under the cache still open after the failed pull (pins it never released): %v", len(open), open[:min(3, len(open))])
	}

	// The first image goes away, its bundle with it; GC, in another
	// process, must be able to take every layer and lock.
	testutil.UnmountUnder(t, bundle)
	if err := os.RemoveAll(bundle); err != nil {
		t.Fatal(err)
	}
	if r := e.gp("cache", "rm", good); r.Code != 0 {
		t.Fatalf("cache rm: exit %d: %s", r.Code, r.Stderr)
	}
	if r := e.gp("cache", "gc"); r.Code != 0 {
		t.Fatalf("cache gc: exit %d: %s", r.Code, r.Stderr)
	}
	if l := e.cacheLs(); len(l.Layers) != 0 {
		t.Errorf("%d layers survive GC while no pull runs", len(l.Layers))
	}
	locks, err := os.ReadDir(filepath.Join(e.cache, "locks"))
	if err != nil {
		t.Fatal(err)
	}
	var left []string
	for _, l := range locks {
		if strings.HasPrefix(l.Name(), "layer-") || strings.HasPrefix(l.Name(), "pin-") {
			left = append(left, l.Name())
		}
	}
	if len(left) != 0 {
		t.Errorf("%d layer lock files survive GC, e.g. %s", len(left), left[0])
	}
}

// openUnder lists this process's open files below dir.
func openUnder(t *testing.T, dir string) []string {
	t.Helper()
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	var open []string
	for _, fd := range fds {
		target, err := os.Readlink(filepath.Join("/proc/self/fd", fd.Name()))
		if err == nil && strings.HasPrefix(target, dir+"/") {
			open = append(open, target)
		}
	}
	return open
}
