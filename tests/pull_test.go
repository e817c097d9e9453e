package tests

import (
	"archive/tar"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/guest-puller/guest-puller/internal/testutil"
)

// richImage has every kind of entry a bundle must get right, spread over
// three layers so that whiteouts and opaque directories act across layers.
func richImage(t *testing.T) testutil.ImageSpec {
	base := testutil.Tar(t,
		testutil.Dir("etc/", 0o755),
		testutil.File("etc/passwd", "root:x:0:0:root:/root:/bin/sh\napp:x:1234:2345:app:/home/app:/bin/sh\n", 0o644),
		testutil.File("etc/group", "root:x:0:\nappgrp:x:2345:\nextra:x:3456:app\n", 0o644),
		testutil.Dir("bin/", 0o755),
		testutil.File("bin/app", "#!/bin/sh\necho v1\n", 0o755),
		testutil.Entry{Name: "bin/setuid", Type: tar.TypeReg, Body: "suid", Mode: 0o4755},
		testutil.Dir("tmp/", 0o1777),
		testutil.Dir("data/", 0o755),
		testutil.Entry{Name: "data/owned", Type: tar.TypeReg, Body: "owned by app", Mode: 0o640, UID: 1234, GID: 2345},
		testutil.Hardlink("data/hard", "data/owned"),
		testutil.Symlink("data/link", "../bin/app"),
		testutil.Symlink("data/abs", "/etc/passwd"),
		testutil.File("data/deleteme", "to be whited out", 0o644),
		testutil.Dir("opaque/", 0o755),
		testutil.File("opaque/a", "a", 0o644),
		testutil.File("opaque/b", "b", 0o644),
		testutil.Dir("gone/", 0o755),
		testutil.File("gone/file", "x", 0o644),
		testutil.Dir("dev/", 0o755),
		testutil.Entry{Name: "dev/null", Type: tar.TypeChar, Mode: 0o666, Major: 1, Minor: 3},
	)
	top := testutil.Tar(t,
		testutil.Whiteout("data/deleteme"),
		testutil.Opaque("opaque/"),
		testutil.File("opaque/c", "c", 0o600),
		testutil.Whiteout("gone"),
		testutil.File("bin/app", "#!/bin/sh\necho v2\n", 0o755),
		testutil.File("data/new.txt", "new", 0o644),
	)
	motd := testutil.Tar(t, testutil.File("etc/motd", "hello from layer 3\n", 0o644))
	return testutil.ImageSpec{
		Layers: [][]byte{base, top, motd},
		Config: []string{
			"--config.entrypoint=/bin/app",
			"--config.cmd=--flag",
			"--config.env=FOO=bar",
			"--config.workingdir=/data",
			"--config.user=app:extra",
		},
	}
}

