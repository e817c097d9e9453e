package tests

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/guest-puller/guest-puller/internal/devkbs/devkbstest"
	"github.com/guest-puller/guest-puller/internal/testutil"
)

// These tests are what a new user meets in the first hour (issue 14):
// each checks the exit code and the one line a user reads.

// TestFirstHourErrors: mistakes of setup get one line that says what is
// wrong and which flag fixes it, with the exit code of a configuration
// problem, and a failed first pull leaves no cache directory behind.
func TestFirstHourErrors(t *testing.T) {
	reg := testutil.StartRegistry(t, testutil.RegistryOptions{})
	ref := reg.Push(t, testutil.BuildImage(t, smallImage(t, "first hour")), "first/app:1")
	foreign := "linux/arm64"
	if runtime.GOARCH == "arm64" {
		foreign = "linux/amd64"
	}
	foreignRef := reg.Push(t, testutil.BuildImage(t, testutil.ImageSpec{
		Layers:   [][]byte{testutil.Tar(t, testutil.File("arch", foreign, 0o644))},
		Platform: foreign,
	}), "first/foreign:1")

	t.Run("plain http registry without --insecure-registry", func(t *testing.T) {
		e := newEnv(t)
		pol := e.write("policy.json", acceptAll)
		msg := e.pullFails(2, ref, "--policy", pol)
		for _, want := range []string{"registry " + reg.Host + " speaks plain HTTP", "--insecure-registry " + reg.Host} {
			if !strings.Contains(msg, want) {
				t.Errorf("error %q does not say %q", msg, want)
			}
		}
		if strings.Contains(msg, "HTTPS client") {
			t.Errorf("error repeats Go's transport errors: %q", msg)
		}
		if _, err := os.Lstat(e.cache); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("a failed first pull left the cache directory %s behind (%v)", e.cache, err)
		}
	})

	t.Run("image for another platform", func(t *testing.T) {
		e := newEnv(t)
		pol := e.write("policy.json", acceptAll)
		here := runtime.GOOS + "/" + runtime.GOARCH
		msg := e.pullFails(2, foreignRef, "--policy", pol, "--insecure-registry", reg.Host)
		for _, want := range []string{"the image is for " + foreign, "not for " + here, "--platform " + foreign} {
			if !strings.Contains(msg, want) {
				t.Errorf("error %q does not say %q", msg, want)
			}
		}
		if _, err := os.Lstat(e.cache); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("a refused first pull left the cache directory behind (%v)", err)
		}
		res := e.pull(foreignRef, "--policy", pol, "--insecure-registry", reg.Host, "--platform", foreign)
		if got, err := os.ReadFile(filepath.Join(res.Rootfs, "arch")); err != nil || string(got) != foreign {
			t.Errorf("--platform %s: arch file %q (%v)", foreign, got, err)
		}
	})

	t.Run("a cache that holds something stays", func(t *testing.T) {
		e := newEnv(t)
		pol := e.write("policy.json", acceptAll)
		e.pull(ref, "--policy", pol, "--insecure-registry", reg.Host)
		e.pullFails(2, reg.Host+"/first/app:1", "--policy", pol)
		if l := e.cacheLs(); len(l.Images) != 1 {
			t.Errorf("cache after a failed second pull: %d images, want the first one kept", len(l.Images))
		}
	})

	t.Run("policy check says a refusal once", func(t *testing.T) {
		e := newEnv(t)
		pol := e.write("policy.json", `{"default":[{"type":"reject"}]}`)
		for _, args := range [][]string{nil, {"--json"}} {
			r := e.gp(append([]string{"policy", "check", ref, "--policy", pol, "--insecure-registry", reg.Host}, args...)...)
			if r.Code != 3 || !strings.Contains(r.Stdout, "reject") || r.Stderr != "" {
				t.Errorf("policy check %v of a refused image: exit %d, stdout %q, stderr %q; want 3, the report on stdout alone", args, r.Code, r.Stdout, r.Stderr)
			}
		}
	})

	t.Run("--json failure is JSON on stdout", func(t *testing.T) {
		e := newEnv(t)
		pol := e.write("policy.json", `{"default":[{"type":"reject"}]}`)
		r := e.gp("pull", ref, "--json", "--quiet", "--policy", pol, "--insecure-registry", reg.Host)
		if r.Code != 3 {
			t.Fatalf("exit %d, want 3: %s", r.Code, r.Stderr)
		}
		var out struct {
			Error struct {
				Code    int    `json:"code"`
				Message string `json:"message"`
			} `json:"error"`
		}
		if err := json.Unmarshal([]byte(r.Stdout), &out); err != nil {
			t.Fatalf("stdout %q: %v", r.Stdout, err)
		}
		if out.Error.Code != 3 || !strings.Contains(out.Error.Message, ref) || "guest-puller: "+out.Error.Message+"\n" != r.Stderr {
			t.Errorf("error object %+v, want code 3 and the message on stderr %q", out.Error, r.Stderr)
		}
	})
}

