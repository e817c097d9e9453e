package config

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/guest-puller/guest-puller/internal/errdefs"
	"github.com/guest-puller/guest-puller/policy"
)

func TestLoadConfig(t *testing.T) {
	dir := t.TempDir()
	write := func(s string) string {
		p := filepath.Join(dir, "c.json")
		os.WriteFile(p, []byte(s), 0o600)
		return p
	}
	c, err := LoadConfig(write(`{"policy":"/p.json","decryption-key":["/k1","/k2:pw"],"max-concurrent-downloads":5,"insecure-registry":["r:5000"],"idle-timeout":"1m30s"}`))
	if err != nil {
		t.Fatal(err)
	}
	if c.Policy != "/p.json" || len(c.DecryptionKeys) != 2 || c.MaxConcurrentDownloads != 5 || c.InsecureRegistries[0] != "r:5000" || time.Duration(c.IdleTimeout) != 90*time.Second {
		t.Errorf("config %+v", c)
	}
	for _, bad := range []string{`{"polciy":"x"}`, `{"policy":1}`, `{`, `{"policy":"x"} {}`,
		`{"idle-timeout":30}`, `{"idle-timeout":"soon"}`, `{"idle-timeout":"0s"}`, `{"idle-timeout":"-5s"}`} {
		if _, err := LoadConfig(write(bad)); !errors.Is(err, errdefs.ErrInvalidConfig) {
			t.Errorf("LoadConfig(%s) = %v, want ErrInvalidConfig", bad, err)
		}
	}
	if _, err := Open(context.Background(), Config{}, nil); !errors.Is(err, errdefs.ErrInvalidConfig) || !strings.Contains(err.Error(), "no policy") {
		t.Errorf("Open without a policy = %v, want ErrInvalidConfig naming the missing policy", err)
	}
}

// TestPolicyKeyPaths: a policy read from a file resolves a relative key
// path against its own directory; one with no directory (from the KBS, or
// inline in a config file) refuses it rather than read a file of the
// working directory, and a missing policy file is a configuration error
// that names the policy once.
func TestPolicyKeyPaths(t *testing.T) {
	const pol = `{"default":[{"type":"sigstoreSigned","keyPath":"ci.pub"}]}`
	ref, err := name.ParseReference("registry.example.com/app:1")
	if err != nil {
		t.Fatal(err)
	}
	img := policy.Image{Ref: ref, ManifestDigest: v1.Hash{Algorithm: "sha256", Hex: strings.Repeat("0", 64)}}
	for _, c := range []struct {
		base     string
		wantRead string // the path the key is read from; "" for none
	}{
		{base: "/etc/guest-puller", wantRead: "/etc/guest-puller/ci.pub"},
		{base: ""},
	} {
		var read []string
		readFn := func(_ context.Context, p string) ([]byte, error) {
			read = append(read, p)
			return nil, fmt.Errorf("%w: no such key here", errdefs.ErrInvalidConfig)
		}
		p, err := ParsePolicy(context.Background(), "kbs:///default/policy/1", []byte(pol), c.base, readFn)
		if err != nil {
			t.Fatal(err)
		}
		d, err := p.Evaluate(context.Background(), img)
		if err != nil {
			t.Fatal(err)
		}
		if d.Allowed {
			t.Fatalf("base %q: allowed without its key", c.base)
		}
		switch {
		case c.wantRead != "" && (len(read) != 1 || read[0] != c.wantRead):
			t.Errorf("base %q: read %q, want %q", c.base, read, c.wantRead)
		case c.wantRead == "" && len(read) != 0:
			t.Errorf("base %q: read %q, want no read of a relative key path", c.base, read)
		case c.wantRead == "" && !strings.Contains(d.Err().Error(), `key path "ci.pub" is relative`):
			t.Errorf("base %q: refusal %q does not say the key path is relative", c.base, d.Err())
		}
	}

	missing := filepath.Join(t.TempDir(), "policy.json")
	_, err = LoadPolicy(context.Background(), missing, newResources(Config{}).read)
	if !errors.Is(err, errdefs.ErrInvalidConfig) || !strings.Contains(err.Error(), missing) {
		t.Errorf("LoadPolicy(missing) = %v, want a configuration error naming %s", err, missing)
	}
}
