package tests

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/specs-go"
	ispec "github.com/opencontainers/image-spec/specs-go/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	guestpullerv1 "github.com/guest-puller/guest-puller/api/v1"
	"github.com/guest-puller/guest-puller/internal/devkbs/devkbstest"
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

// TestHostileConfigBoundedInMemory: an image's configuration is the
// registry's to write when no signature pins it (insecureAcceptAnything,
// or `encrypted` alone). Decoded whole, a config of small JSON values grew
// a hundredfold: 4 MiB of empty history entries took 323 MiB of RSS (32
// MiB, the bound then, 1.4 GiB of heap), and 4 MiB of environment
// variables kept a pull busy for more than five minutes in umoci's
// quadratic conversion. A config is now read within 4 MiB (containers/
// image's bound), its history is not kept, and its lists (Env, Labels,
// ...) hold at most 4096 entries: each config below is pulled or refused
// by the real binary within memoryBudget.
func TestHostileConfigBoundedInMemory(t *testing.T) {
	const bound = 4 << 20
	reg := testutil.StartRegistry(t, testutil.RegistryOptions{})
	e := newEnv(t)
	policy := e.write("policy.json", acceptAll)
	layer := testutil.Tar(t, testutil.File("f", "x", 0o644))
	diffID := digest.FromBytes(layer)
	m := ispec.Manifest{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ispec.MediaTypeImageManifest,
		Layers: []ispec.Descriptor{{MediaType: ispec.MediaTypeImageLayer, Digest: digest.Digest(reg.UploadBlob(t, "config/app", layer)), Size: int64(len(layer))}}}
	head := fmt.Sprintf(`{"architecture":%q,"os":"linux",`, runtime.GOARCH)
	rootfs := fmt.Sprintf(`"rootfs":{"type":"layers","diff_ids":[%q]}`, diffID)
	// fill writes prefix, then item(0), item(1)... comma-separated while
	// the config stays under size bytes or until n items, then tail.
	fill := func(prefix string, item func(i int) string, tail string, size, n int) []byte {
		var b strings.Builder
		b.WriteString(prefix)
		for i := 0; b.Len()+len(tail)+32 < size && i < n; i++ {
			if i > 0 {
				b.WriteByte(',')
			}
			b.WriteString(item(i))
		}
		b.WriteString(tail)
		return []byte(b.String())
	}
	const all = 1 << 30
	empty := func(int) string { return "{}" }
	env := func(i int) string { return fmt.Sprintf(`"V%x="`, i) }
	for _, tc := range []struct {
		name string
		cfg  []byte
		code int
		want string
	}{
		{"empty history entries", fill(head+rootfs+`,"history":[`, empty, `]}`, bound, all), 0, ""},
		{"4096 environment variables", fill(head+rootfs+`,"config":{"Env":[`, env, `]}}`, bound, 4096), 0, ""},
		{"environment variables", fill(head+rootfs+`,"config":{"Env":[`, env, `]}}`, bound, all), 1, "more than 4096 entries"},
		{"labels", fill(head+rootfs+`,"config":{"Labels":{`, func(i int) string { return fmt.Sprintf(`"%x":""`, i) }, `}}}`, bound, all), 1, "more than 4096 entries"},
		{"empty diff_ids", fill(head+`"rootfs":{"type":"layers","diff_ids":[`, func(int) string { return `""` }, `]}}`, bound, all), 1, "more than 4096 entries"},
		{"over the bound", fill(head+rootfs+`,"history":[`, empty, `]}`, bound+64<<10, all), 1, "more than the 4194304 allowed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id := strings.ReplaceAll(tc.name, " ", "-")
			ref := pushConfig(t, reg, "config/app", id, m, tc.cfg)
			r := e.gpMeasured("pull", ref, "--quiet", "--policy", policy, "--insecure-registry", reg.Host, "--container-id", id)
			if r.Code != tc.code || !strings.Contains(r.Stderr, tc.want) {
				t.Errorf("pull of a %d KiB config: exit %d, want %d saying %q: %.300s", len(tc.cfg)>>10, r.Code, tc.code, tc.want, r.Stderr)
			}
			assertPeakRSS(t, "pull", r)
		})
	}
}

