package unpack

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"
)

// Source is a blob verified to yield a committed layer: fetched, checked
// against its digest, decrypted when Decrypted, decompressed, and its tar
// stream checked against the layer's diff_id. A layer's sources are its
// provenance (see Lease.Layer).
type Source struct {
	Blob      digest.Digest `json:"blob"`
	Decrypted bool          `json:"decrypted"`
	// Key, for a decrypted source, identifies the layer key that
	// decrypted it (decrypt.LayerKey.Fingerprint: a digest of the key,
	// never the key). The same blob under another wrapped key (anyone can
	// wrap a key of their own to the guest's public key) is another
	// source.
	Key string `json:"key,omitempty"`
}

// provenance is the layer's sources, in either on-disk form: today's
// "provenance" list, or the "sources" + "confidential" of layers committed
// before it, read conservatively (all of a confidential layer's sources as
// decrypted ones, which makes a plain blob prove itself again).
func (m *layerMeta) provenance() []Source {
	if len(m.LegacySources) == 0 {
		return m.Provenance
	}
	out := slices.Clone(m.Provenance)
	for _, b := range m.LegacySources {
		if s := (Source{Blob: b, Decrypted: m.LegacyConfidential}); !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	return out
}

// Reusable applies DESIGN.md's layer provenance rules: may src stand for
// a layer whose provenance (the sources verified to yield it) is prov,
// without src being fetched?
//
//   - an encrypted blob (src.Decrypted) reuses the layer only if that exact
//     blob was decrypted into it before, with the same key (src.Key), which
//     the caller has unwrapped itself in this pull.
//   - a plain blob reuses the layer only if its content is public: some
//     plain blob was verified to yield it. A layer known only from
//     decryption is a secret of whoever holds that blob's key, and its
//     diff_id is public (it is in the image config).
//
// Otherwise the caller fetches and verifies the blob, and only then adds
// it as a source.
func Reusable(prov []Source, src Source) bool {
	for _, s := range prov {
		if src.Decrypted && s == src || !src.Decrypted && !s.Decrypted {
			return true
		}
	}
	return false
}

// pin is a process's shared flock on a layer's pin file, counted over the
// leases of the process that hold it.
type pin struct {
	f    *os.File
	refs int
}

// Lease holds the layers one task (a pull) uses: GC, in this process or
// another, removes no layer a live lease pins. A lease pins a layer when it
// finds it committed (Layer) or commits it (Staging.Commit), never one
// that is not there, and Release ends every pin it took, whatever the
// task's outcome; a process that dies releases its pins with it (flock).
// Once an image record or a live bundle names a layer, that keeps it; the
// pin only covers the time before. Safe for concurrent use.
type Lease struct {
	c     *Cache
	mu    sync.Mutex
	names map[string]bool
	done  bool
}

// NewLease starts a lease. Release it when the task ends.
func (c *Cache) NewLease() *Lease {
	return &Lease{c: c, names: map[string]bool{}}
}

// Release ends every pin of the lease. It may be called more than once.
func (l *Lease) Release() {
	l.mu.Lock()
	names := l.names
	l.names, l.done = nil, true
	l.mu.Unlock()
	for name := range names {
		l.c.unpin(name)
	}
}

// Layer says whether the layer diffID is committed and, if so, pins it and
// says whether src may stand for it without src being fetched (see
// Reusable). When it is present but not reusable, the caller
// verifies src against diffID (under LockLayer) and records it with
// AddSource.
func (l *Lease) Layer(diffID digest.Digest, src Source) (present, reusable bool) {
	name, err := layerName(diffID)
	if err != nil || !l.c.hasLayer(name) {
		return false, false
	}
	if !l.pin(name) {
		return true, false
	}
	// GC may have taken the layer between the look and the pin.
	if !l.c.hasLayer(name) {
		l.unpin(name)
		return false, false
	}
	var m layerMeta
	if err := readJSON(filepath.Join(l.c.layerDir(name), layerMetaFile), &m); err != nil {
		return true, false
	}
	return true, Reusable(m.provenance(), src)
}

// AddSource records that src was verified to yield the committed layer
// diffID. The caller holds LockLayer and found the layer with Layer.
func (l *Lease) AddSource(diffID digest.Digest, src Source) error {
	name, err := layerName(diffID)
	if err != nil {
		return err
	}
	path := filepath.Join(l.c.layerDir(name), layerMetaFile)
	var m layerMeta
	if err := readJSON(path, &m); err != nil {
		return fmt.Errorf("record source: %w", err)
	}
	prov := m.provenance()
	if slices.Contains(prov, src) {
		return nil
	}
	m.Provenance, m.LegacySources, m.LegacyConfidential = append(prov, src), nil, false
	if err := writeJSONAtomic(path, m); err != nil {
		return fmt.Errorf("record source: %w", err)
	}
	return nil
}

// Stage starts applying the layer diffID, made from src, into a fresh
// staging directory; its Commit pins the layer under the lease. The caller
// holds LockLayer.
func (l *Lease) Stage(diffID digest.Digest, src Source) (*Staging, error) {
	s, err := l.c.Stage(diffID)
	if err != nil {
		return nil, err
	}
	s.lease, s.source = l, src
	return s, nil
}

// pin takes (or shares) the process's pin on the layer for the lease.
func (l *Lease) pin(name string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.done {
		return false
	}
	if l.names[name] {
		return true
	}
	if !l.c.pin(name) {
		return false
	}
	l.names[name] = true
	return true
}

func (l *Lease) unpin(name string) {
	l.mu.Lock()
	held := l.names[name]
	delete(l.names, name)
	l.mu.Unlock()
	if held {
		l.c.unpin(name)
	}
}

// pin adds a reference to the process's shared lock on the layer's pin
// file, taking the lock on first use. GC holds a pin exclusively only while
// it renames the layer away, so the wait is short.
func (c *Cache) pin(name string) bool {
	c.mu.Lock()
	if p := c.pins[name]; p != nil && !c.closed {
		p.refs++
		c.mu.Unlock()
		return true
	}
	closed := c.closed
	c.mu.Unlock()
	if closed {
		return false
	}
	f, err := lock(context.Background(), c.pinLock(name), unix.LOCK_SH)
	if err != nil {
		c.log.Warn("cannot pin layer; a concurrent gc may remove it", "layer", name, "err", err)
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		f.Close()
		return false
	}
	if p := c.pins[name]; p != nil {
		// Another lease pinned it meanwhile: share its lock.
		f.Close()
		p.refs++
		return true
	}
	c.pins[name] = &pin{f: f, refs: 1}
	return true
}

// unpin drops a reference; the last one closes the lock.
func (c *Cache) unpin(name string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	p := c.pins[name]
	if p == nil {
		return
	}
	if p.refs--; p.refs <= 0 {
		p.f.Close()
		delete(c.pins, name)
	}
}
