package main

import (
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/guest-puller/guest-puller/pull"
)

// progress shows per-layer state on stderr: redrawn bars (bytes, rate,
// state) on a terminal, one plain line per state change otherwise.
type progress struct {
	w    io.Writer
	tty  bool
	stop chan struct{}
	done sync.WaitGroup

	mu     sync.Mutex
	order  []v1.Hash
	layers map[v1.Hash]*layerProgress
	drawn  int // lines drawn last time (tty)
}

type layerProgress struct {
	size    int64
	bytes   int64
	state   pull.LayerState
	started time.Time
	fetched time.Time // when the last byte arrived
	ended   time.Time
}

func newProgress(w io.Writer, tty bool) (pull.Progress, func()) {
	p := &progress{w: w, tty: tty, stop: make(chan struct{}), layers: map[v1.Hash]*layerProgress{}}
	if tty {
		p.done.Add(1)
		go p.loop()
	}
	return p, sync.OnceFunc(func() {
		close(p.stop)
		p.done.Wait()
		if tty {
			p.mu.Lock()
			p.draw()
			p.mu.Unlock()
		}
	})
}

func (p *progress) LayerState(layer v1.Hash, size int64, state pull.LayerState) {
	p.mu.Lock()
	defer p.mu.Unlock()
	l, ok := p.layers[layer]
	if !ok {
		l = &layerProgress{size: size}
		p.layers[layer] = l
		p.order = append(p.order, layer)
	}
	l.state = state
	switch state {
	case pull.StateDownloading:
		l.started = time.Now()
	case pull.StateDone, pull.StateFailed:
		l.ended = time.Now()
	}
	if !p.tty {
		fmt.Fprintf(p.w, "layer %s: %s%s\n", short(layer), state, p.detail(l))
	}
}

func (p *progress) LayerBytes(layer v1.Hash, n int64) {
	p.mu.Lock()
	if l, ok := p.layers[layer]; ok {
		l.bytes += n
		if l.bytes >= l.size && l.fetched.IsZero() {
			l.fetched = time.Now()
		}
	}
	p.mu.Unlock()
}

func (p *progress) detail(l *layerProgress) string {
	switch l.state {
	case pull.StateDone:
		return fmt.Sprintf(" (%s in %s, %s/s)", human(l.bytes), l.ended.Sub(l.started).Round(time.Millisecond), human(rate(l)))
	case pull.StateCached:
		return " (already in the cache)"
	case pull.StateDownloading:
		return fmt.Sprintf(" (%s)", human(l.size))
	}
	return ""
}

func (p *progress) loop() {
	defer p.done.Done()
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-p.stop:
			return
		case <-t.C:
			p.mu.Lock()
			p.draw()
			p.mu.Unlock()
		}
	}
}

// draw redraws every layer's bar in place.
func (p *progress) draw() {
	var b strings.Builder
	if p.drawn > 0 {
		fmt.Fprintf(&b, "\x1b[%dA", p.drawn)
	}
	for _, h := range p.order {
		l := p.layers[h]
		const width = 30
		frac := 0.0
		if l.size > 0 {
			frac = float64(l.bytes) / float64(l.size)
		}
		if l.state == pull.StateCached || l.state == pull.StateDone {
			frac = 1
		}
		filled := int(frac * width)
		state := string(l.state)
		if l.state == pull.StateDownloading && !l.fetched.IsZero() {
			// Every byte is in; the rest of the layer is being verified
			// and unpacked.
			state = "unpacking"
		}
		fmt.Fprintf(&b, "\x1b[2K%s [%s%s] %9s / %-9s %9s/s  %s\n", short(h),
			strings.Repeat("=", filled), strings.Repeat(" ", width-filled),
			human(l.bytes), human(l.size), human(rate(l)), state)
	}
	p.drawn = len(p.order)
	io.WriteString(p.w, b.String())
}

func rate(l *layerProgress) int64 {
	if l.started.IsZero() {
		return 0
	}
	end := l.fetched
	if end.IsZero() {
		end = l.ended
	}
	if end.IsZero() {
		end = time.Now()
	}
	secs := end.Sub(l.started).Seconds()
	if secs <= 0 {
		return 0
	}
	return int64(float64(l.bytes) / secs)
}

func short(h v1.Hash) string {
	if len(h.Hex) > 12 {
		return h.Hex[:12]
	}
	return h.Hex
}

func human(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
