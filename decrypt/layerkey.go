package decrypt

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"

	"github.com/containers/ocicrypt/blockcipher"
	"github.com/opencontainers/go-digest"

	"github.com/guest-puller/guest-puller/internal/errdefs"
	"github.com/guest-puller/guest-puller/internal/untrusted"
)

const pubOptsAnnotation = "org.opencontainers.image.enc.pubopts"

// publicOptions reads the layer's public cipher options. They are not
// authenticated (the HMAC they carry is keyed by the private symmetric key),
// so anything beyond cipher and HMAC is refused: ocicrypt would let public
// cipher options override the private nonce.
func publicOptions(annotations map[string]string) (blockcipher.PublicLayerBlockCipherOptions, error) {
	var pub blockcipher.PublicLayerBlockCipherOptions
	b64, ok := annotations[pubOptsAnnotation]
	if !ok {
		return pub, fmt.Errorf("no %s annotation", pubOptsAnnotation)
	}
	raw, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		return pub, fmt.Errorf("%s is not base64", pubOptsAnnotation)
	}
	if err := decodeStrict(raw, &pub); err != nil {
		return pub, fmt.Errorf("%s: %v", pubOptsAnnotation, err)
	}
	switch {
	case pub.CipherType != blockcipher.AES256CTR:
		return pub, fmt.Errorf("unsupported cipher %s", untrusted.Quote(string(pub.CipherType)))
	case len(pub.Hmac) != sha256.Size:
		return pub, fmt.Errorf("%s: HMAC is %d bytes, want %d", pubOptsAnnotation, len(pub.Hmac), sha256.Size)
	case len(pub.CipherOptions) != 0:
		return pub, fmt.Errorf("%s: unexpected public cipher options", pubOptsAnnotation)
	}
	return pub, nil
}

// newLayerKey checks the unwrapped private options. Its errors never quote
// them: they hold the symmetric key.
func newLayerKey(layer digest.Digest, privOpts []byte, pub blockcipher.PublicLayerBlockCipherOptions) (*LayerKey, error) {
	var priv blockcipher.PrivateLayerBlockCipherOptions
	if err := decodeStrict(privOpts, &priv); err != nil {
		return nil, fmt.Errorf("layer %s: %w: the unwrapped key options are malformed", layer, errdefs.ErrDecrypt)
	}
	if len(priv.SymmetricKey) != 32 {
		return nil, fmt.Errorf("layer %s: %w: the unwrapped symmetric key is %d bytes, want 32", layer, errdefs.ErrDecrypt, len(priv.SymmetricKey))
	}
	// Without a nonce ocicrypt would pick a random one and "decrypt" to
	// garbage that still passes the HMAC (which covers the ciphertext).
	if n := len(priv.CipherOptions["nonce"]); n != aes.BlockSize {
		return nil, fmt.Errorf("layer %s: %w: the unwrapped nonce is %d bytes, want %d", layer, errdefs.ErrDecrypt, n, aes.BlockSize)
	}
	if priv.Digest != "" {
		if err := priv.Digest.Validate(); err != nil {
			return nil, fmt.Errorf("layer %s: %w: the unwrapped options carry an invalid digest", layer, errdefs.ErrDecrypt)
		}
	}
	return &LayerKey{
		layer: layer,
		opts:  blockcipher.LayerBlockCipherOptions{Public: pub, Private: priv},
	}, nil
}

func (lk *LayerKey) fingerprint() string {
	h := sha256.New()
	h.Write([]byte("guest-puller layer key fingerprint v1\x00"))
	h.Write(lk.opts.Private.SymmetricKey)
	h.Write(lk.opts.Private.CipherOptions["nonce"])
	return hex.EncodeToString(h.Sum(nil))
}

func decodeStrict(data []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return errors.New("malformed JSON")
	}
	if dec.More() {
		return errors.New("trailing data after JSON")
	}
	return nil
}

func (lk *LayerKey) newReader(ciphertext io.Reader) (io.Reader, error) {
	block, err := aes.NewCipher(lk.opts.Private.SymmetricKey)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errdefs.ErrDecrypt, err)
	}
	return &ctrReader{
		src:     ciphertext,
		stream:  cipher.NewCTR(block, lk.opts.Private.CipherOptions["nonce"]),
		mac:     hmac.New(sha256.New, lk.opts.Private.SymmetricKey),
		wantMAC: lk.opts.Public.Hmac,
	}, nil
}

// ctrReader is the data path of ocicrypt's AES_256_CTR_HMAC_SHA256 layer
// cipher (blockcipher.AESCTRLayerBlockCipher): HMAC-SHA256 over the
// ciphertext with the symmetric key, AES-256-CTR with the private nonce,
// the HMAC compared at EOF. Everything before it (key unwrap, options,
// their validation) is ocicrypt's; only this loop is ours, because
// ocicrypt's reader goes through a DelayedReader that allocates and copies
// every read twice, which made encrypted pulls half again as costly as the
// cipher itself (BenchmarkNewReader). The result is the same bytes, and
// the same verdict: an HMAC mismatch is the final Read's error, wrapping
// errdefs.ErrIntegrity, in place of io.EOF.
//
// Plaintext is returned before the HMAC is known, as the pipeline applies
// a layer into staging and commits it only after EOF; errors of the
// ciphertext reader itself pass through unchanged.
type ctrReader struct {
	src     io.Reader
	stream  cipher.Stream
	mac     hash.Hash
	wantMAC []byte
	err     error
}

func (r *ctrReader) Read(p []byte) (int, error) {
	if r.err != nil {
		return 0, r.err
	}
	n, err := r.src.Read(p)
	r.mac.Write(p[:n])
	r.stream.XORKeyStream(p[:n], p[:n])
	switch {
	case err == io.EOF:
		if !hmac.Equal(r.mac.Sum(nil), r.wantMAC) {
			err = fmt.Errorf("%w: HMAC mismatch: ciphertext or public options were altered", errdefs.ErrIntegrity)
		}
		r.err = err
	case err != nil:
		r.err = err
	}
	return n, err
}
