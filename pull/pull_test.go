package pull

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	ggcrregistry "github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
	godigest "github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"

	"github.com/guest-puller/guest-puller/internal/errdefs"
	"github.com/guest-puller/guest-puller/internal/registry"
	"github.com/guest-puller/guest-puller/internal/testutil"
	"github.com/guest-puller/guest-puller/policy"
	"github.com/guest-puller/guest-puller/unpack"
)

func TestDefaultContainerID(t *testing.T) {
	d := v1.Hash{Algorithm: "sha256", Hex: strings.Repeat("ab", 32)}
	for in, want := range map[string]string{
		"busybox":                         "docker.io_library_busybox-abababababab",
		"Registry.Example.com:5000/A/b:1": "registry.example.com_5000_a_b-abababababab",
	} {
		ref, err := name.ParseReference(strings.ToLower(in))
		if err != nil {
			t.Fatal(err)
		}
		if got := DefaultContainerID(ref, d); got != want {
			t.Errorf("DefaultContainerID(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestBundleContainerID(t *testing.T) {
	hashed := func(p string) string {
		sum := sha256.Sum256([]byte(p))
		return fmt.Sprintf("bundle-%x", sum[:8])
	}
	for in, want := range map[string]string{
		"/run/kata-containers/abc123":  "abc123",
		"/run/kata-containers/abc123/": "abc123",
		"c1":                           "c1",
		"./c1/":                        "c1",
		"/x/has space":                 hashed("/x/has space"),
		"/x/.hidden":                   hashed("/x/.hidden"),
		"/x/a..b":                      hashed("/x/a..b"),
		"/":                            hashed("/"),
	} {
		if got := BundleContainerID(in); got != want {
			t.Errorf("BundleContainerID(%q) = %q, want %q", in, got, want)
		}
	}
	if a, b := BundleContainerID("/a/has space"), BundleContainerID("/b/has space"); a == b {
		t.Errorf("two unnameable directories share the container id %s", a)
	}
}

// fixture is an in-process registry (go-containerregistry's), a cache and
// a policy. The cache is in memory (newFixture: no root needed) or the
// real one (newRealFixture: overlay bundles, so root).
type fixture struct {
	t     *testing.T
	host  string
	cache Cache
	mem   *memCache     // newFixture's cache
	real  *unpack.Cache // newRealFixture's cache
	gets  *blobCounter
}

type blobCounter struct {
	mu   sync.Mutex
	n    map[string]int
	next http.Handler
}

func (b *blobCounter) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if i := strings.Index(r.URL.Path, "/blobs/"); i >= 0 && r.Method == http.MethodGet {
		b.mu.Lock()
		b.n[r.URL.Path[i+len("/blobs/"):]]++
		b.mu.Unlock()
	}
	b.next.ServeHTTP(w, r)
}

func (b *blobCounter) count(d string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.n[d]
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	gets := &blobCounter{n: map[string]int{}, next: ggcrregistry.New(ggcrregistry.Logger(log.New(io.Discard, "", 0)))}
	srv := httptest.NewServer(gets)
	t.Cleanup(srv.Close)
	mem := newMemCache()
	t.Cleanup(func() {
		if leases, pins := mem.outstanding(); leases != 0 || pins != 0 {
			t.Errorf("%d leases with %d pins outlived their pulls", leases, pins)
		}
	})
	return &fixture{t: t, host: strings.TrimPrefix(srv.URL, "http://"), cache: mem, mem: mem, gets: gets}
}

func newRealFixture(t *testing.T) *fixture {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("this test makes overlay mounts and needs root")
	}
	f := newFixture(t)
	dir := t.TempDir()
	t.Cleanup(func() { unmountUnder(t, dir) })
	c, err := unpack.Open(context.Background(), filepath.Join(dir, "cache"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	f.cache, f.mem, f.real = FromCache(c), nil, c
	return f
}

func unmountUnder(t *testing.T, dir string) {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Error(err)
		return
	}
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) > 4 && strings.HasPrefix(f[4], dir+"/") {
			unix.Unmount(f[4], unix.MNT_DETACH)
		}
	}
}

func (f *fixture) puller(policyJSON string) *Puller {
	f.t.Helper()
	pol, err := policy.Load(context.Background(), []byte(policyJSON), policy.LoadOptions{})
	if err != nil {
		f.t.Fatal(err)
	}
	rc, err := registry.New(registry.Options{Insecure: []string{f.host}})
	if err != nil {
		f.t.Fatal(err)
	}
	p, err := New(Options{Registry: FromClient(rc), Cache: f.cache, Policy: pol})
	if err != nil {
		f.t.Fatal(err)
	}
	return p
}

