package cdh

import (
	"context"
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
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	ggcrregistry "github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"golang.org/x/sys/unix"

	"github.com/guest-puller/guest-puller/internal/cdhconfig"
	"github.com/guest-puller/guest-puller/internal/errdefs"
	"github.com/guest-puller/guest-puller/internal/testutil"
	"github.com/guest-puller/guest-puller/pull"
	"github.com/guest-puller/guest-puller/securemount"
)

// stallRegistry is an in-process registry whose blob stall (one of
// image's layers) is held back until release is closed.
type stallRegistry struct {
	host    string
	stall   string
	release chan struct{}
	stalled chan struct{} // closed when the stalled blob is asked for
	once    sync.Once
}

func startStallRegistry(t *testing.T) *stallRegistry {
	t.Helper()
	r := &stallRegistry{release: make(chan struct{}), stalled: make(chan struct{})}
	reg := ggcrregistry.New(ggcrregistry.Logger(log.New(io.Discard, "", 0)))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if r.stall != "" && strings.HasSuffix(req.URL.Path, "/blobs/"+r.stall) && req.Method == http.MethodGet {
			r.once.Do(func() { close(r.stalled) })
			<-r.release
		}
		reg.ServeHTTP(w, req)
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(func() {
		select {
		case <-r.release:
		default:
			close(r.release)
		}
	})
	r.host = strings.TrimPrefix(srv.URL, "http://")
	return r
}

// push writes a random image of two layers as repo:tag and returns its
// reference and its second layer's digest.
func (r *stallRegistry) push(t *testing.T, repo string) (string, string) {
	t.Helper()
	img, err := random.Image(1024, 2)
	if err != nil {
		t.Fatal(err)
	}
	img = testutil.LinuxAMD64(t, img)
	ref := r.host + "/" + repo + ":1"
	nref, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(nref, img); err != nil {
		t.Fatal(err)
	}
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	d, err := layers[1].Digest()
	if err != nil {
		t.Fatal(err)
	}
	return ref, d.String()
}

