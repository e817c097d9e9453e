package tests

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/guest-puller/guest-puller/internal/testutil"
)

// TestHostSpellingsShareScopes (issue 8, hole 7): a policy scope that
// requires a signature for registry.example.com/locked holds for every
// spelling of that host a request may use (case, an explicit :443). Before
// hosts were compared canonically, "Registry.Example.com/locked/app" fell
// past the scope to the permissive default. registries.conf maps the
// name to the test registry, so its prefix must match every spelling too.
func TestHostSpellingsShareScopes(t *testing.T) {
	reg := testutil.StartRegistry(t, testutil.RegistryOptions{})
	img := testutil.BuildImage(t, smallImage(t, "spelled"))
	reg.Push(t, img, "locked/app:1")
	reg.Push(t, img, "open/app:1")
	e := newEnv(t)
	pol := e.write("policy.json", fmt.Sprintf(`{"default":[{"type":"insecureAcceptAnything"}],
		"transports":{"docker":{"registry.example.com/locked":[{"type":"sigstoreSigned","keyPath":%q}]}}}`, writeECPublicKey(t, e.dir)))
	conf := e.write("registries.conf", fmt.Sprintf("[[registry]]\nprefix = \"Registry.Example.COM:443\"\nlocation = %q\ninsecure = true\n", reg.Host))
	args := []string{"--policy", pol, "--registries-conf", conf}

	// The registry is reached under the configured name, and an image
	// outside the scope pulls.
	res := e.pull("registry.example.com/open/app:1", append(args, "--container-id", "open")...)
	if got, _ := os.ReadFile(filepath.Join(res.Rootfs, "app/hello")); string(got) != "spelled" {
		t.Fatalf("app/hello = %q", got)
	}
	for i, image := range []string{
		"registry.example.com/locked/app:1",
		"Registry.Example.com/locked/app:1",
		"REGISTRY.EXAMPLE.COM:443/locked/app:1",
		"registry.example.com:443/locked/app:1",
	} {
		t.Run(image, func(t *testing.T) {
			msg := e.pullFails(3, image, append(args, "--container-id", fmt.Sprintf("locked-%d", i))...)
			if !strings.Contains(msg, `scope "registry.example.com/locked"`) || !strings.Contains(msg, "sigstoreSigned") {
				t.Errorf("refusal does not name the scope and requirement: %s", msg)
			}
			c := e.gp("policy", "check", image, "--json", "--policy", pol, "--registries-conf", conf)
			if c.Code != 3 || !strings.Contains(c.Stdout, `"scope": "registry.example.com/locked"`) {
				t.Errorf("policy check: exit %d, want 3 under the scope:\n%s%s", c.Code, c.Stdout, c.Stderr)
			}
		})
	}
	if l := e.cacheLs(); len(l.Images) != 1 {
		t.Errorf("cache has %d images, want only the open one: %+v", len(l.Images), l.Images)
	}
}

// writeECPublicKey writes a fresh P-256 public key (PEM) that signed nothing.
func writeECPublicKey(t *testing.T, dir string) string {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKIXPublicKey(&k.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, fmt.Sprintf("unused-%x.pub", der[len(der)-4:]))
	if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}
