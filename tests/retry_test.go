package tests

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/guest-puller/guest-puller/internal/testutil"
)

// TestRegistryFaultsRetried: through the binary, every blob (the config
// and each layer) first meets a 503, a 429 asking to wait one second, and
// a connection cut before any answer; the one retry layer repeats each
// request exactly once per fault, honours Retry-After, and the pull
// succeeds: four GETs per blob, never more.
func TestRegistryFaultsRetried(t *testing.T) {
	reg := testutil.StartRegistry(t, testutil.RegistryOptions{})
	pushed := reg.Push(t, testutil.BuildImage(t, smallImage(t, "retried")), "faults/app:1")
	m, _ := testutil.ParseManifest(t, reg.RawManifest(t, "faults/app", "1"))
	proxy := testutil.StartProxy(t, reg.Host, testutil.ProxyOptions{BlobFaults: []testutil.Fault{
		{Status: 503}, {Status: 429, RetryAfter: "1"}, {Cut: true},
	}})
	e := newEnv(t)
	start := time.Now()
	res := e.pull(strings.Replace(pushed, reg.Host, proxy.Host, 1), "--policy", e.write("policy.json", acceptAll), "--insecure-registry", proxy.Host)
	if got, _ := os.ReadFile(filepath.Join(res.Rootfs, "app/hello")); string(got) != "retried" {
		t.Fatalf("app/hello = %q", got)
	}
	if len(m.Layers) != 2 {
		t.Fatalf("image has %d layers, want 2", len(m.Layers))
	}
	for _, d := range append([]string{m.Config.Digest}, m.Layers[0].Digest, m.Layers[1].Digest) {
		if n := proxy.FullGets(d) + proxy.RangeGets(d); n != 4 {
			t.Errorf("blob %s: %d GETs, want exactly 4 (three faults, then the answer)", d, n)
		}
	}
	if elapsed := time.Since(start); elapsed < time.Second {
		t.Errorf("pull took %v: the 429's Retry-After of 1s was not honoured", elapsed)
	}
}

// TestRegistryFaultsExhausted: a registry that answers 503 to every blob
// request gets exactly five requests for the first blob it is asked for
// (the config), then the pull fails with exit 1, naming the status, and
// fetches nothing else.
func TestRegistryFaultsExhausted(t *testing.T) {
	reg := testutil.StartRegistry(t, testutil.RegistryOptions{})
	pushed := reg.Push(t, testutil.BuildImage(t, smallImage(t, "exhausted")), "faults/down:1")
	m, _ := testutil.ParseManifest(t, reg.RawManifest(t, "faults/down", "1"))
	faults := make([]testutil.Fault, 50)
	for i := range faults {
		faults[i] = testutil.Fault{Status: 503}
	}
	proxy := testutil.StartProxy(t, reg.Host, testutil.ProxyOptions{BlobFaults: faults})
	e := newEnv(t)
	msg := e.pullFails(1, strings.Replace(pushed, reg.Host, proxy.Host, 1), "--policy", e.write("policy.json", acceptAll), "--insecure-registry", proxy.Host)
	if !strings.Contains(msg, "503") || !strings.Contains(msg, "faults/down") {
		t.Errorf("error does not name the image and the 503: %s", msg)
	}
	if n := proxy.FullGets(m.Config.Digest); n != 5 {
		t.Errorf("config blob requested %d times, want exactly 5", n)
	}
	if n := proxy.BlobGets(); n != 5 {
		t.Errorf("%d blob requests in all, want only the config's 5", n)
	}
}