// checkRichBundle looks at a bundle of richImage as a user would.
func checkRichBundle(t *testing.T, res pullResult) {
	t.Helper()
	root := res.Rootfs
	if root != filepath.Join(res.Bundle, "rootfs") {
		t.Errorf("rootfs %q is not the bundle's rootfs/", root)
	}
	file := func(p, want string) {
		t.Helper()
		got, err := os.ReadFile(filepath.Join(root, p))
		if err != nil {
			t.Errorf("%s: %v", p, err)
			return
		}
		if string(got) != want {
			t.Errorf("%s = %q, want %q", p, got, want)
		}
	}
	absent := func(p string) {
		t.Helper()
		if _, err := os.Lstat(filepath.Join(root, p)); !os.IsNotExist(err) {
			t.Errorf("%s should not exist (err %v)", p, err)
		}
	}
	stat := func(p string) *syscall.Stat_t {
		t.Helper()
		fi, err := os.Lstat(filepath.Join(root, p))
		if err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		return fi.Sys().(*syscall.Stat_t)
	}
	file("bin/app", "#!/bin/sh\necho v2\n")
	file("etc/motd", "hello from layer 3\n")
	file("data/owned", "owned by app")
	file("data/hard", "owned by app")
	file("data/new.txt", "new")
	file("opaque/c", "c")
	absent("opaque/a")
	absent("opaque/b")
	absent("data/deleteme")
	absent("gone")
	absent("gone/file")

	if st := stat("data/owned"); st.Uid != 1234 || st.Gid != 2345 || st.Mode&0o7777 != 0o640 {
		t.Errorf("data/owned: uid %d gid %d mode %o, want 1234 2345 640", st.Uid, st.Gid, st.Mode&0o7777)
	}
	if a, b := stat("data/owned"), stat("data/hard"); a.Ino != b.Ino || a.Nlink < 2 {
		t.Errorf("data/hard is not a hardlink of data/owned (inodes %d %d, nlink %d)", a.Ino, b.Ino, a.Nlink)
	}
	if st := stat("bin/setuid"); st.Mode&0o7777 != 0o4755 {
		t.Errorf("bin/setuid mode %o, want 4755", st.Mode&0o7777)
	}
	if st := stat("tmp"); st.Mode&0o7777 != 0o1777 {
		t.Errorf("tmp mode %o, want 1777 (sticky)", st.Mode&0o7777)
	}
	if st := stat("opaque/c"); st.Mode&0o777 != 0o600 {
		t.Errorf("opaque/c mode %o, want 600", st.Mode&0o777)
	}
	if st := stat("dev/null"); st.Mode&syscall.S_IFMT != syscall.S_IFCHR || st.Rdev != uint64(1<<8|3) {
		t.Errorf("dev/null is not the char device 1:3 (mode %o rdev %d)", st.Mode, st.Rdev)
	}
	for link, want := range map[string]string{"data/link": "../bin/app", "data/abs": "/etc/passwd"} {
		got, err := os.Readlink(filepath.Join(root, link))
		if err != nil || got != want {
			t.Errorf("%s -> %q (%v), want -> %q", link, got, err, want)
		}
	}

	var spec struct {
		Process struct {
			Args []string `json:"args"`
			Env  []string `json:"env"`
			Cwd  string   `json:"cwd"`
			User struct {
				UID            int   `json:"uid"`
				GID            int   `json:"gid"`
				AdditionalGids []int `json:"additionalGids"`
			} `json:"user"`
		} `json:"process"`
		Root struct {
			Path string `json:"path"`
		} `json:"root"`
	}
	data, err := os.ReadFile(filepath.Join(res.Bundle, "config.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, &spec); err != nil {
		t.Fatal(err)
	}
	p := spec.Process
	if !slices.Equal(p.Args, []string{"/bin/app", "--flag"}) {
		t.Errorf("args %q, want [/bin/app --flag]", p.Args)
	}
	if !slices.Contains(p.Env, "FOO=bar") {
		t.Errorf("env %q lacks FOO=bar", p.Env)
	}
	if p.Cwd != "/data" {
		t.Errorf("cwd %q, want /data", p.Cwd)
	}
	if p.User.UID != 1234 || p.User.GID != 3456 {
		t.Errorf("user %d:%d, want 1234:3456 (app:extra through /etc/passwd and /etc/group)", p.User.UID, p.User.GID)
	}
	if spec.Root.Path != "rootfs" {
		t.Errorf("root.path %q, want rootfs", spec.Root.Path)
	}
}

// TestPullFormats pulls the same content as OCI gzip, OCI zstd and Docker
// schema 2 from a real registry and checks every bundle.
func TestPullFormats(t *testing.T) {
	reg := testutil.StartRegistry(t, testutil.RegistryOptions{})
	src := testutil.BuildImage(t, richImage(t))
	dirCopy := filepath.Join(t.TempDir(), "dir")
	// zstd: to dir: uncompressed, then skopeo compresses with zstd into a
	// local layout (pushing straight to the registry would let skopeo reuse
	// the gzip blobs it already knows there).
	testutil.Run(t, "skopeo", "copy", "--quiet", "--dest-decompress", src, "dir:"+dirCopy)
	zstdLayout := filepath.Join(t.TempDir(), "zstd")
	testutil.Run(t, "skopeo", "copy", "--quiet", "--dest-compress-format", "zstd", "dir:"+dirCopy, "oci:"+zstdLayout+":img")

	for _, tc := range []struct {
		name      string
		src       string
		args      []string
		mediaType string
	}{
		{"oci-gzip", src, nil, "application/vnd.oci.image.layer.v1.tar+gzip"},
		{"oci-zstd", "oci:" + zstdLayout + ":img", nil, "application/vnd.oci.image.layer.v1.tar+zstd"},
		{"docker-v2s2", src, []string{"--format", "v2s2"}, "application/vnd.docker.image.rootfs.diff.tar.gzip"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			reg := reg
			if tc.name == "oci-zstd" {
				// A registry of its own: skopeo would otherwise push the
				// gzip blobs it knows the registry has for the same content.
				reg = testutil.StartRegistry(t, testutil.RegistryOptions{})
			}
			ref := reg.Push(t, tc.src, "formats/"+tc.name+":1", tc.args...)
			pol := e.write("policy.json", acceptAll)
			res := e.pull(ref, "--policy", pol, "--insecure-registry", reg.Host)
			if len(res.Layers) != 3 {
				t.Fatalf("%d layers, want 3", len(res.Layers))
			}
			for _, l := range res.Layers {
				if l.MediaType != tc.mediaType || l.Cached || l.Encrypted {
					t.Errorf("layer %+v: want media type %s, not cached, not encrypted", l, tc.mediaType)
				}
			}
			_, digest := testutil.ParseManifest(t, reg.RawManifest(t, "formats/"+tc.name, "1"))
			if res.ManifestDigest != digest {
				t.Errorf("manifestDigest %s, registry has %s", res.ManifestDigest, digest)
			}
			checkRichBundle(t, res)
			if res.RootfsType != "overlay" {
				t.Errorf("rootfsType %q, want overlay (running as root)", res.RootfsType)
			}
		})
	}
}

