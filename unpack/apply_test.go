package unpack

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/guest-puller/guest-puller/internal/errdefs"
)

func TestCleanName(t *testing.T) {
	for _, tc := range []struct {
		in, want string
		unsafe   bool
	}{
		{in: "a/b", want: "a/b"},
		{in: "./a/b/", want: "a/b"},
		{in: "./", want: "."},
		{in: "/", want: "."},
		{in: "/etc/passwd", want: "etc/passwd"},
		{in: "/../../etc/passwd", want: "etc/passwd"},
		{in: "a/../b", want: "b"},
		{in: "a//b", want: "a/b"},
		{in: "..", unsafe: true},
		{in: "../x", unsafe: true},
		{in: "a/../../x", unsafe: true},
		{in: "./../x", unsafe: true},
		{in: "", unsafe: true},
	} {
		got, err := cleanName(tc.in)
		if tc.unsafe {
			var u errUnsafe
			if !errors.As(err, &u) {
				t.Errorf("cleanName(%q) = %q, %v; want refused", tc.in, got, err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("cleanName(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
}

// canaries are files outside any layer that a malicious layer aims at.
type canaries struct{ dir string }

func newCanaries(t *testing.T) canaries {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "canary"), []byte("canary"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(dir, "canarydir"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "canarydir", "keep"), []byte("keep"), 0o644); err != nil {
		t.Fatal(err)
	}
	return canaries{dir}
}

func (c canaries) check(t *testing.T) {
	t.Helper()
	var names []string
	filepath.WalkDir(c.dir, func(p string, d os.DirEntry, err error) error {
		rel, _ := filepath.Rel(c.dir, p)
		names = append(names, rel)
		return nil
	})
	if want := []string{".", "canary", "canarydir", "canarydir/keep"}; !slices.Equal(names, want) {
		t.Errorf("outside dir now holds %v, want %v", names, want)
	}
	var st unix.Stat_t
	if err := unix.Lstat(filepath.Join(c.dir, "canary"), &st); err != nil || st.Nlink != 1 || st.Mode&0o7777 != 0o644 || st.Uid != uint32(os.Geteuid()) {
		t.Errorf("canary changed: %+v %v", st, err)
	}
	if got := readFile(t, filepath.Join(c.dir, "canary")); got != "canary" {
		t.Errorf("canary content = %q", got)
	}
	if got := readFile(t, filepath.Join(c.dir, "canarydir", "keep")); got != "keep" {
		t.Errorf("canarydir/keep content = %q", got)
	}
	fi, err := os.Lstat(filepath.Join(c.dir, "canarydir"))
	if err != nil || fi.Mode() != os.ModeDir|0o755 {
		t.Errorf("canarydir changed: %v %v", fi.Mode(), err)
	}
}

func TestApplyMaliciousLayers(t *testing.T) {
	for _, tc := range []struct {
		name string
		// entries gets the outside directory and its path relative to
		// the layer root.
		entries func(out, rel string) []entry
		// want is nil for content confined to the layer.
		want error
		// landed is where a confined write must end up, inside the layer.
		landed string
	}{
		{
			name:    "dotdot traversal",
			entries: func(out, rel string) []entry { return []entry{fileE(rel+"/canary", "pwned", 0o644)} },
			want:    errdefs.ErrIntegrity,
		},
		{
			name: "dotdot inside path",
			entries: func(out, rel string) []entry {
				return []entry{dirE("a/", 0o755), fileE("a/../"+rel+"/canarydir/new", "pwned", 0o644)}
			},
			want: errdefs.ErrIntegrity,
		},
		{
			name:    "dotdot directory",
			entries: func(out, rel string) []entry { return []entry{dirE(rel+"/canarydir/", 0o777)} },
			want:    errdefs.ErrIntegrity,
		},
		{
			name:    "absolute path is made relative",
			entries: func(out, rel string) []entry { return []entry{fileE(out+"/canary", "pwned", 0o644)} },
			landed:  "{out}/canary",
		},
		{
			name: "symlinked parent to absolute host dir",
			entries: func(out, rel string) []entry {
				return []entry{symlinkE("evil", out), fileE("evil/canary", "pwned", 0o644)}
			},
			landed: "{out}/canary",
		},
		{
			name: "symlinked parent climbing out",
			entries: func(out, rel string) []entry {
				return []entry{symlinkE("evil", rel), fileE("evil/canary", "pwned", 0o644)}
			},
			// The ".." are clamped at the layer root, as chroot would.
			landed: "{rel}/canary",
		},
		{
			name: "symlink chain to host dir",
			entries: func(out, rel string) []entry {
				return []entry{symlinkE("a", "b"), symlinkE("b", out+"/canarydir"), dirE("a/sub/", 0o777), fileE("a/keep", "pwned", 0o644)}
			},
			landed: "{out}/canarydir/keep",
		},
		{
			name:    "hardlink climbing out",
			entries: func(out, rel string) []entry { return []entry{hardlinkE("h", rel+"/canary")} },
			want:    errdefs.ErrIntegrity,
		},
		{
			name:    "hardlink to absolute host file",
			entries: func(out, rel string) []entry { return []entry{hardlinkE("h", out+"/canary")} },
			want:    errdefs.ErrIntegrity,
		},
		{
			name: "symlink then hardlink through it",
			entries: func(out, rel string) []entry {
				return []entry{symlinkE("evil", out), hardlinkE("h", "evil/canary")}
			},
			want: errdefs.ErrIntegrity,
		},
		{
			name: "hardlink to a symlink links the symlink",
			entries: func(out, rel string) []entry {
				return []entry{symlinkE("evil", out+"/canary"), hardlinkE("h", "evil")}
			},
		},
		{
			name:    "whiteout climbing out",
			entries: func(out, rel string) []entry { return []entry{whiteoutE(rel + "/.wh.canary")} },
			want:    errdefs.ErrIntegrity,
		},
		{
			name:    "whiteout of dotdot",
			entries: func(out, rel string) []entry { return []entry{dirE("a/", 0o755), whiteoutE("a/.wh..")} },
			want:    errdefs.ErrIntegrity,
		},
		{
			name: "whiteout through symlink",
			entries: func(out, rel string) []entry {
				return []entry{symlinkE("evil", out), whiteoutE("evil/.wh.canary")}
			},
		},
		{
			name: "opaque dir through symlink",
			entries: func(out, rel string) []entry {
				return []entry{symlinkE("evil", out+"/canarydir"), whiteoutE("evil/.wh..wh..opq")}
			},
		},
		{
			name: "file replacing a symlink to a host file",
			entries: func(out, rel string) []entry {
				return []entry{symlinkE("evil", out+"/canary"), fileE("evil", "pwned", 0o600)}
			},
			landed: "evil",
		},
		{
			name: "directory replacing a symlink to a host dir",
			entries: func(out, rel string) []entry {
				return []entry{symlinkE("evil", out+"/canarydir"), dirE("evil/", 0o700), fileE("evil/keep", "pwned", 0o644)}
			},
			landed: "evil/keep",
		},
		{
			name:    "root replaced by a symlink",
			entries: func(out, rel string) []entry { return []entry{symlinkE("./", out)} },
			want:    errdefs.ErrIntegrity,
		},
		{
			name:    "root replaced by a file",
			entries: func(out, rel string) []entry { return []entry{fileE(".", "x", 0o644)} },
			want:    errdefs.ErrIntegrity,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			c := openCache(t)
			canary := newCanaries(t)
			s, err := c.Stage(diffIDOf([]byte(tc.name)))
			if err != nil {
				t.Fatal(err)
			}
			defer s.Abort()
			rel, err := filepath.Rel(s.diffDir(), canary.dir)
			if err != nil {
				t.Fatal(err)
			}
			layer := tarLayer(t, tc.entries(canary.dir, rel)...)
			err = s.Apply(ctx, bytes.NewReader(layer))
			if tc.want == nil && err != nil {
				t.Fatalf("Apply: %v, want it confined without error", err)
			}
			if tc.want != nil && !errors.Is(err, tc.want) {
				t.Fatalf("Apply: %v, want %v", err, tc.want)
			}
			if err != nil && strings.Contains(err.Error(), "\n") {
				t.Errorf("error is not one line: %q", err)
			}
			canary.check(t)
			// Nothing next to the layer root changed either.
			if names, _ := dirNames(s.dir()); !slices.Equal(names, []string{layerDiffDir}) {
				t.Errorf("staging dir holds %v", names)
			}
			if tc.landed != "" {
				clamped := strings.TrimLeft(strings.ReplaceAll(rel, "../", ""), "./")
				p := filepath.Join(s.diffDir(), strings.NewReplacer("{out}", canary.dir, "{rel}", clamped).Replace(tc.landed))
				if got := readFile(t, p); got != "pwned" {
					t.Errorf("confined write at %s = %q", p, got)
				}
			}
		})
	}
}

func TestApplyRefusesMalformedTar(t *testing.T) {
	c := openCache(t)
	layer := tarLayer(t, fileE("a", "x", 0o644))
	layer[148] ^= 0xff // header checksum
	s, err := c.Stage(diffIDOf(layer))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Abort()
	if err := s.Apply(context.Background(), bytes.NewReader(layer)); !errors.Is(err, errdefs.ErrIntegrity) {
		t.Errorf("Apply of a corrupt header: %v, want ErrIntegrity", err)
	}
}

func TestApplyRefusesUnknownEntryType(t *testing.T) {
	c := openCache(t)
	layer := tarLayer(t, entry{name: "cont", typ: tar.TypeCont, mode: 0o644})
	s, err := c.Stage(diffIDOf(layer))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Abort()
	if err := s.Apply(context.Background(), bytes.NewReader(layer)); !errors.Is(err, errdefs.ErrIntegrity) {
		t.Errorf("Apply: %v, want ErrIntegrity", err)
	}
}

func TestApplyKeepsDevicesAsRoot(t *testing.T) {
	requireRoot(t)
	c := openCache(t)
	layer := tarLayer(t, charE("null", 1, 3), entry{name: "disk", typ: tar.TypeBlock, mode: 0o600, major: 7, minor: 0})
	s, err := c.Stage(diffIDOf(layer))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Abort()
	if err := s.Apply(context.Background(), bytes.NewReader(layer)); err != nil {
		t.Fatal(err)
	}
	if st := s.Stats(); len(st.SkippedDevices) != 0 || st.Entries != 2 {
		t.Errorf("stats %+v, want 2 entries and no skipped device", st)
	}
	var st unix.Stat_t
	if err := unix.Lstat(filepath.Join(s.diffDir(), "disk"), &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFBLK || st.Rdev != unix.Mkdev(7, 0) {
		t.Errorf("disk: %+v %v, want block device 7:0", st, err)
	}
}
