package decrypt

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/guest-puller/guest-puller/internal/errdefs"
)

// newKEK writes a random 32-byte KEK file.
func newKEK(t testing.TB) (kek []byte, path string) {
	t.Helper()
	kek = make([]byte, kekSize)
	if _, err := rand.Read(kek); err != nil {
		t.Fatal(err)
	}
	path = filepath.Join(t.TempDir(), "kek")
	if err := os.WriteFile(path, kek, 0o600); err != nil {
		t.Fatal(err)
	}
	return kek, path
}

// editPacket rewrites the layer's (single) attestation-agent packet.
func editPacket(t *testing.T, desc ocispec.Descriptor, edit func(map[string]any)) ocispec.Descriptor {
	t.Helper()
	raw, err := base64.StdEncoding.DecodeString(desc.Annotations[aaAnnotation])
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatal(err)
	}
	edit(m)
	return withAnnotation(desc, aaAnnotation, base64.StdEncoding.EncodeToString(must(json.Marshal(m))))
}

// TestAttestationAgentProvider encrypts with ocicrypt through
// `provider:attestation-agent` served by ServeKeyProvider (the wrap side of
// `guest-puller keyprovider`), then decrypts with a Keyring whose KBS is an
// in-memory ResourceGetter.
func TestAttestationAgentProvider(t *testing.T) {
	needTools(t, "umoci")
	const kid = "kbs:///default/key/1"
	kek, kekPath := newKEK(t)
	src := readImage(t, testImage(t), "v1")
	enc := ocicryptEncrypt(t, testImage(t), []string{"provider:" + aaProvider + ":keypath=" + kekPath + "::keyid=" + kid})
	ctx := context.Background()

	// The packet is what coco_keyprovider writes.
	for i, desc := range enc.manifest.Layers {
		if got := recipientsOf(desc.Annotations); strings.Join(got, ",") != "provider."+aaProvider {
			t.Fatalf("layer %d: recipients %v", i, got)
		}
		raw, err := base64.StdEncoding.DecodeString(desc.Annotations[aaAnnotation])
		if err != nil {
			t.Fatal(err)
		}
		var p map[string]string
		if err := json.Unmarshal(raw, &p); err != nil {
			t.Fatalf("layer %d: packet %s: %v", i, raw, err)
		}
		iv, _ := base64.StdEncoding.DecodeString(p["iv"])
		if p["kid"] != kid || p["wrap_type"] != "A256GCM" || len(iv) != 12 || p["wrapped_data"] == "" || len(p) != 4 {
			t.Errorf("layer %d: packet %s is not a v1 coco_keyprovider packet for %s", i, raw, kid)
		}
	}

	t.Run("decrypts, one KBS fetch per kid", func(t *testing.T) {
		kbs := &mapGetter{resources: map[string][]byte{kid: kek}}
		kr, err := NewKeyring(ctx, Options{Resources: kbs, Keys: []string{"provider:" + aaProvider}})
		if err != nil {
			t.Fatal(err)
		}
		// Layers unwrap concurrently in pull; they share the KEK fetch.
		var wg sync.WaitGroup
		keys := make([]*LayerKey, len(enc.manifest.Layers))
		errs := make([]error, len(keys)*4)
		for j := range 4 {
			for i, desc := range enc.manifest.Layers {
				wg.Go(func() {
					lk, err := kr.Unwrap(ctx, desc)
					errs[j*len(keys)+i] = err
					if j == 0 {
						keys[i] = lk
					}
				})
			}
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			t.Fatalf("Unwrap: %v", err)
		}
		for i, lk := range keys {
			checkLayer(t, enc, src, i, lk)
		}
		if kbs.calls[kid] != 1 || len(kbs.calls) != 1 {
			t.Errorf("KBS fetches %v, want one of %s", kbs.calls, kid)
		}
	})

	desc := enc.manifest.Layers[0]
	otherKEK := bytes.Repeat([]byte{7}, 32)
	tests := []struct {
		name      string
		desc      ocispec.Descriptor
		resources map[string][]byte
		kbsErr    error
		noKBS     bool
		wantErr   string // "" means success
		wantFetch string // the URI the KBS must have been asked for
		wantNoGet bool   // the KBS must not have been asked at all
	}{{
		name: "v2 packet",
		desc: editPacket(t, desc, func(p map[string]any) {
			p["version"], p["provider"] = "0.1.0", "kbs"
			p["provider_settings"], p["annotations"] = map[string]any{}, map[string]any{}
		}),
	}, {
		name:      "kid names another KBS host: the configured KBS is asked",
		desc:      editPacket(t, desc, func(p map[string]any) { p["kid"] = "kbs://kbs.example.com:8080/default/key/1" }),
		wantFetch: kid,
	}, {
		name: "second packet opens",
		desc: withAnnotation(desc, aaAnnotation,
			base64.StdEncoding.EncodeToString(must(json.Marshal(map[string]string{"kid": "kbs:///default/key/gone", "wrapped_data": "AA==", "iv": "AAAAAAAAAAAAAAAA", "wrap_type": "A256GCM"})))+
				","+desc.Annotations[aaAnnotation]),
	}, {
		name:      "KEK of the wrong size",
		desc:      desc,
		resources: map[string][]byte{kid: kek[:16]},
		wantErr:   "is not an AES-256 key",
	}, {
		name:      "wrong KEK",
		desc:      desc,
		resources: map[string][]byte{kid: otherKEK},
		wantErr:   "does not open with the KEK",
	}, {
		name: "tampered wrapped_data",
		desc: editPacket(t, desc, func(p map[string]any) {
			b, _ := base64.StdEncoding.DecodeString(p["wrapped_data"].(string))
			b[3] ^= 0x80
			p["wrapped_data"] = base64.StdEncoding.EncodeToString(b)
		}),
		wantErr: "does not open with the KEK",
	}, {
		name: "tampered iv",
		desc: editPacket(t, desc, func(p map[string]any) {
			b, _ := base64.StdEncoding.DecodeString(p["iv"].(string))
			b[0] ^= 1
			p["iv"] = base64.StdEncoding.EncodeToString(b)
		}),
		wantErr: "does not open with the KEK",
	}, {
		name:    "iv of the wrong size",
		desc:    editPacket(t, desc, func(p map[string]any) { p["iv"] = base64.StdEncoding.EncodeToString(make([]byte, 16)) }),
		wantErr: "iv is not 12 bytes",
	}, {
		name:    "unknown wrap_type",
		desc:    editPacket(t, desc, func(p map[string]any) { p["wrap_type"] = "A128KW" }),
		wantErr: `unsupported wrap_type "A128KW"`,
	}, {
		name:    "unauthenticated wrap_type A256CTR",
		desc:    editPacket(t, desc, func(p map[string]any) { p["wrap_type"] = "A256CTR" }),
		wantErr: `unsupported wrap_type "A256CTR"`,
	}, {
		name:    "unknown packet field",
		desc:    editPacket(t, desc, func(p map[string]any) { p["aad"] = "eA==" }),
		wantErr: "malformed packet",
	}, {
		name:    "v2 packet for a cloud KMS",
		desc:    editPacket(t, desc, func(p map[string]any) { p["version"], p["provider"] = "0.1.0", "aliyun" }),
		wantErr: `unsupported KEK provider "aliyun"`,
	}, {
		name:    "unknown packet version",
		desc:    editPacket(t, desc, func(p map[string]any) { p["version"] = "0.2.0" }),
		wantErr: `unsupported packet version "0.2.0"`,
	}, {
		name:    "kid is not a KBS resource",
		desc:    editPacket(t, desc, func(p map[string]any) { p["kid"] = "file:///etc/kek" }),
		wantErr: "is not a kbs://",
	}, {
		name:    "kid climbs out of the resource tree",
		desc:    editPacket(t, desc, func(p map[string]any) { p["kid"] = "kbs:///default/../kek" }),
		wantErr: "is not a kbs://",
	}, {
		name: "kid names a credential, not a key",
		desc: editPacket(t, desc, func(p map[string]any) { p["kid"] = "kbs:///default/credential/db-password" }),
		resources: map[string][]byte{
			"kbs:///default/credential/db-password": []byte("hunter2-the-password"),
		},
		wantErr:   "names a resource of type \"credential\", and a layer's kid may only name a key (resource types image-kek, key;",
		wantNoGet: true,
	}, {
		name:    "packet not base64",
		desc:    withAnnotation(desc, aaAnnotation, "!!"),
		wantErr: "packet is not base64",
	}, {
		name:    "KBS refuses",
		desc:    desc,
		kbsErr:  fmt.Errorf("kbs: %w: PolicyDeny: resource policy denied (401)", errdefs.ErrDecrypt),
		wantErr: "PolicyDeny: resource policy denied",
	}, {
		name:    "no KBS configured",
		desc:    desc,
		noKBS:   true,
		wantErr: "no KBS configured",
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.resources == nil {
				tc.resources = map[string][]byte{kid: kek}
			}
			kbs := &mapGetter{resources: tc.resources, err: tc.kbsErr}
			opts := Options{Resources: kbs}
			if tc.noKBS {
				opts.Resources = nil
			}
			kr, err := NewKeyring(ctx, opts)
			if err != nil {
				t.Fatal(err)
			}
			lk, err := kr.Unwrap(ctx, tc.desc)
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("Unwrap: %v", err)
				}
				checkLayer(t, enc, src, 0, lk)
				if tc.wantFetch != "" && kbs.calls[tc.wantFetch] != 1 {
					t.Errorf("KBS fetches %v, want %s", kbs.calls, tc.wantFetch)
				}
				return
			}
			if !errors.Is(err, errdefs.ErrDecrypt) {
				t.Fatalf("Unwrap error %v, want ErrDecrypt", err)
			}
			if tc.wantNoGet && len(kbs.calls) != 0 {
				t.Errorf("the KBS was asked for %v", kbs.calls)
			}
			for _, s := range []string{tc.wantErr, "layer " + desc.Digest.String(), "recipients: provider.attestation-agent"} {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not say %q", err, s)
				}
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("error spans lines: %q", err)
			}
		})
	}
}

