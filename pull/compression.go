package pull

import (
	"io"
	"sync"

	"github.com/klauspost/compress/zstd"
	"github.com/klauspost/pgzip"

	"github.com/guest-puller/guest-puller/internal/mediatype"
)

// decompress returns the decompressed stream of r and a func to release
// the decompressor. Decompression runs ahead of the consumer in its own
// goroutine (pgzip, zstd's concurrent decoder), with bounded buffers, so
// inflating and writing files overlap without holding a layer in memory.
func decompress(c mediatype.Compression, r io.Reader) (io.Reader, func(), error) {
	switch c {
	case mediatype.Gzip:
		// 4 blocks of 1 MiB read ahead.
		zr, err := pgzip.NewReaderN(r, 1<<20, 4)
		if err != nil {
			return nil, nil, err
		}
		return zr, sync.OnceFunc(func() { zr.Close() }), nil
	case mediatype.Zstd:
		zr, err := zstd.NewReader(r, zstd.WithDecoderConcurrency(2), zstd.WithDecoderLowmem(false), zstd.WithDecoderMaxWindow(1<<27))
		if err != nil {
			return nil, nil, err
		}
		return zr, sync.OnceFunc(zr.Close), nil
	default:
		return r, func() {}, nil
	}
}
