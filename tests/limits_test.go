package tests

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/guest-puller/guest-puller/internal/testutil"
)

// TestHugeManifestBoundedWhileRead (issue 8, hole 6): a registry that
// answers a manifest request with 90 MiB (announced, or streamed without a
// length) is refused as soon as the answer passes the 4 MiB bound: the
// pull fails with exit 1 naming the bound, the registry gets to write
// little more than the bound, and the process's peak memory stays far
// below the answer's size. Reading the whole body first cost 441 MiB.
func TestHugeManifestBoundedWhileRead(t *testing.T) {
	const size = 90 << 20
	reg := testutil.StartRegistry(t, testutil.RegistryOptions{})
	reg.Push(t, testutil.BuildImage(t, smallImage(t, "huge")), "huge/app:1")
	target, _ := url.Parse("http://" + reg.Host)
	rp := httputil.NewSingleHostReverseProxy(target)
	var written, requests atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.Contains(r.URL.Path, "/manifests/") {
			rp.ServeHTTP(w, r)
			return
		}
		requests.Add(1)
		w.Header().Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
		if strings.HasSuffix(r.URL.Path, ":announced") || strings.HasSuffix(r.URL.Path, "/announced") {
			w.Header().Set("Content-Length", "94371840")
		}
		chunk := []byte(`{"schemaVersion":2,"annotations":{"x":"` + strings.Repeat("A", 64<<10) + `"}}`)
		for sent := 0; sent < size; sent += len(chunk) {
			n, err := w.Write(chunk)
			written.Add(int64(n))
			if err != nil {
				return
			}
		}
	}))
	t.Cleanup(srv.Close)
	host := strings.TrimPrefix(srv.URL, "http://")
	e := newEnv(t)
	for _, tag := range []string{"streamed", "announced"} {
		t.Run(tag, func(t *testing.T) {
			written.Store(0)
			requests.Store(0)
			cmd := exec.Command(bins["guest-puller"], "pull", host+"/huge/app:"+tag, "--quiet", "--cache", e.cache,
				"--policy", e.write("policy.json", acceptAll), "--insecure-registry", host)
			peak := testutil.MeasurePeakRSS(t, cmd)
			var stderr strings.Builder
			cmd.Stderr = &stderr
			err := cmd.Run()
			var ee *exec.ExitError
			if !errors.As(err, &ee) {
				t.Fatalf("pull: %v, want exit 1", err)
			}
			if ee.ExitCode() != 1 || !strings.Contains(stderr.String(), "larger than 4 MiB") {
				t.Errorf("pull: exit %d, want exit 1 refusing an answer larger than 4 MiB: %s", ee.ExitCode(), stderr.String())
			}
			if n := requests.Load(); n != 1 {
				t.Errorf("%d manifest requests, want 1 (an oversized answer is not retried)", n)
			}
			if w := written.Load(); w > 16<<20 {
				t.Errorf("the registry wrote %d MiB of the %d MiB answer", w>>20, size>>20)
			}
			if rss := peak(); rss > 64<<20 {
				t.Errorf("peak RSS %d MiB for a refused %d MiB manifest, want < 64 MiB", rss>>20, size>>20)
			}
		})
	}
}
