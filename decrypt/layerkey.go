package decrypt

import (
	"bufio"
	"bytes"
	"crypto/aes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"

	"github.com/containers/ocicrypt/blockcipher"
	"github.com/opencontainers/go-digest"

	"github.com/guest-puller/guest-puller/internal/errdefs"
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
		return pub, fmt.Errorf("unsupported cipher %q", pub.CipherType)
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
	h, err := blockcipher.NewLayerBlockCipherHandler()
	if err != nil {
		return nil, fmt.Errorf("layer %s: %w", lk.layer, err)
	}
	src := &sourceReader{r: ciphertext}
	plain, _, err := h.Decrypt(src, lk.opts)
	if err != nil {
		return nil, fmt.Errorf("layer %s: %w: %v", lk.layer, errdefs.ErrDecrypt, err)
	}
	// ocicrypt's DelayedReader allocates a buffer the size of every Read
	// and regrows its delay buffer each time: fed a decompressor's 4 KiB
	// reads it allocates four bytes per byte and runs at a third of the
	// speed. Reading it in large chunks keeps that to about one allocation
	// per chunk.
	return &plainReader{layer: lk.layer, src: src, plain: bufio.NewReaderSize(plain, readChunk)}, nil
}

// readChunk is the size of reads from ocicrypt's decrypting reader; see
// BenchmarkNewReader.
const readChunk = 256 << 10

// sourceReader remembers whether the ciphertext reader itself failed, so
// that plainReader can tell the caller's I/O errors from the cipher's.
type sourceReader struct {
	r   io.Reader
	err error // first error other than io.EOF from r
}

func (s *sourceReader) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	if err != nil && err != io.EOF && s.err == nil {
		s.err = err
	}
	return n, err
}

// plainReader turns the failures of ocicrypt's decrypting reader into
// errdefs kinds. ocicrypt compares the HMAC when the ciphertext reaches EOF
// and then returns a plain fmt error instead of io.EOF (sticky, through its
// DelayedReader); any error that is not the ciphertext reader's own is such
// a verdict, and becomes ErrIntegrity.
//
// The plaintext is not also hashed against the digest in the wrapped
// options: the HMAC, keyed by the wrapped symmetric key, already proves the
// ciphertext is what that key's holder encrypted, and pull checks diff_id.
type plainReader struct {
	layer digest.Digest
	src   *sourceReader
	plain io.Reader
	err   error
}

func (r *plainReader) Read(p []byte) (int, error) {
	if r.err != nil {
		return 0, r.err
	}
	n, err := r.plain.Read(p)
	switch {
	case err == nil:
	case r.src.err != nil:
		// ocicrypt reads ahead with io.ReadFull, which turns a source's
		// io.ErrUnexpectedEOF into a clean end; report the source's error.
		err = r.src.err
	case err == io.EOF:
	default:
		err = fmt.Errorf("layer %s: %w: HMAC mismatch: ciphertext or public options were altered", r.layer, errdefs.ErrIntegrity)
	}
	if err != nil {
		r.err = err
	}
	return n, err
}
