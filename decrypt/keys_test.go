package decrypt

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/guest-puller/guest-puller/internal/errdefs"
)

func TestIsEncryptedAndPlainMediaType(t *testing.T) {
	tests := []struct {
		mediaType string
		encrypted bool
		plain     string
	}{
		{"application/vnd.oci.image.layer.v1.tar+encrypted", true, "application/vnd.oci.image.layer.v1.tar"},
		{"application/vnd.oci.image.layer.v1.tar+gzip+encrypted", true, "application/vnd.oci.image.layer.v1.tar+gzip"},
		{"application/vnd.oci.image.layer.v1.tar+zstd+encrypted", true, "application/vnd.oci.image.layer.v1.tar+zstd"},
		{"application/vnd.oci.image.layer.nondistributable.v1.tar+gzip+encrypted", true, "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"},
		{"application/vnd.docker.image.rootfs.diff.tar+encrypted", true, "application/vnd.docker.image.rootfs.diff.tar"},
		{"application/vnd.docker.image.rootfs.diff.tar.gzip+encrypted", true, "application/vnd.docker.image.rootfs.diff.tar.gzip"},
		{"application/vnd.docker.image.rootfs.diff.tar.zstd+encrypted", true, "application/vnd.docker.image.rootfs.diff.tar.zstd"},
		{"application/vnd.docker.image.rootfs.foreign.diff.tar.gzip+encrypted", true, "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"},
		{"application/vnd.oci.image.layer.v1.tar+gzip", false, "application/vnd.oci.image.layer.v1.tar+gzip"},
		{"application/vnd.docker.image.rootfs.diff.tar.gzip", false, "application/vnd.docker.image.rootfs.diff.tar.gzip"},
		// Not a layer type we could unpack once decrypted.
		{"application/vnd.docker.image.rootfs.diff.squashfs+encrypted", false, "application/vnd.docker.image.rootfs.diff.squashfs+encrypted"},
		{"application/octet-stream+encrypted", false, "application/octet-stream+encrypted"},
		{"", false, ""},
	}
	for _, tc := range tests {
		if got := IsEncrypted(tc.mediaType); got != tc.encrypted {
			t.Errorf("IsEncrypted(%q) = %v, want %v", tc.mediaType, got, tc.encrypted)
		}
		if got := PlainMediaType(tc.mediaType); got != tc.plain {
			t.Errorf("PlainMediaType(%q) = %q, want %q", tc.mediaType, got, tc.plain)
		}
	}
}

func TestNewKeyringRefusals(t *testing.T) {
	k := newTestKeys(t)
	dir := t.TempDir()
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	garbage := write("garbage", []byte("this is not a key\n"))
	edKey := filepath.Join(dir, "ed25519.pem")
	_, edPriv, _ := ed25519.GenerateKey(rand.Reader)
	writePEM(t, edKey, "PRIVATE KEY", must(x509.MarshalPKCS8PrivateKey(edPriv)))
	pkcs11 := write("pkcs11.yaml", []byte("pkcs11:\n  uri: pkcs11:token=test;object=key?module-name=softhsm2\nmodule:\n  env:\n"))
	emptyDir := filepath.Join(dir, "empty")
	if err := os.Mkdir(emptyDir, 0o700); err != nil {
		t.Fatal(err)
	}
	badDir := filepath.Join(dir, "bad")
	if err := os.Mkdir(badDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(badDir, "README"), []byte("keys go here"), 0o600); err != nil {
		t.Fatal(err)
	}
	// attest.Client's errors wrap ErrDecrypt.
	kbsErr := &mapGetter{err: fmt.Errorf("kbs: %w: attestation refused (401)", errdefs.ErrDecrypt)}

	// A wrong password that legacy PEM encryption's padding check lets
	// through (about one in 256): the "decrypted" bytes are no key.
	pemData, err := os.ReadFile(k.rsaProtected)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(pemData)
	lucky := ""
	for i := 0; lucky == "" && i < 100000; i++ {
		if _, err := x509.DecryptPEMBlock(block, []byte(fmt.Sprint("not-it-", i))); err == nil { //nolint:staticcheck // the legacy encryption under test
			lucky = fmt.Sprint("not-it-", i)
		}
	}
	if lucky == "" {
		t.Fatal("no wrong password passes the PEM padding check")
	}

	tests := []struct {
		name    string
		opts    Options
		want    error
		wantMsg string
	}{
		{"protected key, wrong password past the padding check", Options{Keys: []string{k.rsaProtected + ":" + lucky}}, errdefs.ErrInvalidConfig, "wrong password"},
		{"missing file", Options{Keys: []string{filepath.Join(dir, "nope.pem")}}, errdefs.ErrInvalidConfig, "no such file"},
		{"not a key", Options{Keys: []string{garbage}}, errdefs.ErrInvalidConfig, "not a private key"},
		{"public key", Options{Keys: []string{k.rsaPub}}, errdefs.ErrInvalidConfig, "not a private key"},
		{"ed25519 key", Options{Keys: []string{edKey}}, errdefs.ErrInvalidConfig, "Ed25519 keys cannot unwrap"},
		{"pkcs11 key file", Options{Keys: []string{pkcs11}}, errdefs.ErrInvalidConfig, "PKCS#11 keys are not supported"},
		{"protected key, no password", Options{Keys: []string{k.rsaProtected}}, errdefs.ErrInvalidConfig, "password-protected"},
		{"protected key, wrong password", Options{Keys: []string{k.rsaProtected + ":not-it"}}, errdefs.ErrInvalidConfig, "wrong password"},
		{"protected key, missing password file", Options{Keys: []string{k.rsaProtected + ":file=" + filepath.Join(dir, "nope.txt")}}, errdefs.ErrInvalidConfig, "password"},
		{"protected key, bad fd", Options{Keys: []string{k.rsaProtected + ":fd=x"}}, errdefs.ErrInvalidConfig, "fd= needs"},
		{"encrypted PKCS#8", Options{Keys: []string{k.rsaPKCS8Protected + ":" + k.password}}, errdefs.ErrInvalidConfig, "encrypted PKCS#8"},
		{"empty key", Options{Keys: []string{""}}, errdefs.ErrInvalidConfig, "empty key"},
		{"kbs key without KBS", Options{Keys: []string{"kbs:///default/key/rsa"}}, errdefs.ErrInvalidConfig, "needs a KBS"},
		{"kbs key fetch fails", Options{Keys: []string{"kbs:///default/key/rsa"}, Resources: kbsErr}, errdefs.ErrDecrypt, "kbs:///default/key/rsa"},
		{"kbs key not found", Options{Keys: []string{"kbs:///default/key/nope"}, Resources: &mapGetter{}}, errdefs.ErrDecrypt, "not found"},
		{"kbs resource is not a key", Options{Keys: []string{"kbs:///default/key/x"}, Resources: &mapGetter{resources: map[string][]byte{"kbs:///default/key/x": []byte("junk")}}}, errdefs.ErrInvalidConfig, "not a private key"},
		{"other key provider", Options{Keys: []string{"provider:pkcs11kp:foo"}}, errdefs.ErrInvalidConfig, "only the attestation-agent key provider"},
		{"attestation-agent provider without KBS", Options{Keys: []string{"provider:attestation-agent"}}, errdefs.ErrInvalidConfig, "needs a KBS"},
		{"missing key directory", Options{KeyDir: filepath.Join(dir, "nope")}, errdefs.ErrInvalidConfig, "key directory"},
		{"key directory with a non-key", Options{KeyDir: badDir}, errdefs.ErrInvalidConfig, "README"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := NewKeyring(context.Background(), tc.opts)
			if !errors.Is(err, tc.want) {
				t.Fatalf("NewKeyring error %v, want %v", err, tc.want)
			}
			if !strings.Contains(err.Error(), tc.wantMsg) {
				t.Errorf("error %q does not say %q", err, tc.wantMsg)
			}
			if strings.Contains(err.Error(), k.password) || strings.Contains(err.Error(), "not-it") {
				t.Errorf("error %q contains a password", err)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("error spans lines: %q", err)
			}
		})
	}

	// An empty key directory and no keys is a valid (empty) keyring.
	if _, err := NewKeyring(context.Background(), Options{KeyDir: emptyDir}); err != nil {
		t.Errorf("empty key directory: %v", err)
	}
}