func (f *fixture) push(repo string, img v1.Image) string {
	f.t.Helper()
	ref, err := name.ParseReference(f.host+"/"+repo, name.Insecure)
	if err != nil {
		f.t.Fatal(err)
	}
	if err := remote.Write(ref, img); err != nil {
		f.t.Fatal(err)
	}
	return ref.String()
}

func tarLayer(t *testing.T, files map[string]string) v1.Layer {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for p, c := range files {
		tw.WriteHeader(&tar.Header{Name: p, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(c))})
		io.WriteString(tw, c)
	}
	tw.Close()
	data := buf.Bytes()
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil })
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func image(t *testing.T, layers ...v1.Layer) v1.Image {
	t.Helper()
	img, err := mutate.AppendLayers(empty.Image, layers...)
	if err != nil {
		t.Fatal(err)
	}
	return testutil.LinuxAMD64(t, img)
}

const acceptAll = `{"default":[{"type":"insecureAcceptAnything"}]}`

// TestPullAndCacheHit: a second pull of an image finds its layers cached
// and fetches none of them again, and a cached image is still judged by
// the policy. Over the cache in memory (the pipeline's own logic, no
// root) and over the real one (overlay bundles, root).
func TestPullAndCacheHit(t *testing.T) {
	for _, tc := range []struct {
		name    string
		fixture func(*testing.T) *fixture
	}{
		{"in memory", newFixture},
		{"real cache", newRealFixture},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := tc.fixture(t)
			ref := f.push("app:1", image(t, tarLayer(t, map[string]string{"a": "A"}), tarLayer(t, map[string]string{"b": "B"})))
			p := f.puller(acceptAll)
			ctx := context.Background()
			res, err := p.Pull(ctx, Request{Image: ref, ContainerID: "one"})
			if err != nil {
				t.Fatal(err)
			}
			for _, name := range []string{"a", "b"} {
				if got, err := f.readRootfs(res, "one", name); err != nil || got != strings.ToUpper(name) {
					t.Errorf("rootfs/%s = %q, %v", name, got, err)
				}
			}
			res2, err := p.Pull(ctx, Request{Image: ref, ContainerID: "two"})
			if err != nil {
				t.Fatal(err)
			}
			if len(res2.Layers) != 2 {
				t.Fatalf("%d layers, want 2", len(res2.Layers))
			}
			for i, l := range res2.Layers {
				if !l.Cached || res.Layers[i].Cached {
					t.Errorf("layer %d: cached %v then %v, want false then true", i, res.Layers[i].Cached, l.Cached)
				}
				if n := f.gets.count(l.Digest); n != 1 {
					t.Errorf("layer %d fetched %d times over two pulls, want 1", i, n)
				}
			}
			// The policy is evaluated again on a cache hit.
			reject := f.puller(`{"default":[{"type":"reject"}]}`)
			reject.opts.Cache = f.cache
			if _, err := reject.Pull(ctx, Request{Image: ref, ContainerID: "three"}); !errors.Is(err, errdefs.ErrRefused) {
				t.Fatalf("cached image under reject: %v, want ErrRefused", err)
			}
		})
	}
}

// readRootfs reads the file name of the bundle id that res made.
func (f *fixture) readRootfs(res *Result, id, name string) (string, error) {
	if f.mem != nil {
		got, ok := f.mem.rootfs(id)[name]
		if !ok {
			return "", os.ErrNotExist
		}
		return got, nil
	}
	got, err := os.ReadFile(filepath.Join(res.Rootfs, name))
	return string(got), err
}

