package decrypt

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp"
	"github.com/containers/ocicrypt/config"
	"github.com/containers/ocicrypt/keywrap/jwe"
	"github.com/containers/ocicrypt/keywrap/keyprovider"
	"github.com/containers/ocicrypt/keywrap/pkcs7"

	"github.com/guest-puller/guest-puller/internal/errdefs"
	"github.com/guest-puller/guest-puller/internal/testutil"
)

// Fuzz targets for what an image's author (through the registry) or a
// local caller of the key provider writes and this package parses: the
// public options, the attestation-agent packet, the key provider's
// requests, and the key unwrap of every recipient type. The keyring holds
// the fixed test keys of testdata/fuzzkeys, so that the seeds, genuine
// packets wrapped for those keys, reach the end of each unwrap.

const fuzzKid = "kbs:///default/key/1"

func fuzzKey(name string) string {
	return filepath.Join("testdata", "fuzzkeys", name)
}

func fuzzKeyring(f *testing.F, rg ResourceGetter, keys ...string) *Keyring {
	f.Helper()
	kr, err := NewKeyring(context.Background(), Options{Keys: keys, Resources: rg})
	if err != nil {
		f.Fatal(err)
	}
	return kr
}

// fuzzOpts is a genuine private options JSON.
var fuzzOpts = must(json.Marshal(map[string]any{
	"symkey":        bytes.Repeat([]byte("k"), 32),
	"digest":        "sha256:" + strings.Repeat("0", 64),
	"cipheroptions": map[string][]byte{"nonce": make([]byte, 16)},
}))

// checkUnwrap is what every unwrap must do with any input: open it to a
// usable key, or refuse with ErrDecrypt, on one line.
func checkUnwrap(t *testing.T, kr *Keyring, ann map[string]string) {
	lk, err := kr.Unwrap(context.Background(), encryptedDesc(ann))
	if err != nil {
		if !errors.Is(err, errdefs.ErrDecrypt) {
			t.Fatalf("Unwrap error without ErrDecrypt: %v", err)
		}
		if strings.ContainsAny(err.Error(), "\n\r") {
			t.Fatalf("Unwrap error spans lines: %q", err)
		}
		return
	}
	if len(lk.opts.Private.SymmetricKey) != 32 {
		t.Fatalf("Unwrap returned a %d-byte key", len(lk.opts.Private.SymmetricKey))
	}
}

func FuzzPublicOptions(f *testing.F) {
	for _, s := range []string{
		`{"cipher":"AES_256_CTR_HMAC_SHA256","hmac":"` + base64.StdEncoding.EncodeToString(make([]byte, 32)) + `","cipheroptions":{}}`,
		`{"cipher":"AES_256_CTR_HMAC_SHA256","hmac":"AAAA"}`,
		`{"cipher":"AES_256_CTR_HMAC_SHA256","hmac":"` + base64.StdEncoding.EncodeToString(make([]byte, 32)) + `","cipheroptions":{"nonce":"AAAAAAAAAAAAAAAAAAAAAA=="}}`,
		`{"cipher":"AES_256_CTR_HMAC_SHA256","extra":1}`,
		`{}`, `null`, `[]`,
	} {
		f.Add(base64.StdEncoding.EncodeToString([]byte(s)))
	}
	f.Add("not base64!")
	f.Fuzz(func(t *testing.T, b64 string) {
		pub, err := publicOptions(map[string]string{pubOptsAnnotation: b64})
		if err != nil {
			return
		}
		if len(pub.Hmac) != 32 || len(pub.CipherOptions) != 0 {
			t.Fatalf("accepted public options %+v", pub)
		}
	})
}

func FuzzAAPacket(f *testing.F) {
	kek, err := os.ReadFile(fuzzKey("kek"))
	if err != nil {
		f.Fatal(err)
	}
	genuine := must(sealAAPacket(fuzzKid, kek, make([]byte, 12), fuzzOpts))
	f.Add(genuine)
	f.Add([]byte(`{"version":"0.1.0","provider":"kbs","kid":"kbs:///a/b/c","wrapped_data":"AA==","iv":"AAAAAAAAAAAAAAAA","wrap_type":"A256GCM","provider_settings":{},"annotations":{}}`))
	f.Add([]byte(`{"kid":"kbs://host/a/b/c","wrapped_data":"","iv":"","wrap_type":"A256CTR"}`))
	f.Add([]byte(`{"kid":"kbs:///a/../c","wrap_type":"A256GCM"}`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		p, err := parseAAPacket(raw)
		if err != nil {
			return
		}
		if _, err := resourceURI(p.Kid); err != nil {
			t.Fatalf("accepted kid %q: %v", p.Kid, err)
		}
		if opts, err := p.open(kek); err == nil && len(opts) > maxKeyOptions {
			t.Fatalf("opened %d bytes", len(opts))
		}
	})
}

