package tests

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/guest-puller/guest-puller/internal/testutil"
)

// TestCacheLsRmGc: two images share a base layer; removing one and
// collecting garbage unmounts and deletes its bundle and its own layer,
// and leaves the other image, its bundle and the shared layer alone.
func TestCacheLsRmGc(t *testing.T) {
	reg := testutil.StartRegistry(t, testutil.RegistryOptions{})
	base := testutil.Tar(t, testutil.File("base", "shared base", 0o644))
	one := reg.Push(t, testutil.BuildImage(t, testutil.ImageSpec{Layers: [][]byte{base, testutil.Tar(t, testutil.File("one", "1", 0o644))}}), "gc/one:1")
	two := reg.Push(t, testutil.BuildImage(t, testutil.ImageSpec{Layers: [][]byte{base, testutil.Tar(t, testutil.File("two", "2", 0o644))}}), "gc/two:1")
	e := newEnv(t)
	args := []string{"--policy", e.write("policy.json", acceptAll), "--insecure-registry", reg.Host}
	r1 := e.pull(one, append(args, "--container-id", "one")...)
	r2 := e.pull(two, append(args, "--container-id", "two")...)
	if !r2.Layers[0].Cached {
		t.Errorf("shared base layer fetched twice")
	}
	l := e.cacheLs()
	if len(l.Images) != 2 || len(l.Layers) != 3 || len(l.Bundles) != 2 {
		t.Fatalf("cache ls: %d images, %d layers, %d bundles; want 2, 3, 2", len(l.Images), len(l.Layers), len(l.Bundles))
	}
	for _, layer := range l.Layers {
		if layer.Size <= 0 {
			t.Errorf("layer %s has size %d", layer.DiffID, layer.Size)
		}
	}
	// Not on a sealed store (tests/vm covers one): ls says so.
	if l.Store.Sealed || l.Store.Root == "" || l.Store.Device != "" {
		t.Errorf("cache ls store: %+v, want the root, not sealed", l.Store)
	}
	text := e.gp("cache", "ls")
	if text.Code != 0 || !strings.Contains(text.Stdout, "gc/one") || !strings.Contains(text.Stdout, "two") || !strings.Contains(text.Stdout, ": not sealed") {
		t.Errorf("cache ls text: exit %d\n%s", text.Code, text.Stdout)
	}

	if r := e.gp("cache", "rm", one); r.Code != 0 {
		t.Fatalf("cache rm: exit %d: %s", r.Code, r.Stderr)
	}
	if r := e.gp("cache", "rm", reg.Host+"/gc/never:1"); r.Code == 0 {
		t.Errorf("cache rm of an unknown image succeeded")
	}
	gc := e.gp("cache", "gc", "--json")
	if gc.Code != 0 {
		t.Fatalf("cache gc: exit %d: %s", gc.Code, gc.Stderr)
	}
	var rep struct {
		Bundles    []string `json:"bundles"`
		Layers     []string `json:"layers"`
		FreedBytes int64    `json:"freedBytes"`
	}
	if err := json.Unmarshal([]byte(gc.Stdout), &rep); err != nil {
		t.Fatalf("cache gc --json: %v\n%s", err, gc.Stdout)
	}
	if !slices.Equal(rep.Bundles, []string{"one"}) || len(rep.Layers) != 1 || rep.Layers[0] != r1.Layers[1].DiffID || rep.FreedBytes <= 0 {
		t.Errorf("gc removed bundles %v layers %v (%d bytes); want [one] and [%s]", rep.Bundles, rep.Layers, rep.FreedBytes, r1.Layers[1].DiffID)
	}
	if m := testutil.Mounts(t, r1.Rootfs); len(m) != 0 {
		t.Errorf("removed bundle still mounted: %v", m)
	}
	if _, err := os.Stat(r1.Bundle); !os.IsNotExist(err) {
		t.Errorf("removed bundle dir still there: %v", err)
	}
	if got, err := os.ReadFile(filepath.Join(r2.Rootfs, "base")); err != nil || string(got) != "shared base" {
		t.Errorf("the other bundle lost the shared layer: %q %v", got, err)
	}
	l = e.cacheLs()
	if len(l.Images) != 1 || l.Images[0].Ref != strings.TrimSuffix(two, ":1")+":1" || len(l.Layers) != 2 || len(l.Bundles) != 1 {
		t.Errorf("after gc: %+v", l)
	}
}

