package pull

import (
	"fmt"
	"io"
	"strings"
	"sync"

	"github.com/klauspost/compress/zstd"
	"github.com/klauspost/pgzip"

	"github.com/guest-puller/guest-puller/decrypt"
)

// compression is how a layer's (decrypted) blob is compressed.
type compression int

const (
	uncompressed compression = iota
	gzipped
	zstded
)

func (c compression) String() string {
	switch c {
	case gzipped:
		return "gzip"
	case zstded:
		return "zstd"
	}
	return "tar"
}

// compressionOf maps a layer media type, OCI or Docker, encrypted or not,
// to its compression. Anything that is not a layer is refused.
func compressionOf(mediaType string) (compression, error) {
	mt := decrypt.PlainMediaType(mediaType)
	switch mt {
	case "application/vnd.oci.image.layer.v1.tar",
		"application/vnd.oci.image.layer.nondistributable.v1.tar":
		return uncompressed, nil
	case "application/vnd.oci.image.layer.v1.tar+gzip",
		"application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
		"application/vnd.docker.image.rootfs.diff.tar.gzip",
		"application/vnd.docker.image.rootfs.foreign.diff.tar.gzip":
		return gzipped, nil
	case "application/vnd.oci.image.layer.v1.tar+zstd",
		"application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
		"application/vnd.docker.image.rootfs.diff.tar.zstd":
		return zstded, nil
	}
	if strings.HasSuffix(mt, ".tar") {
		return uncompressed, nil
	}
	return 0, fmt.Errorf("unsupported layer media type %q", mediaType)
}

// reader returns the decompressed stream of r and a func to release the
// decompressor. Decompression runs ahead of the consumer in its own
// goroutine (pgzip, zstd's concurrent decoder), with bounded buffers, so
// inflating and writing files overlap without holding a layer in memory.
func (c compression) reader(r io.Reader) (io.Reader, func(), error) {
	switch c {
	case gzipped:
		// 4 blocks of 1 MiB read ahead.
		zr, err := pgzip.NewReaderN(r, 1<<20, 4)
		if err != nil {
			return nil, nil, err
		}
		return zr, sync.OnceFunc(func() { zr.Close() }), nil
	case zstded:
		zr, err := zstd.NewReader(r, zstd.WithDecoderConcurrency(2), zstd.WithDecoderLowmem(false), zstd.WithDecoderMaxWindow(1<<27))
		if err != nil {
			return nil, nil, err
		}
		return zr, sync.OnceFunc(zr.Close), nil
	default:
		return r, func() {}, nil
	}
}
