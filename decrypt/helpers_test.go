package decrypt

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	mrand "math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/guest-puller/guest-puller/internal/errdefs"
)

// keyProviderArg makes the test binary act as the attestation-agent key
// provider command that ocicrypt runs (see TestMain), as
// `guest-puller keyprovider` does.
const keyProviderArg = "-decrypt-test-keyprovider"

func TestMain(m *testing.M) {
	if len(os.Args) == 2 && os.Args[1] == keyProviderArg {
		if err := ServeKeyProvider(context.Background(), os.Stdin, os.Stdout, KeyProviderOptions{}); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	code := m.Run()
	if buildOnce.dir != "" {
		os.RemoveAll(filepath.Dir(buildOnce.dir))
	}
	os.Exit(code)
}

// The files the test image holds, one layer each.
const (
	fileA = "etc/greeting.txt"
	fileB = "opt/data.bin"
)

var contentA = []byte("hello from an encrypted layer\n")

// contentB is deterministic so that every test image has the same layers.
var contentB = func() []byte {
	r := mrand.New(mrand.NewPCG(1, 2))
	b := make([]byte, 300<<10)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}()

// needTools fails (never skips) when a tool the test runs is missing.
func needTools(t testing.TB, names ...string) {
	t.Helper()
	for _, n := range names {
		if _, err := exec.LookPath(n); err != nil {
			t.Fatalf("this test needs %s on PATH (scripts/setup installs it): %v", n, err)
		}
	}
}

// run runs a tool with the test's environment plus env, failing the test
// with its output on error.
func run(t testing.TB, env []string, name string, args ...string) []byte {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Env = append(cleanEnv(), env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return out
}

// cleanEnv drops settings that would change what skopeo and gpg do.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch k {
		case "OCICRYPT_KEYPROVIDER_CONFIG", "GNUPGHOME":
			continue
		}
		env = append(env, kv)
	}
	return env
}

// skopeoCopy copies between OCI layouts ("oci:DIR:TAG").
func skopeoCopy(t testing.TB, env []string, args ...string) {
	t.Helper()
	tmp := t.TempDir()
	run(t, append([]string{"TMPDIR=" + tmp}, env...), "skopeo",
		append([]string{"--insecure-policy", "copy", "--quiet"}, args...)...)
}

var buildOnce struct {
	sync.Mutex
	dir string
}

// testImage returns an OCI layout (tag "v1") with two gzip layers built by
// umoci: fileA and fileB. It is built once per test binary, read-only.
func testImage(t testing.TB) string {
	t.Helper()
	buildOnce.Lock()
	defer buildOnce.Unlock()
	if buildOnce.dir != "" {
		return buildOnce.dir
	}
	needTools(t, "umoci")
	root, err := os.MkdirTemp("", "decrypt-test-image-")
	if err != nil {
		t.Fatal(err)
	}
	layout := filepath.Join(root, "img")
	run(t, nil, "umoci", "init", "--layout", layout)
	run(t, nil, "umoci", "new", "--image", layout+":v1")
	for _, f := range []struct {
		path string
		data []byte
	}{{fileA, contentA}, {fileB, contentB}} {
		src := filepath.Join(root, filepath.Base(f.path))
		if err := os.WriteFile(src, f.data, 0o644); err != nil {
			t.Fatal(err)
		}
		run(t, nil, "umoci", "insert", "--image", layout+":v1", src, "/"+f.path)
	}
	buildOnce.dir = layout
	return layout
}

// image is an OCI layout's manifest and config for one tag.
type image struct {
	dir      string
	manifest ocispec.Manifest
	config   ocispec.Image
}