func FuzzKeyProvider(f *testing.F) {
	kekPath := fuzzKey("kek")
	kek := must(os.ReadFile(kekPath))
	packet := must(sealAAPacket(fuzzKid, kek, make([]byte, 12), fuzzOpts))
	f.Add(wrapRequest(fuzzOpts, "keypath="+kekPath+"::keyid="+fuzzKid))
	f.Add(unwrapRequest(packet, "keypath="+kekPath))
	f.Add(unwrapRequest(packet, "keypath="+kekPath+"::keyid="+fuzzKid+"::algorithm=A256GCM::sample=false"))
	f.Add(`{"op":"keyunwrap","keyunwrapparams":{"dc":null,"annotation":null}}`)
	f.Fuzz(func(t *testing.T, req string) {
		// keypath= may come to name any file; readKEK opens only
		// regular files, but the fuzzer stays with the test KEK.
		if namesOtherKeypath(req, kekPath) {
			return
		}
		var out bytes.Buffer
		err := ServeKeyProvider(context.Background(), strings.NewReader(req), &out, KeyProviderOptions{})
		if err != nil {
			if !errors.Is(err, errdefs.ErrInvalidConfig) && !errors.Is(err, errdefs.ErrDecrypt) {
				t.Fatalf("error of no kind: %v", err)
			}
			if out.Len() != 0 {
				t.Fatalf("a failed request wrote %q", out.String())
			}
			return
		}
		if !json.Valid(out.Bytes()) {
			t.Fatalf("answer is not JSON: %q", out.String())
		}
	})
}

// genuineSeeds are, per recipient annotation, a packet wrapped for the
// fuzz keys with ocicrypt's own wrappers (ours for the attestation-agent
// provider): what the targets' first seeds are, and what
// TestFuzzSeedsOpen checks they open.
func genuineSeeds(t testing.TB) map[string][]byte {
	t.Helper()
	ec := &config.EncryptConfig{Parameters: map[string][][]byte{
		"pubkeys": {must(os.ReadFile(fuzzKey("rsa.pub"))), must(os.ReadFile(fuzzKey("ec.pub")))},
		"x509s":   {must(os.ReadFile(fuzzKey("rsa.crt")))},
	}}
	el := must(openpgp.ReadKeyRing(bytes.NewReader(must(os.ReadFile(fuzzKey("pgp.key"))))))
	enc, ok := el[0].EncryptionKey(time.Now())
	if !ok {
		t.Fatal("the fuzz OpenPGP key has no encryption subkey")
	}
	kek := must(os.ReadFile(fuzzKey("kek")))
	return map[string][]byte{
		keysAnnotationPrefix + "jwe":   must(jwe.NewKeyWrapper().WrapKeys(ec, fuzzOpts)),
		keysAnnotationPrefix + "pkcs7": must(pkcs7.NewKeyWrapper().WrapKeys(ec, fuzzOpts)),
		pgpAnnotation:                  testutil.PGPEncrypt(t, enc.PublicKey, testutil.PGPLiteral(fuzzOpts)),
		aaAnnotation:                   must(sealAAPacket(fuzzKid, kek, make([]byte, 12), fuzzOpts)),
	}
}

// TestFuzzSeedsOpen: the fuzz keyrings open the genuine seeds, so that the
// targets start from packets that reach the end of each unwrap.
func TestFuzzSeedsOpen(t *testing.T) {
	kek := must(os.ReadFile(fuzzKey("kek")))
	kr, err := NewKeyring(context.Background(), Options{
		Keys:      []string{fuzzKey("rsa.pem"), fuzzKey("rsa.crt"), fuzzKey("ec.pem"), fuzzKey("pgp.key"), "provider:" + aaProvider},
		Resources: &mapGetter{resources: map[string][]byte{fuzzKid: kek}},
	})
	if err != nil {
		t.Fatal(err)
	}
	for ann, packet := range genuineSeeds(t) {
		if _, err := kr.Unwrap(context.Background(), encryptedDesc(map[string]string{ann: base64.StdEncoding.EncodeToString(packet)})); err != nil {
			t.Errorf("%s: %v", ann, err)
		}
	}
}

