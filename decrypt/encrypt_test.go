package decrypt

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containers/ocicrypt"
	"github.com/containers/ocicrypt/blockcipher"
	"github.com/containers/ocicrypt/config"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/guest-puller/guest-puller/internal/errdefs"
)

// encryptBlob runs EncryptLayer over blob and returns the encrypted
// descriptor, as `guest-puller encrypt` writes it, and the ciphertext.
func encryptBlob(t *testing.T, r *Recipients, blob []byte) (ocispec.Descriptor, []byte) {
	t.Helper()
	plain := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: digest.FromBytes(blob), Size: int64(len(blob))}
	enc, finish, err := r.EncryptLayer(bytes.NewReader(blob), plain)
	if err != nil {
		t.Fatal(err)
	}
	ct, err := io.ReadAll(enc)
	if err != nil {
		t.Fatal(err)
	}
	ann, err := finish()
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(ct, blob[:64]) {
		t.Fatal("the ciphertext holds the plaintext")
	}
	return ocispec.Descriptor{MediaType: plain.MediaType + "+encrypted", Digest: digest.FromBytes(ct), Size: int64(len(ct)), Annotations: ann}, ct
}

func randomBlob(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// JWE recipients: ocicrypt's own decryption (the independent reader: what
// skopeo, containerd's imgcrypt and CRI-O run) opens what EncryptLayer
// wrote with each recipient's private key, and so does the keyring.
func TestEncryptLayerJWEOpensWithOcicrypt(t *testing.T) {
	k := newTestKeys(t)
	r, err := ParseRecipients([]string{"jwe:" + k.rsaPub, "jwe:" + k.ecPub})
	if err != nil {
		t.Fatal(err)
	}
	blob := randomBlob(t, 300<<10)
	desc, ct := encryptBlob(t, r, blob)
	if desc.Annotations[annotationJWE] == "" || desc.Annotations[annotationPubOpts] == "" || len(desc.Annotations) != 2 {
		t.Fatalf("annotations %v, want the JWE keys and pubopts", desc.Annotations)
	}
	// ocicrypt reads EC keys as PKCS#8, as openssl genpkey writes them.
	ecPKCS8 := filepath.Join(t.TempDir(), "ec-pkcs8.pem")
	run(t, nil, "openssl", "pkcs8", "-topk8", "-nocrypt", "-in", k.ecPriv, "-out", ecPKCS8)
	for _, priv := range []string{k.rsaPriv, ecPKCS8} {
		data, err := os.ReadFile(priv)
		if err != nil {
			t.Fatal(err)
		}
		dc := &config.DecryptConfig{Parameters: map[string][][]byte{"privkeys": {data}, "privkeys-passwords": {nil}}}
		pr, _, err := ocicrypt.DecryptLayer(dc, bytes.NewReader(ct), desc, false)
		if err != nil {
			t.Fatalf("ocicrypt.DecryptLayer with %s: %v", filepath.Base(priv), err)
		}
		got, err := io.ReadAll(pr)
		if err != nil {
			t.Fatalf("ocicrypt reading the layer with %s: %v", filepath.Base(priv), err)
		}
		if !bytes.Equal(got, blob) {
			t.Errorf("ocicrypt with %s: %d bytes, want the %d-byte blob", filepath.Base(priv), len(got), len(blob))
		}

		kr, err := NewKeyring(context.Background(), Options{Keys: []string{priv}})
		if err != nil {
			t.Fatal(err)
		}
		lk, err := kr.Unwrap(context.Background(), desc)
		if err != nil {
			t.Fatalf("keyring with %s: %v", filepath.Base(priv), err)
		}
		if lk.PlainDigest() != digest.FromBytes(blob) {
			t.Errorf("wrapped options record digest %s, want the plain blob's", lk.PlainDigest())
		}
		r, err := lk.NewReader(bytes.NewReader(ct))
		if err != nil {
			t.Fatal(err)
		}
		if got, err := io.ReadAll(r); err != nil || !bytes.Equal(got, blob) {
			t.Errorf("keyring with %s: %d bytes, %v", filepath.Base(priv), len(got), err)
		}
	}
}

// attestation-agent recipients: each layer annotation packet opens, by
// DESIGN.md's description alone (std-base64 JSON; AES-256-GCM of the
// private options under the KEK, tag appended, no AAD), with the KEK of its
// kid, and ocicrypt's block cipher decrypts the layer with those options.
// The keyring, given the KEKs as KBS resources, decrypts it too.
func TestEncryptLayerAttestationAgentByTheSpec(t *testing.T) {
	dir := t.TempDir()
	keks := map[string][]byte{"kbs:///default/key/1": randomBlob(t, 32), "kbs:///other/key/2": randomBlob(t, 32)}
	var specs []string
	for kid, kek := range keks {
		p := filepath.Join(dir, strings.ReplaceAll(kid, "/", "_"))
		if err := os.WriteFile(p, kek, 0o600); err != nil {
			t.Fatal(err)
		}
		specs = append(specs, "provider:attestation-agent:keypath="+p+"::keyid="+kid)
	}
	r, err := ParseRecipients(specs)
	if err != nil {
		t.Fatal(err)
	}
	blob := randomBlob(t, 200<<10)
	desc, ct := encryptBlob(t, r, blob)

	var pub blockcipher.PublicLayerBlockCipherOptions
	rawPub, err := base64.StdEncoding.DecodeString(desc.Annotations[annotationPubOpts])
	if err != nil || json.Unmarshal(rawPub, &pub) != nil {
		t.Fatalf("pubopts %q: %v", desc.Annotations[annotationPubOpts], err)
	}
	packets := strings.Split(desc.Annotations["org.opencontainers.image.enc.keys.provider.attestation-agent"], ",")
	if len(packets) != len(keks) {
		t.Fatalf("%d packets, want one per KEK (%d)", len(packets), len(keks))
	}
	for _, b64 := range packets {
		raw, err := base64.StdEncoding.DecodeString(b64)
		if err != nil {
			t.Fatal(err)
		}
		var pkt struct {
			Kid         string `json:"kid"`
			WrappedData string `json:"wrapped_data"`
			IV          string `json:"iv"`
			WrapType    string `json:"wrap_type"`
		}
		dec := json.NewDecoder(bytes.NewReader(raw))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&pkt); err != nil {
			t.Fatalf("packet %s: %v", raw, err)
		}
		if pkt.WrapType != "A256GCM" || keks[pkt.Kid] == nil {
			t.Fatalf("packet %s: want wrap_type A256GCM and a kid of ours", raw)
		}
		block, _ := aes.NewCipher(keks[pkt.Kid])
		gcm, _ := cipher.NewGCM(block)
		iv, _ := base64.StdEncoding.DecodeString(pkt.IV)
		wrapped, _ := base64.StdEncoding.DecodeString(pkt.WrappedData)
		optsJSON, err := gcm.Open(nil, iv, wrapped, nil)
		if err != nil {
			t.Fatalf("packet for %s does not open with its KEK: %v", pkt.Kid, err)
		}
		var priv blockcipher.PrivateLayerBlockCipherOptions
		if err := json.Unmarshal(optsJSON, &priv); err != nil {
			t.Fatal(err)
		}
		if priv.Digest != digest.FromBytes(blob) {
			t.Errorf("private options record digest %s, want the plain blob's %s", priv.Digest, digest.FromBytes(blob))
		}
		h, _ := blockcipher.NewLayerBlockCipherHandler()
		pr, _, err := h.Decrypt(bytes.NewReader(ct), blockcipher.LayerBlockCipherOptions{Public: pub, Private: priv})
		if err != nil {
			t.Fatal(err)
		}
		if got, err := io.ReadAll(pr); err != nil || !bytes.Equal(got, blob) {
			t.Errorf("ocicrypt's block cipher with %s's options: %d bytes, %v", pkt.Kid, len(got), err)
		}
	}

	for kid, kek := range keks {
		kr, err := NewKeyring(context.Background(), Options{Resources: &mapGetter{resources: map[string][]byte{kid: kek}}})
		if err != nil {
			t.Fatal(err)
		}
		lk, err := kr.Unwrap(context.Background(), desc)
		if err != nil {
			t.Fatalf("keyring with the KEK of %s: %v", kid, err)
		}
		pr, err := lk.NewReader(bytes.NewReader(ct))
		if err != nil {
			t.Fatal(err)
		}
		if got, err := io.ReadAll(pr); err != nil || !bytes.Equal(got, blob) {
			t.Errorf("keyring with %s: %d bytes, %v", kid, len(got), err)
		}
	}
}

