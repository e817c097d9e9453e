package pull

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/klauspost/compress/zstd"
	"github.com/klauspost/pgzip"

	"github.com/guest-puller/guest-puller/internal/errdefs"
	"github.com/guest-puller/guest-puller/internal/mediatype"
)

// Decompression is where a layer's memory goes, and a registry chooses
// how much: a zstd frame names the window its decoder must keep (128 MiB
// with zstd --long=27, up to terabytes by the format), for any zstd layer,
// even of a signed image, since the blob's digest is known only at EOF.
// Two bounds keep it flat:
//
//   - a zstd window is at most MaxZstdWindow, decoded in low-memory mode;
//   - the layers being decompressed at once, by all the pulls of a Puller
//     together (a daemon's requests share it), are at most
//     MaxConcurrentDownloads: a layer waits for a decoder before it is
//     fetched. One decoder takes about 10 MiB (zstd: the window and a
//     block; gzip: four 1 MiB blocks of read-ahead).
const (
	// MaxZstdWindow is RFC 8878's recommended limit for decoders, and
	// what image builders write: zstd levels up to 19, and
	// klauspost/compress (buildkit, containerd, containers/image) at every
	// level. A larger window (zstd --long, --ultra -20 to -22) is refused
	// as unsafe content (exit 5).
	MaxZstdWindow = 8 << 20
)

// decoders hands out the decoder slots of a Puller.
type decoders chan struct{}

func newDecoders(n int) decoders { return make(decoders, n) }

// acquire waits for a free decoder; release gives it back.
func (d decoders) acquire(ctx context.Context) (release func(), err error) {
	select {
	case d <- struct{}{}:
		return sync.OnceFunc(func() { <-d }), nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

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
		zr, err := zstd.NewReader(r, zstd.WithDecoderConcurrency(2), zstd.WithDecoderLowmem(true), zstd.WithDecoderMaxWindow(MaxZstdWindow))
		if err != nil {
			return nil, nil, err
		}
		return zr, sync.OnceFunc(zr.Close), nil
	default:
		return r, func() {}, nil
	}
}

// windowError says why a zstd frame was refused for its window, or is nil
// when err is something else. The decoder reports a window over its limit
// as one of two errors: for a frame that names its window, and for a
// single-segment frame whose window is its whole content.
func windowError(err error) error {
	if !errors.Is(err, zstd.ErrWindowSizeExceeded) && !errors.Is(err, zstd.ErrDecoderSizeExceeded) {
		return nil
	}
	return fmt.Errorf("%w: the layer's zstd data needs a window larger than %d MiB (compressed with zstd --long or --ultra): refused, as it would hold that much memory per layer", errdefs.ErrIntegrity, MaxZstdWindow>>20)
}
