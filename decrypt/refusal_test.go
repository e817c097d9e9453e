package decrypt

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"strings"
	"testing"
	"testing/iotest"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/guest-puller/guest-puller/internal/errdefs"
)

// withAnnotation returns desc with annotation k set to v ("" deletes it).
func withAnnotation(desc ocispec.Descriptor, k, v string) ocispec.Descriptor {
	desc.Annotations = maps.Clone(desc.Annotations)
	if v == "" {
		delete(desc.Annotations, k)
	} else {
		desc.Annotations[k] = v
	}
	return desc
}

// editPubOpts rewrites the layer's public options JSON.
func editPubOpts(t *testing.T, desc ocispec.Descriptor, edit func(map[string]any)) ocispec.Descriptor {
	t.Helper()
	raw, err := base64.StdEncoding.DecodeString(desc.Annotations[pubOptsAnnotation])
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatal(err)
	}
	edit(m)
	return withAnnotation(desc, pubOptsAnnotation, base64.StdEncoding.EncodeToString(must(json.Marshal(m))))
}

func TestUnwrapRefusals(t *testing.T) {
	needTools(t, "skopeo", "umoci", "openssl")
	k := newTestKeys(t)
	enc := encryptImage(t, testImage(t), nil,
		"--encryption-key", "jwe:"+k.rsaPub, "--encryption-key", "pkcs7:"+k.rsaCert)
	desc := enc.manifest.Layers[1]
	ctx := context.Background()

	tests := []struct {
		name    string
		keys    []string
		desc    ocispec.Descriptor
		want    error    // errors.Is target; nil means any error without errdefs kind
		wantMsg []string // substrings of the error
	}{{
		name:    "wrong key",
		keys:    []string{k.ecPriv, k.rsaProtected + ":" + k.password},
		desc:    desc,
		want:    errdefs.ErrDecrypt,
		wantMsg: []string{"layer " + desc.Digest.String(), "no key unwraps it (recipients: jwe, pkcs7)"},
	}, {
		name:    "no key",
		desc:    desc,
		want:    errdefs.ErrDecrypt,
		wantMsg: []string{"layer " + desc.Digest.String(), "no key unwraps it (recipients: jwe, pkcs7)"},
	}, {
		name:    "pkcs7 only, key without its certificate",
		keys:    []string{k.rsaPriv},
		desc:    withAnnotation(desc, "org.opencontainers.image.enc.keys.jwe", ""),
		want:    errdefs.ErrDecrypt,
		wantMsg: []string{"(recipients: pkcs7)", "certificate must be given"},
	}, {
		name:    "no wrapped keys at all",
		keys:    []string{k.rsaPriv},
		desc:    withAnnotation(withAnnotation(desc, "org.opencontainers.image.enc.keys.jwe", ""), "org.opencontainers.image.enc.keys.pkcs7", ""),
		want:    errdefs.ErrDecrypt,
		wantMsg: []string{"no wrapped keys"},
	}, {
		name:    "recipient of an unsupported scheme",
		keys:    []string{k.rsaPriv},
		desc:    withAnnotation(withAnnotation(withAnnotation(desc, "org.opencontainers.image.enc.keys.jwe", ""), "org.opencontainers.image.enc.keys.pkcs7", ""), "org.opencontainers.image.enc.keys.pkcs11", "eyJ9"),
		want:    errdefs.ErrDecrypt,
		wantMsg: []string{"(recipients: pkcs11)"},
	}, {
		name:    "missing public options",
		keys:    []string{k.rsaPriv},
		desc:    withAnnotation(desc, pubOptsAnnotation, ""),
		want:    errdefs.ErrDecrypt,
		wantMsg: []string{"no " + pubOptsAnnotation},
	}, {
		name: "public options carry a nonce that would override the private one",
		keys: []string{k.rsaPriv},
		desc: editPubOpts(t, desc, func(m map[string]any) {
			m["cipheroptions"] = map[string]any{"nonce": base64.StdEncoding.EncodeToString(make([]byte, 16))}
		}),
		want:    errdefs.ErrDecrypt,
		wantMsg: []string{"unexpected public cipher options"},
	}, {
		name:    "unknown cipher",
		keys:    []string{k.rsaPriv},
		desc:    editPubOpts(t, desc, func(m map[string]any) { m["cipher"] = "AES_128_CTR_HMAC_SHA256" }),
		want:    errdefs.ErrDecrypt,
		wantMsg: []string{`unsupported cipher "AES_128_CTR_HMAC_SHA256"`},
	}, {
		name:    "unknown public option field",
		keys:    []string{k.rsaPriv},
		desc:    editPubOpts(t, desc, func(m map[string]any) { m["compression"] = "none" }),
		want:    errdefs.ErrDecrypt,
		wantMsg: []string{pubOptsAnnotation + ": malformed JSON"},
	}, {
		name:    "jwe packet not base64",
		keys:    []string{k.rsaPriv, k.rsaCert},
		desc:    withAnnotation(withAnnotation(desc, "org.opencontainers.image.enc.keys.jwe", "%%%"), "org.opencontainers.image.enc.keys.pkcs7", ""),
		want:    errdefs.ErrDecrypt,
		wantMsg: []string{"jwe: packet is not base64"},
	}, {
		name: "not an encrypted media type",
		keys: []string{k.rsaPriv},
		desc: func() ocispec.Descriptor {
			d := desc
			d.MediaType = ocispec.MediaTypeImageLayerGzip
			return d
		}(),
		wantMsg: []string{"is not an encrypted layer type"},
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			kr, err := NewKeyring(ctx, Options{Keys: tc.keys})
			if err != nil {
				t.Fatalf("NewKeyring: %v", err)
			}
			lk, err := kr.Unwrap(ctx, tc.desc)
			if err == nil {
				t.Fatalf("Unwrap succeeded: %v", lk)
			}
			if tc.want != nil && !errors.Is(err, tc.want) {
				t.Errorf("error %q does not wrap %v", err, tc.want)
			}
			if tc.want == nil && errdefs.ExitCode(err) != 1 {
				t.Errorf("error %q has exit code %d, want 1", err, errdefs.ExitCode(err))
			}
			for _, s := range tc.wantMsg {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not say %q", err, s)
				}
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("error spans lines: %q", err)
			}
		})
	}

	// A Docker media type with the same annotations decrypts the same.
	t.Run("docker media type", func(t *testing.T) {
		kr, err := NewKeyring(ctx, Options{Keys: []string{k.rsaPriv}})
		if err != nil {
			t.Fatal(err)
		}
		d := desc
		d.MediaType = "application/vnd.docker.image.rootfs.diff.tar.gzip+encrypted"
		lk, err := kr.Unwrap(ctx, d)
		if err != nil {
			t.Fatalf("Unwrap: %v", err)
		}
		enc := enc
		enc.manifest.Layers = append([]ocispec.Descriptor(nil), enc.manifest.Layers...)
		enc.manifest.Layers[1] = d
		checkLayer(t, enc, readImage(t, testImage(t), "v1"), 1, lk)
	})
}