// TestKBSAnswersBoundedWhileRead (issue 8, hole 6): a KBS, or whoever sits
// on the guest's way to it, that answers with 90 MiB (streamed, or
// announced in Content-Length) is refused as soon as the answer passes
// its bound (1 MiB for the handshake, 16 MiB for a resource): the pull
// fails with exit 4 naming the bound, the KBS gets to write little more
// than it, and the process's peak memory stays under memoryBudget.
func TestKBSAnswersBoundedWhileRead(t *testing.T) {
	const size = 90 << 20
	resources := t.TempDir()
	testutil.WriteResource(t, resources, "default/policy/1", []byte(acceptAll))
	kbs := devkbstest.StartDevKBS(t, bins["dev-kbs"], "--resources", resources, "--allow-sample")
	target, _ := url.Parse(kbs.URL)
	rp := httputil.NewSingleHostReverseProxy(target)
	var written atomic.Int64
	var hostile atomic.Value // the path answered with size bytes
	var announce atomic.Bool
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.HasPrefix(r.URL.Path, hostile.Load().(string)) {
			rp.ServeHTTP(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		if announce.Load() {
			w.Header().Set("Content-Length", fmt.Sprint(size))
		}
		chunk := []byte(`{"nonce":"` + strings.Repeat("A", 64<<10))
		for sent := 0; sent < size; sent += len(chunk) {
			n, err := w.Write(chunk)
			written.Add(int64(n))
			if err != nil {
				return
			}
		}
	}))
	t.Cleanup(srv.Close)
	e := newEnv(t)
	for _, tc := range []struct {
		path     string
		announce bool
		bound    int
	}{
		{"/kbs/v0/auth", false, 1 << 20},
		{"/kbs/v0/attest", true, 1 << 20},
		{"/kbs/v0/resource/", false, 16 << 20},
	} {
		t.Run(fmt.Sprintf("%s announced %v", tc.path, tc.announce), func(t *testing.T) {
			hostile.Store(tc.path)
			announce.Store(tc.announce)
			written.Store(0)
			r := e.gpMeasured("pull", "127.0.0.1:1/never/contacted:1", "--quiet", "--policy", "kbs:///default/policy/1",
				"--kbs", srv.URL, "--attester", "sample")
			want := fmt.Sprintf("larger than %d bytes", tc.bound)
			if r.Code != 4 || !strings.Contains(r.Stderr, want) {
				t.Errorf("pull: exit %d, want 4 saying %q: %s", r.Code, want, r.Stderr)
			}
			if w := written.Load(); w > int64(tc.bound)+16<<20 {
				t.Errorf("the KBS wrote %d MiB of a %d MiB answer", w>>20, size>>20)
			}
			assertPeakRSS(t, "pull", r)
		})
	}
}

