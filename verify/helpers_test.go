package verify

import (
	"context"
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/guest-puller/guest-puller/internal/testutil"
	"github.com/guest-puller/guest-puller/policy"
)

// Commands are found and run by internal/testutil (testutil.Cosign,
// testutil.Need, testutil.Output), as in every other package's tests: a
// missing tool fails the test, it never skips it.

// startRegistry serves go-containerregistry's registry on a loopback port
// and returns its host:port.
func startRegistry(t testing.TB, referrersAPI bool) string {
	t.Helper()
	srv := httptest.NewServer(registry.New(
		registry.Logger(log.New(io.Discard, "", 0)),
		registry.WithReferrersSupport(referrersAPI),
	))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

// startTamperingRegistry serves the same storage as a registry started
// with startRegistry would, but flips a byte of every blob it returns: a
// registry (or the network) lying about content.
func startTamperingRegistry(t *testing.T) (honest, tampering string) {
	t.Helper()
	h := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	evil := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet || !strings.Contains(r.URL.Path, "/blobs/") {
			h.ServeHTTP(w, r)
			return
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, r)
		body := rec.Body.Bytes()
		if len(body) > 0 {
			body[0] ^= 0xff
		}
		for k, v := range rec.Header() {
			w.Header()[k] = v
		}
		w.WriteHeader(rec.Code)
		w.Write(body)
	}))
	t.Cleanup(evil.Close)
	return strings.TrimPrefix(srv.URL, "http://"), strings.TrimPrefix(evil.URL, "http://")
}

// closedAddr returns a loopback host:port nothing listens on.
func closedAddr(t *testing.T) string {
	return fmt.Sprintf("127.0.0.1:%d", testutil.FreePort(t))
}

// buildImage makes a one-layer OCI image with umoci whose content (and so
// digest) is unique to content, and returns its layout reference for skopeo.
func buildImage(t *testing.T, content string) string {
	t.Helper()
	return testutil.BuildImage(t, testutil.ImageSpec{Layers: [][]byte{testutil.Tar(t, testutil.File("file", content, 0o644))}})
}

// push copies an image to docker://dst with skopeo (plus extra flags) and
// returns the pushed manifest digest.
func push(t *testing.T, src, dst string, extra ...string) v1.Hash {
	t.Helper()
	digestFile := filepath.Join(t.TempDir(), "digest")
	args := append([]string{"copy", "--quiet", "--src-tls-verify=false", "--dest-tls-verify=false", "--digestfile", digestFile}, extra...)
	testutil.Need(t, "skopeo")
	testutil.Run(t, "skopeo", append(args, src, "docker://"+dst)...)
	b, err := os.ReadFile(digestFile)
	if err != nil {
		t.Fatal(err)
	}
	h, err := v1.NewHash(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// cosignKey is a key pair cosign signs with, and its public key parsed.
type cosignKey struct {
	testutil.CosignKey
	pub crypto.PublicKey
}

// generateCosignKey makes a P-256 key pair with cosign generate-key-pair.
func generateCosignKey(t *testing.T) cosignKey {
	t.Helper()
	k := testutil.NewCosignKey(t)
	return cosignKey{CosignKey: k, pub: k.PublicKey(t)}
}

// importCosignKey makes a key of the given kind (testutil.NewSigner) and
// converts it to cosign's format with cosign import-key-pair.
func importCosignKey(t *testing.T, kind string) cosignKey {
	t.Helper()
	priv := testutil.NewSigner(t, kind)
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	pemFile := filepath.Join(dir, kind+".pem")
	if err := os.WriteFile(pemFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	k := testutil.ImportCosignKey(t, pemFile)
	return cosignKey{CosignKey: k, pub: k.PublicKey(t)}
}

// cosignSign signs ref (repo@digest) with cosign, offline: no
// transparency log upload.
func cosignSign(t *testing.T, k cosignKey, ref string, extra ...string) {
	t.Helper()
	k.Sign(t, ref, append([]string{"--allow-insecure-registry", "--allow-http-registry"}, extra...)...)
}

// gpgHome is a throw-away GnuPG home with its agent stopped at cleanup.
type gpgHome struct {
	dir string
}

func newGPGHome(t *testing.T) *gpgHome {
	t.Helper()
	testutil.Need(t, "gpg", "gpgconf")
	// Short path: gpg-agent's socket lives here and unix socket paths are
	// limited to about 100 bytes, more than t.TempDir can guarantee.
	dir, err := os.MkdirTemp("", "gpg")
	if err != nil {
		t.Fatal(err)
	}
	h := &gpgHome{dir: dir}
	t.Cleanup(func() {
		kill := exec.Command("gpgconf", "--kill", "all")
		kill.Env = append(os.Environ(), h.env()...)
		if out, err := kill.CombinedOutput(); err != nil {
			t.Errorf("stopping gpg-agent: %v: %s", err, out)
		}
		os.RemoveAll(dir)
	})
	return h
}

func (h *gpgHome) env() []string { return []string{"GNUPGHOME=" + h.dir} }

// newKey generates a signing key without passphrase and returns its
// fingerprint.
func (h *gpgHome) newKey(t *testing.T, uid string) string {
	t.Helper()
	testutil.Output(t, h.env(), "gpg", "--batch", "--passphrase", "", "--quick-gen-key", uid, "default", "default", "never")
	out := testutil.Output(t, h.env(), "gpg", "--with-colons", "--list-secret-keys", uid)
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Split(line, ":"); f[0] == "fpr" {
			return f[9]
		}
	}
	t.Fatalf("no fingerprint for %s in\n%s", uid, out)
	return ""
}

// export returns the public key of fpr, armored or binary.
func (h *gpgHome) export(t *testing.T, fpr string, armored bool) []byte {
	t.Helper()
	args := []string{"--export"}
	if armored {
		args = append(args, "--armor")
	}
	return []byte(testutil.Output(t, h.env(), "gpg", append(args, fpr)...))
}

// countingTransport counts the HTTP requests made through it.
type countingTransport struct {
	n    atomic.Int64
	base http.RoundTripper
}

func (c *countingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	c.n.Add(1)
	return c.base.RoundTrip(req)
}

func mustRepo(t testing.TB, s string) name.Repository {
	t.Helper()
	r, err := name.NewRepository(s)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func mustRef(t *testing.T, s string) name.Reference {
	t.Helper()
	r, err := name.ParseReference(s)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// byKey is Evidence.Sigstore for a public key without Rekor keys, which
// rejects nothing.
func byKey(ctx context.Context, ev policy.Evidence, pub crypto.PublicKey) ([]policy.Claim, error) {
	claims, rejections, err := ev.Sigstore(ctx, policy.SigstoreTrust{PublicKey: pub})
	if len(rejections) != 0 {
		return nil, fmt.Errorf("rejections without Rekor keys: %v", rejections)
	}
	return claims, err
}