func readImage(t testing.TB, dir, tag string) image {
	t.Helper()
	var idx ocispec.Index
	readJSON(t, filepath.Join(dir, "index.json"), &idx)
	for _, m := range idx.Manifests {
		if m.Annotations[ocispec.AnnotationRefName] != tag {
			continue
		}
		img := image{dir: dir}
		readJSON(t, blobPath(dir, m.Digest), &img.manifest)
		readJSON(t, blobPath(dir, img.manifest.Config.Digest), &img.config)
		return img
	}
	t.Fatalf("%s: no tag %s", dir, tag)
	return image{}
}

func readJSON(t testing.TB, path string, v any) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

func blobPath(dir string, d digest.Digest) string {
	return filepath.Join(dir, "blobs", d.Algorithm().String(), d.Encoded())
}

// checkLayer decrypts layer i of enc with lk (nil for a plain layer),
// decompresses it and checks what a user would: the tar's digest is the
// config's diff_id, the compressed plaintext is byte-identical to the
// source image's layer, and the file the layer adds has its content.
func checkLayer(t testing.TB, enc, src image, i int, lk *LayerKey) {
	t.Helper()
	desc := enc.manifest.Layers[i]
	f, err := os.Open(blobPath(enc.dir, desc.Digest))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()

	var blob io.Reader = f
	mediaType := desc.MediaType
	if lk != nil {
		if blob, err = lk.NewReader(f); err != nil {
			t.Fatalf("layer %d: NewReader: %v", i, err)
		}
		mediaType = PlainMediaType(mediaType)
	}
	compressed := digest.SHA256.Digester()
	blob = io.TeeReader(blob, compressed.Hash())

	var tarStream io.Reader
	switch {
	case strings.HasSuffix(mediaType, "gzip"):
		zr, err := gzip.NewReader(blob)
		if err != nil {
			t.Fatalf("layer %d: gzip: %v", i, err)
		}
		tarStream = zr
	case strings.HasSuffix(mediaType, "zstd"):
		zr, err := zstd.NewReader(blob)
		if err != nil {
			t.Fatalf("layer %d: zstd: %v", i, err)
		}
		defer zr.Close()
		tarStream = zr
	default:
		t.Fatalf("layer %d: unexpected media type %s", i, mediaType)
	}
	diffID := digest.SHA256.Digester()
	files := readTar(t, io.TeeReader(tarStream, diffID.Hash()))
	// Drain: the HMAC verdict comes at the blob's EOF, after the
	// compressor's own end marker.
	if _, err := io.Copy(io.Discard, blob); err != nil {
		t.Fatalf("layer %d: reading to EOF: %v", i, err)
	}

	if got, want := diffID.Digest(), src.config.RootFS.DiffIDs[i]; got != want {
		t.Errorf("layer %d: diff_id %s, want %s", i, got, want)
	}
	if got, want := compressed.Digest(), src.manifest.Layers[i].Digest; got != want {
		t.Errorf("layer %d: decrypted blob %s, want the source layer %s", i, got, want)
	}
	wantFile, wantData := fileA, contentA
	if i == 1 {
		wantFile, wantData = fileB, contentB
	}
	if got, ok := files[wantFile]; !ok {
		t.Errorf("layer %d: no %s in %v", i, wantFile, keysOf(files))
	} else if !bytes.Equal(got, wantData) {
		t.Errorf("layer %d: %s has %d bytes that differ from what was inserted", i, wantFile, len(got))
	}
}

func readTar(t testing.TB, r io.Reader) map[string][]byte {
	t.Helper()
	files := map[string][]byte{}
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("tar: %v", err)
		}
		if h.Typeflag == tar.TypeReg {
			b, err := io.ReadAll(tr)
			if err != nil {
				t.Fatalf("tar %s: %v", h.Name, err)
			}
			files[strings.TrimPrefix(h.Name, "/")] = b
		}
	}
	// The tar end marker may be followed by padding up to a record.
	if _, err := io.Copy(io.Discard, r); err != nil {
		t.Fatalf("tar padding: %v", err)
	}
	return files
}

func keysOf(m map[string][]byte) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	return ks
}