// TestParallelDownloads: layers are fetched in parallel, never more at
// once than --max-concurrent-downloads.
func TestParallelDownloads(t *testing.T) {
	reg := testutil.StartRegistry(t, testutil.RegistryOptions{})
	var spec testutil.ImageSpec
	for i := range 5 {
		spec.Layers = append(spec.Layers, testutil.Tar(t, testutil.Entry{Name: fmt.Sprintf("f%d", i), Size: 1 << 20, Mode: 0o644}))
	}
	pushed := reg.Push(t, testutil.BuildImage(t, spec), "parallel/app:1")
	for _, tc := range []struct {
		flag     []string
		min, max int
	}{
		{[]string{"--max-concurrent-downloads", "1"}, 1, 1},
		{nil, 2, 3}, // the default, 3
		{[]string{"--max-concurrent-downloads", "5"}, 2, 5},
	} {
		t.Run(strings.Join(append([]string{"n"}, tc.flag...), " "), func(t *testing.T) {
			// Slow blobs, so that downloads overlap when allowed to.
			proxy := testutil.StartProxy(t, reg.Host, testutil.ProxyOptions{BytesPerSecond: 4 << 20})
			ref := strings.Replace(pushed, reg.Host, proxy.Host, 1)
			e := newEnv(t)
			e.pull(ref, append([]string{"--policy", e.write("policy.json", acceptAll), "--insecure-registry", proxy.Host}, tc.flag...)...)
			if got := proxy.MaxConcurrentBlobGets(); got < tc.min || got > tc.max {
				t.Errorf("%d blob downloads at once, want between %d and %d", got, tc.min, tc.max)
			}
		})
	}
}

// TestProgressLines: without a terminal, progress is one plain line per
// layer state on stderr; --json alone stays on stdout.
func TestProgressLines(t *testing.T) {
	reg := testutil.StartRegistry(t, testutil.RegistryOptions{})
	ref := reg.Push(t, testutil.BuildImage(t, smallImage(t, "progress")), "progress/app:1")
	e := newEnv(t)
	args := []string{"pull", ref, "--json", "--policy", e.write("policy.json", acceptAll), "--insecure-registry", reg.Host}
	r := e.gp(args...)
	if r.Code != 0 {
		t.Fatalf("exit %d: %s", r.Code, r.Stderr)
	}
	var res pullResult
	if err := json.Unmarshal([]byte(r.Stdout), &res); err != nil {
		t.Fatalf("stdout is not the JSON result alone: %v\n%s", err, r.Stdout)
	}
	for _, l := range res.Layers {
		short := strings.TrimPrefix(l.Digest, "sha256:")[:12]
		for _, state := range []string{"downloading", "done"} {
			if !strings.Contains(r.Stderr, "layer "+short+": "+state) {
				t.Errorf("stderr lacks %q for layer %s:\n%s", state, short, r.Stderr)
			}
		}
	}
	if strings.Contains(r.Stderr, "\x1b[") {
		t.Errorf("terminal escapes written to a pipe:\n%q", r.Stderr)
	}
	second := e.gp(append(args, "--container-id", "again")...)
	if !strings.Contains(second.Stderr, "cached") {
		t.Errorf("second pull's progress does not say the layers are cached:\n%s", second.Stderr)
	}
}

// TestRegistriesConf: mirrors are tried in order before the primary
// location, a blocked registry is refused, and per-registry insecure
// allows plain http.
func TestRegistriesConf(t *testing.T) {
	primary := testutil.StartRegistry(t, testutil.RegistryOptions{})
	mirror := testutil.StartRegistry(t, testutil.RegistryOptions{})
	img := testutil.BuildImage(t, smallImage(t, "from the mirror"))
	mirror.Push(t, img, "cache/app:1")
	primary.Push(t, testutil.BuildImage(t, smallImage(t, "from the primary")), "team/app:1")
	primary.Push(t, testutil.BuildImage(t, smallImage(t, "only on the primary")), "team/other:1")
	down := fmt.Sprintf("127.0.0.1:%d", testutil.FreePort(t))
	e := newEnv(t)
	conf := e.write("registries.conf", fmt.Sprintf(`
[[registry]]
prefix = "registry.example.com/team"
location = "%[1]s/team"
insecure = true

[[registry.mirror]]
location = "%[3]s/nothing-here"
insecure = true

[[registry.mirror]]
location = "%[2]s/cache"
insecure = true

[[registry]]
location = "blocked.example.com"
blocked = true
`, primary.Host, mirror.Host, down))
	args := []string{"--policy", e.write("policy.json", acceptAll), "--registries-conf", conf}
	read := func(res pullResult) string {
		b, _ := os.ReadFile(filepath.Join(res.Rootfs, "app/hello"))
		return string(b)
	}
	// The first mirror is down, the second has the image.
	res := e.pull("registry.example.com/team/app:1", append(args, "--container-id", "m")...)
	if got := read(res); got != "from the mirror" {
		t.Errorf("app/hello = %q, want the mirror's", got)
	}
	if res.Image != "registry.example.com/team/app:1" {
		t.Errorf("result names %q, want the reference as asked", res.Image)
	}
	// No mirror has it: the primary location does.
	res = e.pull("registry.example.com/team/other:1", append(args, "--container-id", "p")...)
	if got := read(res); got != "only on the primary" {
		t.Errorf("app/hello = %q, want the primary's", got)
	}
	msg := e.pullFails(3, "blocked.example.com/x/y:1", args...)
	if !strings.Contains(msg, "blocked") {
		t.Errorf("blocked registry error: %s", msg)
	}
	bad := e.write("bad.conf", "[[registry]]\nprefix = \"a.io\"\nmirrors = []\n")
	e.pullFails(2, "a.io/x:1", "--policy", e.write("p2.json", acceptAll), "--registries-conf", bad)
}
