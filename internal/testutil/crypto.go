package testutil

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// KeyPair is a private key, its public key and optionally a self-signed
// certificate, as files in the forms users hand to skopeo
// (--encryption-key jwe:PUB, pkcs7:CERT) and to guest-puller
// (--decryption-key PRIV[:PASSWORD], plus the certificate for PKCS7).
type KeyPair struct {
	// Private is the private key: PEM PKCS#1 "RSA PRIVATE KEY" or SEC1
	// "EC PRIVATE KEY" as openssl writes them; legacy-PEM-encrypted
	// (AES-256) when Password is set.
	Private string
	// Public is the PEM PKIX public key.
	Public string
	// Cert is a self-signed x509 certificate of the key ("" for EC keys).
	Cert string
	// Password protects Private, or is "".
	Password string
}

// DecryptionKey is the --decryption-key value of the private key:
// PATH or PATH:PASSWORD.
func (k KeyPair) DecryptionKey() string {
	if k.Password != "" {
		return k.Private + ":" + k.Password
	}
	return k.Private
}

// RSAKey makes a 2048-bit RSA key pair named name in dir with openssl,
// with a self-signed certificate (for PKCS7 recipients). A non-empty
// password encrypts the private key with AES-256 in the traditional PEM
// form ocicrypt reads (openssl rsa -aes256 -traditional).
func RSAKey(t testing.TB, dir, name, password string) KeyPair {
	t.Helper()
	Need(t, "openssl")
	p := func(ext string) string { return filepath.Join(dir, name+ext) }
	k := KeyPair{Private: p(".pem"), Public: p(".pub"), Cert: p(".crt"), Password: password}
	plain := p(".plain.pem")
	Run(t, "openssl", "genrsa", "-traditional", "-out", plain, "2048")
	Run(t, "openssl", "rsa", "-in", plain, "-pubout", "-out", k.Public)
	Run(t, "openssl", "req", "-new", "-x509", "-key", plain, "-subj", "/CN="+name+" encryption test recipient",
		"-days", "2", "-out", k.Cert)
	if password == "" {
		if err := os.Rename(plain, k.Private); err != nil {
			t.Fatal(err)
		}
		return k
	}
	pwFile := p(".pass")
	if err := os.WriteFile(pwFile, []byte(password), 0o600); err != nil {
		t.Fatal(err)
	}
	Run(t, "openssl", "rsa", "-in", plain, "-aes256", "-traditional", "-passout", "file:"+pwFile, "-out", k.Private)
	for _, f := range []string{plain, pwFile} {
		if err := os.Remove(f); err != nil {
			t.Fatal(err)
		}
	}
	return k
}

// EncryptedPKCS8 writes the password-protected key k as PKCS#8
// "ENCRYPTED PRIVATE KEY" (what `openssl genpkey -aes256` writes) to path,
// under the same password.
func (k KeyPair) EncryptedPKCS8(t testing.TB, path string) string {
	t.Helper()
	if k.Password == "" {
		t.Fatal("EncryptedPKCS8 needs a password-protected key")
	}
	// Two files: openssl reads the second line for -passout when both
	// name the same one.
	in, out := path+".passin", path+".passout"
	for _, f := range []string{in, out} {
		if err := os.WriteFile(f, []byte(k.Password), 0o600); err != nil {
			t.Fatal(err)
		}
		defer os.Remove(f)
	}
	Run(t, "openssl", "pkcs8", "-topk8", "-v2", "aes256", "-in", k.Private, "-passin", "file:"+in,
		"-passout", "file:"+out, "-out", path)
	return path
}

// ECKey makes a P-256 key pair named name in dir with openssl (SEC1 private
// key, as `openssl ecparam -genkey` writes it).
func ECKey(t testing.TB, dir, name string) KeyPair {
	t.Helper()
	Need(t, "openssl")
	k := KeyPair{Private: filepath.Join(dir, name+".pem"), Public: filepath.Join(dir, name+".pub")}
	Run(t, "openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", k.Private)
	Run(t, "openssl", "ec", "-in", k.Private, "-pubout", "-out", k.Public)
	return k
}