// testKeys are key files in the forms users hand to skopeo.
type testKeys struct {
	dir                   string
	rsaPriv, rsaPub       string // PEM PKCS#1 / PKIX
	rsaDER                string // DER PKCS#8 of the same key
	rsaCert               string // self-signed x509 for the RSA key (PKCS7)
	ecPriv, ecPub         string // PEM SEC1 / PKIX, P-256
	rsaProtected          string // PEM, legacy-encrypted (openssl -traditional)
	rsaProtectedPub       string
	rsaPKCS8Protected     string // PEM ENCRYPTED PRIVATE KEY
	password, passwordTxt string
}

func newTestKeys(t testing.TB) testKeys {
	t.Helper()
	needTools(t, "openssl")
	dir := t.TempDir()
	k := testKeys{dir: dir, password: "s3cret:with-colon"}
	path := func(n string) string { return filepath.Join(dir, n) }

	rk, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	k.rsaPriv, k.rsaPub, k.rsaDER, k.rsaCert = path("rsa.pem"), path("rsa.pub"), path("rsa.der"), path("rsa.crt")
	writePEM(t, k.rsaPriv, "RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(rk))
	writePEM(t, k.rsaPub, "PUBLIC KEY", must(x509.MarshalPKIXPublicKey(&rk.PublicKey)))
	if err := os.WriteFile(k.rsaDER, must(x509.MarshalPKCS8PrivateKey(rk)), 0o600); err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(42),
		Subject:      pkix.Name{CommonName: "decrypt test recipient"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageKeyEncipherment,
	}
	writePEM(t, k.rsaCert, "CERTIFICATE", must(x509.CreateCertificate(rand.Reader, tmpl, tmpl, &rk.PublicKey, rk)))

	ek, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	k.ecPriv, k.ecPub = path("ec.pem"), path("ec.pub")
	writePEM(t, k.ecPriv, "EC PRIVATE KEY", must(x509.MarshalECPrivateKey(ek)))
	writePEM(t, k.ecPub, "PUBLIC KEY", must(x509.MarshalPKIXPublicKey(&ek.PublicKey)))

	k.rsaProtected, k.rsaProtectedPub = path("rsa-protected.pem"), path("rsa-protected.pub")
	k.rsaPKCS8Protected = path("rsa-pkcs8-protected.pem")
	k.passwordTxt = path("password.txt")
	if err := os.WriteFile(k.passwordTxt, []byte(k.password+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	run(t, nil, "openssl", "genrsa", "-out", path("plain-for-protected.pem"), "2048")
	run(t, nil, "openssl", "rsa", "-in", path("plain-for-protected.pem"), "-aes256", "-traditional",
		"-passout", "file:"+k.passwordTxt, "-out", k.rsaProtected)
	run(t, nil, "openssl", "rsa", "-in", path("plain-for-protected.pem"), "-pubout", "-out", k.rsaProtectedPub)
	run(t, nil, "openssl", "pkcs8", "-topk8", "-v2", "aes256", "-in", path("plain-for-protected.pem"),
		"-passout", "file:"+k.passwordTxt, "-out", k.rsaPKCS8Protected)
	if err := os.Remove(path("plain-for-protected.pem")); err != nil {
		t.Fatal(err)
	}
	return k
}

func writePEM(t testing.TB, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// mapGetter is an in-memory ResourceGetter that counts its fetches.
type mapGetter struct {
	mu        sync.Mutex
	resources map[string][]byte
	err       error // returned for every fetch when set
	calls     map[string]int
}

func (g *mapGetter) GetResource(ctx context.Context, uri string) ([]byte, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.calls == nil {
		g.calls = map[string]int{}
	}
	g.calls[uri]++
	if g.err != nil {
		return nil, g.err
	}
	b, ok := g.resources[uri]
	if !ok {
		return nil, fmt.Errorf("resource %s: %w: not found (404)", uri, errdefs.ErrDecrypt)
	}
	return b, nil
}
