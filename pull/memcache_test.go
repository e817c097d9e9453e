package pull

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"

	"github.com/opencontainers/go-digest"

	"github.com/guest-puller/guest-puller/internal/errdefs"
	"github.com/guest-puller/guest-puller/unpack"
)

// memCache is a Cache in memory for the pipeline's own tests: layers are
// the files of their tar streams, bundles are records. Reuse is decided by
// unpack.Reusable, as the real cache decides it, and pins are counted so
// tests can see every lease end.
type memCache struct {
	mu      sync.Mutex
	layers  map[digest.Digest]*memLayer
	images  map[string]unpack.ImageRecord
	bundles map[string]unpack.BundleSpec
	locks   map[digest.Digest]*sync.Mutex
	pins    int // pins held by live leases
	leases  int // leases not yet released
}

type memLayer struct {
	files      map[string]string
	provenance []unpack.Source
	// unreadable: the storage under it fails reads (a sealed store whose
	// blocks the host changed).
	unreadable bool
}

func newMemCache() *memCache {
	return &memCache{
		layers:  map[digest.Digest]*memLayer{},
		images:  map[string]unpack.ImageRecord{},
		bundles: map[string]unpack.BundleSpec{},
		locks:   map[digest.Digest]*sync.Mutex{},
	}
}

// seed puts a layer in the cache as if src had been verified to yield it.
func (c *memCache) seed(diffID digest.Digest, files map[string]string, src unpack.Source) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.layers[diffID] = &memLayer{files: files, provenance: []unpack.Source{src}}
}

func (c *memCache) layer(diffID digest.Digest) (*memLayer, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	l, ok := c.layers[diffID]
	return l, ok
}

func (c *memCache) outstanding() (leases, pins int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.leases, c.pins
}

func (c *memCache) NewLease() Lease {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.leases++
	return &memLease{c: c, pinned: map[digest.Digest]bool{}}
}

func (c *memCache) LockLayer(ctx context.Context, diffID digest.Digest) (func(), error) {
	c.mu.Lock()
	m := c.locks[diffID]
	if m == nil {
		m = &sync.Mutex{}
		c.locks[diffID] = m
	}
	c.mu.Unlock()
	m.Lock()
	return sync.OnceFunc(m.Unlock), nil
}

func (c *memCache) PutImage(_ context.Context, rec unpack.ImageRecord) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, l := range rec.Layers {
		if c.layers[l.DiffID] == nil {
			return fmt.Errorf("image %s: layer %s: %w", rec.Ref, l.DiffID, errdefs.ErrNotFound)
		}
	}
	c.images[rec.Ref] = rec
	return nil
}

// VerifyLayer is unpack.Cache.VerifyLayer: an unreadable layer is an
// integrity error and leaves the cache.
func (c *memCache) VerifyLayer(_ context.Context, diffID digest.Digest) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	l := c.layers[diffID]
	if l == nil {
		return fmt.Errorf("layer %s: %w", diffID, errdefs.ErrNotFound)
	}
	if l.unreadable {
		delete(c.layers, diffID)
		return fmt.Errorf("layer %s: %w: read back failed", diffID, errdefs.ErrIntegrity)
	}
	return nil
}

func (c *memCache) CreateBundle(_ context.Context, spec unpack.BundleSpec) (*unpack.Bundle, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, d := range spec.Layers {
		if c.layers[d] == nil {
			return nil, fmt.Errorf("bundle %s: layer %s: %w", spec.ID, d, errdefs.ErrNotFound)
		}
	}
	c.bundles[spec.ID] = spec
	return &unpack.Bundle{ID: spec.ID, Dir: "mem:" + spec.ID, Rootfs: "mem:" + spec.ID + "/rootfs", RootfsType: "memory"}, nil
}

// rootfs merges a bundle's layers (no whiteouts: the tests use none).
func (c *memCache) rootfs(id string) map[string]string {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := map[string]string{}
	for _, d := range c.bundles[id].Layers {
		for p, v := range c.layers[d].files {
			out[p] = v
		}
	}
	return out
}

type memLease struct {
	c      *memCache
	mu     sync.Mutex
	pinned map[digest.Digest]bool
	done   bool
}

func (l *memLease) pin(d digest.Digest) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.pinned[d] && !l.done {
		l.pinned[d] = true
		l.c.pins++
	}
}

func (l *memLease) Layer(diffID digest.Digest, src unpack.Source) (bool, bool) {
	l.c.mu.Lock()
	layer := l.c.layers[diffID]
	var reusable bool
	if layer != nil {
		reusable = unpack.Reusable(layer.provenance, src)
	}
	l.c.mu.Unlock()
	if layer == nil {
		return false, false
	}
	l.pin(diffID)
	return true, reusable
}

func (l *memLease) AddSource(diffID digest.Digest, src unpack.Source) error {
	l.c.mu.Lock()
	defer l.c.mu.Unlock()
	layer := l.c.layers[diffID]
	if layer == nil {
		return errors.New("no such layer")
	}
	if !slices.Contains(layer.provenance, src) {
		layer.provenance = append(layer.provenance, src)
	}
	return nil
}

func (l *memLease) Stage(diffID digest.Digest, src unpack.Source) (Staging, error) {
	return &memStaging{l: l, diffID: diffID, src: src, files: map[string]string{}}, nil
}

func (l *memLease) Release() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.done {
		return
	}
	l.done = true
	l.c.mu.Lock()
	l.c.pins -= len(l.pinned)
	l.c.leases--
	l.c.mu.Unlock()
}

type memStaging struct {
	l       *memLease
	diffID  digest.Digest
	src     unpack.Source
	files   map[string]string
	applied bool
}

func (s *memStaging) Apply(_ context.Context, r io.Reader) error {
	tr := tar.NewReader(r)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			s.applied = true
			return nil
		}
		if err != nil {
			return fmt.Errorf("%w: malformed tar: %w", errdefs.ErrIntegrity, err)
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			return err
		}
		s.files[hdr.Name] = string(b)
	}
}

func (s *memStaging) Commit() error {
	if !s.applied {
		return errors.New("commit before a successful apply")
	}
	s.l.c.mu.Lock()
	if s.l.c.layers[s.diffID] == nil {
		s.l.c.layers[s.diffID] = &memLayer{files: s.files, provenance: []unpack.Source{s.src}}
	}
	s.l.c.mu.Unlock()
	s.l.pin(s.diffID)
	return nil
}

func (s *memStaging) Abort() error { return nil }