func TestParseRecipientsRefusals(t *testing.T) {
	k := newTestKeys(t)
	dir := t.TempDir()
	kek := filepath.Join(dir, "kek")
	if err := os.WriteFile(kek, randomBlob(t, 32), 0o600); err != nil {
		t.Fatal(err)
	}
	short := filepath.Join(dir, "short")
	if err := os.WriteFile(short, randomBlob(t, 16), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		specs []string
		want  string
	}{
		{nil, "no --encryption-key"},
		{[]string{"jwe:" + filepath.Join(dir, "missing.pem")}, "no such file"},
		{[]string{"jwe:" + k.rsaPriv}, "not an RSA or EC public key"},
		{[]string{"pkcs7:" + k.rsaCert}, "not supported here"},
		{[]string{"pgp:alice@example.com"}, "not supported here"},
		{[]string{"provider:other:x"}, "only the attestation-agent provider"},
		{[]string{"provider:attestation-agent:keypath=" + kek}, "needs keypath=KEK-FILE::keyid="},
		{[]string{"provider:attestation-agent:keyid=kbs:///default/key/1"}, "needs keypath=KEK-FILE::keyid="},
		{[]string{"provider:attestation-agent:keypath=" + short + "::keyid=kbs:///default/key/1"}, "want a regular file of exactly 32 bytes"},
		{[]string{"provider:attestation-agent:keypath=" + kek + "::keyid=https://x/y"}, "kbs"},
		{[]string{"rsa.pub"}, "want jwe:PUBLIC-KEY-FILE or provider:attestation-agent:"},
	} {
		_, err := ParseRecipients(tc.specs)
		if !errors.Is(err, errdefs.ErrInvalidConfig) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ParseRecipients(%q) = %v, want a configuration error saying %q", tc.specs, err, tc.want)
		}
	}
}
