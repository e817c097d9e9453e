package decrypt

// This file is the package's contract with pull/ and cmd/ (see
// docs/ARCHITECTURE.md).

import (
	"context"
	"io"

	"github.com/containers/ocicrypt/blockcipher"
	"github.com/containers/ocicrypt/config"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// ResourceGetter fetches a secret resource by URI ("kbs:///repo/type/tag").
// attest.Client implements it (attestation happens on first use). Errors
// from it wrap errdefs.ErrDecrypt.
type ResourceGetter interface {
	GetResource(ctx context.Context, uri string) ([]byte, error)
}

// Options say where private keys come from.
type Options struct {
	// Keys are --decryption-key values: PATH[:PASSWORD] or kbs:///… URIs,
	// in the forms ocicrypt and skopeo accept (JWE RSA/EC private keys, PEM
	// or DER, optionally password-protected; PKCS7 key plus certificate;
	// OpenPGP private keys).
	//
	// PASSWORD is skopeo's: pass=P, file=PATH, fd=N or the password itself.
	// "provider:attestation-agent" is accepted and requires Resources.
	Keys []string
	// KeyDir, if set, is a directory whose every regular file is a private
	// key (no password), as the config file's key directory.
	KeyDir string
	// Resources serves kbs:// keys and the attestation-agent key provider.
	// Nil means neither is available: such layers fail with ErrDecrypt.
	Resources ResourceGetter
	// KidResourceTypes are the KBS resource types a layer's kid (an
	// attestation-agent packet, which whoever built the image writes) may
	// name: the KBS is only asked for a kid of these types. Nil means
	// DefaultKidResourceTypes.
	KidResourceTypes []string
}

// DefaultKidResourceTypes are the resource types a kid may name unless
// configured otherwise: "key", what coco_keyprovider and Trustee's
// examples use (kbs:///default/key/1), and "image-kek".
var DefaultKidResourceTypes = []string{"key", "image-kek"}

// Keyring holds private key material, in memory only. It never logs or
// prints key material. Safe for concurrent use.
type Keyring struct {
	keys       *keySet
	dc         *config.DecryptConfig // read-only after NewKeyring
	recipients []recipient
	resources  ResourceGetter
	kids       kidTypes
	keks       kekCache
}

// NewKeyring loads the keys of opts. A key that cannot be read or parsed is
// an error wrapping errdefs.ErrInvalidConfig; a kbs:// key fetch failure
// wraps errdefs.ErrDecrypt.
func NewKeyring(ctx context.Context, opts Options) (*Keyring, error) {
	return newKeyring(ctx, opts)
}

// IsEncrypted reports whether mediaType is an ocicrypt encrypted layer type
// (…+encrypted, OCI or Docker).
func IsEncrypted(mediaType string) bool { return isEncrypted(mediaType) }

// PlainMediaType is mediaType without its +encrypted suffix.
func PlainMediaType(mediaType string) string { return plainMediaType(mediaType) }

// LayerKey is an unwrapped layer key: it can decrypt one layer's blob.
type LayerKey struct {
	layer digest.Digest
	opts  blockcipher.LayerBlockCipherOptions
}

// Unwrap recovers the key of one encrypted layer from its annotations,
// trying every key and provider the keyring has. It runs before the layer is
// fetched. No usable key is an error wrapping errdefs.ErrDecrypt.
func (k *Keyring) Unwrap(ctx context.Context, desc ocispec.Descriptor) (*LayerKey, error) {
	return k.unwrap(ctx, desc)
}

// NewReader returns the plaintext of ciphertext, streaming: nothing is
// buffered beyond a few hundred KiB of read-ahead. The HMAC is only known at
// EOF; if it does not match, the final Read returns an error wrapping
// errdefs.ErrIntegrity instead of io.EOF, so a caller that reads to EOF
// before committing never commits a forged layer. Errors of ciphertext
// itself are returned as they are. Its errors do not name the layer: the
// caller, whose pass this is, does. Each call returns an independent reader.
func (lk *LayerKey) NewReader(ciphertext io.Reader) (io.Reader, error) {
	return lk.newReader(ciphertext)
}

// PlainDigest is the digest of the unencrypted (still compressed) blob as
// recorded by the encrypter in the wrapped key options, or "" if it recorded
// none. It is authenticated by the key wrap; NewReader does not check it.
func (lk *LayerKey) PlainDigest() digest.Digest { return lk.opts.Private.Digest }

// Fingerprint identifies the key (the symmetric key and nonce it
// decrypts with) without telling it: hex SHA-256 over a domain label and
// the key material. Two descriptors of one blob whose wrapped keys differ
// have different fingerprints; the cache uses it to reuse a decrypted
// layer only for the very key that decrypted it, since anyone can wrap a
// key of their own to the guest's public key.
func (lk *LayerKey) Fingerprint() string { return lk.fingerprint() }

// String names the layer only: a LayerKey must never print its key.
func (lk *LayerKey) String() string { return "decrypt.LayerKey(" + lk.layer.String() + ")" }

// GoString keeps %#v from printing the key.
func (lk *LayerKey) GoString() string { return lk.String() }
