package decrypt

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// encryptImage copies the layout src (tag v1) to a new layout with skopeo,
// passing args (the --encryption-key flags) and env.
func encryptImage(t testing.TB, src string, env []string, args ...string) image {
	t.Helper()
	dst := filepath.Join(t.TempDir(), "enc")
	skopeoCopy(t, env, append(args, "oci:"+src+":v1", "oci:"+dst+":v1")...)
	return readImage(t, dst, "v1")
}

// zstdImage is testImage recompressed with zstd by skopeo.
func zstdImage(t testing.TB) string {
	t.Helper()
	dst := filepath.Join(t.TempDir(), "zstd")
	skopeoCopy(t, nil, "--dest-compress-format", "zstd", "oci:"+testImage(t)+":v1", "oci:"+dst+":v1")
	return dst
}

// TestDecryptSkopeoImages encrypts the test image with the real skopeo in
// every way ocicrypt offers and decrypts each layer with a Keyring.
func TestDecryptSkopeoImages(t *testing.T) {
	needTools(t, "skopeo", "umoci", "openssl")
	k := newTestKeys(t)
	plain := testImage(t)
	zplain := zstdImage(t)

	keyDir := t.TempDir()
	if err := os.Symlink(k.ecPriv, filepath.Join(keyDir, "ec.pem")); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(keyDir, ".hidden"), []byte("not a key"), 0o600); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name      string
		src       string
		encrypt   []string
		keys      []string
		keyDir    string
		encrypted []bool // per layer
		mediaType string // of the encrypted layers
	}{{
		name:    "jwe rsa",
		encrypt: []string{"--encryption-key", "jwe:" + k.rsaPub},
		keys:    []string{k.rsaPriv},
	}, {
		name:    "jwe rsa, DER PKCS#8 private key",
		encrypt: []string{"--encryption-key", "jwe:" + k.rsaPub},
		keys:    []string{k.rsaDER},
	}, {
		name:    "jwe ec",
		encrypt: []string{"--encryption-key", "jwe:" + k.ecPub},
		keys:    []string{k.ecPriv},
	}, {
		name:    "pkcs7 key and certificate",
		encrypt: []string{"--encryption-key", "pkcs7:" + k.rsaCert},
		keys:    []string{k.rsaPriv, k.rsaCert},
	}, {
		name:    "two jwe recipients, first key",
		encrypt: []string{"--encryption-key", "jwe:" + k.rsaPub, "--encryption-key", "jwe:" + k.ecPub},
		keys:    []string{k.rsaPriv},
	}, {
		name:    "two jwe recipients, second key",
		encrypt: []string{"--encryption-key", "jwe:" + k.rsaPub, "--encryption-key", "jwe:" + k.ecPub},
		keys:    []string{k.ecPriv},
	}, {
		name:    "jwe and pkcs7 recipients, pkcs7 key",
		encrypt: []string{"--encryption-key", "jwe:" + k.ecPub, "--encryption-key", "pkcs7:" + k.rsaCert},
		keys:    []string{k.rsaCert, k.rsaPriv},
	}, {
		name:      "top layer only",
		encrypt:   []string{"--encryption-key", "jwe:" + k.rsaPub, "--encrypt-layer", "-1"},
		keys:      []string{k.rsaPriv},
		encrypted: []bool{false, true},
	}, {
		name:      "zstd",
		src:       zplain,
		encrypt:   []string{"--encryption-key", "jwe:" + k.ecPub},
		keys:      []string{k.ecPriv},
		mediaType: "application/vnd.oci.image.layer.v1.tar+zstd+encrypted",
	}, {
		name:    "password-protected key, PATH:PASSWORD",
		encrypt: []string{"--encryption-key", "jwe:" + k.rsaProtectedPub},
		keys:    []string{k.rsaProtected + ":" + k.password},
	}, {
		name:    "password-protected key, PATH:pass=",
		encrypt: []string{"--encryption-key", "jwe:" + k.rsaProtectedPub},
		keys:    []string{k.rsaProtected + ":pass=" + k.password},
	}, {
		name:    "password-protected key, PATH:file=",
		encrypt: []string{"--encryption-key", "jwe:" + k.rsaProtectedPub},
		keys:    []string{k.rsaProtected + ":file=" + k.passwordTxt},
	}, {
		name:    "key directory",
		encrypt: []string{"--encryption-key", "jwe:" + k.ecPub},
		keyDir:  keyDir,
	}, {
		name:    "several keys, only one a recipient",
		encrypt: []string{"--encryption-key", "jwe:" + k.ecPub},
		keys:    []string{k.rsaPriv, k.rsaProtected + ":" + k.password, k.ecPriv},
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			src := plain
			if tc.src != "" {
				src = tc.src
			}
			if tc.encrypted == nil {
				tc.encrypted = []bool{true, true}
			}
			if tc.mediaType == "" {
				tc.mediaType = "application/vnd.oci.image.layer.v1.tar+gzip+encrypted"
			}
			srcImg := readImage(t, src, "v1")
			enc := encryptImage(t, src, nil, tc.encrypt...)

			kr, err := NewKeyring(context.Background(), Options{Keys: tc.keys, KeyDir: tc.keyDir})
			if err != nil {
				t.Fatalf("NewKeyring: %v", err)
			}
			if len(enc.manifest.Layers) != len(tc.encrypted) {
				t.Fatalf("%d layers, want %d", len(enc.manifest.Layers), len(tc.encrypted))
			}
			for i, desc := range enc.manifest.Layers {
				if got := IsEncrypted(desc.MediaType); got != tc.encrypted[i] {
					t.Fatalf("layer %d: IsEncrypted(%s) = %v, want %v", i, desc.MediaType, got, tc.encrypted[i])
				}
				if !tc.encrypted[i] {
					checkLayer(t, enc, srcImg, i, nil)
					continue
				}
				if desc.MediaType != tc.mediaType {
					t.Errorf("layer %d: media type %s, want %s", i, desc.MediaType, tc.mediaType)
				}
				lk, err := kr.Unwrap(context.Background(), desc)
				if err != nil {
					t.Fatalf("layer %d: Unwrap: %v", i, err)
				}
				if got, want := lk.PlainDigest(), srcImg.manifest.Layers[i].Digest; got != want {
					t.Errorf("layer %d: PlainDigest %s, want %s", i, got, want)
				}
				checkLayer(t, enc, srcImg, i, lk)
			}
		})
	}
}