// namesOtherKeypath reports whether a key provider request names a
// keypath= other than kekPath.
func namesOtherKeypath(req, kekPath string) bool {
	var in keyprovider.KeyProviderKeyWrapProtocolInput
	if json.Unmarshal([]byte(req), &in) != nil {
		return false // refused before any file is named
	}
	var params [][]byte
	if in.KeyWrapParams.Ec != nil {
		params = append(params, in.KeyWrapParams.Ec.Parameters[aaProvider]...)
	}
	if in.KeyUnwrapParams.Dc != nil {
		params = append(params, in.KeyUnwrapParams.Dc.Parameters[aaProvider]...)
	}
	for _, p := range params {
		for _, field := range strings.Split(string(p), "::") {
			if k, v, _ := strings.Cut(field, "="); k == "keypath" && v != kekPath {
				return true
			}
		}
	}
	return false
}

func FuzzUnwrapJWE(f *testing.F) {
	kr := fuzzKeyring(f, nil, fuzzKey("rsa.pem"), fuzzKey("ec.pem"))
	f.Add(genuineSeeds(f)[keysAnnotationPrefix+"jwe"])
	f.Add([]byte(`{"protected":"eyJlbmMiOiJBMjU2R0NNIn0","recipients":[{"header":{"alg":"RSA-OAEP"},"encrypted_key":"AA"}],"iv":"AA","ciphertext":"AA","tag":"AA"}`))
	f.Add([]byte("eyJhbGciOiJSU0EtT0FFUCIsImVuYyI6IkEyNTZHQ00iLCJ6aXAiOiJERUYifQ.AA.AA.AA.AA"))
	f.Fuzz(func(t *testing.T, packet []byte) {
		checkUnwrap(t, kr, map[string]string{keysAnnotationPrefix + "jwe": base64.StdEncoding.EncodeToString(packet)})
	})
}

func FuzzUnwrapPKCS7(f *testing.F) {
	kr := fuzzKeyring(f, nil, fuzzKey("rsa.pem"), fuzzKey("rsa.crt"))
	f.Add(genuineSeeds(f)[keysAnnotationPrefix+"pkcs7"])
	f.Add(testutil.NestedBER(maxBERDepth + 1))
	f.Add([]byte{0x30, 0x80, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x03, 0xa0, 0x80, 0x00, 0x00, 0x00, 0x00})
	f.Fuzz(func(t *testing.T, packet []byte) {
		checkUnwrap(t, kr, map[string]string{keysAnnotationPrefix + "pkcs7": base64.StdEncoding.EncodeToString(packet)})
	})
}

func FuzzUnwrapPGP(f *testing.F) {
	kr := fuzzKeyring(f, nil, fuzzKey("pgp.key"))
	el := must(openpgp.ReadKeyRing(bytes.NewReader(must(os.ReadFile(fuzzKey("pgp.key"))))))
	enc, ok := el[0].EncryptionKey(time.Now())
	if !ok {
		f.Fatal("the fuzz OpenPGP key has no encryption subkey")
	}
	f.Add(genuineSeeds(f)[pgpAnnotation])
	f.Add(testutil.PGPBomb(f, enc.PublicKey, 1<<20, 2))
	f.Add(testutil.PGPMarkerFlood(f, enc.PublicKey, 1000, fuzzOpts))
	f.Add(testutil.PGPLiteral(fuzzOpts))
	f.Fuzz(func(t *testing.T, packet []byte) {
		checkUnwrap(t, kr, map[string]string{pgpAnnotation: base64.StdEncoding.EncodeToString(packet)})
	})
}

func FuzzUnwrapProvider(f *testing.F) {
	kek := must(os.ReadFile(fuzzKey("kek")))
	kr := fuzzKeyring(f, &mapGetter{resources: map[string][]byte{fuzzKid: kek}}, "provider:"+aaProvider)
	genuine := base64.StdEncoding.EncodeToString(genuineSeeds(f)[aaAnnotation])
	f.Add(genuine)
	f.Add("AA==," + genuine)
	f.Add(base64.StdEncoding.EncodeToString([]byte(`{"kid":"kbs:///default/key/2","wrapped_data":"AA==","iv":"AAAAAAAAAAAAAAAA","wrap_type":"A256GCM"}`)))
	f.Add(strings.Repeat(",", maxPackets))
	f.Fuzz(func(t *testing.T, annotation string) {
		checkUnwrap(t, kr, map[string]string{aaAnnotation: annotation})
	})
}
