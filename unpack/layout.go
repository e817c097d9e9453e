package unpack

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/opencontainers/go-digest"

	"github.com/guest-puller/guest-puller/internal/errdefs"
	"github.com/guest-puller/guest-puller/internal/untrusted"
)

// The on-disk layout under the cache root; doc.go describes it and it is
// kept stable across versions (layout.json carries its version).
const (
	dirLocks      = "locks"
	dirStaging    = "staging"
	dirLayers     = "layers"
	dirImages     = "images"
	dirBundles    = "bundles"
	dirContainers = "containers"
	dirTrash      = "trash"

	layoutFile    = "layout.json"
	layoutVersion = 1

	layerDiffDir  = "diff"
	layerMetaFile = "layer.json"

	bundleRecordFile = "bundle.json"
	rootfsDir        = "rootfs"
	configFile       = "config.json"
)

var cacheDirs = []string{dirLocks, dirStaging, dirLayers, dirImages, dirBundles, dirContainers, dirTrash}

// layout is <root>/layout.json. Layers record overlay whiteouts and
// opaque directories in the xattr namespace a cache's creator could
// write: "trusted" as root, "user" otherwise; every later user of the
// cache must read (and mount) them the same way.
type layout struct {
	Version       int    `json:"version"`
	OverlayXattrs string `json:"overlayXattrs"`
}

const (
	xattrsTrusted = "trusted"
	xattrsUser    = "user"
)

func (c *Cache) path(elem ...string) string {
	return filepath.Join(append([]string{c.root}, elem...)...)
}

// layerName is the directory name of a layer: the digest's encoded part.
// The full digest is in its layer.json.
func layerName(d digest.Digest) (string, error) {
	if err := d.Validate(); err != nil {
		return "", fmt.Errorf("diff_id %s: %w: %w", untrusted.Quote(string(d)), errdefs.ErrIntegrity, err)
	}
	return d.Encoded(), nil
}

func (c *Cache) layerDir(name string) string  { return c.path(dirLayers, name) }
func (c *Cache) layerLock(name string) string { return c.path(dirLocks, "layer-"+name+".lock") }
func (c *Cache) pinLock(name string) string   { return c.path(dirLocks, "pin-"+name+".lock") }
func (c *Cache) cacheLock() string            { return c.path(dirLocks, "cache.lock") }

func (c *Cache) stagingLock(name string) string { return c.path(dirLocks, "staging-"+name+".lock") }

func (c *Cache) bundleLock(id string) string { return c.path(dirLocks, "bundle-"+id+".lock") }

func (c *Cache) containerDir(id string) string { return c.path(dirContainers, id) }

// imagePath names an image record by the SHA-256 of its reference, which
// holds characters ('/', ':', '@') a file name cannot.
func (c *Cache) imagePath(ref string) string {
	sum := sha256.Sum256([]byte(ref))
	return c.path(dirImages, hex.EncodeToString(sum[:])+".json")
}

var bundleIDPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,199}$`)

// ValidateBundleID says whether id can name a bundle: a container id
// usable as one path element.
func ValidateBundleID(id string) error {
	if !bundleIDPattern.MatchString(id) || strings.Contains(id, "..") {
		return fmt.Errorf("bundle id %s: %w: want 1-200 of [A-Za-z0-9_.-], starting with a letter or digit, without \"..\"", untrusted.Quote(id), errdefs.ErrInvalidConfig)
	}
	return nil
}

func isNotExist(err error) bool { return errors.Is(err, fs.ErrNotExist) }
