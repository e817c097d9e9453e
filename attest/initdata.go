package attest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/sha512"
	"fmt"
	"strings"

	"github.com/BurntSushi/toml"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/guest-puller/guest-puller/internal/errdefs"
)

// InitDataPCR is the PCR a TPM guest binds its init-data to, as the
// attestation-agent's TPM attester does and Trustee's TPM verifier checks:
// PCR 8 holds SHA-256(32 zero bytes || digest), the digest extended once
// into a fresh PCR.
const InitDataPCR = 8

// maxInitData bounds the init-data document.
const maxInitData = 1 << 20

// InitData is the init-data document kata passes to a confidential guest
// (Trustee's kbs/docs/initdata.md): a TOML file with version, algorithm and
// a data table of named documents (aa.toml, cdh.toml, policy.rego). The
// host cannot change it unseen: its digest is bound into the TEE's
// evidence, and the KBS receives the document itself in the attest
// request to check it against that binding.
type InitData struct {
	// Body is the document as received; Digest is its hash with Algorithm.
	Body      []byte
	Version   string
	Algorithm string
	Data      map[string]string
	Digest    []byte
}

// ParseInitData parses an init-data TOML document strictly (unknown keys
// and algorithms are errors wrapping errdefs.ErrInvalidConfig) and
// computes its digest.
func ParseInitData(body []byte) (*InitData, error) {
	if len(body) > maxInitData {
		return nil, fmt.Errorf("init-data: %w: larger than %d bytes", errdefs.ErrInvalidConfig, maxInitData)
	}
	var doc struct {
		Version   string            `toml:"version"`
		Algorithm string            `toml:"algorithm"`
		Data      map[string]string `toml:"data"`
	}
	md, err := toml.Decode(string(body), &doc)
	if err != nil {
		return nil, fmt.Errorf("init-data: %w: %v", errdefs.ErrInvalidConfig, err)
	}
	if und := md.Undecoded(); len(und) > 0 {
		keys := make([]string, len(und))
		for i, k := range und {
			keys[i] = k.String()
		}
		return nil, fmt.Errorf("init-data: %w: unknown keys %s", errdefs.ErrInvalidConfig, strings.Join(keys, ", "))
	}
	if doc.Version == "" {
		return nil, fmt.Errorf("init-data: %w: no version", errdefs.ErrInvalidConfig)
	}
	d := &InitData{Body: bytes.Clone(body), Version: doc.Version, Algorithm: doc.Algorithm, Data: doc.Data}
	switch doc.Algorithm {
	case "sha256":
		s := sha256.Sum256(body)
		d.Digest = s[:]
	case "sha384":
		s := sha512.Sum384(body)
		d.Digest = s[:]
	case "sha512":
		s := sha512.Sum512(body)
		d.Digest = s[:]
	default:
		return nil, fmt.Errorf("init-data: %w: algorithm %q: want sha256, sha384 or sha512", errdefs.ErrInvalidConfig, doc.Algorithm)
	}
	return d, nil
}

// InitDataPCRValue is what PCR 8 holds once init-data with this SHA-256
// digest is bound: SHA-256(32 zero bytes || digest).
func InitDataPCRValue(digest []byte) []byte {
	var zero [sha256.Size]byte
	v := sha256.Sum256(append(zero[:], digest...))
	return v[:]
}

// bindInitData extends the init-data digest into PCR 8 unless it is
// already bound there. A TPM extends SHA-256 digests only; a PCR 8 that
// holds anything else than zero or the bound value was extended by someone
// else, and binding on top of it would give a value no verifier expects.
func bindInitData(ctx context.Context, t transport.TPM, d *InitData) error {
	if d.Algorithm != "sha256" {
		return fmt.Errorf("init-data: %w: algorithm %s: a TPM binds only sha256 digests into PCR %d", errdefs.ErrInvalidConfig, d.Algorithm, InitDataPCR)
	}
	want := InitDataPCRValue(d.Digest)
	cur, err := readPCR(ctx, t, InitDataPCR)
	if err != nil {
		return err
	}
	switch {
	case bytes.Equal(cur, want):
		return nil
	case !isZero(cur):
		return fmt.Errorf("init-data: PCR %d already holds %x, neither zero nor this init-data's binding %x: something else extended it", InitDataPCR, cur, want)
	}
	return extendPCR(t, InitDataPCR, d.Digest)
}