// Secrets returns strings that must never appear in any output: the
// password, every line of the private key file's PEM body, and the private
// scalars (RSA d, p, q; EC d) in hex and in standard and URL-safe base64,
// padded or not, as a JWK or a debug print would show them.
func (k KeyPair) Secrets(t testing.TB) []string {
	t.Helper()
	data, err := os.ReadFile(k.Private)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	if k.Password != "" {
		out = append(out, k.Password)
	}
	block, _ := pem.Decode(data)
	if block == nil {
		t.Fatalf("%s is not PEM", k.Private)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if line = strings.TrimSpace(line); len(line) >= 32 && !strings.Contains(line, ":") && !strings.HasPrefix(line, "-----") {
			out = append(out, line)
		}
	}
	der := block.Bytes
	if x509.IsEncryptedPEMBlock(block) { //nolint:staticcheck // the legacy PEM encryption ocicrypt reads
		if der, err = x509.DecryptPEMBlock(block, []byte(k.Password)); err != nil { //nolint:staticcheck // as above
			t.Fatalf("%s: %v", k.Private, err)
		}
	}
	var scalars []*big.Int
	switch block.Type {
	case "RSA PRIVATE KEY":
		key, err := x509.ParsePKCS1PrivateKey(der)
		if err != nil {
			t.Fatal(err)
		}
		scalars = append(scalars, key.D)
		scalars = append(scalars, key.Primes...)
	case "EC PRIVATE KEY":
		key, err := x509.ParseECPrivateKey(der)
		if err != nil {
			t.Fatal(err)
		}
		scalars = append(scalars, key.D)
	case "PRIVATE KEY":
		key, err := x509.ParsePKCS8PrivateKey(der)
		if err != nil {
			t.Fatal(err)
		}
		switch key := key.(type) {
		case *rsa.PrivateKey:
			scalars = append(scalars, key.D)
			scalars = append(scalars, key.Primes...)
		case *ecdsa.PrivateKey:
			scalars = append(scalars, key.D)
		}
	default:
		t.Fatalf("%s: unexpected PEM type %s", k.Private, block.Type)
	}
	for _, s := range scalars {
		b := s.Bytes()
		// A 20-byte window is plenty to recognise the scalar and short
		// enough to match any encoding that starts on a byte boundary.
		for _, enc := range []string{
			hex.EncodeToString(b),
			base64.StdEncoding.EncodeToString(b),
			base64.RawURLEncoding.EncodeToString(b),
		} {
			out = append(out, enc[:min(len(enc), 40)])
		}
	}
	return out
}

// GetBlob fetches a blob of repo from the registry.
func (r *Registry) GetBlob(t testing.TB, repo, digest string) []byte {
	t.Helper()
	resp := r.do(t, http.MethodGet, "/v2/"+repo+"/blobs/"+digest, "", nil)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("blob %s@%s: %s %v", repo, digest, resp.Status, err)
	}
	if got := fmt.Sprintf("sha256:%x", sha256.Sum256(body)); got != digest {
		t.Fatalf("blob %s@%s has digest %s", repo, digest, got)
	}
	return body
}

// UploadBlob uploads data to repo with a monolithic upload (POST to
// /v2/<repo>/blobs/uploads/, then one PUT with the digest) and returns its
// digest. Nothing checks what the bytes mean: this is how tests put forged
// blobs under their honest digest.
func (r *Registry) UploadBlob(t testing.TB, repo string, data []byte) string {
	t.Helper()
	digest := fmt.Sprintf("sha256:%x", sha256.Sum256(data))
	resp := r.do(t, http.MethodPost, "/v2/"+repo+"/blobs/uploads/", "", nil)
	resp.Body.Close()
	loc := resp.Header.Get("Location")
	if resp.StatusCode != http.StatusAccepted || loc == "" {
		t.Fatalf("start upload to %s: %s (Location %q)", repo, resp.Status, loc)
	}
	sep := "?"
	if strings.Contains(loc, "?") {
		sep = "&"
	}
	loc = strings.TrimPrefix(loc, "http://"+r.Host)
	resp = r.do(t, http.MethodPut, loc+sep+"digest="+digest, "application/octet-stream", data)
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		body, _ := io.ReadAll(resp.Body)
		t.Fatalf("upload %s to %s: %s %s", digest, repo, resp.Status, body)
	}
	return digest
}

// PutManifest stores raw as repo:tag with Content-Type mediaType (the
// manifest's own mediaType field is optional in OCI) and returns the
// manifest digest.
func (r *Registry) PutManifest(t testing.TB, repo, tag, mediaType string, raw []byte) string {
	t.Helper()
	resp := r.do(t, http.MethodPut, "/v2/"+repo+"/manifests/"+tag, mediaType, raw)
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		body, _ := io.ReadAll(resp.Body)
		t.Fatalf("put manifest %s:%s: %s %s", repo, tag, resp.Status, body)
	}
	return fmt.Sprintf("sha256:%x", sha256.Sum256(raw))
}

func (r *Registry) do(t testing.TB, method, path, contentType string, body []byte) *http.Response {
	t.Helper()
	req, err := http.NewRequest(method, "http://"+r.Host+path, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	if r.User != "" {
		req.SetBasicAuth(r.User, r.Password)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

// NewSigner makes a signing key of kind: p256, p384, ed25519, rsa2048 or
// rsa1024 (too short: what a policy must refuse).
func NewSigner(t testing.TB, kind string) crypto.Signer {
	t.Helper()
	var (
		signer crypto.Signer
		err    error
	)
	switch kind {
	case "p256":
		signer, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case "p384":
		signer, err = ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	case "ed25519":
		_, signer, err = ed25519.GenerateKey(rand.Reader)
	case "rsa2048":
		signer, err = rsa.GenerateKey(rand.Reader, 2048)
	case "rsa1024":
		signer, err = rsa.GenerateKey(rand.Reader, 1024)
	default:
		t.Fatalf("unknown key kind %q", kind)
	}
	if err != nil {
		t.Fatal(err)
	}
	return signer
}