// TestDecryptOpenPGP encrypts for a gpg key with skopeo (ocicrypt reads
// the recipient's public key from the gpg home) and decrypts with the
// exported secret key, binary and armored, protected by a password.
func TestDecryptOpenPGP(t *testing.T) {
	needTools(t, "skopeo", "umoci", "gpg", "gpgconf")
	home, err := os.MkdirTemp("", "gpg") // short: gpg-agent's socket path is limited
	if err != nil {
		t.Fatal(err)
	}
	gpgEnv := []string{"GNUPGHOME=" + home}
	t.Cleanup(func() {
		run(t, gpgEnv, "gpgconf", "--kill", "all")
		os.RemoveAll(home)
	})
	const uid, pw = "Decrypt Test <decrypt-test@example.com>", "pgp pass:word"
	gpg := func(args ...string) []byte {
		return run(t, gpgEnv, "gpg", append([]string{"--batch", "--pinentry-mode", "loopback", "--passphrase", pw}, args...)...)
	}
	gpg("--quick-gen-key", uid, "rsa2048", "sign", "never")
	var fpr string
	for _, line := range strings.Split(string(gpg("--with-colons", "--list-keys", uid)), "\n") {
		if f := strings.Split(line, ":"); f[0] == "fpr" {
			fpr = f[9]
			break
		}
	}
	gpg("--quick-add-key", fpr, "rsa2048", "encr", "never")
	dir := t.TempDir()
	binKey, armoredKey := filepath.Join(dir, "secret.gpg"), filepath.Join(dir, "secret.asc")
	for path, extra := range map[string][]string{binKey: nil, armoredKey: {"--armor"}} {
		if err := os.WriteFile(path, gpg(append(extra, "--export-secret-keys", uid)...), 0o600); err != nil {
			t.Fatal(err)
		}
	}

	src := readImage(t, testImage(t), "v1")
	enc := encryptImage(t, testImage(t), gpgEnv, "--encryption-key", "pgp:decrypt-test@example.com")
	for _, key := range []string{binKey + ":" + pw, armoredKey + ":pass=" + pw} {
		kr, err := NewKeyring(context.Background(), Options{Keys: []string{key}})
		if err != nil {
			t.Fatalf("NewKeyring: %v", err)
		}
		for i, desc := range enc.manifest.Layers {
			if _, ok := desc.Annotations["org.opencontainers.image.enc.keys.pgp"]; !ok {
				t.Fatalf("layer %d has no pgp recipient: %v", i, desc.Annotations)
			}
			lk, err := kr.Unwrap(context.Background(), desc)
			if err != nil {
				t.Fatalf("layer %d: Unwrap: %v", i, err)
			}
			checkLayer(t, enc, src, i, lk)
		}
	}

	// The protected key without its password is a configuration error,
	// found when the keyring loads rather than as "no key" later.
	if _, err := NewKeyring(context.Background(), Options{Keys: []string{binKey}}); err == nil {
		t.Error("NewKeyring accepted a protected OpenPGP key without its password")
	}
	if _, err := NewKeyring(context.Background(), Options{Keys: []string{binKey + ":wrong"}}); err == nil {
		t.Error("NewKeyring accepted a wrong OpenPGP password")
	}
}