func newTestHub(t *testing.T, root, registryHost string) *Hub {
	t.Helper()
	dir := t.TempDir()
	regConf := filepath.Join(dir, "registries.conf")
	if err := os.WriteFile(regConf, []byte(fmt.Sprintf("[[registry]]\nlocation = %q\ninsecure = true\n", registryHost)), 0o600); err != nil {
		t.Fatal(err)
	}
	toml := filepath.Join(dir, "cdh.toml")
	if err := os.WriteFile(toml, []byte(fmt.Sprintf("socket = \"unix://%s/cdh.sock\"\n[kbc]\nname = \"cc_kbc\"\nurl = \"http://127.0.0.1:1\"\n[image]\nwork_dir = %q\nregistry_configuration_uri = \"file://%s\"\n", dir, root, regConf)), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := cdhconfig.Load(toml, cdhconfig.Env{})
	if err != nil {
		t.Fatal(err)
	}
	h, err := New(context.Background(), Options{Config: cfg, Attester: "sample"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	return h
}

// unmountUnder lazily unmounts every mount at or below dir, deepest first.
func unmountUnder(t *testing.T, dir string) {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Error(err)
		return
	}
	var mps []string
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && (f[4] == dir || strings.HasPrefix(f[4], dir+"/")) {
			mps = append(mps, f[4])
		}
	}
	for i := len(mps) - 1; i >= 0; i-- {
		if err := unix.Unmount(mps[i], unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
			t.Errorf("unmount %s: %v", mps[i], err)
		}
	}
}

// TestSecureMountOverTheCache: kata-agent mounts its trusted storage over
// the CDH's cache (image.work_dir) while a pull runs. The mount waits for
// that pull, which finishes on the cache it started on; a pull asked for
// meanwhile waits for the mount; then the cache and the Puller are opened
// anew on the new filesystem (a tmpfs here, through the same hook a
// SecureMount takes; tests/vm mounts a sealed store), where the second
// pull lands. A mount inside the cache is refused; one elsewhere leaves
// the cache alone.
func TestSecureMountOverTheCache(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("this test needs root (mounts)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	reg := startStallRegistry(t)
	first, stall := reg.push(t, "remount/first")
	second, _ := reg.push(t, "remount/second")
	reg.stall = stall

	dir := t.TempDir()
	t.Cleanup(func() { unmountUnder(t, dir) })
	root := filepath.Join(dir, "image")
	h := newTestHub(t, root, reg.host)
	opts := h.ServiceOptions()
	oldCache, release, err := opts.Cache(ctx)
	if err != nil {
		t.Fatal(err)
	}
	release()
	oldPuller, release, err := opts.Puller(ctx)
	if err != nil {
		t.Fatal(err)
	}
	release()

	// pullOne calls done, if set, while it still holds the puller: the
	// mount may go ahead the moment it lets go.
	pullOne := func(image, id string, done func()) (*pull.Result, error) {
		p, release, err := opts.Puller(ctx)
		if err != nil {
			return nil, err
		}
		defer release()
		res, err := p.Pull(ctx, pull.Request{Image: image, ContainerID: id, BundleDir: filepath.Join(dir, "kata", id)})
		if done != nil {
			done()
		}
		return res, err
	}
	type outcome struct {
		res *pull.Result
		err error
	}
	var order []string
	var mu sync.Mutex
	note := func(s string) { mu.Lock(); order = append(order, s); mu.Unlock() }

	// A pull in flight, held at its second layer.
	firstDone := make(chan outcome, 1)
	go func() {
		res, err := pullOne(first, "first", func() { note("first pull done") })
		firstDone <- outcome{res, err}
	}()
	<-reg.stalled

	// The mount over the cache: it must wait for that pull.
	mounted := make(chan error, 1)
	go func() {
		mounted <- h.mountOver(ctx, root, func(context.Context) (*securemount.Store, error) {
			note("mounted")
			if err := unix.Mount("tmpfs", root, "tmpfs", 0, "mode=0700"); err != nil {
				return nil, err
			}
			return &securemount.Store{Device: "tmpfs", MountPoint: root}, nil
		})
	}()
	// Once the mount waits, a request finds the storage taken.
	for deadline := time.Now().Add(10 * time.Second); h.storage.TryAcquire(1); {
		h.storage.Release(1)
		if time.Now().After(deadline) {
			t.Fatal("the mount over the cache does not wait for the pull in flight")
		}
		time.Sleep(time.Millisecond)
	}
	secondDone := make(chan outcome, 1)
	go func() {
		res, err := pullOne(second, "second", nil)
		secondDone <- outcome{res, err}
	}()

	close(reg.release)
	f := <-firstDone
	if f.err != nil {
		t.Fatalf("the pull in flight: %v", f.err)
	}
	if err := <-mounted; err != nil {
		t.Fatalf("mountOver: %v", err)
	}
	s := <-secondDone
	if s.err != nil {
		t.Fatalf("the pull asked for during the mount: %v", s.err)
	}
	if len(order) != 2 || order[0] != "first pull done" || order[1] != "mounted" {
		t.Errorf("order of events %q; want the pull in flight done before the mount", order)
	}

	// The second pull is on the new filesystem, and nothing of it was
	// found cached there.
	var st unix.Statfs_t
	if err := unix.Statfs(filepath.Join(root, "layers"), &st); err != nil || st.Type != unix.TMPFS_MAGIC {
		t.Errorf("the cache's layers/ after the mount: statfs type %#x, %v; want the tmpfs", st.Type, err)
	}
	for i, l := range s.res.Layers {
		if l.Cached {
			t.Errorf("second pull, layer %d: cached on a filesystem just mounted", i)
		}
	}
	newCache, release, err := opts.Cache(ctx)
	if err != nil {
		t.Fatal(err)
	}
	l, err := newCache.List(ctx)
	release()
	if err != nil {
		t.Fatal(err)
	}
	if newCache == oldCache || len(l.Images) != 1 || l.Images[0].Ref != second {
		t.Errorf("the cache after the mount: reopened %v, images %+v; want the second image alone", newCache != oldCache, l.Images)
	}
	newPuller, release, err := opts.Puller(ctx)
	if err != nil {
		t.Fatal(err)
	}
	release()
	if newPuller == oldPuller {
		t.Error("the Puller was not built anew over the new cache")
	}
	// The first pull's bundle is over the cache it was made on.
	if got, err := os.ReadDir(f.res.Rootfs); err != nil || len(got) == 0 {
		t.Errorf("the first pull's rootfs: %v, %v", got, err)
	}

	// A mount point inside the cache is refused, before any mount; one
	// elsewhere leaves the cache as it is.
	called := false
	err = h.mountOver(ctx, filepath.Join(root, "layers"), func(context.Context) (*securemount.Store, error) {
		called = true
		return nil, nil
	})
	if !errors.Is(err, errdefs.ErrInvalidConfig) || called {
		t.Errorf("a mount inside the cache: %v (mount called: %v); want a refusal", err, called)
	}
	elsewhere := filepath.Join(dir, "trusted-storage")
	if err := h.mountOver(ctx, elsewhere, func(context.Context) (*securemount.Store, error) {
		return &securemount.Store{MountPoint: elsewhere}, nil
	}); err != nil {
		t.Fatal(err)
	}
	if c, _ := h.cache.Peek(); c != newCache {
		t.Error("a mount elsewhere replaced the cache")
	}
}
