package unpack

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"
)

func isNotFound(err error) bool { return errors.Is(err, ErrNotFound) }

// List returns the cache's images, layers and bundles.
func (c *Cache) List(ctx context.Context) (*Listing, error) {
	unlock, err := c.lockCache(ctx, unix.LOCK_SH)
	if err != nil {
		return nil, err
	}
	defer unlock()
	images, err := c.images()
	if err != nil {
		return nil, err
	}
	bundles, err := c.bundles()
	if err != nil {
		return nil, err
	}
	l := &Listing{Images: images, Layers: []LayerInfo{}, Bundles: []BundleRecord{}}
	if l.Images == nil {
		l.Images = []ImageRecord{}
	}
	for _, b := range bundles {
		r := b.BundleRecord
		r.Removed = b.Removed || !c.configPresent(b)
		if b.State != bundleReady {
			// Being made right now, unless its maker was killed.
			r.Removed = !c.bundleBusy(b.ID)
		}
		l.Bundles = append(l.Bundles, r)
	}
	refs := c.layerRefs(images, bundles)
	layers, err := c.layers()
	if err != nil {
		return nil, err
	}
	for _, m := range layers {
		l.Layers = append(l.Layers, LayerInfo{DiffID: m.DiffID, Size: m.Size, Refs: refs[m.DiffID]})
	}
	return l, nil
}

// bundleBusy reports whether a process holds the bundle's lock.
func (c *Cache) bundleBusy(id string) bool {
	f, err := tryLock(c.bundleLock(id), unix.LOCK_EX)
	if err != nil {
		return errors.Is(err, errLocked)
	}
	f.Close()
	return false
}

// live reports whether a bundle is in use: made, its image not removed,
// its bundle directory and config.json still there.
func (c *Cache) live(b *bundleState) bool {
	return b.State == bundleReady && !b.Removed && c.configPresent(b)
}

// layerRefs counts, per diff_id, the image records and live bundles that
// use it.
func (c *Cache) layerRefs(images []ImageRecord, bundles []*bundleState) map[digest.Digest]int {
	refs := map[digest.Digest]int{}
	for _, img := range images {
		seen := map[digest.Digest]bool{}
		for _, l := range img.Layers {
			if !seen[l.DiffID] {
				seen[l.DiffID] = true
				refs[l.DiffID]++
			}
		}
	}
	for _, b := range bundles {
		if !c.live(b) {
			continue
		}
		for i, d := range b.Layers {
			if !slices.Contains(b.Layers[:i], d) {
				refs[d]++
			}
		}
	}
	return refs
}

// layers reads every committed layer's metadata.
func (c *Cache) layers() ([]layerMeta, error) {
	names, err := dirNames(c.path(dirLayers))
	if err != nil {
		return nil, fmt.Errorf("cache %s: %w", c.root, err)
	}
	var metas []layerMeta
	for _, n := range names {
		if strings.HasPrefix(n, ".") {
			continue
		}
		var m layerMeta
		if err := readJSON(filepath.Join(c.layerDir(n), layerMetaFile), &m); err != nil {
			return nil, fmt.Errorf("layer %s: %w", n, err)
		}
		metas = append(metas, m)
	}
	return metas, nil
}

// GC unmounts and removes the bundles of removed containers, then removes
// layers no image record or live bundle references.
func (c *Cache) GC(ctx context.Context) (*GCReport, error) {
	unlock, err := c.lockCache(ctx, unix.LOCK_EX)
	if err != nil {
		return nil, err
	}
	defer unlock()
	report := &GCReport{Bundles: []string{}, Layers: []digest.Digest{}}

	bundles, err := c.bundles()
	if err != nil {
		return nil, err
	}
	var kept []*bundleState
	for _, b := range bundles {
		if err := ctx.Err(); err != nil {
			return report, err
		}
		// Under the exclusive lock nobody is making a bundle, so one not
		// ready was left by a killed process.
		if c.live(b) {
			kept = append(kept, b)
			continue
		}
		if err := c.teardown(b.ID, b, true); err != nil {
			return report, err
		}
		report.Bundles = append(report.Bundles, b.ID)
	}

	images, err := c.images()
	if err != nil {
		return report, err
	}
	refs := c.layerRefs(images, kept)
	layers, err := c.layers()
	if err != nil {
		return report, err
	}
	for _, m := range layers {
		if err := ctx.Err(); err != nil {
			return report, err
		}
		if refs[m.DiffID] > 0 {
			continue
		}
		removed, err := c.removeLayer(m.DiffID)
		if err != nil {
			return report, err
		}
		if removed {
			report.Layers = append(report.Layers, m.DiffID)
			report.FreedBytes += m.Size
		}
	}
	if err := c.removeStaleStaging(); err != nil {
		return report, err
	}
	if err := c.pruneLocks(); err != nil {
		return report, err
	}
	return report, c.emptyTrash()
}

// pruneLocks removes lock files that guard nothing any more (layers that
// were never committed or are gone, bundles and staging directories that
// are gone) and that nobody holds.
func (c *Cache) pruneLocks() error {
	files, err := dirNames(c.path(dirLocks))
	if err != nil {
		return fmt.Errorf("cache %s: %w", c.root, err)
	}
	for _, file := range files {
		base, isLock := strings.CutSuffix(file, ".lock")
		kind, name, ok := strings.Cut(base, "-")
		if !isLock || !ok {
			continue
		}
		var guarded string
		switch kind {
		case "dir":
			// Held only while a bundle is made (under the shared cache
			// lock, which excludes GC) and removed after: one found here
			// was left by a killed process and guards nothing.
		case "layer", "pin":
			guarded = c.layerDir(name)
		case "bundle":
			guarded = c.containerDir(name)
		case "staging":
			guarded = c.path(dirStaging, name)
		default:
			continue
		}
		gone := func() bool {
			if guarded == "" {
				return true
			}
			_, err := os.Lstat(guarded)
			return isNotExist(err)
		}
		if !gone() {
			continue
		}
		p := c.path(dirLocks, file)
		f, err := tryLock(p, unix.LOCK_EX)
		if errors.Is(err, errLocked) {
			continue
		}
		if err != nil {
			return err
		}
		// Checked again under the lock: a holder may have just made it.
		if gone() {
			unlockAndRemove(f, p)
		} else {
			f.Close()
		}
	}
	return nil
}

// removeLayer removes an unreferenced layer unless a process has it
// pinned (it is about to record an image using it) or locked.
func (c *Cache) removeLayer(d digest.Digest) (bool, error) {
	name, err := layerName(d)
	if err != nil {
		return false, err
	}
	pinPath, lockPath := c.pinLock(name), c.layerLock(name)
	pin, err := tryLock(pinPath, unix.LOCK_EX)
	if errors.Is(err, errLocked) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("layer %s: %w", d, err)
	}
	lk, err := tryLock(lockPath, unix.LOCK_EX)
	if errors.Is(err, errLocked) {
		pin.Close()
		return false, nil
	}
	if err != nil {
		pin.Close()
		return false, fmt.Errorf("layer %s: %w", d, err)
	}
	// Hold the locks only for the rename; the delete can take a while.
	tmp, err := c.trash(c.layerDir(name))
	unlockAndRemove(lk, lockPath)
	unlockAndRemove(pin, pinPath)
	if err != nil {
		return false, fmt.Errorf("layer %s: remove: %w", d, err)
	}
	if tmp != "" {
		if err := removeAll(tmp); err != nil {
			return false, fmt.Errorf("layer %s: remove: %w", d, err)
		}
	}
	return true, nil
}
