package fspath

import (
	"os"
	"path/filepath"
	"testing"
)

func TestWithin(t *testing.T) {
	for _, tc := range []struct {
		path, dir string
		want      bool
	}{
		{"/run/cache", "/run/cache", true},
		{"/run/cache/layers/x", "/run/cache", true},
		{"/run/cache/", "/run/cache", true},
		{"/run/cache/layers", "/run/cache/", true},
		{"/run/cache2", "/run/cache", false},
		{"/run", "/run/cache", false},
		{"/run/cache/../other", "/run/cache", false},
		{"/run/..cache", "/run", true},
		{"/", "/run", false},
		{"/anything", "/", true},
	} {
		if got := Within(tc.path, tc.dir); got != tc.want {
			t.Errorf("Within(%q, %q) = %v, want %v", tc.path, tc.dir, got, tc.want)
		}
	}
}

func TestResolveExisting(t *testing.T) {
	dir, err := filepath.EvalSymlinks(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	real := filepath.Join(dir, "real")
	if err := os.Mkdir(real, 0o755); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link")
	if err := os.Symlink(real, link); err != nil {
		t.Fatal(err)
	}
	for in, want := range map[string]string{
		link:                                 real,
		filepath.Join(link, "not/yet/there"): filepath.Join(real, "not/yet/there"),
		filepath.Join(dir, "absent/dir"):     filepath.Join(dir, "absent/dir"),
	} {
		if got := ResolveExisting(in); got != want {
			t.Errorf("ResolveExisting(%q) = %q, want %q", in, got, want)
		}
	}
}
