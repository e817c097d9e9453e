package tests

import (
	"bytes"
	"encoding/base64"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/guest-puller/guest-puller/internal/testutil"
)

func smallImage(t *testing.T, content string) testutil.ImageSpec {
	return testutil.ImageSpec{Layers: [][]byte{
		testutil.Tar(t, testutil.Dir("app/", 0o755), testutil.File("app/hello", content, 0o644)),
		testutil.Tar(t, testutil.File("app/second", "layer two of "+content, 0o644)),
	}}
}

func TestPrivateRegistry(t *testing.T) {
	const user, pass = "puller", "Corr3ct-Horse-Battery"
	reg := testutil.StartRegistry(t, testutil.RegistryOptions{User: user, Password: pass})
	ref := reg.Push(t, testutil.BuildImage(t, smallImage(t, "private")), "private/app:1")
	e := newEnv(t)
	pol := e.write("policy.json", acceptAll)
	authJSON := func(u, p string) string {
		return `{"auths":{"` + reg.Host + `":{"auth":"` + base64.StdEncoding.EncodeToString([]byte(u+":"+p)) + `"}}}`
	}
	good := e.write("auth.json", authJSON(user, pass))
	bad := e.write("bad-auth.json", authJSON(user, "Wr0ng-Pa55word"))
	base := []string{"--policy", pol, "--insecure-registry", reg.Host}

	t.Run("creds", func(t *testing.T) {
		res := e.pull(ref, append(base, "--creds", user+":"+pass, "--container-id", "creds")...)
		if got, _ := os.ReadFile(filepath.Join(res.Rootfs, "app/hello")); string(got) != "private" {
			t.Errorf("app/hello = %q", got)
		}
	})
	t.Run("auth-file", func(t *testing.T) {
		e.pull(ref, append(base, "--auth-file", good, "--container-id", "authfile")...)
	})
	t.Run("REGISTRY_AUTH_FILE", func(t *testing.T) {
		r := testutil.Exec(t, []string{"REGISTRY_AUTH_FILE=" + good}, bins["guest-puller"],
			append([]string{"pull", ref, "--quiet", "--cache", e.cache, "--container-id", "envauth"}, base...)...)
		if r.Code != 0 {
			t.Fatalf("exit %d: %s", r.Code, r.Stderr)
		}
	})
	for name, args := range map[string][]string{
		"wrong creds":     {"--creds", user + ":Wr0ng-Pa55word"},
		"wrong auth file": {"--auth-file", bad},
		"no credentials":  {"--auth-file", e.write("empty.json", `{}`)},
	} {
		t.Run(name, func(t *testing.T) {
			msg := e.pullFails(1, ref, append(base, args...)...)
			if !strings.Contains(msg, "authentication failed") || !strings.Contains(msg, "private/app") || !strings.Contains(msg, "check --creds or --auth-file") {
				t.Errorf("unclear error: %s", msg)
			}
			if strings.Contains(msg, "Wr0ng") || strings.Contains(msg, pass) {
				t.Errorf("error leaks a password: %s", msg)
			}
		})
	}
}

// TestTamperedBlob alters a layer's bytes in the registry's storage: the
// pull fails with exit 5 and caches nothing; once the blob is honest again
// the pull works.
func TestTamperedBlob(t *testing.T) {
	reg := testutil.StartRegistry(t, testutil.RegistryOptions{})
	ref := reg.Push(t, testutil.BuildImage(t, smallImage(t, "honest")), "tamper/app:1")
	m, _ := testutil.ParseManifest(t, reg.RawManifest(t, "tamper/app", "1"))
	blob := reg.BlobPath(m.Layers[1].Digest)
	honest, err := os.ReadFile(blob)
	if err != nil {
		t.Fatal(err)
	}
	forged := bytes.Clone(honest)
	forged[len(forged)/2] ^= 0xff
	if err := os.WriteFile(blob, forged, 0o644); err != nil {
		t.Fatal(err)
	}
	e := newEnv(t)
	pol := e.write("policy.json", acceptAll)
	args := []string{"--policy", pol, "--insecure-registry", reg.Host}
	msg := e.pullFails(5, ref, args...)
	if !strings.Contains(msg, m.Layers[1].Digest) {
		t.Errorf("error does not name the layer: %s", msg)
	}
	// The untouched base layer may have been committed; the forged one
	// must not be, and no image is recorded.
	l := e.cacheLs()
	if len(l.Images) != 0 {
		t.Errorf("image recorded after a failed pull: %+v", l.Images)
	}
	if len(l.Layers) > 1 {
		t.Errorf("%d layers cached, at most the untouched one may be", len(l.Layers))
	}
	assertNoStaging(t, e.cache)

	if err := os.WriteFile(blob, honest, 0o644); err != nil {
		t.Fatal(err)
	}
	res := e.pull(ref, args...)
	if got, _ := os.ReadFile(filepath.Join(res.Rootfs, "app/second")); string(got) != "layer two of honest" {
		t.Errorf("app/second = %q after the honest pull", got)
	}
}