// TestNewKeyringForms loads the key forms ocicrypt accepts plus PEM SEC1 EC
// keys (openssl's default) and checks each lands where a key wrapper will
// find it.
func TestNewKeyringForms(t *testing.T) {
	k := newTestKeys(t)
	dir := t.TempDir()
	ecDER := filepath.Join(dir, "ec.der")
	ek, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err := os.WriteFile(ecDER, must(x509.MarshalECPrivateKey(ek)), 0o600); err != nil {
		t.Fatal(err)
	}
	jwk := filepath.Join(dir, "ec.jwk")
	if err := os.WriteFile(jwk, []byte(`{"kty":"EC","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0","d":"jpsQnnGQmL-YBIffH1136cLNOUBfu1XiHa0vCKbQdc4"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	pwFD := func() string {
		r, w, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { r.Close() })
		if _, err := w.WriteString(k.password + "\n"); err != nil {
			t.Fatal(err)
		}
		w.Close()
		// readPassword closes the descriptor it is given, as skopeo does.
		fd, err := syscall.Dup(int(r.Fd()))
		if err != nil {
			t.Fatal(err)
		}
		return "fd=" + strconv.Itoa(fd)
	}

	tests := []struct {
		name            string
		keys            []string
		privKeys, certs int
	}{
		{"PEM PKCS#1 RSA", []string{k.rsaPriv}, 1, 0},
		{"DER PKCS#8 RSA", []string{k.rsaDER}, 1, 0},
		{"PEM SEC1 EC", []string{k.ecPriv}, 1, 0},
		{"DER SEC1 EC", []string{ecDER}, 1, 0},
		{"JWK EC", []string{jwk}, 1, 0},
		{"protected, literal password with a colon", []string{k.rsaProtected + ":" + k.password}, 1, 0},
		{"protected, password from fd", []string{k.rsaProtected + ":" + pwFD()}, 1, 0},
		{"key and certificate", []string{k.rsaPriv, k.rsaCert}, 1, 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			kr, err := NewKeyring(context.Background(), Options{Keys: tc.keys})
			if err != nil {
				t.Fatalf("NewKeyring: %v", err)
			}
			if got := len(kr.keys.privKeys); got != tc.privKeys {
				t.Errorf("%d private keys, want %d", got, tc.privKeys)
			}
			if got := len(kr.keys.x509s); got != tc.certs {
				t.Errorf("%d certificates, want %d", got, tc.certs)
			}
			for i, der := range kr.keys.privKeys {
				if _, err := x509.ParsePKCS8PrivateKey(der); err != nil {
					t.Errorf("key %d is not held as PKCS#8: %v", i, err)
				}
				if kr.keys.privKeyPwds[i] != nil {
					t.Errorf("key %d keeps its password", i)
				}
			}
		})
	}
}