// TestReaderIntegrity alters what the registry could alter and reads the
// layer to EOF as pull does.
func TestReaderIntegrity(t *testing.T) {
	needTools(t, "skopeo", "umoci", "openssl")
	k := newTestKeys(t)
	enc := encryptImage(t, testImage(t), nil, "--encryption-key", "jwe:"+k.rsaPub)
	desc := enc.manifest.Layers[1]
	ciphertext, err := os.ReadFile(blobPath(enc.dir, desc.Digest))
	if err != nil {
		t.Fatal(err)
	}
	kr, err := NewKeyring(context.Background(), Options{Keys: []string{k.rsaPriv}})
	if err != nil {
		t.Fatal(err)
	}
	ioErr := errors.New("connection reset by peer")
	flip := func(i int) []byte {
		b := bytes.Clone(ciphertext)
		b[i] ^= 0x01
		return b
	}

	tests := []struct {
		name string
		desc ocispec.Descriptor
		blob io.Reader
		want error // nil: success
	}{
		{"intact", desc, bytes.NewReader(ciphertext), nil},
		{"intact, one byte per read", desc, iotest.OneByteReader(bytes.NewReader(ciphertext)), nil},
		{"first byte flipped", desc, bytes.NewReader(flip(0)), errdefs.ErrIntegrity},
		{"middle byte flipped", desc, bytes.NewReader(flip(len(ciphertext) / 2)), errdefs.ErrIntegrity},
		{"last byte flipped", desc, bytes.NewReader(flip(len(ciphertext) - 1)), errdefs.ErrIntegrity},
		{"truncated", desc, bytes.NewReader(ciphertext[:len(ciphertext)-1]), errdefs.ErrIntegrity},
		{"extended", desc, bytes.NewReader(append(bytes.Clone(ciphertext), 0)), errdefs.ErrIntegrity},
		{"empty", desc, bytes.NewReader(nil), errdefs.ErrIntegrity},
		{"HMAC in public options altered", editPubOpts(t, desc, func(m map[string]any) {
			h, _ := base64.StdEncoding.DecodeString(m["hmac"].(string))
			h[0] ^= 1
			m["hmac"] = base64.StdEncoding.EncodeToString(h)
		}), bytes.NewReader(ciphertext), errdefs.ErrIntegrity},
		{"ciphertext reader fails", desc, io.MultiReader(bytes.NewReader(ciphertext[:5000]), iotest.ErrReader(ioErr)), ioErr},
		{"ciphertext reader cut short", desc, io.MultiReader(bytes.NewReader(ciphertext[:5000]), iotest.ErrReader(io.ErrUnexpectedEOF)), io.ErrUnexpectedEOF},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			lk, err := kr.Unwrap(context.Background(), tc.desc)
			if err != nil {
				t.Fatalf("Unwrap: %v", err)
			}
			r, err := lk.NewReader(tc.blob)
			if err != nil {
				t.Fatalf("NewReader: %v", err)
			}
			plain, err := io.ReadAll(r)
			if tc.want == nil {
				if err != nil {
					t.Fatalf("ReadAll: %v", err)
				}
				if got := must(desc.Digest.Algorithm().FromBytes(plain), nil); got != lk.PlainDigest() {
					t.Errorf("plaintext %s, want %s", got, lk.PlainDigest())
				}
				return
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("ReadAll error %v, want %v", err, tc.want)
			}
			// pull names the layer around the reader's verdict.
			if strings.Contains(err.Error(), desc.Digest.String()) {
				t.Errorf("error %q names the layer, which its caller does", err)
			}
			if tc.want != errdefs.ErrIntegrity && errors.Is(err, errdefs.ErrIntegrity) {
				t.Errorf("the source's own error %v was reported as an integrity failure", err)
			}
			// The verdict sticks: a caller that reads again never sees EOF.
			if n, err2 := r.Read(make([]byte, 10)); n != 0 || !errors.Is(err2, tc.want) {
				t.Errorf("Read after failure = %d, %v; want 0, %v", n, err2, tc.want)
			}
		})
	}
}

func TestLayerKeyDoesNotPrintKey(t *testing.T) {
	lk := &LayerKey{layer: "sha256:0123"}
	lk.opts.Private.SymmetricKey = []byte("THE-SYMMETRIC-KEY-MUST-NOT-PRINT")
	for _, s := range []string{fmt.Sprint(lk), fmt.Sprintf("%v %+v %s", lk, lk, lk), fmt.Sprintf("%#v", lk)} {
		if strings.Contains(s, "SYMMETRIC") || !strings.Contains(s, "sha256:0123") {
			t.Errorf("LayerKey prints as %q", s)
		}
	}
}