// assertNoStaging checks that no staging directory is left behind.
func assertNoStaging(t *testing.T, cache string) {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(cache, "staging"))
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.IsDir() {
			t.Errorf("staging directory %s left behind", e.Name())
		}
	}
}

// TestConnectionDroppedMidBlob: the registry connection breaks half-way
// through every blob; the pull resumes with Range requests and succeeds.
func TestConnectionDroppedMidBlob(t *testing.T) {
	reg := testutil.StartRegistry(t, testutil.RegistryOptions{})
	big := testutil.ImageSpec{Layers: [][]byte{testutil.Tar(t, testutil.Entry{Name: "big", Size: 8 << 20, Mode: 0o644})}}
	pushed := reg.Push(t, testutil.BuildImage(t, big), "flaky/app:1")
	proxy := testutil.StartProxy(t, reg.Host, testutil.ProxyOptions{DropFirst: true})
	ref := strings.Replace(pushed, reg.Host, proxy.Host, 1)
	e := newEnv(t)
	res := e.pull(ref, "--policy", e.write("policy.json", acceptAll), "--insecure-registry", proxy.Host)
	fi, err := os.Stat(filepath.Join(res.Rootfs, "big"))
	if err != nil || fi.Size() != 8<<20 {
		t.Fatalf("big: %v %v", fi, err)
	}
	layer := res.Layers[0].Digest
	if proxy.FullGets(layer) != 1 || proxy.RangeGets(layer) < 1 {
		t.Errorf("layer fetched %d times from the start and %d times resumed; want 1 and at least 1", proxy.FullGets(layer), proxy.RangeGets(layer))
	}
}

// TestTwoProcessesOneCache: two guest-puller processes pull the same image
// into one cache at once; both succeed and each layer is fetched once.
func TestTwoProcessesOneCache(t *testing.T) {
	reg := testutil.StartRegistry(t, testutil.RegistryOptions{})
	spec := testutil.ImageSpec{Layers: [][]byte{
		testutil.Tar(t, testutil.Entry{Name: "one", Size: 4 << 20, Mode: 0o644}),
		testutil.Tar(t, testutil.Entry{Name: "two", Size: 4 << 20, Mode: 0o644}),
		testutil.Tar(t, testutil.File("three", "3", 0o644)),
	}}
	pushed := reg.Push(t, testutil.BuildImage(t, spec), "shared/app:1")
	// Slow enough that the two pulls overlap.
	proxy := testutil.StartProxy(t, reg.Host, testutil.ProxyOptions{BytesPerSecond: 8 << 20})
	ref := strings.Replace(pushed, reg.Host, proxy.Host, 1)
	e := newEnv(t)
	pol := e.write("policy.json", acceptAll)
	var wg sync.WaitGroup
	results := make([]testutil.Result, 2)
	for i := range results {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = testutil.Exec(t, nil, bins["guest-puller"], "pull", ref, "--quiet", "--cache", e.cache,
				"--policy", pol, "--insecure-registry", proxy.Host, "--container-id", []string{"a", "b"}[i])
		}()
	}
	wg.Wait()
	for i, r := range results {
		if r.Code != 0 {
			t.Fatalf("process %d: exit %d: %s", i, r.Code, r.Stderr)
		}
	}
	m, _ := testutil.ParseManifest(t, reg.RawManifest(t, "shared/app", "1"))
	for _, l := range m.Layers {
		if n := proxy.FullGets(l.Digest) + proxy.RangeGets(l.Digest); n != 1 {
			t.Errorf("layer %s fetched %d times, want once", l.Digest, n)
		}
	}
	if got := len(e.cacheLs().Layers); got != 3 {
		t.Errorf("%d layers in the cache, want 3", got)
	}
}

