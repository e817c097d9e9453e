package tests

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/ttrpc"

	"github.com/guest-puller/guest-puller/api/cdhpb"
	"github.com/guest-puller/guest-puller/internal/config"
	"github.com/guest-puller/guest-puller/internal/testutil"
	"github.com/guest-puller/guest-puller/internal/testutil/isolate"
	"github.com/guest-puller/guest-puller/pull"
)

// TestCancelledPull: a pull given up on while a layer streams leaves
// nothing behind (guide: "a failed pull never leaves a partial layer in the
// cache"; issue 8, point 5: pins belong to a pull). The registry, through a
// proxy, sends half of the image's big layer and then nothing; once that
// half is being written into staging, the pull is cancelled: in process
// (Puller.Pull's ctx), by SIGINT or SIGTERM to `guest-puller pull`, and by
// a daemon caller that gives up on PullImage. Each time the pull ends
// promptly with a cancellation, hangs up on the registry, holds no file of
// the cache open, leaves no staging directory, lock, trash or partial
// layer, and records no image; the same image then pulls, and once
// removed, GC reclaims every layer and lock. SIGKILL leaves the staging
// directory, which the next start (`cache ls`) removes. The daemon goes on
// serving, also a caller waiting for the layer the cancelled pull held.
func TestCancelledPull(t *testing.T) {
	reg := testutil.StartRegistry(t, testutil.RegistryOptions{})
	big := testutil.Tar(t, testutil.Entry{Name: "big", Size: 4 << 20, Mode: 0o644})
	direct := reg.Push(t, testutil.BuildImage(t, testutil.ImageSpec{Layers: [][]byte{
		big,
		testutil.Tar(t, testutil.File("hello", "after the cancel", 0o644)),
	}}), "cancel/app:1")
	m, _ := testutil.ParseManifest(t, reg.RawManifest(t, "cancel/app", "1"))
	sum := sha256.Sum256(big)
	bigDiffID := hex.EncodeToString(sum[:])
	proxy := testutil.StartProxy(t, reg.Host, testutil.ProxyOptions{StallBlob: m.Layers[0].Digest})
	stalling := strings.Replace(direct, reg.Host, proxy.Host, 1)
	insecure := []string{"--insecure-registry", reg.Host, "--insecure-registry", proxy.Host}

	// stall waits until the big layer has stalled once more than before,
	// with part of it written into staging: the pull is mid-layer.
	// ended says whether the pull ended already, and how.
	stall := func(t *testing.T, e *env, before int, ended func() (bool, error)) {
		t.Helper()
		for deadline := time.Now().Add(30 * time.Second); proxy.Stalled() <= before || !partlyStaged(e.cache); {
			if done, err := ended(); done {
				t.Fatalf("the pull ended before it was half-way through the big layer: %v", err)
			}
			if time.Now().After(deadline) {
				t.Fatalf("the pull never got half-way through the big layer in 30s (stalls %d, was %d)", proxy.Stalled(), before)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	// after checks what the cancelled pull left, then that the image
	// pulls and that GC reclaims everything once it is removed.
	after := func(t *testing.T, e *env) {
		t.Helper()
		// The pull hung up on the registry: a stalled answer ends when its
		// client closes the connection.
		for deadline := time.Now().Add(10 * time.Second); proxy.BlobGetsInFlight() != 0; {
			if time.Now().After(deadline) {
				t.Fatalf("%d blob downloads still open 10s after the pull was cancelled", proxy.BlobGetsInFlight())
			}
			time.Sleep(10 * time.Millisecond)
		}
		if d := debris(t, e.cache); len(d) != 0 {
			t.Errorf("the cancelled pull left %v", d)
		}
		l := e.cacheLs()
		for _, layer := range l.Layers {
			if strings.HasSuffix(layer.DiffID, bigDiffID) {
				t.Errorf("the layer the pull was cancelled in is in the cache")
			}
		}
		if len(l.Images) != 0 {
			t.Errorf("the cancelled pull recorded images %v", l.Images)
		}
		reclaim(t, e, direct, insecure)
	}

	t.Run("Puller.Pull", func(t *testing.T) {
		e := newEnv(t)
		p, err := config.Open(context.Background(), config.Config{
			Policy:             e.write("policy.json", acceptAll),
			Cache:              e.cache,
			InsecureRegistries: []string{reg.Host, proxy.Host},
		}, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer p.Close()
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		before := proxy.Stalled()
		errc := make(chan error, 1)
		go func() {
			_, err := p.Pull(ctx, pull.Request{Image: stalling, BundleDir: filepath.Join(e.dir, "bundle")})
			errc <- err
		}()
		stall(t, e, before, ended(errc))
		cancel()
		select {
		case err = <-errc:
		case <-time.After(10 * time.Second):
			t.Fatal("Pull did not return within 10s of its cancellation")
		}
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("cancelled pull: %v, want context.Canceled", err)
		}
		if open := openUnder(t, e.cache); len(open) != 0 {
			t.Errorf("files under the cache still open after the cancelled pull (pins, locks): %v", open)
		}
		after(t, e)
	})

	for name, sig := range map[string]syscall.Signal{"SIGINT": syscall.SIGINT, "SIGTERM": syscall.SIGTERM} {
		t.Run("guest-puller pull "+name, func(t *testing.T) {
			e := newEnv(t)
			policy := e.write("policy.json", acceptAll)
			cmd, stderr := startPull(t, e, stalling, "bundle", append([]string{"--policy", policy}, insecure...)...)
			exited := waitChan(cmd)
			stall(t, e, proxy.Stalled(), ended(exited))
			interrupt(t, cmd, exited, stderr, name, sig)
			after(t, e)
		})
	}

	// A pull waiting for a layer another process is fetching (the layer
	// lock) is interrupted as promptly, and the other goes on.
	t.Run("guest-puller pull SIGINT waiting for a layer", func(t *testing.T) {
		e := newEnv(t)
		plain := testutil.StartProxy(t, reg.Host, testutil.ProxyOptions{})
		args := append([]string{"--policy", e.write("policy.json", acceptAll), "--insecure-registry", plain.Host}, insecure...)
		first, firstErr := startPull(t, e, stalling, "first", args...)
		firstExited := waitChan(first)
		stall(t, e, proxy.Stalled(), ended(firstExited))
		second, secondErr := startPull(t, e, strings.Replace(direct, reg.Host, plain.Host, 1), "second", args...)
		secondExited := waitChan(second)
		for deadline := time.Now().Add(10 * time.Second); plain.FullGets(m.Config.Digest) == 0; {
			if done, err := ended(secondExited)(); done || time.Now().After(deadline) {
				t.Fatalf("the second pull never fetched the image's config (ended: %v %v): %s", done, err, secondErr.String())
			}
			time.Sleep(5 * time.Millisecond)
		}
		// Resolved, the second pull goes on to the layers and waits for
		// the big one's lock, which the first holds (a moment for it to
		// get there; wherever it is, the checks below hold).
		time.Sleep(200 * time.Millisecond)
		interrupt(t, second, secondExited, secondErr, "SIGINT", syscall.SIGINT)
		if n := plain.FullGets(m.Layers[0].Digest); n != 0 {
			t.Errorf("the second pull fetched the big layer %d times while the first held it", n)
		}
		if done, err := ended(firstExited)(); done {
			t.Fatalf("the first pull ended with the second: %v", err)
		}
		interrupt(t, first, firstExited, firstErr, "SIGINT", syscall.SIGINT)
		after(t, e)
	})

	t.Run("guest-puller pull SIGKILL", func(t *testing.T) {
		e := newEnv(t)
		policy := e.write("policy.json", acceptAll)
		cmd, _ := startPull(t, e, stalling, "bundle", append([]string{"--policy", policy}, insecure...)...)
		exited := waitChan(cmd)
		stall(t, e, proxy.Stalled(), ended(exited))
		cmd.Process.Kill()
		<-exited
		if d := debris(t, e.cache); len(d) == 0 {
			t.Fatal("a pull killed mid-layer left nothing to clean up: the test no longer kills it mid-layer")
		}
		// The next start cleans up; after checks it did.
		if r := e.gp("cache", "ls"); r.Code != 0 {
			t.Fatalf("cache ls after the kill: exit %d: %s", r.Code, r.Stderr)
		}
		after(t, e)
	})

	t.Run("daemon caller gives up", func(t *testing.T) {
		e := newEnv(t)
		plain := testutil.StartProxy(t, reg.Host, testutil.ProxyOptions{})
		d := startDaemon(t, e, append([]string{"--policy", e.write("policy.json", acceptAll), "--insecure-registry", plain.Host, "--gc-interval", "0"}, insecure...)...)
		// giveUp starts a PullImage of the stalling image on a connection
		// of its own, and once the big layer is half-way, cancels it and
		// drops the connection, as kata-agent does when it gives up on a
		// request: ttrpc has no cancel message, so a server learns of a
		// caller's cancellation only from its deadline (see
		// TestDaemonStalledRegistry) or its connection's end. meanwhile
		// runs while the pull is stalled. giveUp returns when the daemon
		// has logged the pull's failure.
		giveUp := func(id string, meanwhile func()) {
			t.Helper()
			conn, err := net.Dial("unix", d.socket)
			if err != nil {
				t.Fatal(err)
			}
			client := ttrpc.NewClient(conn)
			defer client.Close()
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			failed := strings.Count(d.logs.String(), "pull failed")
			before := proxy.Stalled()
			errc := make(chan error, 1)
			go func() {
				_, err := cdhpb.NewImagePullServiceClient(client).PullImage(ctx, &cdhpb.ImagePullRequest{ImageUrl: stalling, BundlePath: filepath.Join(e.dir, id)})
				errc <- err
			}()
			stall(t, e, before, ended(errc))
			meanwhile()
			cancel()
			client.Close()
			if err := <-errc; !errors.Is(err, context.Canceled) {
				t.Errorf("the caller's PullImage: %v, want context.Canceled", err)
			}
			for deadline := time.Now().Add(10 * time.Second); strings.Count(d.logs.String(), "pull failed") == failed; {
				if time.Now().After(deadline) {
					t.Fatalf("the daemon still works on a pull its caller gave up on, 10s later:\n%s", d.logs.String())
				}
				time.Sleep(20 * time.Millisecond)
			}
			if _, err := os.Lstat(filepath.Join(e.dir, id)); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("the cancelled pull left its bundle directory: %v", err)
			}
		}

		giveUp("gave-up", func() {})
		if !strings.Contains(d.logs.String(), "canceled") {
			t.Errorf("the daemon's log does not say the pull was cancelled:\n%s", d.logs.String())
		}
		if open := openFilesUnder(t, d.cmd.Process.Pid, e.cache); len(open) != 0 {
			t.Errorf("files under the cache the daemon still holds open after the cancelled pull: %v", open)
		}
		after(t, e)

		// The daemon goes on serving, also a caller that waits for the
		// layer the cancelled pull was writing: a pod's second container
		// asks for the same image (from a registry that answers) while
		// the first one's pull holds the big layer; the first gives up,
		// and the second pulls the layer itself.
		second := newKata(t, e, d).bundle("second")
		errc := make(chan error, 1)
		giveUp("gave-up-again", func() {
			go func() {
				_, err := cdhpb.NewImagePullServiceClient(d.client).PullImage(context.Background(), &cdhpb.ImagePullRequest{ImageUrl: strings.Replace(direct, reg.Host, plain.Host, 1), BundlePath: second})
				errc <- err
			}()
			// Resolved (its config fetched), the second pull goes on to
			// the layers, and waits for the big one's lock.
			for deadline := time.Now().Add(10 * time.Second); plain.FullGets(m.Config.Digest) == 0; {
				if time.Now().After(deadline) {
					t.Fatalf("the second pull never fetched the image's config:\n%s", d.logs.String())
				}
				time.Sleep(5 * time.Millisecond)
			}
		})
		if err := <-errc; err != nil {
			t.Fatalf("a pull of the same image that waited for the cancelled one: %v\n%s", err, d.logs.String())
		}
		if n := plain.FullGets(m.Layers[0].Digest); n != 1 {
			t.Errorf("the second pull fetched the big layer %d times, want 1", n)
		}
		if got, err := os.ReadFile(filepath.Join(second, "rootfs", "hello")); err != nil || string(got) != "after the cancel" {
			t.Errorf("rootfs/hello = %q, %v", got, err)
		}
		if fi, err := os.Stat(filepath.Join(second, "rootfs", "big")); err != nil || fi.Size() != 4<<20 {
			t.Errorf("rootfs/big: %v %v", fi, err)
		}
		if d := debris(t, e.cache); len(d) != 0 {
			t.Errorf("the second cancelled pull left %v", d)
		}
	})
}

// interrupt sends sig (named name) to the running `guest-puller pull` cmd,
// whose Wait's result comes on exited, and checks that it exits within
// 10s, non-zero, saying in one line that it was interrupted.
func interrupt(t *testing.T, cmd *exec.Cmd, exited chan error, stderr *testutil.SyncBuffer, name string, sig syscall.Signal) {
	t.Helper()
	if err := cmd.Process.Signal(sig); err != nil {
		t.Fatal(err)
	}
	var err error
	select {
	case err = <-exited:
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		<-exited
		t.Fatalf("guest-puller pull did not exit within 10s of %s", name)
	}
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() <= 0 {
		t.Fatalf("guest-puller pull after %s: %v, want a non-zero exit", name, err)
	}
	msg := strings.TrimSpace(stderr.String())
	if strings.Count(msg, "\n") != 0 || !strings.HasPrefix(msg, "guest-puller: interrupted (") || !strings.Contains(msg, "cancel/app:1") {
		t.Errorf("stderr after %s is not one line saying the pull was interrupted: %q", name, msg)
	}
}

// startPull starts `guest-puller pull image --quiet` on the env's cache,
// with its bundle in e.dir/BUNDLE.
func startPull(t *testing.T, e *env, image, bundle string, args ...string) (*exec.Cmd, *testutil.SyncBuffer) {
	t.Helper()
	stderr := &testutil.SyncBuffer{}
	cmd := exec.Command(bins["guest-puller"], e.withCache(append([]string{"pull", image, "--quiet", "--bundle", filepath.Join(e.dir, bundle)}, args...))...)
	isolate.DieWithTest(cmd)
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
		}
	})
	return cmd, stderr
}

