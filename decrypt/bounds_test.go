package decrypt

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp"
	"github.com/ProtonMail/go-crypto/openpgp/packet"
	"github.com/ProtonMail/go-crypto/openpgp/s2k"
	"github.com/containers/ocicrypt/config"
	"github.com/containers/ocicrypt/keywrap/jwe"
	"github.com/containers/ocicrypt/keywrap/pkcs7"
	"github.com/go-jose/go-jose/v4"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/guest-puller/guest-puller/internal/errdefs"
	"github.com/guest-puller/guest-puller/internal/testutil"
)

// Key unwrap is bounded for every recipient type (issue 15, items 1-2):
// each hostile packet below is refused as "cannot decrypt", having
// allocated a few MiB at most, where unbounded readers would take
// gigabytes (or, for the Argon2 packet, terabytes).

// pgpTestKey writes an OpenPGP secret key (Ed25519 with an X25519
// encryption subkey), protected by password when it is not "", and returns
// the --decryption-key value and its encryption public key.
func pgpTestKey(t testing.TB, password string) (string, *packet.PublicKey) {
	t.Helper()
	e, err := openpgp.NewEntity("bounds test", "", "bounds@example.com", &packet.Config{Algorithm: packet.PubKeyAlgoEdDSA})
	if err != nil {
		t.Fatal(err)
	}
	enc, ok := e.EncryptionKey(time.Now())
	if !ok {
		t.Fatal("no encryption key")
	}
	var buf bytes.Buffer
	if password == "" {
		err = e.SerializePrivate(&buf, nil)
	} else {
		if err = e.EncryptPrivateKeys([]byte(password), nil); err == nil {
			err = e.SerializePrivateWithoutSigning(&buf, nil)
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "pgp.key")
	if err := os.WriteFile(path, buf.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	if password != "" {
		path += ":" + password
	}
	return path, enc.PublicKey
}

// optsJSON is a well-formed private options JSON, as a genuine packet
// holds.
func optsJSON(t testing.TB) []byte {
	t.Helper()
	key, nonce := make([]byte, 32), make([]byte, 16)
	rand.Read(key)
	rand.Read(nonce)
	return must(json.Marshal(map[string]any{"symkey": key, "digest": "", "cipheroptions": map[string][]byte{"nonce": nonce}}))
}

// encryptedDesc is an encrypted layer descriptor with valid public options
// and the recipient annotations given.
func encryptedDesc(annotations map[string]string) ocispec.Descriptor {
	pub := must(json.Marshal(map[string]any{"cipher": "AES_256_CTR_HMAC_SHA256", "hmac": make([]byte, sha256.Size)}))
	a := map[string]string{pubOptsAnnotation: base64.StdEncoding.EncodeToString(pub)}
	for k, v := range annotations {
		a[k] = v
	}
	return ocispec.Descriptor{
		MediaType:   "application/vnd.oci.image.layer.v1.tar+gzip+encrypted",
		Digest:      digest.Digest("sha256:" + strings.Repeat("ab", 32)),
		Size:        1,
		Annotations: a,
	}
}

// allocated runs f and returns how many bytes it allocated.
func allocated(f func()) uint64 {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	f()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

func b64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }

func TestUnwrapBounds(t *testing.T) {
	needTools(t, "openssl")
	ctx := context.Background()
	k := newTestKeys(t)
	pgpKey, pgpPub := pgpTestKey(t, "")
	pgpProtected, pgpProtectedPub := pgpTestKey(t, "pgp-pass")

	// A symmetrically encrypted session key whose Argon2 S2K asks for
	// 2^31 KiB of memory: the packet as go-crypto writes it with small
	// parameters, the memory exponent then set to 31.
	var skesk bytes.Buffer
	sessionKey, err := packet.SerializeSymmetricKeyEncrypted(&skesk, []byte("pgp-pass"), &packet.Config{
		DefaultCipher: packet.CipherAES256,
		S2KConfig:     &s2k.Config{S2KMode: s2k.Argon2S2K, Argon2Config: &s2k.Argon2Config{NumberOfPasses: 1, DegreeOfParallelism: 1, Memory: 64}},
	})
	if err != nil {
		t.Fatal(err)
	}
	argon := skesk.Bytes()
	// header (2 bytes, old format), version, cipher, S2K type 4, 16 bytes
	// of salt, passes, parallelism, memory exponent.
	if argon[2] != 4 || argon[4] != byte(s2k.Argon2S2K) {
		t.Fatalf("unexpected SKESK layout % x", argon[:8])
	}
	argon[4+1+16+2] = 31
	w, err := packet.SerializeSymmetricallyEncrypted(&skesk, packet.CipherAES256, false, packet.CipherSuite{}, sessionKey, nil)
	if err != nil {
		t.Fatal(err)
	}
	w.Write(testutil.PGPLiteral(optsJSON(t)))
	w.Close()

	// A compressed JWE ("zip": "DEF") of 8 MiB of zeros for the RSA key.
	rsaPub := must(os.ReadFile(k.rsaPub))
	jweZip := func() []byte {
		block, _ := pem.Decode(rsaPub)
		pk := must(x509.ParsePKIXPublicKey(block.Bytes))
		enc := must(jose.NewEncrypter(jose.A256GCM, jose.Recipient{Algorithm: jose.RSA_OAEP, Key: pk}, &jose.EncrypterOptions{Compression: jose.DEFLATE}))
		obj := must(enc.Encrypt(make([]byte, 8<<20)))
		return []byte(obj.FullSerialize())
	}()
	if len(jweZip) > maxWrappedKey {
		t.Fatalf("zip JWE is %d bytes", len(jweZip))
	}

	nested := testutil.PGPBomb(t, pgpPub, 2<<30, 1)
	if len(nested) > maxWrappedKey {
		t.Fatalf("nested PGP bomb is %d bytes, want it under the packet bound", len(nested))
	}
	many := strings.TrimSuffix(strings.Repeat(b64([]byte("x"))+",", maxPackets+1), ",")

	tests := []struct {
		name string
		keys []string
		ann  map[string]string
		want string // in the error
	}{
		{"pgp: 32 MiB of zeros compressed into one packet", []string{pgpKey},
			map[string]string{pgpAnnotation: b64(testutil.PGPBomb(t, pgpPub, 32<<20, 0))}, "holds more than"},
		{"pgp: 2 GiB behind one nested compressed packet", []string{pgpKey},
			map[string]string{pgpAnnotation: b64(nested)}, "holds more than"},
		{"pgp: 2 GiB behind five nested compressed packets", []string{pgpKey},
			map[string]string{pgpAnnotation: b64(testutil.PGPBomb(t, pgpPub, 2<<30, 5))}, "holds more than"},
		{"pgp: 2 GiB in a 2 MB packet", []string{pgpKey},
			map[string]string{pgpAnnotation: b64(testutil.PGPBomb(t, pgpPub, 2<<30, 0))}, "a wrapped key of"},
		{"pgp: 40 MB of marker packets before the options", []string{pgpKey},
			map[string]string{pgpAnnotation: b64(testutil.PGPMarkerFlood(t, pgpPub, 8<<20, optsJSON(t)))}, "inflates to more than"},
		{"pgp: a message that is not encrypted", []string{pgpKey},
			map[string]string{pgpAnnotation: b64(testutil.PGPLiteral(optsJSON(t)))}, "not encrypted to a key of the keyring"},
		{"pgp: a passphrase-encrypted session key with a 2 TiB Argon2", []string{pgpProtected},
			map[string]string{pgpAnnotation: b64(skesk.Bytes())}, "no key unwraps it"},
		{"pkcs7: BER nested 40 deep", []string{k.rsaPriv, k.rsaCert},
			map[string]string{keysAnnotationPrefix + "pkcs7": b64(testutil.NestedBER(40))}, "nested more than 32 deep"},
		{"pkcs7: BER nested a million deep", []string{k.rsaPriv, k.rsaCert},
			map[string]string{keysAnnotationPrefix + "pkcs7": b64(testutil.NestedBER(1 << 20))}, "a wrapped key of"},
		{"jwe: 8 MiB of zeros, compressed", []string{k.rsaPriv},
			map[string]string{keysAnnotationPrefix + "jwe": b64(jweZip)}, "no key unwraps it"},
		{"jwe: a 1 MiB packet", []string{k.rsaPriv},
			map[string]string{keysAnnotationPrefix + "jwe": b64(make([]byte, 1<<20))}, "a wrapped key of"},
		{"jwe: more packets than allowed", []string{k.rsaPriv},
			map[string]string{keysAnnotationPrefix + "jwe": many}, "33 packets"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			kr, err := NewKeyring(ctx, Options{Keys: tc.keys})
			if err != nil {
				t.Fatal(err)
			}
			desc := encryptedDesc(tc.ann)
			var lk *LayerKey
			n := allocated(func() { lk, err = kr.Unwrap(ctx, desc) })
			if err == nil {
				t.Fatalf("Unwrap succeeded: %v", lk)
			}
			if !errors.Is(err, errdefs.ErrDecrypt) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %v\nwant ErrDecrypt containing %q", err, tc.want)
			}
			if n > 16<<20 {
				t.Errorf("Unwrap allocated %s", testutil.MiB(int64(n)))
			}
		})
	}

	// The keys and the bounds do not refuse what they should open: the
	// same recipient types with genuine packets.
	t.Run("genuine packets", func(t *testing.T) {
		opts := optsJSON(t)
		pgpMsg := testutil.PGPEncrypt(t, pgpProtectedPub, testutil.PGPLiteral(opts))
		ec := &config.EncryptConfig{Parameters: map[string][][]byte{
			"pubkeys": {rsaPub},
			"x509s":   {must(os.ReadFile(k.rsaCert))},
		}}
		jweMsg := must(jwe.NewKeyWrapper().WrapKeys(ec, opts))
		pkcs7Msg := must(pkcs7.NewKeyWrapper().WrapKeys(ec, opts))
		for name, tc := range map[string]struct {
			keys []string
			ann  string
			msg  []byte
		}{
			"pgp":   {[]string{pgpProtected}, pgpAnnotation, pgpMsg},
			"jwe":   {[]string{k.rsaPriv}, keysAnnotationPrefix + "jwe", jweMsg},
			"pkcs7": {[]string{k.rsaPriv, k.rsaCert}, keysAnnotationPrefix + "pkcs7", pkcs7Msg},
		} {
			kr, err := NewKeyring(ctx, Options{Keys: tc.keys})
			if err != nil {
				t.Fatal(err)
			}
			lk, err := kr.Unwrap(ctx, encryptedDesc(map[string]string{tc.ann: b64(tc.msg)}))
			if err != nil {
				t.Errorf("%s: %v", name, err)
				continue
			}
			if got := must(json.Marshal(lk.opts.Private)); !jsonEqual(got, opts) {
				t.Errorf("%s: unwrapped %s, want %s", name, got, opts)
			}
		}
	})
}

