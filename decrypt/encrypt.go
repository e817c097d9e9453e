package decrypt

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/containers/ocicrypt/blockcipher"
	"github.com/containers/ocicrypt/config"
	"github.com/containers/ocicrypt/keywrap/jwe"
	"github.com/containers/ocicrypt/utils"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/guest-puller/guest-puller/internal/errdefs"
)

// This file is the encryption side of ocicrypt's format, for `guest-puller
// encrypt`: what skopeo copy --encryption-key writes (ocicrypt's
// EncryptLayer), assembled from ocicrypt's block cipher and JWE key
// wrapper, and the attestation-agent packet of aaprovider.go, without
// ocicrypt's package-level registry (see doc.go).

const (
	annotationJWE     = "org.opencontainers.image.enc.keys.jwe"
	annotationPubOpts = "org.opencontainers.image.enc.pubopts"
)

// Recipients are the keys a layer is encrypted for: JWE public keys and
// attestation-agent KEKs. Every recipient can decrypt every layer.
type Recipients struct {
	jwePubKeys [][]byte
	aa         []aaRecipient
}

type aaRecipient struct {
	kid string
	kek []byte
}

// ParseRecipients reads --encryption-key values in skopeo's spelling:
//
//	jwe:PUBLIC-KEY-FILE     an RSA or EC public key (PEM or DER) or a JWK
//	provider:attestation-agent:keypath=KEK-FILE::keyid=kbs:///REPO/TYPE/TAG
//
// KEK-FILE holds exactly the 32 bytes the KBS serves at keyid. Other
// recipient kinds (pkcs7, pgp, other providers) are refused. Errors wrap
// errdefs.ErrInvalidConfig and never carry key material.
func ParseRecipients(specs []string) (*Recipients, error) {
	r := &Recipients{}
	for _, spec := range specs {
		kind, value, _ := strings.Cut(spec, ":")
		switch kind {
		case "jwe":
			data, err := os.ReadFile(value)
			if err != nil {
				return nil, fmt.Errorf("--encryption-key jwe: %w: %w", errdefs.ErrInvalidConfig, err)
			}
			if _, err := utils.ParsePublicKey(data, "JWE"); err != nil {
				return nil, fmt.Errorf("--encryption-key jwe:%s: %w: not an RSA or EC public key (PEM, DER or JWK)", value, errdefs.ErrInvalidConfig)
			}
			r.jwePubKeys = append(r.jwePubKeys, data)
		case "provider":
			name, params, _ := strings.Cut(value, ":")
			if name != aaProvider {
				return nil, fmt.Errorf("--encryption-key provider:%s: %w: only the %s provider is supported", name, errdefs.ErrInvalidConfig, aaProvider)
			}
			pp, err := parseProviderParams(params)
			if err != nil {
				return nil, fmt.Errorf("--encryption-key: %w", err)
			}
			if pp.keypath == "" || pp.keyid == "" {
				return nil, fmt.Errorf("--encryption-key: %w: %s needs keypath=KEK-FILE::keyid=kbs:///REPO/TYPE/TAG", errdefs.ErrInvalidConfig, aaProvider)
			}
			kek, err := readKEK(pp.keypath)
			if err != nil {
				return nil, fmt.Errorf("--encryption-key: %w", err)
			}
			r.aa = append(r.aa, aaRecipient{kid: pp.keyid, kek: kek})
		case "pkcs7", "pgp", "pkcs11":
			return nil, fmt.Errorf("--encryption-key %s: %w: not supported here (jwe: and provider:%s: are); skopeo encrypts for it", kind, errdefs.ErrInvalidConfig, aaProvider)
		default:
			return nil, fmt.Errorf("--encryption-key %q: %w: want jwe:PUBLIC-KEY-FILE or provider:%s:keypath=KEK-FILE::keyid=kbs:///REPO/TYPE/TAG", kind, errdefs.ErrInvalidConfig, aaProvider)
		}
	}
	if len(r.jwePubKeys) == 0 && len(r.aa) == 0 {
		return nil, fmt.Errorf("%w: no --encryption-key: an encrypted layer needs at least one recipient", errdefs.ErrInvalidConfig)
	}
	return r, nil
}

// EncryptLayer encrypts the layer blob plain, described by desc (its
// digest is recorded in the wrapped options, as ocicrypt does), with
// AES_256_CTR_HMAC_SHA256 under a fresh key. Read the returned reader to
// EOF, then call finish for the annotations the encrypted descriptor
// carries: the key wrapped for every recipient, and the public options.
// The encrypted descriptor's media type is desc's plus "+encrypted".
func (r *Recipients) EncryptLayer(plain io.Reader, desc ocispec.Descriptor) (ciphertext io.Reader, finish func() (map[string]string, error), err error) {
	h, err := blockcipher.NewLayerBlockCipherHandler()
	if err != nil {
		return nil, nil, err
	}
	enc, fin, err := h.Encrypt(plain, blockcipher.AES256CTR)
	if err != nil {
		return nil, nil, err
	}
	finish = func() (map[string]string, error) {
		opts, err := fin()
		if err != nil {
			return nil, err
		}
		opts.Private.Digest = desc.Digest
		private, err := json.Marshal(opts.Private)
		if err != nil {
			return nil, err
		}
		public, err := json.Marshal(opts.Public)
		if err != nil {
			return nil, err
		}
		ann := map[string]string{annotationPubOpts: base64.StdEncoding.EncodeToString(public)}
		if len(r.jwePubKeys) > 0 {
			ec := &config.EncryptConfig{Parameters: map[string][][]byte{"pubkeys": r.jwePubKeys}}
			wrapped, err := jwe.NewKeyWrapper().WrapKeys(ec, private)
			if err != nil {
				return nil, fmt.Errorf("wrap the layer key for JWE: %w", err)
			}
			ann[annotationJWE] = base64.StdEncoding.EncodeToString(wrapped)
		}
		// One packet per KEK, comma-separated, as several WrapKeys results
		// of one scheme are.
		var packets []string
		for _, aa := range r.aa {
			iv := make([]byte, gcmIVSize)
			if _, err := rand.Read(iv); err != nil {
				return nil, err
			}
			pkt, err := sealAAPacket(aa.kid, aa.kek, iv, private)
			if err != nil {
				return nil, fmt.Errorf("wrap the layer key for %s: %w", aa.kid, err)
			}
			packets = append(packets, base64.StdEncoding.EncodeToString(pkt))
		}
		if len(packets) > 0 {
			ann[aaAnnotation] = strings.Join(packets, ",")
		}
		return ann, nil
	}
	return enc, finish, nil
}
