package tests

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/ttrpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/guest-puller/guest-puller/api/agentpb"
	"github.com/guest-puller/guest-puller/api/cdhpb"
	guestpullerv1 "github.com/guest-puller/guest-puller/api/v1"
	"github.com/guest-puller/guest-puller/internal/testutil"
	"github.com/guest-puller/guest-puller/internal/testutil/isolate"
)

// daemon is a running `guest-puller serve`.
type daemon struct {
	cmd    *exec.Cmd
	socket string
	logs   *testutil.SyncBuffer
	client *ttrpc.Client
}

func startDaemon(t *testing.T, e *env, args ...string) *daemon {
	t.Helper()
	d := &daemon{socket: filepath.Join(e.dir, "run", "cdh.sock"), logs: &testutil.SyncBuffer{}}
	d.cmd = exec.Command(bins["guest-puller"], append([]string{"serve", "--socket", d.socket, "--cache", e.cache}, args...)...)
	isolate.DieWithTest(d.cmd)
	d.cmd.Stderr = d.logs
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if d.cmd.ProcessState == nil {
			d.cmd.Process.Kill()
			d.cmd.Wait()
		}
	})
	deadline := time.Now().Add(20 * time.Second)
	for {
		conn, err := net.Dial("unix", d.socket)
		if err == nil {
			d.client = ttrpc.NewClient(conn)
			t.Cleanup(func() { d.client.Close() })
			return d
		}
		if time.Now().After(deadline) {
			t.Fatalf("daemon did not listen on %s: %v\n%s", d.socket, err, d.logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestDaemon(t *testing.T) {
	const user, pass = "kata", "S0urce-Creds"
	reg := testutil.StartRegistry(t, testutil.RegistryOptions{})
	private := testutil.StartRegistry(t, testutil.RegistryOptions{User: user, Password: pass})
	img := testutil.BuildImage(t, testutil.ImageSpec{Layers: [][]byte{
		testutil.Tar(t, testutil.Entry{Name: "big", Size: 2 << 20, Mode: 0o644}),
		testutil.Tar(t, testutil.File("hello", "from the daemon", 0o644)),
	}})
	pushed := reg.Push(t, img, "daemon/app:1")
	privRef := private.Push(t, img, "daemon/private:1")
	proxy := testutil.StartProxy(t, reg.Host, testutil.ProxyOptions{BytesPerSecond: 8 << 20})
	ref := strings.Replace(pushed, reg.Host, proxy.Host, 1)
	e := newEnv(t)
	policy := e.write("policy.json", `{"default":[{"type":"insecureAcceptAnything"}],
		"transports":{"docker":{"`+reg.Host+`/daemon/refused":[{"type":"reject"}]}}}`)
	d := startDaemon(t, e, "--policy", policy, "--insecure-registry", proxy.Host, "--insecure-registry", private.Host, "--insecure-registry", reg.Host)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	native := guestpullerv1.NewGuestPullerClient(d.client)

	// Four containers of a pod ask at once: each layer is fetched once.
	var wg sync.WaitGroup
	errs := make([]error, 4)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = native.Pull(ctx, &guestpullerv1.PullRequest{Image: ref, ContainerId: "pod-" + string(rune('a'+i))})
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("concurrent pull %d: %v", i, err)
		}
	}
	m, digest := testutil.ParseManifest(t, reg.RawManifest(t, "daemon/app", "1"))
	for _, l := range m.Layers {
		if n := proxy.FullGets(l.Digest) + proxy.RangeGets(l.Digest); n != 1 {
			t.Errorf("layer %s fetched %d times by 4 concurrent requests, want 1", l.Digest, n)
		}
	}

	t.Run("confidential-data-hub api.ImagePullService", func(t *testing.T) {
		bundle := filepath.Join(e.dir, "kata", "cdh-container")
		resp, err := cdhpb.NewImagePullServiceClient(d.client).PullImage(ctx, &cdhpb.ImagePullRequest{ImageUrl: ref, BundlePath: bundle})
		if err != nil {
			t.Fatal(err)
		}
		if resp.ManifestDigest != digest {
			t.Errorf("manifest_digest %q, want %q", resp.ManifestDigest, digest)
		}
		if got, err := os.ReadFile(filepath.Join(bundle, "rootfs", "hello")); err != nil || string(got) != "from the daemon" {
			t.Errorf("bundle rootfs/hello = %q, %v", got, err)
		}
		if _, err := os.Stat(filepath.Join(bundle, "config.json")); err != nil {
			t.Errorf("no config.json in the bundle: %v", err)
		}
	})

	t.Run("kata-agent grpc.Image with source_creds", func(t *testing.T) {
		agent := agentpb.NewImageClient(d.client)
		resp, err := agent.PullImage(ctx, &agentpb.PullImageRequest{Image: privRef, ContainerId: "agent-1", SourceCreds: user + ":" + pass})
		if err != nil {
			t.Fatal(err)
		}
		if resp.ImageRef != privRef {
			t.Errorf("image_ref %q, want %q", resp.ImageRef, privRef)
		}
		_, err = agent.PullImage(ctx, &agentpb.PullImageRequest{Image: privRef, ContainerId: "agent-2", SourceCreds: user + ":wrong"})
		// A daemon's caller is told which credentials to check, in its own
		// terms, with a code it can act on.
		if st, _ := status.FromError(err); st.Code() != codes.Unauthenticated || !strings.Contains(st.Message(), "authentication failed") ||
			!strings.Contains(st.Message(), "source_creds") || strings.Contains(st.Message(), "check --creds") {
			t.Errorf("wrong source_creds: %v, want Unauthenticated naming source_creds", err)
		}
		if strings.Contains(d.logs.String(), pass) {
			t.Errorf("daemon log leaks source_creds")
		}
	})

	t.Run("errors carry codes", func(t *testing.T) {
		refused := reg.Push(t, img, "daemon/refused:1")
		_, err := native.Pull(ctx, &guestpullerv1.PullRequest{Image: refused, ContainerId: "no"})
		if status.Code(err) != codes.PermissionDenied {
			t.Errorf("refused image: %v, want PermissionDenied", err)
		}
		_, err = native.Pull(ctx, &guestpullerv1.PullRequest{Image: "Not A Reference", ContainerId: "no"})
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("bad reference: %v, want InvalidArgument", err)
		}
		_, err = native.RemoveImage(ctx, &guestpullerv1.RemoveImageRequest{Image: reg.Host + "/never/pulled:1"})
		if status.Code(err) != codes.NotFound {
			t.Errorf("removing an unknown image: %v, want NotFound", err)
		}
	})

	t.Run("status, list, remove, gc", func(t *testing.T) {
		st, err := native.Status(ctx, &guestpullerv1.StatusRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if st.CacheRoot != e.cache || st.Images != 2 || st.Layers != 2 || st.Bundles < 6 || st.LayerBytes < 2<<20 {
			t.Errorf("status %+v", st)
		}
		list, err := native.ListImages(ctx, &guestpullerv1.ListImagesRequest{})
		if err != nil || len(list.Images) != 2 {
			t.Fatalf("list: %v %v", list, err)
		}
		if _, err := native.RemoveImage(ctx, &guestpullerv1.RemoveImageRequest{Image: privRef}); err != nil {
			t.Fatal(err)
		}
		gc, err := native.GC(ctx, &guestpullerv1.GCRequest{})
		if err != nil {
			t.Fatal(err)
		}
		// The private image shares its layers with the other one: only its
		// bundle goes.
		if len(gc.Bundles) != 1 || gc.Bundles[0] != "agent-1" || len(gc.Layers) != 0 {
			t.Errorf("gc removed bundles %v and layers %v; want [agent-1] and none", gc.Bundles, gc.Layers)
		}
	})

	if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := d.cmd.Wait(); err != nil {
		t.Errorf("daemon exit on SIGTERM: %v\n%s", err, d.logs.String())
	}
	if _, err := os.Stat(d.socket); !os.IsNotExist(err) {
		t.Errorf("socket left behind: %v", err)
	}
}