// ended is a non-blocking look at c, which gets one error when a pull
// ends; once it has, it puts the error back for the caller's own receive.
func ended(c chan error) func() (bool, error) {
	return func() (bool, error) {
		select {
		case err := <-c:
			c <- err
			return true, err
		default:
			return false, nil
		}
	}
}

// waitChan waits for cmd in the background; the channel has its result.
func waitChan(cmd *exec.Cmd) chan error {
	c := make(chan error, 1)
	go func() { c <- cmd.Wait() }()
	return c
}

// partlyStaged reports whether some layer is being written into the
// cache's staging area: a staging directory holds a file with data.
func partlyStaged(cache string) bool {
	found := false
	filepath.WalkDir(filepath.Join(cache, "staging"), func(path string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if fi, err := d.Info(); err == nil && fi.Size() > 0 {
				found = true
				return fs.SkipAll
			}
		}
		return nil
	})
	return found
}

// debris lists what a pull that did not finish can leave in the cache:
// staging directories and their locks, trash, and layer directories that
// are not committed layers.
func debris(t *testing.T, cache string) []string {
	t.Helper()
	var out []string
	for _, dir := range []string{"staging", "trash", "locks", "layers"} {
		names, err := os.ReadDir(filepath.Join(cache, dir))
		if errors.Is(err, fs.ErrNotExist) {
			// A first pull that fails removes the cache it created if
			// nothing was committed to it.
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range names {
			switch dir {
			case "locks":
				if !strings.HasPrefix(n.Name(), "staging-") {
					continue
				}
			case "layers":
				if _, err := os.Stat(filepath.Join(cache, dir, n.Name(), "layer.json")); err == nil {
					continue
				}
			}
			out = append(out, dir+"/"+n.Name())
		}
	}
	return out
}

// reclaim pulls image into a bundle, which must work; then removes the
// bundle and the image, and checks that `cache gc` leaves no layer, image,
// bundle, staging directory, trash or lock but the cache's own.
func reclaim(t *testing.T, e *env, image string, args []string) {
	t.Helper()
	bundle := filepath.Join(e.dir, "reclaim")
	policy := e.write("reclaim-policy.json", acceptAll)
	r := e.gp(append([]string{"pull", image, "--quiet", "--bundle", bundle, "--policy", policy}, args...)...)
	if r.Code != 0 {
		t.Fatalf("pull after the cancelled one: exit %d: %s", r.Code, r.Stderr)
	}
	if got, err := os.ReadFile(filepath.Join(bundle, "rootfs", "hello")); err != nil || string(got) != "after the cancel" {
		t.Errorf("rootfs/hello = %q, %v", got, err)
	}
	testutil.UnmountUnder(t, bundle)
	if err := os.RemoveAll(bundle); err != nil {
		t.Fatal(err)
	}
	if r := e.gp("cache", "rm", image); r.Code != 0 {
		t.Fatalf("cache rm: exit %d: %s", r.Code, r.Stderr)
	}
	if r := e.gp("cache", "gc"); r.Code != 0 {
		t.Fatalf("cache gc: exit %d: %s", r.Code, r.Stderr)
	}
	l := e.cacheLs()
	if len(l.Layers) != 0 || len(l.Images) != 0 {
		t.Errorf("after gc: %d layers and %d images left, want none", len(l.Layers), len(l.Images))
	}
	var left []string
	for _, dir := range []string{"staging", "trash", "locks", "layers", "containers"} {
		names, err := os.ReadDir(filepath.Join(e.cache, dir))
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range names {
			if dir == "locks" && n.Name() == "cache.lock" {
				continue
			}
			left = append(left, dir+"/"+n.Name())
		}
	}
	if len(left) != 0 {
		t.Errorf("after gc the cache still holds %v", left)
	}
}