// TestKilledPullIsCleanedUp: kill -9 in the middle of a pull leaves
// staging behind; the next run removes it and pulls cleanly.
func TestKilledPullIsCleanedUp(t *testing.T) {
	reg := testutil.StartRegistry(t, testutil.RegistryOptions{})
	spec := testutil.ImageSpec{Layers: [][]byte{testutil.Tar(t, testutil.Entry{Name: "big", Size: 16 << 20, Mode: 0o644})}}
	pushed := reg.Push(t, testutil.BuildImage(t, spec), "killed/app:1")
	proxy := testutil.StartProxy(t, reg.Host, testutil.ProxyOptions{BytesPerSecond: 2 << 20})
	ref := strings.Replace(pushed, reg.Host, proxy.Host, 1)
	e := newEnv(t)
	pol := e.write("policy.json", acceptAll)
	cmd := exec.Command(bins["guest-puller"], "pull", ref, "--quiet", "--cache", e.cache, "--policy", pol, "--insecure-registry", proxy.Host)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Wait until the layer is being applied into staging.
	deadline := time.Now().Add(30 * time.Second)
	for {
		entries, _ := os.ReadDir(filepath.Join(e.cache, "staging"))
		if len(entries) > 0 {
			break
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatal("the pull never started staging a layer")
		}
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(500 * time.Millisecond)
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	if len(e.cacheLs().Layers) != 0 {
		t.Fatal("a killed pull left a committed layer")
	}
	// cache ls opened the cache, which removes stale staging.
	assertNoStaging(t, e.cache)

	res := e.pull(ref, "--policy", pol, "--insecure-registry", proxy.Host)
	if fi, err := os.Stat(filepath.Join(res.Rootfs, "big")); err != nil || fi.Size() != 16<<20 {
		t.Fatalf("big after the clean pull: %v %v", fi, err)
	}
	assertNoStaging(t, e.cache)
}

// TestShortNames: with a registries.conf, a short name resolves as
// containers/image resolves it for a caller without a terminal: an alias
// first, else each unqualified-search-registries entry in order, the first
// that has the image and that the policy allows being the image; with
// short-name-mode "enforcing", more than one search registry is refused
// rather than tried in turn. Without a registries.conf a short name is a
// Docker Hub name (covered by the unit tests: no Docker Hub here).
func TestShortNames(t *testing.T) {
	first := testutil.StartRegistry(t, testutil.RegistryOptions{})
	second := testutil.StartRegistry(t, testutil.RegistryOptions{})
	second.Push(t, testutil.BuildImage(t, smallImage(t, "second's")), "team/app:1")
	first.Push(t, testutil.BuildImage(t, smallImage(t, "first's")), "team/squatted:1")
	second.Push(t, testutil.BuildImage(t, smallImage(t, "second's squatted")), "team/squatted:1")
	e := newEnv(t)
	conf := func(name, head string) string {
		return e.write(name, head+`
[[registry]]
location = "`+first.Host+`"
insecure = true

[[registry]]
location = "`+second.Host+`"
insecure = true
`)
	}
	search := `unqualified-search-registries = ["` + first.Host + `", "` + second.Host + `"]`
	acceptAllPol := e.write("accept.json", acceptAll)
	// Only the second registry is trusted: the first has a squatter.
	secondOnly := e.write("second-only.json", `{"default":[{"type":"reject"}],"transports":{"docker":{"`+second.Host+`":[{"type":"insecureAcceptAnything"}]}}}`)
	hello := func(res pullResult) string {
		data, err := os.ReadFile(filepath.Join(res.Rootfs, "app/hello"))
		if err != nil {
			t.Fatal(err)
		}
		return string(data)
	}

	t.Run("search registries in order", func(t *testing.T) {
		res := e.pull("team/app:1", "--policy", acceptAllPol, "--registries-conf", conf("permissive.conf", search), "--container-id", "search")
		if res.Image != second.Host+"/team/app:1" || hello(res) != "second's" {
			t.Fatalf("pulled %s (%q), want the second registry's", res.Image, hello(res))
		}
	})
	t.Run("a refused candidate gives way to the next", func(t *testing.T) {
		res := e.pull("team/squatted:1", "--policy", secondOnly, "--registries-conf", conf("permissive.conf", search), "--container-id", "squatted")
		if res.Image != second.Host+"/team/squatted:1" || hello(res) != "second's squatted" {
			t.Fatalf("pulled %s (%q), want the second registry's", res.Image, hello(res))
		}
	})
	t.Run("every candidate refused", func(t *testing.T) {
		none := e.write("none.json", `{"default":[{"type":"reject"}]}`)
		msg := e.pullFails(3, "team/squatted:1", "--policy", none, "--registries-conf", conf("permissive.conf", search))
		if !strings.Contains(msg, first.Host+"/team/squatted:1") {
			t.Errorf("refusal %q does not name the first candidate", msg)
		}
	})
	t.Run("enforcing refuses to choose", func(t *testing.T) {
		msg := e.pullFails(2, "team/app:1", "--policy", acceptAllPol, "--registries-conf", conf("enforcing.conf", "short-name-mode = \"enforcing\"\n"+search))
		for _, want := range []string{"short-name-mode is enforcing", first.Host, second.Host} {
			if !strings.Contains(msg, want) {
				t.Errorf("error %q does not contain %q", msg, want)
			}
		}
	})
	t.Run("alias", func(t *testing.T) {
		c := conf("alias.conf", "short-name-mode = \"enforcing\"\n"+search+"\n[aliases]\n\"myapp\" = \""+second.Host+"/team/app\"\n")
		res := e.pull("myapp:1", "--policy", acceptAllPol, "--registries-conf", c, "--container-id", "alias")
		if res.Image != second.Host+"/team/app:1" {
			t.Fatalf("pulled %s, want the alias's target", res.Image)
		}
	})
	t.Run("no search registries", func(t *testing.T) {
		msg := e.pullFails(2, "team/app:1", "--policy", acceptAllPol, "--registries-conf", conf("none.conf", ""))
		if !strings.Contains(msg, "unqualified-search-registries") {
			t.Errorf("error %q does not say what is missing", msg)
		}
	})
}
