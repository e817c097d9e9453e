package verify

import (
	"errors"
	"testing"

	"github.com/guest-puller/guest-puller/internal/errdefs"
)

func TestParsePayload(t *testing.T) {
	const d = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	const ref = "registry.example.com/app"
	for _, tc := range []struct {
		name    string
		data    string
		typ     string
		wantErr bool
	}{
		{name: "cosign", typ: cosignPayloadType,
			data: `{"critical":{"identity":{"docker-reference":"` + ref + `"},"image":{"docker-manifest-digest":"` + d + `"},"type":"cosign container image signature"},"optional":null}`},
		{name: "cosign with annotations", typ: cosignPayloadType,
			data: `{"critical":{"identity":{"docker-reference":"` + ref + `"},"image":{"docker-manifest-digest":"` + d + `"},"type":"cosign container image signature"},"optional":{"team":"ci","n":3}}`},
		{name: "atomic", typ: atomicPayloadType,
			data: `{"critical":{"identity":{"docker-reference":"` + ref + `"},"image":{"docker-manifest-digest":"` + d + `"},"type":"atomic container signature"},"optional":{"creator":"atomic 5.23.1","timestamp":1700000000}}`},
		{name: "type of the other format", typ: cosignPayloadType, wantErr: true,
			data: `{"critical":{"identity":{"docker-reference":"` + ref + `"},"image":{"docker-manifest-digest":"` + d + `"},"type":"atomic container signature"},"optional":null}`},
		{name: "extra critical field", typ: cosignPayloadType, wantErr: true,
			data: `{"critical":{"identity":{"docker-reference":"` + ref + `"},"image":{"docker-manifest-digest":"` + d + `"},"type":"cosign container image signature","expires":1},"optional":null}`},
		{name: "extra image field", typ: cosignPayloadType, wantErr: true,
			data: `{"critical":{"identity":{"docker-reference":"` + ref + `"},"image":{"docker-manifest-digest":"` + d + `","other":"x"},"type":"cosign container image signature"},"optional":null}`},
		{name: "missing identity", typ: cosignPayloadType, wantErr: true,
			data: `{"critical":{"image":{"docker-manifest-digest":"` + d + `"},"type":"cosign container image signature"},"optional":null}`},
		{name: "missing optional", typ: cosignPayloadType, wantErr: true,
			data: `{"critical":{"identity":{"docker-reference":"` + ref + `"},"image":{"docker-manifest-digest":"` + d + `"},"type":"cosign container image signature"}}`},
		{name: "duplicate docker-reference", typ: cosignPayloadType, wantErr: true,
			data: `{"critical":{"identity":{"docker-reference":"evil.example.com/x","docker-reference":"` + ref + `"},"image":{"docker-manifest-digest":"` + d + `"},"type":"cosign container image signature"},"optional":null}`},
		{name: "duplicate critical", typ: cosignPayloadType, wantErr: true,
			data: `{"critical":{},"critical":{"identity":{"docker-reference":"` + ref + `"},"image":{"docker-manifest-digest":"` + d + `"},"type":"cosign container image signature"},"optional":null}`},
		{name: "unknown top-level field", typ: cosignPayloadType, wantErr: true,
			data: `{"critical":{"identity":{"docker-reference":"` + ref + `"},"image":{"docker-manifest-digest":"` + d + `"},"type":"cosign container image signature"},"optional":null,"x":1}`},
		{name: "optional not an object", typ: cosignPayloadType, wantErr: true,
			data: `{"critical":{"identity":{"docker-reference":"` + ref + `"},"image":{"docker-manifest-digest":"` + d + `"},"type":"cosign container image signature"},"optional":"x"}`},
		{name: "data after the object", typ: cosignPayloadType, wantErr: true,
			data: `{"critical":{"identity":{"docker-reference":"` + ref + `"},"image":{"docker-manifest-digest":"` + d + `"},"type":"cosign container image signature"},"optional":null}{}`},
		{name: "malformed digest", typ: cosignPayloadType, wantErr: true,
			data: `{"critical":{"identity":{"docker-reference":"` + ref + `"},"image":{"docker-manifest-digest":"sha256:1234"},"type":"cosign container image signature"},"optional":null}`},
		{name: "null reference", typ: cosignPayloadType, wantErr: true,
			data: `{"critical":{"identity":{"docker-reference":null},"image":{"docker-manifest-digest":"` + d + `"},"type":"cosign container image signature"},"optional":null}`},
		{name: "reference of the wrong type", typ: cosignPayloadType, wantErr: true,
			data: `{"critical":{"identity":{"docker-reference":7},"image":{"docker-manifest-digest":"` + d + `"},"type":"cosign container image signature"},"optional":null}`},
		{name: "not an object", typ: cosignPayloadType, wantErr: true, data: `["critical"]`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := parsePayload([]byte(tc.data), tc.typ)
			if tc.wantErr {
				if err == nil {
					t.Fatalf("parsed %+v, want an error", p)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if p.dockerReference != ref || p.manifestDigest.String() != d {
				t.Fatalf("parsed %+v", p)
			}
		})
	}
}

func TestParseKeyringErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		data string
	}{
		{"empty", ""},
		{"garbage", "not a key"},
		{"unterminated armor", "-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nmQENBF\n"},
		{"armored garbage", "-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nbm90IGEga2V5\n=AAAA\n-----END PGP PUBLIC KEY BLOCK-----\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := parseKeyring([]byte(tc.data)); !errors.Is(err, errdefs.ErrInvalidConfig) {
				t.Fatalf("parseKeyring = %v, want an error wrapping ErrInvalidConfig", err)
			}
		})
	}
}
