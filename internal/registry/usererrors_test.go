package registry

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"

	"github.com/guest-puller/guest-puller/internal/errdefs"
)

// This file tests what a user meets when the setup is wrong: the error
// says what is wrong and which flag fixes it, with the right exit code.

// A plain-http registry not named insecure: one configuration error that
// names the flag, not two Go errors about https and http.
func TestPlainHTTPRegistry(t *testing.T) {
	host := testRegistry(t, nil)
	img, err := random.Image(100, 1)
	if err != nil {
		t.Fatal(err)
	}
	ref := push(t, host, "app:1", img)
	strict, err := name.ParseReference(ref.String())
	if err != nil {
		t.Fatal(err)
	}
	_, err = newClient(t, Options{}).Resolve(context.Background(), strict)
	if !errors.Is(err, errdefs.ErrInvalidConfig) {
		t.Fatalf("Resolve = %v, want a configuration error", err)
	}
	msg := err.Error()
	if !strings.Contains(msg, "speaks plain HTTP") || !strings.Contains(msg, "--insecure-registry "+host) ||
		strings.Count(msg, "plain HTTP") != 2 || strings.Contains(msg, "HTTPS client") {
		t.Errorf("error %q: want one sentence saying the registry speaks plain HTTP and naming --insecure-registry %s", msg, host)
	}
}

// A single-platform image for another platform is refused unless the
// pull asks for that platform.
func TestSinglePlatformImage(t *testing.T) {
	host := testRegistry(t, nil)
	base, err := random.Image(100, 1)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := base.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture, cf.Variant = "linux", "arm64", "v8"
	arm, err := mutate.ConfigFile(base, cf)
	if err != nil {
		t.Fatal(err)
	}
	ref := push(t, host, "arm:1", arm)
	ctx := context.Background()

	_, err = newClient(t, Options{Insecure: []string{host}, Platform: "linux/amd64"}).Resolve(ctx, ref)
	if !errors.Is(err, errdefs.ErrInvalidConfig) || !strings.Contains(err.Error(), "the image is for linux/arm64, not for linux/amd64 (--platform)") {
		t.Errorf("arm64 image pulled for --platform linux/amd64: %v, want a configuration error naming both platforms", err)
	}
	def := newClient(t, Options{Insecure: []string{host}})
	if p := def.Platform(); p.Architecture != "arm64" {
		_, err = def.Resolve(ctx, ref)
		if !errors.Is(err, errdefs.ErrInvalidConfig) || !strings.Contains(err.Error(), "give --platform linux/arm64 to pull it anyway") {
			t.Errorf("arm64 image pulled for the running platform: %v, want a refusal naming --platform", err)
		}
	}
	for _, p := range []string{"linux/arm64", "linux/arm64/v8"} {
		got, err := newClient(t, Options{Insecure: []string{host}, Platform: p}).Resolve(ctx, ref)
		if err != nil {
			t.Errorf("--platform %s: %v", p, err)
			continue
		}
		if want, _ := arm.Digest(); got.Digest != want {
			t.Errorf("--platform %s: digest %s, want %s", p, got.Digest, want)
		}
	}
	// A config that names no platform claims nothing.
	ref = push(t, host, "any:1", base)
	if _, err := newClient(t, Options{Insecure: []string{host}, Platform: "linux/s390x"}).Resolve(ctx, ref); err != nil {
		t.Errorf("image whose config names no platform: %v", err)
	}
}

func TestCredsNeedAPassword(t *testing.T) {
	if _, err := (Credentials{Creds: "alice"}).Keychain(); !errors.Is(err, errdefs.ErrInvalidConfig) || !strings.Contains(err.Error(), "without a password") {
		t.Errorf("USER without a password: %v, want a configuration error", err)
	}
	if _, err := (Credentials{Creds: "alice:"}).Keychain(); err != nil {
		t.Errorf("USER: (an empty password asked for): %v", err)
	}
}

// The default docker config that cannot be read is skipped with a note;
// a file named by $REGISTRY_AUTH_FILE or $DOCKER_CONFIG that cannot be
// read is an error. (A directory stands for an unreadable file: root reads
// every file.)
func TestUnreadableDefaultAuthFile(t *testing.T) {
	home := t.TempDir()
	if err := os.MkdirAll(filepath.Join(home, ".docker", "config.json"), 0o700); err != nil {
		t.Fatal(err)
	}
	t.Setenv("HOME", home)
	t.Setenv("REGISTRY_AUTH_FILE", "")
	t.Setenv("DOCKER_CONFIG", "")
	var logs bytes.Buffer
	prev := slog.Default()
	slog.SetDefault(slog.New(slog.NewTextHandler(&logs, nil)))
	defer slog.SetDefault(prev)

	if _, err := (Credentials{}).Keychain(); err != nil {
		t.Fatalf("unreadable ~/.docker/config.json: %v, want it skipped", err)
	}
	if !strings.Contains(logs.String(), "default registry auth file skipped") || !strings.Contains(logs.String(), filepath.Join(home, ".docker", "config.json")) {
		t.Errorf("no note naming the skipped file: %q", logs.String())
	}

	for _, env := range []string{"REGISTRY_AUTH_FILE", "DOCKER_CONFIG"} {
		t.Run(env, func(t *testing.T) {
			dir := t.TempDir()
			val := filepath.Join(dir, "auth.json")
			if env == "DOCKER_CONFIG" {
				val = dir
			}
			if err := os.MkdirAll(filepath.Join(dir, map[string]string{"REGISTRY_AUTH_FILE": "auth.json", "DOCKER_CONFIG": "config.json"}[env]), 0o700); err != nil {
				t.Fatal(err)
			}
			t.Setenv(env, val)
			if _, err := (Credentials{}).Keychain(); !errors.Is(err, errdefs.ErrInvalidConfig) || !strings.Contains(err.Error(), "$"+env) {
				t.Errorf("unreadable file from $%s: %v, want a configuration error naming it", env, err)
			}
		})
	}
}
