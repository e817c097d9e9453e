package tests

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/guest-puller/guest-puller/api/cdhpb"
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
