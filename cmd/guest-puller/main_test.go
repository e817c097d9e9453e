package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/guest-puller/guest-puller/internal/errdefs"
)

func TestUsageErrors(t *testing.T) {
	for _, args := range [][]string{
		nil,
		{"frobnicate"},
		{"pull"},
		{"pull", "a", "b", "--policy", "p"},
		{"pull", "img", "--no-such-flag"},
		{"pull", "img", "--max-concurrent-downloads", "0", "--policy", "p"},
		{"policy"},
		{"policy", "explain", "img"},
		{"cache"},
		{"cache", "rm"},
		{"cache", "ls", "extra"},
		{"attest", "quote"},
		{"keyprovider", "extra"},
	} {
		var out, errb bytes.Buffer
		err := run(context.Background(), args, strings.NewReader(""), &out, &errb)
		if code := errdefs.ExitCode(err); code != 2 {
			t.Errorf("guest-puller %q: exit %d (%v), want 2", args, code, err)
		}
	}
}

func TestNoPolicyIsExit2(t *testing.T) {
	var out, errb bytes.Buffer
	err := run(context.Background(), []string{"pull", "registry.example.com/a:1", "--config", filepath.Join(t.TempDir(), "none.json")}, nil, &out, &errb)
	if errdefs.ExitCode(err) != 2 {
		t.Fatalf("pull without a config file: %v, want exit 2", err)
	}
	err = run(context.Background(), []string{"pull", "registry.example.com/a:1", "--config", writeFile(t, `{"cache":"/x"}`)}, nil, &out, &errb)
	if errdefs.ExitCode(err) != 2 || !strings.Contains(err.Error(), "no policy") {
		t.Fatalf("pull with a config file but no policy: %v, want exit 2 naming the missing policy", err)
	}
}

func writeFile(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "config.json")
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestFlagsOverConfigFile(t *testing.T) {
	cfgPath := writeFile(t, `{"policy":"/etc/p.json","cache":"/from/file","decryption-key":["/file.key"],"platform":"linux/arm64"}`)
	f := newPullFlags("pull", &bytes.Buffer{})
	pos, err := parseInterleaved(f.fs, []string{"img:1", "--config", cfgPath, "--cache", "/from/flag", "--decryption-key", "/a.key", "--decryption-key", "/b.key:pw", "--insecure-registry", "r:5000"})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(pos, []string{"img:1"}) {
		t.Fatalf("positional %q", pos)
	}
	cfg, err := f.config()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Policy != "/etc/p.json" || cfg.Cache != "/from/flag" || cfg.Platform != "linux/arm64" {
		t.Errorf("merged config %+v", cfg)
	}
	if !slices.Equal(cfg.DecryptionKeys, []string{"/a.key", "/b.key:pw"}) || !slices.Equal(cfg.InsecureRegistries, []string{"r:5000"}) {
		t.Errorf("repeatable flags %q %q", cfg.DecryptionKeys, cfg.InsecureRegistries)
	}
}

func TestOneLine(t *testing.T) {
	err := errorString("first\nsecond\n  third")
	if got := oneLine(err); got != "first; second; third" {
		t.Errorf("oneLine = %q", got)
	}
}

type errorString string

func (e errorString) Error() string { return string(e) }

func TestVersionAndHelp(t *testing.T) {
	var out bytes.Buffer
	if err := run(context.Background(), []string{"version"}, nil, &out, &out); err != nil || !strings.HasPrefix(out.String(), "guest-puller ") {
		t.Errorf("version: %v %q", err, out.String())
	}
	out.Reset()
	if err := run(context.Background(), []string{"pull", "-h"}, nil, &out, &out); err != nil || !strings.Contains(out.String(), "--policy") {
		t.Errorf("pull -h: %v %q", err, out.String())
	}
}
