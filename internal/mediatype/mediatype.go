// Package mediatype is the one authority on layer media types: which media
// types are layers guest-puller can pull, how each is compressed, and which
// are ocicrypt-encrypted. The policy's "encrypted" requirement, decrypt's
// key unwrap and pull's pipeline all ask it, so `policy check` never counts
// as encrypted a layer that `pull` would refuse or read as plain.
//
// The set is closed: a media type is a layer only if it is listed here. A
// type that merely ends in "+encrypted" or ".tar" is not one.
package mediatype

import (
	"fmt"
	"strings"

	"github.com/guest-puller/guest-puller/internal/untrusted"
)

// Compression is how a layer's (decrypted) blob is compressed.
type Compression int

const (
	Uncompressed Compression = iota
	Gzip
	Zstd
)

func (c Compression) String() string {
	switch c {
	case Gzip:
		return "gzip"
	case Zstd:
		return "zstd"
	}
	return "tar"
}

// encryptedSuffix marks ocicrypt's encrypted variant of a layer type.
const encryptedSuffix = "+encrypted"

// plainLayers are the unencrypted layer types: OCI's, and Docker's schema 2
// ones (with the zstd and uncompressed variants containerd and buildkit
// write). Each has an encrypted variant, with encryptedSuffix appended, as
// ocicrypt writes for OCI types and imgcrypt and image-rs accept for Docker
// ones.
var plainLayers = map[string]Compression{
	"application/vnd.oci.image.layer.v1.tar":                       Uncompressed,
	"application/vnd.oci.image.layer.v1.tar+gzip":                  Gzip,
	"application/vnd.oci.image.layer.v1.tar+zstd":                  Zstd,
	"application/vnd.oci.image.layer.nondistributable.v1.tar":      Uncompressed,
	"application/vnd.oci.image.layer.nondistributable.v1.tar+gzip": Gzip,
	"application/vnd.oci.image.layer.nondistributable.v1.tar+zstd": Zstd,
	"application/vnd.docker.image.rootfs.diff.tar":                 Uncompressed,
	"application/vnd.docker.image.rootfs.diff.tar.gzip":            Gzip,
	"application/vnd.docker.image.rootfs.diff.tar.zstd":            Zstd,
	"application/vnd.docker.image.rootfs.foreign.diff.tar":         Uncompressed,
	"application/vnd.docker.image.rootfs.foreign.diff.tar.gzip":    Gzip,
}

// Layer is what a layer media type says about its blob.
type Layer struct {
	// Compression of the blob once decrypted.
	Compression Compression
	// Encrypted: the blob is ocicrypt ciphertext.
	Encrypted bool
}

// ParseLayer says what the layer media type mt is. A media type that is
// not a layer type in the set is an error.
func ParseLayer(mt string) (Layer, error) {
	plain, encrypted := strings.CutSuffix(mt, encryptedSuffix)
	c, ok := plainLayers[plain]
	if !ok {
		return Layer{}, fmt.Errorf("unsupported layer media type %s", untrusted.Quote(mt))
	}
	return Layer{Compression: c, Encrypted: encrypted}, nil
}

// IsEncrypted reports whether mt is an encrypted layer type of the set.
func IsEncrypted(mt string) bool {
	l, err := ParseLayer(mt)
	return err == nil && l.Encrypted
}

// Plain is mt without its +encrypted suffix when mt is an encrypted layer
// type, and mt otherwise.
func Plain(mt string) string {
	if !IsEncrypted(mt) {
		return mt
	}
	return strings.TrimSuffix(mt, encryptedSuffix)
}