func jsonEqual(a, b []byte) bool {
	var x, y any
	return json.Unmarshal(a, &x) == nil && json.Unmarshal(b, &y) == nil && string(must(json.Marshal(x))) == string(must(json.Marshal(y)))
}

// TestCheckBER: the nesting check before the PKCS7 parser accepts the
// envelopes real tools write (ocicrypt's DER, openssl's streamed BER with
// indefinite lengths), which then unwrap, and refuses malformed encodings.
func TestCheckBER(t *testing.T) {
	needTools(t, "openssl")
	ctx := context.Background()
	k := newTestKeys(t)
	opts := optsJSON(t)
	ec := &config.EncryptConfig{Parameters: map[string][][]byte{"x509s": {must(os.ReadFile(k.rsaCert))}}}
	der := must(pkcs7.NewKeyWrapper().WrapKeys(ec, opts))

	in := filepath.Join(t.TempDir(), "opts.json")
	if err := os.WriteFile(in, opts, 0o600); err != nil {
		t.Fatal(err)
	}
	ber := run(t, nil, "openssl", "cms", "-encrypt", "-binary", "-stream", "-aes256", "-outform", "DER", "-in", in, k.rsaCert)
	if !bytes.Contains(ber[:4], []byte{0x30, 0x80}) {
		t.Fatalf("openssl did not write indefinite-length BER: % x", ber[:8])
	}
	kr, err := NewKeyring(ctx, Options{Keys: []string{k.rsaPriv, k.rsaCert}})
	if err != nil {
		t.Fatal(err)
	}
	for name, p := range map[string][]byte{"ocicrypt DER": der, "openssl BER": ber} {
		if err := checkBER(p, maxBERDepth); err != nil {
			t.Errorf("%s: %v", name, err)
		}
		if _, err := kr.Unwrap(ctx, encryptedDesc(map[string]string{keysAnnotationPrefix + "pkcs7": b64(p)})); err != nil {
			t.Errorf("%s: Unwrap: %v", name, err)
		}
	}

	for _, tc := range []struct {
		name string
		ber  []byte
		want string
	}{
		{"nested to the limit", testutil.NestedBER(maxBERDepth), ""},
		{"nested past the limit", testutil.NestedBER(maxBERDepth + 1), "nested more than"},
		{"definite lengths nested past the limit", nestedDefinite(maxBERDepth + 1), "nested more than"},
		{"empty", nil, ""},
		{"truncated", der[:len(der)-1], "runs past"},
		{"indefinite, unterminated", []byte{0x30, 0x80, 0x02, 0x01, 0x00}, "truncated"},
		{"trailing data", append(append([]byte{}, der...), 0x05, 0x00), "trailing data"},
		{"end-of-contents in a definite value", []byte{0x30, 0x02, 0x00, 0x00}, "end-of-contents"},
		{"indefinite primitive", []byte{0x04, 0x80, 0x00, 0x00}, "primitive"},
		{"length of five octets", []byte{0x04, 0x85, 1, 0, 0, 0, 0}, "bad length"},
		{"length past the input", []byte{0x04, 0x82, 0xff, 0xff, 0x00}, "runs past"},
		{"high tag number", []byte{0x1f, 0x81, 0x01, 0x01, 0x00}, ""},
		{"endless high tag number", []byte{0x1f, 0x81, 0x81, 0x81, 0x81, 0x81, 0x01, 0x00}, "tag number"},
	} {
		err := checkBER(tc.ber, maxBERDepth)
		if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("%s: checkBER = %v, want %q", tc.name, err, tc.want)
		}
	}
}

// nestedDefinite is depth SEQUENCEs with definite lengths, nested.
func nestedDefinite(depth int) []byte {
	b := []byte{0x05, 0x00} // NULL
	for range depth {
		b = append([]byte{0x30, 0x82, byte(len(b) >> 8), byte(len(b))}, b...)
	}
	return b
}
