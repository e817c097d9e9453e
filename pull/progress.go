package pull

import (
	"io"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// LayerState is where a layer is in the pipeline.
type LayerState string

const (
	StateWaiting     LayerState = "waiting"
	StateCached      LayerState = "cached"
	StateDownloading LayerState = "downloading"
	StateDone        LayerState = "done"
	StateFailed      LayerState = "failed"
)

// Progress is told what each layer is doing. Calls come from several
// goroutines at once and must return quickly.
type Progress interface {
	// LayerState reports a layer (by blob digest, with its size) entering
	// a state.
	LayerState(layer v1.Hash, size int64, state LayerState)
	// LayerBytes reports n more bytes of the layer's blob received.
	LayerBytes(layer v1.Hash, n int64)
}

type nopProgress struct{}

func (nopProgress) LayerState(v1.Hash, int64, LayerState) {}
func (nopProgress) LayerBytes(v1.Hash, int64)             {}

type countingReader struct {
	r     io.Reader
	layer v1.Hash
	prog  Progress
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	if n > 0 {
		c.prog.LayerBytes(c.layer, int64(n))
	}
	return n, err
}