// TestManifestTokensBounded: a manifest within the 4 MiB bound can still
// hold 400,000 annotations, which decoded took 50 MiB a pull, and 358 MiB
// in a daemon serving eight such requests at once; served as an image's
// cosign signature manifest, 85 and 521 MiB. A manifest, index or
// signature manifest of more than 65,536 JSON tokens is refused before it
// is decoded: by the command line (exit 1, or a policy refusal, exit 3,
// for a signature) and by the daemon for eight concurrent requests, whose
// peak RSS stays under daemonBudget.
func TestManifestTokensBounded(t *testing.T) {
	reg := testutil.StartRegistry(t, testutil.RegistryOptions{})
	layer := testutil.Tar(t, testutil.File("f", "x", 0o644))
	ld := ispec.Descriptor{MediaType: ispec.MediaTypeImageLayer, Digest: digest.Digest(reg.UploadBlob(t, "tokens/app", layer)), Size: int64(len(layer))}
	cfg := []byte(fmt.Sprintf(`{"architecture":%q,"os":"linux","rootfs":{"type":"layers","diff_ids":[%q]}}`, runtime.GOARCH, digest.FromBytes(layer)))
	cd := ispec.Descriptor{MediaType: ispec.MediaTypeImageConfig, Digest: digest.Digest(reg.UploadBlob(t, "tokens/app", cfg)), Size: int64(len(cfg))}
	m, err := json.Marshal(ispec.Manifest{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ispec.MediaTypeImageManifest, Config: cd, Layers: []ispec.Descriptor{ld}})
	if err != nil {
		t.Fatal(err)
	}
	reg.PutManifest(t, "tokens/app", "plain", ispec.MediaTypeImageManifest, m)
	// m with just under 4 MiB of annotations.
	var b strings.Builder
	b.Write(m[:len(m)-1])
	b.WriteString(`,"annotations":{`)
	for i := 0; b.Len() < 4<<20-64<<10; i++ {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `"%x":""`, i)
	}
	b.WriteString("}}")
	annotated := []byte(b.String())
	// The registry serves the annotated manifest for the tag "annotated"
	// and for the plain image's cosign attachment tag (docker-registry
	// itself takes seconds to store or serve one).
	sigTag := strings.Replace(digest.FromBytes(m).String(), ":", "-", 1) + ".sig"
	target, _ := url.Parse("http://" + reg.Host)
	rp := httputil.NewSingleHostReverseProxy(target)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v2/tokens/app/manifests/annotated" && r.URL.Path != "/v2/tokens/app/manifests/"+sigTag {
			rp.ServeHTTP(w, r)
			return
		}
		w.Header().Set("Content-Type", ispec.MediaTypeImageManifest)
		w.Write(annotated)
	}))
	t.Cleanup(srv.Close)
	host := strings.TrimPrefix(srv.URL, "http://")

	// pullEight pulls image eight times at once from a daemon of e with
	// policy, checks each error, and returns the daemon's peak RSS.
	pullEight := func(e *env, policy, image string, check func(error)) {
		t.Helper()
		d := startDaemon(t, e, "--policy", policy, "--insecure-registry", host)
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		native := guestpullerv1.NewGuestPullerClient(d.client)
		errs := make([]error, 8)
		var wg sync.WaitGroup
		for i := range errs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, errs[i] = native.Pull(ctx, &guestpullerv1.PullRequest{Image: image, ContainerId: fmt.Sprint("eight-", i)})
			}()
		}
		wg.Wait()
		for _, err := range errs {
			check(err)
		}
		hwm := vmHWM(t, d.cmd.Process.Pid)
		t.Logf("daemon peak RSS after 8 concurrent pulls: %s", testutil.MiB(hwm))
		if hwm > daemonBudget {
			t.Errorf("daemon peak RSS %s, more than the %s budget", testutil.MiB(hwm), testutil.MiB(daemonBudget))
		}
	}

	t.Run("image manifest", func(t *testing.T) {
		image := host + "/tokens/app:annotated"
		e := newEnv(t)
		policy := e.write("policy.json", acceptAll)
		// The same image without the annotations pulls.
		e.pull(host+"/tokens/app:plain", "--policy", policy, "--insecure-registry", host, "--container-id", "plain")
		r := e.gpMeasured("pull", image, "--quiet", "--policy", policy, "--insecure-registry", host)
		if r.Code != 1 || !strings.Contains(r.Stderr, "more than 65536 JSON tokens") {
			t.Errorf("pull of a manifest of %d KiB of annotations: exit %d, want 1 refusing its tokens: %.300s", len(annotated)>>10, r.Code, r.Stderr)
		}
		assertPeakRSS(t, "pull", r)
		pullEight(e, policy, image, func(err error) {
			if err == nil || !strings.Contains(err.Error(), "JSON tokens") {
				t.Errorf("daemon pull: %v, want the manifest refused for its tokens", err)
			}
		})
	})

	t.Run("signature manifest", func(t *testing.T) {
		// The plain image's cosign attachment tag holds the annotated
		// manifest: a signature store's answer, for a policy that wants
		// a signature.
		e := newEnv(t)
		policy := e.write("policy.json", `{"default":[{"type":"sigstoreSigned","keyPath":"`+testutil.ECKey(t, t.TempDir(), "cosign").Public+`"}]}`)
		image := host + "/tokens/app:plain"
		r := e.gpMeasured("policy", "check", image, "--policy", policy, "--insecure-registry", host)
		if r.Code != 3 || !strings.Contains(r.Stdout+r.Stderr, "more than 65536 JSON tokens") {
			t.Errorf("policy check with a signature manifest of %d KiB of annotations: exit %d, want 3 refusing its tokens: %.300s%.300s", len(annotated)>>10, r.Code, r.Stdout, r.Stderr)
		}
		assertPeakRSS(t, "policy check", r)
		pullEight(e, policy, image, func(err error) {
			if status.Code(err) != codes.PermissionDenied {
				t.Errorf("daemon pull: %v, want PermissionDenied", err)
			}
		})
	})
}
