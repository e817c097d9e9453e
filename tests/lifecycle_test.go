package tests

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/guest-puller/guest-puller/api/cdhpb"
	guestpullerv1 "github.com/guest-puller/guest-puller/api/v1"
	"github.com/guest-puller/guest-puller/internal/devkbs/devkbstest"
	"github.com/guest-puller/guest-puller/internal/testutil"
)

// The tests in this file use the daemon the way kata-agent does over a
// pod's lifetime: for each container, make an empty directory named after
// the container id under /run/kata-containers (here a temporary
// directory), ask api.ImagePullService to pull into it, run the
// container, then unmount <bundle>/rootfs (never lazily) and remove the
// directory.

// kata is kata-agent's side of the daemon: its client and its bundle root.
type kata struct {
	t      *testing.T
	d      *daemon
	root   string
	client cdhpb.ImagePullServiceService
}

func newKata(t *testing.T, e *env, d *daemon) *kata {
	root := filepath.Join(e.dir, "run", "kata-containers")
	if err := os.MkdirAll(root, 0o700); err != nil {
		t.Fatal(err)
	}
	return &kata{t: t, d: d, root: root, client: cdhpb.NewImagePullServiceClient(d.client)}
}

// bundle makes the container's empty bundle directory, as kata-agent does
// before it calls PullImage.
func (k *kata) bundle(id string) string {
	dir := filepath.Join(k.root, id)
	if err := os.Mkdir(dir, 0o700); err != nil {
		k.t.Fatal(err)
	}
	return dir
}

// pull asks the daemon for the image's bundle at dir.
func (k *kata) pull(ctx context.Context, image, dir string) (*cdhpb.ImagePullResponse, error) {
	return k.client.PullImage(ctx, &cdhpb.ImagePullRequest{ImageUrl: image, BundlePath: dir})
}

// remove is kata-agent's cleanup of a container that ended: umount(2) of
// the rootfs without MNT_DETACH, then the bundle directory goes.
func remove(bundle string) error {
	if err := unix.Unmount(filepath.Join(bundle, "rootfs"), 0); err != nil {
		return fmt.Errorf("umount %s/rootfs: %w", bundle, err)
	}
	return os.RemoveAll(bundle)
}

// openFilesUnder lists the files below dir that process pid has open.
func openFilesUnder(t *testing.T, pid int, dir string) []string {
	t.Helper()
	fdDir := "/proc/" + strconv.Itoa(pid) + "/fd"
	fds, err := os.ReadDir(fdDir)
	if err != nil {
		t.Fatal(err)
	}
	var open []string
	for _, fd := range fds {
		target, err := os.Readlink(filepath.Join(fdDir, fd.Name()))
		if err == nil && (target == dir || len(target) > len(dir) && target[:len(dir)+1] == dir+"/") {
			open = append(open, target)
		}
	}
	return open
}

// userImage is an image that names a user, so making its bundle reads the
// image's /etc/passwd and /etc/group; linked, its /etc/passwd is a symlink
// (resolved inside the rootfs).
func userImage(t *testing.T, linked bool) string {
	passwd := testutil.File("etc/passwd", "root:x:0:0::/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n", 0o644)
	if linked {
		passwd = testutil.Symlink("etc/passwd", "/usr/lib/passwd")
	}
	return testutil.BuildImage(t, testutil.ImageSpec{
		Layers: [][]byte{testutil.Tar(t,
			testutil.Dir("etc/", 0o755),
			testutil.Dir("usr/", 0o755),
			testutil.Dir("usr/lib/", 0o755),
			testutil.File("usr/lib/passwd", "root:x:0:0::/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n", 0o644),
			passwd,
			testutil.File("etc/group", "root:x:0:\napp:x:1000:\n", 0o644),
			testutil.File("hello", "hello", 0o644),
		)},
		Config: []string{"--config.user=app"},
	})
}