// TestOcicryptUnwrapsThroughKeyProvider has ocicrypt decrypt an
// attestation-agent image through ServeKeyProvider's keyunwrap, as skopeo
// --decryption-key provider:attestation-agent:keypath=KEK would.
func TestOcicryptUnwrapsThroughKeyProvider(t *testing.T) {
	needTools(t, "umoci")
	_, kekPath := newKEK(t)
	src := readImage(t, testImage(t), "v1")
	enc := ocicryptEncrypt(t, testImage(t), []string{"provider:" + aaProvider + ":keypath=" + kekPath + "::keyid=kbs:///default/key/1"})
	for i := range enc.manifest.Layers {
		if got, want := ocicryptDecrypt(t, enc, i, []string{"provider:" + aaProvider + ":keypath=" + kekPath}), src.manifest.Layers[i].Digest; got != want {
			t.Errorf("layer %d: ocicrypt decrypted it to %s, want %s", i, got, want)
		}
	}
}

func TestKidResourceTypes(t *testing.T) {
	def, err := newKidTypes(nil)
	if err != nil {
		t.Fatal(err)
	}
	only, err := newKidTypes([]string{"layer-keys"})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		types kidTypes
		uri   string
		ok    bool
	}{
		{def, "kbs:///default/key/1", true},
		{def, "kbs:///default/image-kek/app", true},
		{def, "kbs:///default/credential/db-password", false},
		{def, "kbs:///default/Key/1", false},
		{only, "kbs:///default/layer-keys/1", true},
		{only, "kbs:///default/key/1", false},
	} {
		if err := tc.types.check(tc.uri); (err == nil) != tc.ok {
			t.Errorf("check(%s) with %v = %v, want allowed %v", tc.uri, tc.types, err, tc.ok)
		}
	}
	for _, bad := range [][]string{{}, {""}, {"a/b"}, {".."}} {
		if _, err := newKidTypes(bad); !errors.Is(err, errdefs.ErrInvalidConfig) {
			t.Errorf("newKidTypes(%q) = %v, want a configuration error", bad, err)
		}
	}
}
