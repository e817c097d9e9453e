package unpack

// This file is the package's contract with pull/ and cmd/ (see
// docs/ARCHITECTURE.md): the exported types. The methods of Cache and
// Staging live in cache.go, staging.go, images.go, bundle.go and gc.go.

import (
	"time"

	"github.com/opencontainers/go-digest"
	ispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// DefaultRoot is the default cache root.
const DefaultRoot = "/run/guest-puller"

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

// BundleSpec says which bundle to make.
type BundleSpec struct {
	// ID names the bundle (the container id). It must be a safe file name:
	// letters, digits, '_', '.', '-', starting with a letter or digit, no
	// "..", at most 200 bytes.
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

// Rootfs types of a Bundle.
const (
	RootfsOverlay = "overlay"
	RootfsCopy    = "copy"
)

// Bundle is an OCI runtime bundle made from cached layers.
type Bundle struct {
	ID     string `json:"id"`
	Dir    string `json:"dir"`
	Rootfs string `json:"rootfs"`
	// RootfsType is "overlay" (cached layers under a per-container upper
	// dir) or "copy" (a flattened copy, when overlay cannot be mounted).
	RootfsType string `json:"rootfsType"`
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
	Image          string          `json:"image"`
	ManifestDigest digest.Digest   `json:"manifestDigest"`
	Layers         []digest.Digest `json:"layers"`
	// Removed is true once the bundle's image was removed or its
	// directory deleted: GC will unmount and delete it.
	Removed bool `json:"removed"`
}

// GCReport says what GC removed.
type GCReport struct {
	Bundles []string        `json:"bundles"`
	Layers  []digest.Digest `json:"layers"`
	// FreedBytes is the size of the regular files deleted: the removed
	// layers' content, and what the removed containers wrote (their upper
	// directories, or a copied rootfs).
	FreedBytes int64 `json:"freedBytes"`
}

// ApplyStats summarises what Staging.Apply did with a layer's entries.
type ApplyStats struct {
	// Entries is the number of tar entries applied.
	Entries int `json:"entries"`
	// Size is the total size of the regular files applied.
	Size int64 `json:"size"`
	// SkippedDevices lists the device nodes left out because this process
	// may not create them (not root, or root in a user namespace).
	SkippedDevices []string `json:"skippedDevices,omitempty"`
}