// TestVerifyCached: with VerifyCached (a cache on a sealed store), a
// cached layer is read back before reuse; one that fails is an integrity
// failure naming the layer, and the next pull fetches it again.
func TestVerifyCached(t *testing.T) {
	f := newFixture(t)
	ref := f.push("app:1", image(t, tarLayer(t, map[string]string{"a": "A"}), tarLayer(t, map[string]string{"b": "B"})))
	p := f.puller(acceptAll)
	p.opts.VerifyCached = true
	ctx := context.Background()
	first, err := p.Pull(ctx, Request{Image: ref, ContainerID: "one"})
	if err != nil {
		t.Fatal(err)
	}
	if len(first.Layers) != 2 {
		t.Fatalf("%d layers", len(first.Layers))
	}
	if _, err := p.Pull(ctx, Request{Image: ref, ContainerID: "two"}); err != nil {
		t.Fatalf("cache hit with intact layers: %v", err)
	}
	broken := first.Layers[1].DiffID
	l, ok := f.mem.layer(godigest.Digest(broken))
	if !ok {
		t.Fatalf("layer %s not cached", broken)
	}
	f.mem.mu.Lock()
	l.unreadable = true
	f.mem.mu.Unlock()

	_, err = p.Pull(ctx, Request{Image: ref, ContainerID: "three"})
	if !errors.Is(err, errdefs.ErrIntegrity) || !strings.Contains(err.Error(), first.Layers[1].Digest) {
		t.Fatalf("pull over an unreadable cached layer: %v, want an integrity error naming %s", err, first.Layers[1].Digest)
	}
	again, err := p.Pull(ctx, Request{Image: ref, ContainerID: "four"})
	if err != nil {
		t.Fatal(err)
	}
	if !again.Layers[0].Cached || again.Layers[1].Cached {
		t.Errorf("after the failure: cached %v, %v; want the intact layer reused, the broken one fetched", again.Layers[0].Cached, again.Layers[1].Cached)
	}
	if n := f.gets.count(first.Layers[1].Digest); n != 2 {
		t.Errorf("the broken layer was fetched %d times, want 2", n)
	}
	if got := f.mem.rootfs("four")["b"]; got != "B" {
		t.Errorf("rootfs/b = %q after the refetch", got)
	}
}

func TestPullRefusals(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	good := tarLayer(t, map[string]string{"x": "x"})

	// A config whose diff_id does not match the layer's content.
	img := image(t, good)
	cf, _ := img.ConfigFile()
	cf = cf.DeepCopy()
	cf.RootFS.DiffIDs[0] = v1.Hash{Algorithm: "sha256", Hex: strings.Repeat("0", 64)}
	badDiff, err := mutate.ConfigFile(img, cf)
	if err != nil {
		t.Fatal(err)
	}
	// A layer with a media type nobody can unpack.
	weird := image(t, static.NewLayer([]byte("not a tar"), "application/vnd.example.unknown"))
	// A gzip layer whose bytes are not gzip (its digest is right).
	notGzip := image(t, static.NewLayer([]byte("this is not gzip data"), types.OCILayer))
	// An encrypted layer when no key is configured.
	enc, err := mutate.Append(empty.Image, mutate.Addendum{Layer: static.NewLayer([]byte("ciphertext"), types.MediaType("application/vnd.oci.image.layer.v1.tar+gzip+encrypted"))})
	if err != nil {
		t.Fatal(err)
	}

	p := f.puller(acceptAll)
	for _, tc := range []struct {
		name string
		img  v1.Image
		want error
		// fetched says whether a layer blob may have been downloaded.
		fetched bool
	}{
		{"diff_id mismatch", badDiff, errdefs.ErrIntegrity, true},
		{"unknown layer media type", weird, nil, false},
		{"corrupt gzip", notGzip, errdefs.ErrIntegrity, true},
		{"encrypted without keys", enc, errdefs.ErrDecrypt, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ref := f.push("refuse/"+strings.ReplaceAll(tc.name, " ", "-")+":1", tc.img)
			_, err := p.Pull(ctx, Request{Image: ref})
			if err == nil || (tc.want != nil && !errors.Is(err, tc.want)) {
				t.Fatalf("Pull = %v, want %v", err, tc.want)
			}
			if !strings.Contains(err.Error(), "refuse/") {
				t.Errorf("error does not name the image: %v", err)
			}
			layers, _ := tc.img.Layers()
			d, _ := layers[0].Digest()
			if n := f.gets.count(d.String()); !tc.fetched && n != 0 {
				t.Errorf("layer fetched %d times before the refusal", n)
			}
			for ref := range f.mem.images {
				if strings.Contains(ref, "refuse/") {
					t.Errorf("refused image recorded: %s", ref)
				}
			}
		})
	}
	if n := len(f.mem.layers); n != 0 {
		t.Errorf("%d layers cached after refused pulls", n)
	}
}

func TestBadReference(t *testing.T) {
	f := newFixture(t)
	_, err := f.puller(acceptAll).Pull(context.Background(), Request{Image: "UPPER/Case::bad"})
	if !errors.Is(err, errdefs.ErrInvalidConfig) {
		t.Fatalf("Pull = %v, want ErrInvalidConfig", err)
	}
}
