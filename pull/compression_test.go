package pull

import (
	"bytes"
	"context"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/guest-puller/guest-puller/internal/errdefs"
	"github.com/guest-puller/guest-puller/internal/mediatype"
)

// zstdFrame compresses n zero bytes into one zstd frame with the encoder
// options given.
func zstdFrame(t *testing.T, n int, opts ...zstd.EOption) []byte {
	t.Helper()
	var buf bytes.Buffer
	w, err := zstd.NewWriter(&buf, opts...)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(make([]byte, n)); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// TestZstdWindowLimit: frames whose window is at most MaxZstdWindow
// decode; a larger window is refused as unsafe content whether the frame
// names it or, single-segment, implies it by its content size.
func TestZstdWindowLimit(t *testing.T) {
	for _, tc := range []struct {
		name  string
		frame []byte
		ok    bool
	}{
		{"8 MiB window", zstdFrame(t, 20<<20, zstd.WithWindowSize(8<<20)), true},
		{"1 MiB window", zstdFrame(t, 20<<20, zstd.WithWindowSize(1<<20)), true},
		{"16 MiB window", zstdFrame(t, 20<<20, zstd.WithWindowSize(16<<20)), false},
		{"single segment of 8 MiB", func() []byte {
			enc, _ := zstd.NewWriter(nil, zstd.WithSingleSegment(true))
			return enc.EncodeAll(make([]byte, 8<<20), nil)
		}(), true},
		{"single segment of 32 MiB", func() []byte {
			enc, _ := zstd.NewWriter(nil, zstd.WithSingleSegment(true))
			return enc.EncodeAll(make([]byte, 32<<20), nil)
		}(), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, closeDecomp, err := decompress(mediatype.Zstd, bytes.NewReader(tc.frame))
			if err != nil {
				t.Fatal(err)
			}
			defer closeDecomp()
			_, err = io.Copy(io.Discard, r)
			if tc.ok {
				if err != nil {
					t.Fatalf("decode: %v", err)
				}
				return
			}
			werr := windowError(err)
			if werr == nil || !errors.Is(werr, errdefs.ErrIntegrity) {
				t.Fatalf("decode error %v, windowError %v: want a refused window", err, werr)
			}
		})
	}
}

// TestDecodersShared: a Puller's decoder slots are shared by all its
// pulls; a layer waits for one, or for its context to end.
func TestDecodersShared(t *testing.T) {
	d := newDecoders(2)
	ctx := context.Background()
	r1, err := d.acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	r2, err := d.acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan error, 1)
	go func() {
		r3, err := d.acquire(ctx)
		if err == nil {
			r3()
		}
		got <- err
	}()
	select {
	case err := <-got:
		t.Fatalf("a third decoder was handed out while two are in use (err %v)", err)
	case <-time.After(50 * time.Millisecond):
	}
	r1()
	r1() // releasing twice gives back one slot only
	if err := <-got; err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithCancel(ctx)
	r4, err := d.acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	if _, err := d.acquire(cctx); !errors.Is(err, context.Canceled) {
		t.Errorf("acquire with a cancelled context and no free decoder: %v", err)
	}
	r2()
	r4()
}
