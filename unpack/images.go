package unpack

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/guest-puller/guest-puller/internal/errdefs"
)

// PutImage records (or replaces) the image record for rec.Ref.
func (c *Cache) PutImage(ctx context.Context, rec ImageRecord) error {
	if rec.Ref == "" {
		return fmt.Errorf("image record: %w: empty reference", errdefs.ErrInvalidConfig)
	}
	for _, l := range rec.Layers {
		if _, err := layerName(l.DiffID); err != nil {
			return fmt.Errorf("image %s: %w", rec.Ref, err)
		}
	}
	unlock, err := c.lockCache(ctx, unix.LOCK_SH)
	if err != nil {
		return err
	}
	defer unlock()
	if err := writeJSONAtomic(c.imagePath(rec.Ref), rec); err != nil {
		return fmt.Errorf("image %s: record: %w", rec.Ref, err)
	}
	// The record now keeps these layers from GC; the pins of the pull's
	// lease end with the pull.
	return nil
}

// RemoveImage forgets the image ref and marks its bundles removed; their
// mounts and unreferenced layers go at the next GC. An unknown ref is an
// error wrapping errdefs.ErrNotFound.
func (c *Cache) RemoveImage(ctx context.Context, ref string) error {
	unlock, err := c.lockCache(ctx, unix.LOCK_EX)
	if err != nil {
		return err
	}
	defer unlock()
	p := c.imagePath(ref)
	if err := os.Remove(p); err != nil {
		if isNotExist(err) {
			return fmt.Errorf("image %s: %w", ref, errdefs.ErrNotFound)
		}
		return fmt.Errorf("image %s: %w", ref, err)
	}
	if err := syncDir(filepath.Dir(p)); err != nil {
		return fmt.Errorf("image %s: %w", ref, err)
	}
	bundles, err := c.bundles()
	if err != nil {
		return err
	}
	for _, b := range bundles {
		if b.Image != ref || b.Removed {
			continue
		}
		b.Removed = true
		if err := c.writeBundle(b); err != nil {
			return err
		}
	}
	return nil
}

// images reads every image record.
func (c *Cache) images() ([]ImageRecord, error) {
	names, err := dirNames(c.path(dirImages))
	if err != nil {
		return nil, fmt.Errorf("cache %s: %w", c.root, err)
	}
	var recs []ImageRecord
	for _, n := range names {
		if !strings.HasSuffix(n, ".json") || strings.HasPrefix(n, ".") {
			continue
		}
		var rec ImageRecord
		if err := readJSON(c.path(dirImages, n), &rec); err != nil {
			return nil, fmt.Errorf("image record: %w", err)
		}
		recs = append(recs, rec)
	}
	return recs, nil
}

// bundles reads every bundle record.
func (c *Cache) bundles() ([]*bundleState, error) {
	ids, err := dirNames(c.path(dirContainers))
	if err != nil {
		return nil, fmt.Errorf("cache %s: %w", c.root, err)
	}
	var recs []*bundleState
	for _, id := range ids {
		if ValidateBundleID(id) != nil {
			continue
		}
		rec, err := c.readBundle(id)
		if err != nil {
			if isNotFound(err) {
				continue
			}
			return nil, err
		}
		recs = append(recs, rec)
	}
	return recs, nil
}