// TestCredsPrompt: --creds USER asks for the password on the terminal and
// pulls with it; the password is not echoed and never printed.
func TestCredsPrompt(t *testing.T) {
	const user, pass = "puller", "Pr0mpted-Pa55word"
	reg := testutil.StartRegistry(t, testutil.RegistryOptions{User: user, Password: pass})
	ref := reg.Push(t, testutil.BuildImage(t, smallImage(t, "prompt")), "private/app:1")
	e := newEnv(t)
	pol := e.write("policy.json", acceptAll)

	master, slave := openPTY(t)
	var stdout, stderr testutil.SyncBuffer
	cmd := exec.Command(bins["guest-puller"], "pull", ref, "--quiet", "--policy", pol, "--insecure-registry", reg.Host, "--creds", user, "--cache", e.cache)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = slave, &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	slave.Close()
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(stderr.String(), "Password for "+user+": ") {
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatalf("no password prompt; stderr %q", stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if _, err := master.WriteString(pass + "\n"); err != nil {
		t.Fatal(err)
	}
	err := cmd.Wait()
	if err != nil {
		t.Fatalf("pull with the prompted password: %v; stderr %q", err, stderr.String())
	}
	if !strings.HasPrefix(stdout.String(), e.cache) {
		t.Errorf("stdout %q, want the bundle path", stdout.String())
	}
	// What the terminal showed: the typed password must not be echoed.
	master.SetReadDeadline(time.Now().Add(time.Second))
	echoed := make([]byte, 4096)
	n, _ := master.Read(echoed)
	if strings.Contains(string(echoed[:n])+stdout.String()+stderr.String(), pass) {
		t.Errorf("the password was echoed or printed")
	}
}

// openPTY opens a pseudo-terminal pair: what a user's terminal is to the
// command (slave) and to the user (master).
func openPTY(t *testing.T) (master, slave *os.File) {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatalf("open /dev/ptmx: %v", err)
	}
	t.Cleanup(func() { m.Close() })
	if err := unix.IoctlSetPointerInt(int(m.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatalf("unlockpt: %v", err)
	}
	n, err := unix.IoctlGetInt(int(m.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatalf("ptsname: %v", err)
	}
	s, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatalf("open pts %d: %v", n, err)
	}
	t.Cleanup(func() { s.Close() })
	return m, s
}

// TestNonRootCopyFallback runs guest-puller as an unprivileged user (uid
// 65534), as the README's "not root" promises: overlay cannot be mounted,
// so the rootfs is a flattened copy, also of layers whose directories and
// files keep their owner out (a directory 0644, a file 0200, an opaque
// directory 0644 hiding a lower layer's file); the default auth file of
// root's home, still HOME, is unreadable and skipped with a note, while
// the same file named with --auth-file stops the pull (exit 2); and the
// default cache, root's, is refused with the flag that gives another.
func TestNonRootCopyFallback(t *testing.T) {
	reg := testutil.StartRegistry(t, testutil.RegistryOptions{})
	ref := reg.Push(t, testutil.BuildImage(t, testutil.ImageSpec{Layers: [][]byte{
		testutil.Tar(t,
			testutil.Dir("opaque/", 0o755), testutil.File("opaque/old-a", "lower", 0o644),
			testutil.Dir("ro/", 0o644), testutil.File("ro/file", "in a 0644 directory", 0o644),
			testutil.Dir("etc/", 0o755), testutil.File("etc/shadow", "root:*:1::::::", 0o200)),
		testutil.Tar(t,
			testutil.Dir("opaque/", 0o644), testutil.Opaque("opaque"), testutil.File("opaque/new", "upper", 0o644)),
	}}), "nonroot/app:1")

	const nobody = 65534
	dir, err := os.MkdirTemp("", "guest-puller-nonroot-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	// The user can run the binary and read the policy; the cache is its
	// own.
	for _, p := range []string{dir} {
		if err := os.Chmod(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	bin := filepath.Join(dir, "guest-puller")
	data, err := os.ReadFile(bins["guest-puller"])
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, data, 0o755); err != nil {
		t.Fatal(err)
	}
	pol := filepath.Join(dir, "policy.json")
	if err := os.WriteFile(pol, []byte(acceptAll), 0o644); err != nil {
		t.Fatal(err)
	}
	home := filepath.Join(dir, "home")
	if err := os.MkdirAll(filepath.Join(home, ".docker"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(home, ".docker", "config.json"), []byte(`{"auths":{}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	owned := filepath.Join(dir, "user")
	if err := os.Mkdir(owned, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(owned, nobody, nobody); err != nil {
		t.Fatal(err)
	}
	cache := filepath.Join(owned, "cache")

	// HOME is a home this user cannot read, as after "su" without "-".
	asNobody := func(args ...string) testutil.Result {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, bin, args...)
		cmd.Env = []string{"HOME=" + home, "PATH=/usr/bin:/bin"}
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: nobody}}
		var stdout, stderr testutil.SyncBuffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		r := testutil.Result{Stdout: stdout.String(), Stderr: stderr.String()}
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			r.Code = ee.ExitCode()
		} else if err != nil {
			t.Fatalf("run as uid %d: %v", nobody, err)
		}
		return r
	}

	// The default cache, /run/guest-puller, is root's: the error says how
	// to have one's own.
	r := asNobody("pull", ref, "--quiet", "--policy", pol, "--insecure-registry", reg.Host)
	if r.Code == 0 || !strings.Contains(r.Stderr, "/run/guest-puller") || !strings.Contains(r.Stderr, "give --cache DIR") {
		t.Errorf("pull as uid %d into the default cache: exit %d, %q; want it refused, naming --cache", nobody, r.Code, r.Stderr)
	}

	// The same file named with --auth-file was asked for: unreadable, it
	// stops the pull.
	unreadable := filepath.Join(home, ".docker", "config.json")
	r = asNobody("pull", ref, "--quiet", "--policy", pol, "--insecure-registry", reg.Host, "--cache", cache, "--auth-file", unreadable)
	if r.Code != 2 || !strings.Contains(r.Stderr, "--auth-file "+unreadable) || !strings.Contains(r.Stderr, "permission denied") {
		t.Errorf("pull as uid %d with an unreadable --auth-file: exit %d, %q; want exit 2 naming it", nobody, r.Code, r.Stderr)
	}

	r = asNobody("pull", ref, "--json", "--quiet", "--policy", pol, "--insecure-registry", reg.Host, "--cache", cache)
	if r.Code != 0 {
		t.Fatalf("pull as uid %d: exit %d: %s", nobody, r.Code, r.Stderr)
	}
	if !strings.Contains(r.Stderr, "default registry auth file skipped: it cannot be read") || !strings.Contains(r.Stderr, filepath.Join(home, ".docker", "config.json")) {
		t.Errorf("no note about the unreadable default auth file: %q", r.Stderr)
	}
	var res pullResult
	if err := json.Unmarshal([]byte(r.Stdout), &res); err != nil {
		t.Fatalf("pull --json: %v: %s", err, r.Stdout)
	}
	if res.RootfsType != "copy" {
		t.Errorf("rootfsType %q, want copy (overlay needs root)", res.RootfsType)
	}
	want := map[string]struct {
		mode fs.FileMode
		body string
	}{
		"ro":           {fs.ModeDir | 0o644, ""},
		"ro/file":      {0o644, "in a 0644 directory"},
		"etc/shadow":   {0o200, "root:*:1::::::"},
		"opaque":       {fs.ModeDir | 0o644, ""},
		"opaque/new":   {0o644, "upper"},
		"opaque/old-a": {},
	}
	for name, w := range want {
		p := filepath.Join(res.Rootfs, name)
		fi, err := os.Lstat(p)
		if name == "opaque/old-a" {
			if err == nil {
				t.Errorf("%s: the opaque directory above does not hide it", name)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if fi.Mode() != w.mode {
			t.Errorf("%s: mode %v, want %v", name, fi.Mode(), w.mode)
		}
		if w.body != "" {
			if got, err := os.ReadFile(p); err != nil || string(got) != w.body {
				t.Errorf("%s: %q, %v; want %q", name, got, err, w.body)
			}
		}
	}
	// The cached layers keep their modes: the copy only borrowed access.
	err = filepath.WalkDir(filepath.Join(cache, "layers"), func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, _ := d.Info()
		switch filepath.Base(p) {
		case "ro":
			if fi.Mode() != fs.ModeDir|0o644 {
				t.Errorf("cached %s: mode %v, want drw-r--r--", p, fi.Mode())
			}
		case "shadow":
			if fi.Mode() != 0o200 {
				t.Errorf("cached %s: mode %v, want --w-------", p, fi.Mode())
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}

	// Removing it works without privileges too.
	if r := asNobody("cache", "rm", ref, "--cache", cache); r.Code != 0 {
		t.Fatalf("cache rm: exit %d: %s", r.Code, r.Stderr)
	}
	if r := asNobody("cache", "gc", "--cache", cache, "--json"); r.Code != 0 {
		t.Fatalf("cache gc: exit %d: %s", r.Code, r.Stderr)
	}
	if left, _ := filepath.Glob(filepath.Join(cache, "layers", "*")); len(left) != 0 {
		t.Errorf("layers left after gc: %q", left)
	}
}

// TestKBSPolicyErrors: a policy that does not exist is a configuration
// problem (exit 2) whether it is a file or a kbs:/// resource; a KBS that
// refuses the attestation is exit 4.
func TestKBSPolicyErrors(t *testing.T) {
	res := t.TempDir()
	testutil.WriteResource(t, res, "default/policy/present", []byte(acceptAll))
	bin := bins["dev-kbs"]
	sampleOK := devkbstest.StartDevKBS(t, bin, "--resources", res, "--allow-sample")
	strict := devkbstest.StartDevKBS(t, bin, "--resources", res)
	e := newEnv(t)
	const image = "registry.invalid/app:1"

	msg := e.pullFails(2, image, "--kbs", sampleOK.URL, "--attester", "sample", "--policy", "kbs:///default/policy/missing")
	if !strings.Contains(msg, "kbs:///default/policy/missing") || !strings.Contains(msg, "does not exist") {
		t.Errorf("missing kbs:/// policy: %q, want it named as not existing", msg)
	}
	msg = e.pullFails(2, image, "--policy", filepath.Join(e.dir, "missing.json"))
	if !strings.Contains(msg, "missing.json") {
		t.Errorf("missing policy file: %q", msg)
	}
	msg = e.pullFails(4, image, "--kbs", strict.URL, "--attester", "sample", "--policy", "kbs:///default/policy/present")
	if !strings.Contains(msg, "sample evidence is refused") {
		t.Errorf("attestation refused: %q, want the KBS's reason", msg)
	}
}
