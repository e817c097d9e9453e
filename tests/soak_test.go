package tests

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	guestpullerv1 "github.com/guest-puller/guest-puller/api/v1"
	"github.com/guest-puller/guest-puller/internal/testutil"
)

// The soak's size: warm-up rounds (one container of every kind per
// worker) after which the daemon's resources are measured, then the
// cycles whose end must find them at that level again.
const (
	soakWorkers = 8
	soakCycles  = 280
)

// soakKind is one kind of container the soak creates, runs and removes.
type soakKind struct {
	name  string
	image string
	// content is what the image's app/hello holds; "" for a pull that
	// must fail with code.
	content string
	code    codes.Code
}

// TestDaemonSoak drives one daemon through a few hundred create, run and
// remove cycles of containers, eight at a time, as kata-agent would over a
// pod's life: images plain, signed, encrypted and behind a registry that
// drops connections, mixed with pulls that fail (refused by policy, no
// key, no such image, a corrupt layer). Each container's process runs in its rootfs and
// writes to it; each is then unmounted without MNT_DETACH and its bundle
// deleted, while the daemon reclaims every 100ms. At the end the daemon's
// open files, goroutines and memory are back at their level after the
// warm-up (a corrupt layer is downloaded and refused every time, so the
// layer path runs throughout), nothing is mounted for a removed container, and the cache holds
// exactly what the live containers and the recorded images need.
func TestDaemonSoak(t *testing.T) {
	testutil.Need(t, "busybox")
	busybox, err := exec.LookPath("busybox")
	if err != nil {
		t.Fatal(err)
	}
	bb, err := os.ReadFile(busybox)
	if err != nil {
		t.Fatal(err)
	}
	// Every image runs the same busybox, from one shared base layer,
	// with a user database (read to make each bundle's config.json).
	base := testutil.Tar(t,
		testutil.Dir("bin/", 0o755),
		testutil.Entry{Name: "bin/busybox", Body: string(bb), Mode: 0o755},
		testutil.Symlink("bin/sh", "busybox"),
		testutil.Dir("etc/", 0o755),
		testutil.File("etc/passwd", "root:x:0:0::/root:/bin/sh\n", 0o644),
		testutil.File("etc/group", "root:x:0:\n", 0o644),
		testutil.Dir("app/", 0o755),
	)
	spec := func(top []byte) testutil.ImageSpec {
		return testutil.ImageSpec{Layers: [][]byte{base, top}, Config: []string{"--config.user=root"}}
	}
	image := func(content string) string {
		return testutil.BuildImage(t, spec(testutil.Tar(t, testutil.File("app/hello", content, 0o644))))
	}
	dir := t.TempDir()
	key, otherKey := testutil.RSAKey(t, dir, "soak", ""), testutil.RSAKey(t, dir, "other", "")
	cosign := testutil.NewCosignKey(t)

	reg := testutil.StartRegistry(t, testutil.RegistryOptions{})
	plain := reg.Push(t, image("plain"), "soak/plain:1")
	signed, _ := sigPush(t, reg, image("signed"), "soak/signed:1", cosign)
	encrypted := reg.Push(t, image("encrypted"), "soak/encrypted:1", "--encryption-key", "jwe:"+key.Public)
	noKey := reg.Push(t, image("no key"), "soak/nokey:1", "--encryption-key", "jwe:"+otherKey.Public)
	refused := reg.Push(t, image("refused"), "soak/refused:1")
	reg.Push(t, image("dropped"), "soak/dropped:1")
	// A layer whose stored blob has one byte changed near its end: every
	// pull of it downloads, decompresses and applies the whole layer
	// before the checksum fails it, and must leave nothing behind.
	corrupt := reg.Push(t, testutil.BuildImage(t, spec(testutil.Tar(t, testutil.Entry{Name: "app/data", Size: 1 << 20, Mode: 0o644}))), "soak/corrupt:1")
	m, _ := testutil.ParseManifest(t, reg.RawManifest(t, "soak/corrupt", "1"))
	blob := reg.BlobPath(m.Layers[1].Digest)
	data, err := os.ReadFile(blob)
	if err != nil {
		t.Fatal(err)
	}
	data[len(data)-5] ^= 0xff
	if err := os.WriteFile(blob, data, 0o644); err != nil {
		t.Fatal(err)
	}
	// Every third blob request through it is cut half-way: resumed.
	flaky := testutil.StartProxy(t, reg.Host, testutil.ProxyOptions{DropEvery: 3})
	dropped := flaky.Host + "/soak/dropped:1"

	e := newEnv(t)
	policy := e.write("policy.json", sigPolicy(t, map[string][]sigReq{
		reg.Host + "/soak/signed":  {sigstoreKey(cosign.Pub)},
		reg.Host + "/soak/refused": {{"type": "reject"}},
		reg.Host:                   {{"type": "insecureAcceptAnything"}},
		flaky.Host:                 {{"type": "insecureAcceptAnything"}},
	}))
	d := startDaemon(t, e, "--policy", policy, "--insecure-registry", reg.Host, "--insecure-registry", flaky.Host,
		"--decryption-key", key.DecryptionKey(), "--gc-interval", "100ms")
	k := newKata(t, e, d)
	native := guestpullerv1.NewGuestPullerClient(d.client)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	kinds := []soakKind{
		{"plain", plain, "plain", codes.OK},
		{"signed", signed, "signed", codes.OK},
		{"encrypted", encrypted, "encrypted", codes.OK},
		{"dropped", dropped, "dropped", codes.OK},
		{"refused", refused, "", codes.PermissionDenied},
		{"no key", noKey, "", codes.FailedPrecondition},
		{"missing", reg.Host + "/soak/missing:1", "", codes.NotFound},
		{"corrupt", corrupt, "", codes.DataLoss},
	}
	// cycle creates, runs and removes one container of kind.
	cycle := func(id string, kind soakKind) error {
		bundle := k.bundle(id)
		_, err := k.pull(ctx, kind.image, bundle)
		if kind.code != codes.OK {
			if status.Code(err) != kind.code {
				return fmt.Errorf("%s (%s): %v, want %v", id, kind.name, err, kind.code)
			}
			// kata removes the directory it made; nothing may be in it.
			return os.Remove(bundle)
		}
		if err != nil {
			return fmt.Errorf("%s (%s): %w", id, kind.name, err)
		}
		if err := runIn(ctx, bundle, id, kind.content); err != nil {
			return err
		}
		return remove(bundle)
	}

	// Containers that live through the whole soak, one of each image.
	live := map[string]soakKind{}
	for _, kind := range kinds[:4] {
		id := "live-" + kind.name
		if _, err := k.pull(ctx, kind.image, k.bundle(id)); err != nil {
			t.Fatalf("%s: %v", id, err)
		}
		if err := runIn(ctx, filepath.Join(k.root, id), id, kind.content); err != nil {
			t.Fatal(err)
		}
		live[id] = kind
	}

	// run plays n cycles on soakWorkers workers, kinds in turn.
	next := 0
	run := func(n int) {
		t.Helper()
		var mu sync.Mutex
		var errs []error
		var wg sync.WaitGroup
		jobs := make(chan int)
		for range soakWorkers {
			wg.Go(func() {
				for i := range jobs {
					if err := cycle(fmt.Sprintf("c%04d", i), kinds[i%len(kinds)]); err != nil {
						mu.Lock()
						errs = append(errs, err)
						mu.Unlock()
					}
				}
			})
		}
		for range n {
			jobs <- next
			next++
		}
		close(jobs)
		wg.Wait()
		if len(errs) > 0 {
			t.Fatalf("%d of %d cycles failed; first: %v\ndaemon log:\n%s", len(errs), n, errs[0], tail(d.logs.String(), 40))
		}
	}

	// Warm up: every worker runs a container of every kind once.
	run(soakWorkers * len(kinds))
	base0 := measure(t, ctx, d, native, len(live))
	run(soakCycles)
	after := measure(t, ctx, d, native, len(live))
	t.Logf("after %d warm-up cycles: %v; after %d more: %v", soakWorkers*len(kinds), base0, soakCycles, after)

	if after.fds > base0.fds+4 {
		t.Errorf("open files grew from %d to %d", base0.fds, after.fds)
	}
	if after.goroutines > base0.goroutines+8 {
		t.Errorf("goroutines grew from %d to %d", base0.goroutines, after.goroutines)
	}
	if after.rss > base0.rss+base0.rss/4+16<<20 {
		t.Errorf("RSS grew from %d to %d KiB", base0.rss>>10, after.rss>>10)
	}

	// The live containers are as they were, and still run.
	for id, kind := range live {
		bundle := filepath.Join(k.root, id)
		if got, err := os.ReadFile(filepath.Join(bundle, "rootfs", "state")); err != nil || string(got) != id+"\n" {
			t.Errorf("live container %s: its write reads %q, %v", id, got, err)
		}
		if err := runIn(ctx, bundle, id, kind.content); err != nil {
			t.Errorf("live container %s after the soak: %v", id, err)
		}
	}

	// Nothing is mounted but the live containers' rootfs, and no overlay
	// anywhere uses a removed container's upper directory.
	var wantMounts []string
	for id := range live {
		wantMounts = append(wantMounts, filepath.Join(k.root, id, "rootfs"))
	}
	slices.Sort(wantMounts)
	got := testutil.Mounts(t, k.root)
	slices.Sort(got)
	if !slices.Equal(got, wantMounts) {
		t.Errorf("mounts under the bundles' root: %v, want the live rootfs %v", got, wantMounts)
	}
	for _, upper := range overlayUppers(t) {
		rel, err := filepath.Rel(filepath.Join(e.cache, "containers"), upper)
		if err != nil || strings.HasPrefix(rel, "..") {
			continue
		}
		if id, _, _ := strings.Cut(rel, "/"); live[id].name == "" {
			t.Errorf("an overlay still uses removed container %s's upper dir %s", id, upper)
		}
	}
	if open := openFilesUnder(t, d.cmd.Process.Pid, k.root); len(open) != 0 {
		t.Errorf("the daemon holds files under the bundles' root open: %v", open)
	}

	// The cache: the live containers, the layers the recorded images use
	// (the live ones use no other), and nothing half made or in trash.
	list, err := native.ListImages(ctx, &guestpullerv1.ListImagesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var refs []string
	need := map[string]bool{}
	for _, img := range list.Images {
		refs = append(refs, img.Ref)
		for _, d := range img.DiffIds {
			need[strings.TrimPrefix(d, "sha256:")] = true
		}
	}
	slices.Sort(refs)
	wantRefs := []string{dropped, encrypted, plain, signed}
	slices.Sort(wantRefs)
	if !slices.Equal(refs, wantRefs) {
		t.Errorf("recorded images %v, want %v", refs, wantRefs)
	}
	if layers := dirList(t, filepath.Join(e.cache, "layers")); !slices.Equal(layers, sortedKeys(need)) {
		t.Errorf("cached layers %v, want those of the recorded images %v", layers, sortedKeys(need))
	}
	var liveIDs []string
	for id := range live {
		liveIDs = append(liveIDs, id)
	}
	slices.Sort(liveIDs)
	if ids := dirList(t, filepath.Join(e.cache, "containers")); !slices.Equal(ids, liveIDs) {
		t.Errorf("containers in the cache %v, want the live ones %v", ids, liveIDs)
	}
	for _, sub := range []string{"staging", "trash", "bundles"} {
		if names := dirList(t, filepath.Join(e.cache, sub)); len(names) != 0 {
			t.Errorf("%s/ holds %v", sub, names)
		}
	}
	for _, lock := range dirList(t, filepath.Join(e.cache, "locks")) {
		kind, name, _ := strings.Cut(strings.TrimSuffix(lock, ".lock"), "-")
		if kind == "bundle" && live[name].name == "" || kind == "staging" || kind == "dir" {
			t.Errorf("lock file %s outlived what it guarded", lock)
		}
	}
	if flaky.BlobGets() < 3 {
		t.Errorf("the dropping registry saw %d blob requests: it dropped none", flaky.BlobGets())
	}
}

// runIn runs the container's process: busybox in a chroot of its rootfs,
// reading the image's file and writing one of its own.
func runIn(ctx context.Context, bundle, id, content string) error {
	cmd := exec.CommandContext(ctx, "/bin/busybox", "sh", "-c", `echo "$1" > /state && /bin/busybox cat /app/hello`, "sh", id)
	cmd.SysProcAttr = &syscall.SysProcAttr{Chroot: filepath.Join(bundle, "rootfs")}
	cmd.Dir = "/"
	out, err := cmd.CombinedOutput()
	if err != nil || string(out) != content {
		return fmt.Errorf("%s: the container's process: %q, %v; want %q", id, out, err, content)
	}
	return nil
}

// usage is what the soak measures of the daemon.
type usage struct {
	fds, goroutines int
	rss             int64
}

func (u usage) String() string {
	return fmt.Sprintf("%d open files, %d goroutines, %d KiB RSS", u.fds, u.goroutines, u.rss>>10)
}

// measure waits until the daemon has reclaimed every removed container
// (only the live bundles left), then reads its open files and RSS from
// /proc and its goroutines from its status.
func measure(t *testing.T, ctx context.Context, d *daemon, native guestpullerv1.GuestPullerService, liveBundles int) usage {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); ; {
		st, err := native.Status(ctx, &guestpullerv1.StatusRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if st.Bundles == int64(liveBundles) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d bundles after 30s, want the %d live ones", st.Bundles, liveBundles)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// A sweep may be running: let it finish.
	if _, err := native.GC(ctx, &guestpullerv1.GCRequest{}); err != nil {
		t.Fatal(err)
	}
	st, err := native.Status(ctx, &guestpullerv1.StatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	pid := d.cmd.Process.Pid
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	return usage{fds: len(fds), goroutines: int(st.Goroutines), rss: vmRSS(t, pid)}
}

func vmRSS(t *testing.T, pid int) int64 {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return kb << 10
		}
	}
	t.Fatal("no VmRSS in /proc/PID/status")
	return 0
}

// overlayUppers lists the upper directories of every overlay mounted.
func overlayUppers(t *testing.T) []string {
	t.Helper()
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, line := range strings.Split(string(data), "\n") {
		_, after, ok := strings.Cut(line, " - overlay ")
		if !ok {
			continue
		}
		for _, opt := range strings.Split(after, ",") {
			if v, ok := strings.CutPrefix(opt, "upperdir="); ok {
				out = append(out, v)
			}
		}
	}
	return out
}

func dirList(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	names := []string{}
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

func sortedKeys(m map[string]bool) []string {
	out := []string{}
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// tail is the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
