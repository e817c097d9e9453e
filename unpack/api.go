package unpack

// This file is the package's contract with pull/ and cmd/ (see
// docs/ARCHITECTURE.md).

import (
	"context"
	"errors"
	"io"
	"time"

	"github.com/opencontainers/go-digest"
	ispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// DefaultRoot is the default cache root.
const DefaultRoot = "/run/guest-puller"

// Cache is the guest-local layer cache: committed layers keyed by diff_id,
// image records, and bundles. Several processes may share one root; a
// Cache is safe for concurrent use.
type Cache struct {
	_ struct{}
}

// Open opens (creating if needed, mode 0700) the cache at root, and removes
// staging directories and half-made bundles left by killed processes.
func Open(ctx context.Context, root string) (*Cache, error) {
	return nil, errors.New("unpack: not implemented")
}

// Close releases the cache's resources (not its mounts).
func (c *Cache) Close() error { return nil }

// Root is the cache's root directory.
func (c *Cache) Root() string { return "" }

// HasLayer reports whether the layer with this diff_id is committed.
func (c *Cache) HasLayer(diffID digest.Digest) bool { return false }

// LockLayer takes the exclusive lock on one layer, shared by every process
// using the cache, so a layer is fetched and applied once at a time. After
// taking it, call HasLayer again: another process may have committed it.
func (c *Cache) LockLayer(ctx context.Context, diffID digest.Digest) (release func(), err error) {
	return nil, errors.New("unpack: not implemented")
}

// Stage starts applying the layer diffID into a fresh staging directory.
// The caller holds LockLayer.
func (c *Cache) Stage(diffID digest.Digest) (*Staging, error) {
	return nil, errors.New("unpack: not implemented")
}

// Staging is a layer being applied. Exactly one of Commit or Abort ends it.
type Staging struct {
	_ struct{}
}

// Apply unpacks the tar stream r (uncompressed, plaintext) into the staging
// directory in OverlayfsRootfs format, reading until the tar end-of-archive
// marker. Content that would create, change or link to anything outside the
// layer's own directory, or a device node when not running as root, is an
// error wrapping errdefs.ErrIntegrity.
func (s *Staging) Apply(ctx context.Context, r io.Reader) error {
	return errors.New("unpack: not implemented")
}

// Commit atomically moves the staged layer into the cache. Call it only
// once every check on the layer's bytes has passed.
func (s *Staging) Commit() error { return errors.New("unpack: not implemented") }

// Abort removes the staging directory.
func (s *Staging) Abort() error { return nil }

// LayerRecord describes one layer of an image record.
type LayerRecord struct {
	Digest    digest.Digest `json:"digest"`
	DiffID    digest.Digest `json:"diffID"`
	MediaType string        `json:"mediaType"`
	Size      int64         `json:"size"`
}

// ImageRecord is what the cache remembers of a pulled image.
type ImageRecord struct {
	Ref            string        `json:"ref"`
	ManifestDigest digest.Digest `json:"manifestDigest"`
	ConfigDigest   digest.Digest `json:"configDigest"`
	Layers         []LayerRecord `json:"layers"`
	Pulled         time.Time     `json:"pulled"`
}

// PutImage records (or replaces) the image record for rec.Ref.
func (c *Cache) PutImage(ctx context.Context, rec ImageRecord) error {
	return errors.New("unpack: not implemented")
}

// RemoveImage forgets the image ref and marks its bundles removed; their
// mounts and unreferenced layers go at the next GC. An unknown ref is an
// error wrapping ErrNotFound.
func (c *Cache) RemoveImage(ctx context.Context, ref string) error {
	return errors.New("unpack: not implemented")
}

// ErrNotFound is returned for an unknown image or bundle.
var ErrNotFound = errors.New("not found")

// BundleSpec says which bundle to make.
type BundleSpec struct {
	// ID names the bundle (the container id).
	ID string
	// Dir is the bundle directory; "" means <root>/bundles/<ID>.
	Dir string
	// Image and ManifestDigest name the image the bundle runs.
	Image          string
	ManifestDigest digest.Digest
	// Layers are the diff_ids, bottom layer first; all committed.
	Layers []digest.Digest
	// Config is the image configuration the runtime spec is made from.
	Config ispec.Image
}

// Bundle is an OCI runtime bundle made from cached layers.
type Bundle struct {
	ID     string `json:"id"`
	Dir    string `json:"dir"`
	Rootfs string `json:"rootfs"`
	// RootfsType is "overlay" (cached layers under a per-container upper
	// dir) or "copy" (a flattened copy, when overlay cannot be mounted).
	RootfsType string `json:"rootfsType"`
}

// CreateBundle writes config.json and mounts (or copies) the rootfs. A
// bundle with the same ID and manifest that is still intact is returned as
// is; any other with that ID is replaced.
func (c *Cache) CreateBundle(ctx context.Context, spec BundleSpec) (*Bundle, error) {
	return nil, errors.New("unpack: not implemented")
}

// Listing is the content of the cache, for `cache ls`.
type Listing struct {
	Images  []ImageRecord  `json:"images"`
	Layers  []LayerInfo    `json:"layers"`
	Bundles []BundleRecord `json:"bundles"`
}

// LayerInfo is one committed layer.
type LayerInfo struct {
	DiffID digest.Digest `json:"diffID"`
	// Size is the unpacked size in bytes.
	Size int64 `json:"size"`
	// Refs is how many image records and live bundles use it.
	Refs int `json:"refs"`
}

// BundleRecord is one bundle the cache made.
type BundleRecord struct {
	Bundle
	Image          string        `json:"image"`
	ManifestDigest digest.Digest `json:"manifestDigest"`
	Layers         []digest.Digest `json:"layers"`
	// Removed is true once the bundle's image was removed or its
	// directory deleted: GC will unmount and delete it.
	Removed bool `json:"removed"`
}

// List returns the cache's images, layers and bundles.
func (c *Cache) List(ctx context.Context) (*Listing, error) {
	return nil, errors.New("unpack: not implemented")
}

// GCReport says what GC removed.
type GCReport struct {
	Bundles    []string        `json:"bundles"`
	Layers     []digest.Digest `json:"layers"`
	FreedBytes int64           `json:"freedBytes"`
}

// GC unmounts and removes the bundles of removed containers, then removes
// layers no image record or live bundle references.
func (c *Cache) GC(ctx context.Context) (*GCReport, error) {
	return nil, errors.New("unpack: not implemented")
}