// TestSecondPullUsesCacheButRechecksPolicy: a second container of the pod
// fetches no layer, but the manifest is resolved and the policy evaluated
// again: a cached image is not trusted because it was once.
func TestSecondPullUsesCacheButRechecksPolicy(t *testing.T) {
	reg := testutil.StartRegistry(t, testutil.RegistryOptions{})
	proxy := testutil.StartProxy(t, reg.Host, testutil.ProxyOptions{})
	ref := strings.Replace(reg.Push(t, testutil.BuildImage(t, richImage(t)), "cached/app:1"), reg.Host, proxy.Host, 1)
	e := newEnv(t)
	pol := e.write("policy.json", acceptAll)
	first := e.pull(ref, "--policy", pol, "--insecure-registry", proxy.Host, "--container-id", "c1")
	layerGets := func() int {
		n := 0
		for _, l := range first.Layers {
			n += proxy.FullGets(l.Digest) + proxy.RangeGets(l.Digest)
		}
		return n
	}
	fetched := layerGets()
	second := e.pull(ref, "--policy", pol, "--insecure-registry", proxy.Host, "--container-id", "c2")
	if got := layerGets() - fetched; got != 0 {
		t.Errorf("second pull fetched %d layer blobs, want 0", got)
	}
	for _, l := range second.Layers {
		if !l.Cached {
			t.Errorf("layer %s not reported cached", l.Digest)
		}
	}
	if first.Bundle == second.Bundle {
		t.Fatalf("two containers share bundle %s", first.Bundle)
	}
	checkRichBundle(t, second)
	// Writes in one container's rootfs stay there.
	if err := os.WriteFile(filepath.Join(second.Rootfs, "data/new.txt"), []byte("changed"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(filepath.Join(first.Rootfs, "data/new.txt")); string(got) != "new" {
		t.Errorf("container c1 sees c2's write: %q", got)
	}

	reject := e.write("reject.json", `{"default":[{"type":"reject"}]}`)
	msg := e.pullFails(3, ref, "--policy", reject, "--insecure-registry", proxy.Host, "--container-id", "c3")
	if !strings.Contains(msg, "cached/app") {
		t.Errorf("refusal does not name the image: %s", msg)
	}
}

// TestIndexPlatforms pulls each platform of a two-platform index.
func TestIndexPlatforms(t *testing.T) {
	reg := testutil.StartRegistry(t, testutil.RegistryOptions{})
	amd := reg.Push(t, testutil.BuildImage(t, testutil.ImageSpec{
		Layers:   [][]byte{testutil.Tar(t, testutil.File("arch", "amd64", 0o644))},
		Platform: "linux/amd64",
	}), "multi/amd:1")
	arm := reg.Push(t, testutil.BuildImage(t, testutil.ImageSpec{
		Layers:   [][]byte{testutil.Tar(t, testutil.File("arch", "arm64", 0o644))},
		Platform: "linux/arm64",
	}), "multi/arm:1")
	ref := reg.Host + "/multi/app:1"
	indexDigest := pushIndex(t, reg, ref, map[string]string{"linux/amd64": amd, "linux/arm64": arm})

	e := newEnv(t)
	pol := e.write("policy.json", acceptAll)
	for _, tc := range []struct{ platform, want, from string }{
		{"linux/amd64", "amd64", amd},
		{"linux/arm64", "arm64", arm},
		{"linux/arm64/v8", "arm64", arm},
	} {
		res := e.pull(ref, "--policy", pol, "--insecure-registry", reg.Host, "--platform", tc.platform, "--container-id", strings.ReplaceAll(tc.platform, "/", "-"))
		got, err := os.ReadFile(filepath.Join(res.Rootfs, "arch"))
		if err != nil || string(got) != tc.want {
			t.Errorf("--platform %s: arch file %q (%v), want %q", tc.platform, got, err, tc.want)
		}
		repo, tag, _ := strings.Cut(strings.TrimPrefix(tc.from, reg.Host+"/"), ":")
		if _, d := testutil.ParseManifest(t, reg.RawManifest(t, repo, tag)); res.ManifestDigest != d || res.ManifestDigest == indexDigest {
			t.Errorf("--platform %s: manifestDigest %s, want the platform manifest %s", tc.platform, res.ManifestDigest, d)
		}
	}
	msg := e.pullFails(2, ref, "--policy", pol, "--insecure-registry", reg.Host, "--platform", "linux/s390x")
	if !strings.Contains(msg, "linux/s390x") || !strings.Contains(msg, "linux/arm64") {
		t.Errorf("missing platform error does not say what was wanted and what exists: %s", msg)
	}
}
