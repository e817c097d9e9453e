package decrypt

import (
	"strings"

	"github.com/containers/ocicrypt/spec"
)

const encryptedSuffix = "+encrypted"

// encryptedLayerTypes are the layer media types ocicrypt writes (OCI) and
// that imgcrypt and image-rs accept (Docker). A type merely ending in
// "+encrypted" is not enough: a layer we could not unpack after decryption
// must not count as encrypted for the policy's "encrypted" requirement.
var encryptedLayerTypes = map[string]bool{
	spec.MediaTypeLayerEnc:                     true,
	spec.MediaTypeLayerGzipEnc:                 true,
	spec.MediaTypeLayerZstdEnc:                 true,
	spec.MediaTypeLayerNonDistributableEnc:     true,
	spec.MediaTypeLayerNonDistributableGzipEnc: true,
	spec.MediaTypeLayerNonDistributableZstdEnc: true,

	"application/vnd.docker.image.rootfs.diff.tar+encrypted":              true,
	"application/vnd.docker.image.rootfs.diff.tar.gzip+encrypted":         true,
	"application/vnd.docker.image.rootfs.diff.tar.zstd+encrypted":         true,
	"application/vnd.docker.image.rootfs.foreign.diff.tar+encrypted":      true,
	"application/vnd.docker.image.rootfs.foreign.diff.tar.gzip+encrypted": true,
}

func isEncrypted(mediaType string) bool { return encryptedLayerTypes[mediaType] }

func plainMediaType(mediaType string) string {
	if !isEncrypted(mediaType) {
		return mediaType
	}
	return strings.TrimSuffix(mediaType, encryptedSuffix)
}