// TestDaemonBundlesUnmountRightAfterReply: once PullImage has answered,
// the daemon holds nothing open inside the bundle, so kata's non-lazy
// umount of the rootfs succeeds at once, container after container, one
// at a time and several at once.
func TestDaemonBundlesUnmountRightAfterReply(t *testing.T) {
	reg := testutil.StartRegistry(t, testutil.RegistryOptions{})
	images := []string{
		reg.Push(t, userImage(t, false), "lifecycle/user:1"),
		reg.Push(t, userImage(t, true), "lifecycle/linked:1"),
	}
	e := newEnv(t)
	d := startDaemon(t, e, "--policy", e.write("policy.json", acceptAll), "--insecure-registry", reg.Host)
	k := newKata(t, e, d)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	cycle := func(id, image string) error {
		dir := k.bundle(id)
		if _, err := k.pull(ctx, image, dir); err != nil {
			return fmt.Errorf("%s: pull: %w", id, err)
		}
		if open := openFilesUnder(t, d.cmd.Process.Pid, dir); len(open) != 0 {
			return fmt.Errorf("%s: the daemon still holds open after its reply: %v", id, open)
		}
		if got, err := os.ReadFile(filepath.Join(dir, "rootfs", "hello")); err != nil || string(got) != "hello" {
			return fmt.Errorf("%s: rootfs/hello = %q, %v", id, got, err)
		}
		return remove(dir)
	}
	for i := range 20 {
		if err := cycle(fmt.Sprintf("seq-%02d", i), images[i%2]); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	errs := make([]error, 8)
	for i := range errs {
		wg.Go(func() { errs[i] = cycle(fmt.Sprintf("par-%02d", i), images[i%2]) })
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	if m := testutil.Mounts(t, k.root); len(m) != 0 {
		t.Errorf("mounts left under the bundles' root: %v", m)
	}
}

// TestPullBundleCollisions: on the command line, two bundle directories
// are two containers, a container id names one bundle, and a directory
// with other files in it is not ours to fill: what would take another
// container's place is refused (exit 2), and nothing is deleted.
func TestPullBundleCollisions(t *testing.T) {
	reg := testutil.StartRegistry(t, testutil.RegistryOptions{})
	one := reg.Push(t, testutil.BuildImage(t, smallImage(t, "one")), "collide/one:1")
	two := reg.Push(t, testutil.BuildImage(t, smallImage(t, "two")), "collide/two:1")
	e := newEnv(t)
	args := []string{"--policy", e.write("policy.json", acceptAll), "--insecure-registry", reg.Host}
	hello := func(rootfs string) string {
		b, _ := os.ReadFile(filepath.Join(rootfs, "app/hello"))
		return string(b)
	}
	// A container writes into its rootfs; that must survive everything below.
	wrote := func(rootfs string) string {
		b, _ := os.ReadFile(filepath.Join(rootfs, "state"))
		return string(b)
	}
	c1 := e.pull(one, append(args, "--bundle", filepath.Join(e.dir, "c1"))...)
	if err := os.WriteFile(filepath.Join(c1.Rootfs, "state"), []byte("c1 ran"), 0o644); err != nil {
		t.Fatal(err)
	}

	// The same image into a second directory is a second container.
	c2 := e.pull(one, append(args, "--bundle", filepath.Join(e.dir, "c2"))...)
	if c2.Bundle == c1.Bundle || hello(c2.Rootfs) != "one" || wrote(c2.Rootfs) != "" {
		t.Errorf("second bundle %s: hello %q, state %q", c2.Bundle, hello(c2.Rootfs), wrote(c2.Rootfs))
	}
	if wrote(c1.Rootfs) != "c1 ran" {
		t.Errorf("pulling into c2 changed c1: state %q", wrote(c1.Rootfs))
	}

	// The same image into the same directory again: the same bundle.
	again := e.pull(one, append(args, "--bundle", filepath.Join(e.dir, "c1"))...)
	if again.Bundle != c1.Bundle || wrote(c1.Rootfs) != "c1 ran" || len(testutil.Mounts(t, c1.Rootfs)) != 1 {
		t.Errorf("pulling c1 again: bundle %s, state %q, mounts %v", again.Bundle, wrote(c1.Rootfs), testutil.Mounts(t, c1.Rootfs))
	}

	for _, tc := range []struct {
		name  string
		image string
		args  []string
	}{
		{"another image into a live bundle", two, []string{"--bundle", filepath.Join(e.dir, "c1")}},
		{"a live container id elsewhere", one, []string{"--container-id", "c1", "--bundle", filepath.Join(e.dir, "elsewhere")}},
		{"a live container id in the cache", one, []string{"--container-id", "c1"}},
		{"a directory of the same name elsewhere", one, []string{"--bundle", filepath.Join(e.dir, "other", "c1")}},
	} {
		msg := e.pullFails(2, tc.image, append(args, tc.args...)...)
		if !strings.Contains(msg, "already exists") || !strings.Contains(msg, c1.Bundle) {
			t.Errorf("%s: %s", tc.name, msg)
		}
	}
	if hello(c1.Rootfs) != "one" || wrote(c1.Rootfs) != "c1 ran" {
		t.Errorf("refused pulls changed c1: hello %q, state %q", hello(c1.Rootfs), wrote(c1.Rootfs))
	}
	for _, p := range []string{filepath.Join(e.dir, "elsewhere"), filepath.Join(e.dir, "other")} {
		if _, err := os.Lstat(p); !os.IsNotExist(err) {
			t.Errorf("a refused pull made %s: %v", p, err)
		}
	}

	// --container-id names one bundle: another image under it is refused.
	e.pull(one, append(args, "--container-id", "cx")...)
	msg := e.pullFails(2, two, append(args, "--container-id", "cx")...)
	if !strings.Contains(msg, "already exists") {
		t.Errorf("another image under a live --container-id: %s", msg)
	}

	// A directory holding anything else is refused, and left as it was.
	mine := filepath.Join(e.dir, "mine")
	e.write("mine/notes.txt", "keep me")
	msg = e.pullFails(2, one, append(args, "--bundle", mine)...)
	if !strings.Contains(msg, "not empty") {
		t.Errorf("a bundle dir with other files: %s", msg)
	}
	if names, _ := os.ReadDir(mine); len(names) != 1 {
		t.Errorf("refused pull changed %s: %v", mine, names)
	}

	// Once c1's container is gone, its name is free again.
	if err := remove(c1.Bundle); err != nil {
		t.Fatal(err)
	}
	c1b := e.pull(two, append(args, "--bundle", filepath.Join(e.dir, "other", "c1"))...)
	if hello(c1b.Rootfs) != "two" {
		t.Errorf("c1 reused for another image shows %q", hello(c1b.Rootfs))
	}
}

// TestDaemonBundleCollisions: the same over the daemon, where kata-agent
// names each bundle directory after its container: a second directory
// with the same name is AlreadyExists while the first container lives,
// and free once it is gone.
func TestDaemonBundleCollisions(t *testing.T) {
	reg := testutil.StartRegistry(t, testutil.RegistryOptions{})
	one := reg.Push(t, testutil.BuildImage(t, smallImage(t, "one")), "collide/one:1")
	two := reg.Push(t, testutil.BuildImage(t, smallImage(t, "two")), "collide/two:1")
	e := newEnv(t)
	d := startDaemon(t, e, "--policy", e.write("policy.json", acceptAll), "--insecure-registry", reg.Host)
	k := newKata(t, e, d)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	first := k.bundle("x")
	resp, err := k.pull(ctx, one, first)
	if err != nil {
		t.Fatal(err)
	}
	state := filepath.Join(first, "rootfs", "state")
	if err := os.WriteFile(state, []byte("running"), 0o644); err != nil {
		t.Fatal(err)
	}
	// Same image, same directory: the same bundle, with its writes.
	again, err := k.pull(ctx, one, first)
	if err != nil || again.ManifestDigest != resp.ManifestDigest {
		t.Fatalf("pulling the same bundle again: %v %v", again, err)
	}
	second := filepath.Join(e.dir, "elsewhere", "x")
	if err := os.MkdirAll(second, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ image, dir string }{{one, second}, {two, first}} {
		_, err := k.pull(ctx, tc.image, tc.dir)
		if status.Code(err) != codes.AlreadyExists {
			t.Errorf("pull %s into %s: %v, want AlreadyExists", tc.image, tc.dir, err)
		}
	}
	native := guestpullerv1.NewGuestPullerClient(d.client)
	if _, err := native.Pull(ctx, &guestpullerv1.PullRequest{Image: two, ContainerId: "x"}); status.Code(err) != codes.AlreadyExists {
		t.Errorf("native pull of another image as container x: %v, want AlreadyExists", err)
	}
	if b, err := os.ReadFile(state); err != nil || string(b) != "running" {
		t.Errorf("the live container's writes: %q %v", b, err)
	}
	if names, _ := os.ReadDir(second); len(names) != 0 {
		t.Errorf("a refused pull wrote into %s: %v", second, names)
	}

	// kata ends the first container; the name is free.
	if err := remove(first); err != nil {
		t.Fatal(err)
	}
	if _, err := k.pull(ctx, two, second); err != nil {
		t.Fatalf("pull into %s once %s is gone: %v", second, first, err)
	}
	if b, _ := os.ReadFile(filepath.Join(second, "rootfs", "app/hello")); string(b) != "two" {
		t.Errorf("new bundle shows %q", b)
	}
	if _, err := os.Stat(filepath.Join(second, "rootfs", "state")); !os.IsNotExist(err) {
		t.Errorf("new bundle shows the old container's writes: %v", err)
	}
}

// TestDaemonSocketTakeover: a second daemon does not take a socket that
// answers, and so does not remove it when it exits; a socket left by a
// killed daemon is replaced; a daemon removes its own socket on exit.
func TestDaemonSocketTakeover(t *testing.T) {
	e := newEnv(t)
	policy := e.write("policy.json", acceptAll)
	first := startDaemon(t, e, "--policy", policy)
	native := guestpullerv1.NewGuestPullerClient(first.client)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	second := exec.CommandContext(ctx, bins["guest-puller"], "serve", "--socket", first.socket, "--cache", filepath.Join(e.dir, "cache2"), "--policy", policy)
	out, err := second.CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 2 {
		t.Fatalf("second daemon on a live socket: %v, want exit 2\n%s", err, out)
	}
	if !strings.Contains(string(out), "socket in use") || strings.Contains(string(out), "serving") {
		t.Errorf("second daemon's output:\n%s", out)
	}
	// The first one still answers, on a new connection too.
	if _, err := native.Status(ctx, &guestpullerv1.StatusRequest{}); err != nil {
		t.Errorf("first daemon after the second exited: %v", err)
	}
	conn, err := net.Dial("unix", first.socket)
	if err != nil {
		t.Fatalf("the first daemon's socket is gone: %v", err)
	}
	conn.Close()

	// A socket another program answers on (the confidential-data-hub
	// itself, say: no guest-puller lock file beside it) is not taken either.
	other := filepath.Join(e.dir, "other.sock")
	ln, err := net.Listen("unix", other)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	refuse, cancelRefuse := context.WithTimeout(ctx, 10*time.Second)
	defer cancelRefuse()
	out, err = exec.CommandContext(refuse, bins["guest-puller"], "serve", "--socket", other, "--cache", filepath.Join(e.dir, "cache3"), "--policy", policy).CombinedOutput()
	if !errors.As(err, &exit) || exit.ExitCode() != 2 || !strings.Contains(string(out), "socket in use") || strings.Contains(string(out), "serving") {
		t.Errorf("daemon on a socket another program serves: %v, want exit 2 and 'socket in use':\n%s", err, out)
	}
	if conn, err := net.Dial("unix", other); err != nil {
		t.Errorf("the other program's socket after the refused daemon: %v", err)
	} else {
		conn.Close()
	}

	// Killed, the first daemon leaves its socket; the next one replaces it.
	first.cmd.Process.Kill()
	first.cmd.Wait()
	if _, err := os.Lstat(first.socket); err != nil {
		t.Fatalf("a killed daemon's socket: %v", err)
	}
	third := startDaemon(t, e, "--policy", policy)
	if _, err := guestpullerv1.NewGuestPullerClient(third.client).Status(ctx, &guestpullerv1.StatusRequest{}); err != nil {
		t.Fatalf("daemon over a stale socket: %v", err)
	}
	if err := third.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := third.cmd.Wait(); err != nil {
		t.Errorf("exit on SIGTERM: %v\n%s", err, third.logs.String())
	}
	for _, p := range []string{third.socket, third.socket + ".lock"} {
		if _, err := os.Lstat(p); !os.IsNotExist(err) {
			t.Errorf("%s left after the daemon exited: %v", p, err)
		}
	}
}

// TestDaemonReclaimsWhatContainersLeave: while the daemon serves, what a
// container leaves once kata-agent has cleaned it up (its upper directory
// with everything it wrote, its record) is reclaimed, and so is a layer
// no image and no live container uses any more; a live container, and
// every layer it uses, is never touched, even when its image record has
// moved on to another manifest.
func TestDaemonReclaimsWhatContainersLeave(t *testing.T) {
	reg := testutil.StartRegistry(t, testutil.RegistryOptions{})
	base := testutil.Tar(t, testutil.File("base", "shared", 0o644))
	image := func(name string) string {
		return testutil.BuildImage(t, testutil.ImageSpec{Layers: [][]byte{base, testutil.Tar(t, testutil.File("name", name, 0o644))}})
	}
	a := reg.Push(t, image("a1"), "reclaim/a:1")
	b := reg.Push(t, image("b"), "reclaim/b:1")
	e := newEnv(t)
	d := startDaemon(t, e, "--policy", e.write("policy.json", acceptAll), "--insecure-registry", reg.Host, "--gc-interval", "100ms")
	k := newKata(t, e, d)
	native := guestpullerv1.NewGuestPullerClient(d.client)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	run := func(id, image string) string {
		dir := k.bundle(id)
		if _, err := k.pull(ctx, image, dir); err != nil {
			t.Fatalf("%s: %v", id, err)
		}
		if err := os.WriteFile(filepath.Join(dir, "rootfs", "state"), []byte(id+" ran"), 0o644); err != nil {
			t.Fatal(err)
		}
		return dir
	}
	upper := func(id string) string { return filepath.Join(e.cache, "containers", id, "upper") }
	// until polls for cond over a few of the daemon's sweeps.
	until := func(what string, cond func() bool) {
		t.Helper()
		for deadline := time.Now().Add(15 * time.Second); !cond(); {
			if time.Now().After(deadline) {
				t.Fatalf("not reclaimed within 15s: %s\n%s", what, d.logs.String())
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	gone := func(p string) func() bool {
		return func() bool { _, err := os.Lstat(p); return os.IsNotExist(err) }
	}
	layerDir := func(diffID string) string {
		return filepath.Join(e.cache, "layers", strings.TrimPrefix(diffID, "sha256:"))
	}
	recorded := func(image string) []string {
		list, err := native.ListImages(ctx, &guestpullerv1.ListImagesRequest{})
		if err != nil {
			t.Fatal(err)
		}
		for _, img := range list.Images {
			if img.Ref == image {
				return img.DiffIds
			}
		}
		t.Fatalf("no record of %s", image)
		return nil
	}

	c1, c2, c3 := run("c1", a), run("c2", a), run("c3", b)
	oldA := recorded(a)
	for _, id := range []string{"c1", "c2", "c3"} {
		if got, err := os.ReadFile(filepath.Join(upper(id), "state")); err != nil || string(got) != id+" ran" {
			t.Fatalf("%s's write is not in its upper dir: %q %v", id, got, err)
		}
	}

	// kata cleans c1 up: its upper directory goes, the others stay.
	if err := remove(c1); err != nil {
		t.Fatal(err)
	}
	until("c1's upper directory", gone(filepath.Join(e.cache, "containers", "c1")))

	// The tag moves on: the image record names the new manifest, but the
	// old one's own layer stays as long as c2 runs it.
	reg.Push(t, image("a2"), "reclaim/a:1")
	c4 := run("c4", a)
	if newA := recorded(a); newA[1] == oldA[1] {
		t.Fatalf("the tag did not move: %v", newA)
	}
	if _, err := native.GC(ctx, &guestpullerv1.GCRequest{}); err != nil {
		t.Fatal(err)
	}
	for id, dir := range map[string]string{"c2": c2, "c3": c3, "c4": c4} {
		if got, err := os.ReadFile(filepath.Join(dir, "rootfs", "state")); err != nil || string(got) != id+" ran" {
			t.Errorf("live container %s lost its write: %q %v", id, got, err)
		}
		if len(testutil.Mounts(t, filepath.Join(dir, "rootfs"))) != 1 {
			t.Errorf("live container %s's rootfs is not mounted", id)
		}
	}
	if got, err := os.ReadFile(filepath.Join(c2, "rootfs", "name")); err != nil || string(got) != "a1" {
		t.Errorf("c2 runs the old manifest: name = %q, %v", got, err)
	}
	if _, err := os.Stat(layerDir(oldA[1])); err != nil {
		t.Errorf("a layer a live container uses was reclaimed: %v", err)
	}

	// c2 ends: the old manifest's own layer goes with it; the shared base
	// stays for the recorded images.
	if err := remove(c2); err != nil {
		t.Fatal(err)
	}
	until("the old manifest's layer", gone(layerDir(oldA[1])))
	until("c2's upper directory", gone(filepath.Join(e.cache, "containers", "c2")))
	if _, err := os.Stat(layerDir(oldA[0])); err != nil {
		t.Errorf("the shared base layer went: %v", err)
	}
	st, err := native.Status(ctx, &guestpullerv1.StatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if st.Bundles != 2 || st.Images != 2 || st.Layers != 3 {
		t.Errorf("status after the cleanups: %d bundles, %d images, %d layers; want 2, 2, 3", st.Bundles, st.Images, st.Layers)
	}
	if !strings.Contains(d.logs.String(), "reclaimed") {
		t.Errorf("the daemon's log does not say what it reclaimed:\n%s", d.logs.String())
	}
}

// TestDaemonStalledRegistry: a registry that accepts a blob request and
// stops sending half-way costs the idle timeout and a resume, not the
// request: each blob is fetched once whole-from-the-start and once with a
// Range. A registry that stalls for good holds a request no longer than
// its caller's deadline, which ends the daemon's work on it too.
func TestDaemonStalledRegistry(t *testing.T) {
	reg := testutil.StartRegistry(t, testutil.RegistryOptions{})
	pushed := reg.Push(t, testutil.BuildImage(t, testutil.ImageSpec{Layers: [][]byte{
		testutil.Tar(t, testutil.Entry{Name: "big", Size: 2 << 20, Mode: 0o644}),
		testutil.Tar(t, testutil.File("hello", "resumed", 0o644)),
	}}), "stall/app:1")
	m, _ := testutil.ParseManifest(t, reg.RawManifest(t, "stall/app", "1"))
	if len(m.Layers) != 2 {
		t.Fatalf("%d layers, want 2", len(m.Layers))
	}
	stalling := testutil.StartProxy(t, reg.Host, testutil.ProxyOptions{BlobFaults: []testutil.Fault{{StallMidBlob: true}}})
	e := newEnv(t)
	policy := e.write("policy.json", acceptAll)
	d := startDaemon(t, e, "--policy", policy, "--insecure-registry", stalling.Host, "--idle-timeout", "1s")
	k := newKata(t, e, d)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	dir := k.bundle("stalled")
	if _, err := k.pull(ctx, strings.Replace(pushed, reg.Host, stalling.Host, 1), dir); err != nil {
		t.Fatalf("pull through a registry that stalls mid-blob: %v\n%s", err, d.logs.String())
	}
	if got, err := os.ReadFile(filepath.Join(dir, "rootfs", "hello")); err != nil || string(got) != "resumed" {
		t.Errorf("rootfs/hello = %q, %v", got, err)
	}
	if fi, err := os.Stat(filepath.Join(dir, "rootfs", "big")); err != nil || fi.Size() != 2<<20 {
		t.Errorf("rootfs/big: %v %v", fi, err)
	}
	for _, blob := range []string{m.Config.Digest, m.Layers[0].Digest, m.Layers[1].Digest} {
		if full, ranged := stalling.FullGets(blob), stalling.RangeGets(blob); full != 1 || ranged != 1 {
			t.Errorf("blob %s: %d GETs from the start and %d resumes, want 1 and 1", blob, full, ranged)
		}
	}
	if err := remove(dir); err != nil {
		t.Fatal(err)
	}

	// A registry that never finishes a blob, and a daemon whose idle
	// timeout is long: the caller's deadline decides.
	forever := make([]testutil.Fault, 100)
	for i := range forever {
		forever[i] = testutil.Fault{StallMidBlob: true}
	}
	dead := testutil.StartProxy(t, reg.Host, testutil.ProxyOptions{BlobFaults: forever})
	e2 := newEnv(t)
	d2 := startDaemon(t, e2, "--policy", policy, "--insecure-registry", dead.Host)
	k2 := newKata(t, e2, d2)
	short, cancelShort := context.WithTimeout(ctx, 2*time.Second)
	defer cancelShort()
	_, err := k2.pull(short, strings.Replace(pushed, reg.Host, dead.Host, 1), k2.bundle("deadline"))
	if !errors.Is(err, context.DeadlineExceeded) && status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("pull past the caller's deadline: %v, want DeadlineExceeded", err)
	}
	// The daemon stopped working on it too, long before its own 30s idle
	// timeout would have.
	for deadline := time.Now().Add(10 * time.Second); !strings.Contains(d2.logs.String(), "pull failed"); {
		if time.Now().After(deadline) {
			t.Fatalf("the daemon still works on a request its caller gave up on:\n%s", d2.logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if !strings.Contains(d2.logs.String(), "deadline exceeded") {
		t.Errorf("the daemon's log does not say the caller's deadline ended the pull:\n%s", d2.logs.String())
	}
	if names, _ := os.ReadDir(filepath.Join(e2.cache, "staging")); len(names) != 0 {
		t.Errorf("the abandoned pull left staging directories: %v", names)
	}
	if _, err := guestpullerv1.NewGuestPullerClient(d2.client).Status(ctx, &guestpullerv1.StatusRequest{}); err != nil {
		t.Errorf("the daemon after the abandoned pull: %v", err)
	}
}

// TestDaemonStalledKBS: the same for the KBS, which the daemon asks for
// a kbs:/// policy before any image: a KBS that answers each exchange
// (auth, attest, the resource) half-way and then stops sending costs the
// idle timeout and a retry of that exchange, and the pull succeeds; a KBS
// that never answers holds a request no longer than its caller's deadline.
func TestDaemonStalledKBS(t *testing.T) {
	reg := testutil.StartRegistry(t, testutil.RegistryOptions{})
	ref := reg.Push(t, testutil.BuildImage(t, smallImage(t, "policy from a stalling KBS")), "stallkbs/app:1")
	resources := t.TempDir()
	const policyURI = "kbs:///default/policy/1"
	testutil.WriteResource(t, resources, "default/policy/1", []byte(acceptAll))
	kbs := devkbstest.StartDevKBS(t, bins["dev-kbs"], "--resources", resources, "--allow-sample")
	stalling := testutil.StartKBSProxy(t, kbs.URL, testutil.KBSProxyOptions{StallFirst: true})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	e := newEnv(t)
	d := startDaemon(t, e, "--policy", policyURI, "--kbs", stalling.URL, "--attester", "sample",
		"--insecure-registry", reg.Host, "--idle-timeout", "500ms")
	k := newKata(t, e, d)
	dir := k.bundle("stalled-kbs")
	if _, err := k.pull(ctx, ref, dir); err != nil {
		t.Fatalf("pull through a KBS that stalls mid-answer: %v\n%s", err, d.logs.String())
	}
	if got, err := os.ReadFile(filepath.Join(dir, "rootfs", "app", "hello")); err != nil || string(got) != "policy from a stalling KBS" {
		t.Errorf("rootfs/app/hello = %q, %v", got, err)
	}
	for _, req := range []string{"POST /kbs/v0/auth", "POST /kbs/v0/attest", "GET /kbs/v0/resource/default/policy/1"} {
		if n := stalling.Requests(req); n < 2 {
			t.Errorf("%s: %d requests, want the stalled one and its retry", req, n)
		}
	}
	stalls := stalling.Stalls()
	if len(stalls) != 3 {
		t.Errorf("%d stalled answers given up on, want 3", len(stalls))
	}
	for _, s := range stalls {
		if s > 10*time.Second {
			t.Errorf("a stalled answer was waited on for %v, with --idle-timeout 500ms", s)
		}
	}
	if err := remove(dir); err != nil {
		t.Fatal(err)
	}

	// A KBS that takes every request and never answers, and a daemon with
	// the default idle timeout (30s): the caller's deadline decides.
	stop := make(chan struct{})
	silent := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-stop:
		}
	}))
	t.Cleanup(func() { close(stop); silent.Close() })
	e2 := newEnv(t)
	d2 := startDaemon(t, e2, "--policy", policyURI, "--kbs", silent.URL, "--attester", "sample", "--insecure-registry", reg.Host)
	k2 := newKata(t, e2, d2)
	short, cancelShort := context.WithTimeout(ctx, 2*time.Second)
	defer cancelShort()
	start := time.Now()
	_, err := k2.pull(short, ref, k2.bundle("silent-kbs"))
	if !errors.Is(err, context.DeadlineExceeded) && status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("pull with a KBS that never answers, past the caller's deadline: %v, want DeadlineExceeded", err)
	}
	if waited := time.Since(start); waited > 10*time.Second {
		t.Errorf("the request came back after %v, with a 2s deadline", waited)
	}
	for deadline := time.Now().Add(10 * time.Second); !strings.Contains(d2.logs.String(), "pull failed"); {
		if time.Now().After(deadline) {
			t.Fatalf("the daemon still holds a request its caller gave up on:\n%s", d2.logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if _, err := guestpullerv1.NewGuestPullerClient(d2.client).Status(ctx, &guestpullerv1.StatusRequest{}); err != nil {
		t.Errorf("the daemon after the abandoned pull: %v", err)
	}
}
