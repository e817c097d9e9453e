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

	"github.com/guest-puller/guest-puller/internal/errdefs"
)

func isNotFound(err error) bool { return errors.Is(err, errdefs.ErrNotFound) }

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
	displaced := displacedBundles(bundles)
	var current []*bundleState
	for _, b := range bundles {
		r := b.BundleRecord
		r.Removed = b.Removed || displaced[b.ID] || !c.configPresent(b)
		if b.State != bundleReady {
			// Being made right now, unless its maker was killed.
			r.Removed = !c.bundleBusy(b.ID)
		}
		l.Bundles = append(l.Bundles, r)
		if !displaced[b.ID] {
			current = append(current, b)
		}
	}
	refs := c.layerRefs(images, current, false)
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

// displacedBundles finds the records that share a bundle directory with
// a newer one. A directory is claimed only when empty (CreateBundle), so
// the newer record's bundle is the one there: the older ones are gone,
// and their teardown must not touch the directory. CreateBundle reclaims
// them as it claims the directory; one it could not (its id was being
// made elsewhere at that moment, by a request that then failed) is
// found here.
func displacedBundles(bundles []*bundleState) map[string]bool {
	newest := map[string]*bundleState{}
	for _, b := range bundles {
		if n := newest[b.Dir]; n == nil || b.Created.After(n.Created) {
			newest[b.Dir] = b
		}
	}
	out := map[string]bool{}
	for _, b := range bundles {
		if newest[b.Dir] != b {
			out[b.ID] = true
		}
	}
	return out
}

// layerRefs counts, per diff_id, the image records and the bundles that
// use it: the live ones, or with all, every bundle given.
func (c *Cache) layerRefs(images []ImageRecord, bundles []*bundleState, all bool) map[digest.Digest]int {
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
		if !all && !c.live(b) {
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

// GC unmounts and removes the bundles of removed containers (image
// removed, bundle directory or config.json deleted, half made), with their
// upper directories, then removes layers no image record or live bundle
// references. A live bundle, and every layer it uses, stays. The report's
// FreedBytes counts both: the layers' files, and what the removed
// containers wrote (their upper directories, or their copied rootfs).
func (c *Cache) GC(ctx context.Context) (*GCReport, error) {
	report := &GCReport{Bundles: []string{}, Layers: []digest.Digest{}}
	trash, bundleTrash, err := c.collect(ctx, report)
	// Deleting can take a while (a large layer is many files), so it runs
	// without the cache lock and pulls go on meanwhile: what collect
	// renamed into trash/ is out of every reader's sight already, and a
	// crash midway leaves it for the next Open or GC. A container's upper
	// directory is measured here too, out of the lock.
	for _, t := range bundleTrash {
		report.FreedBytes += fileBytes(upperIn(t))
	}
	for _, t := range append(bundleTrash, trash...) {
		if rerr := removeAll(t); rerr != nil && err == nil {
			err = fmt.Errorf("gc: %w", rerr)
		}
	}
	return report, err
}

// collect is GC's part under the exclusive cache lock: it renames what
// goes into trash/ and returns those trash directories, the removed
// bundles' apart.
func (c *Cache) collect(ctx context.Context, report *GCReport) (trash, bundleTrash []string, err error) {
	unlock, err := c.lockCache(ctx, unix.LOCK_EX)
	if err != nil {
		return nil, nil, err
	}
	defer unlock()
	// First what killed processes (or an interrupted GC) left in trash/.
	if err := c.emptyTrash(); err != nil {
		return nil, nil, err
	}

	bundles, err := c.bundles()
	if err != nil {
		return nil, nil, err
	}
	// One bundle or layer that cannot go does not keep the others: its
	// error is reported, and a bundle that stays keeps its layers.
	var errs []error
	var kept []*bundleState
	displaced := displacedBundles(bundles)
	for _, b := range bundles {
		if err := ctx.Err(); err != nil {
			return trash, bundleTrash, err
		}
		// Under the exclusive lock nobody is making a bundle, so one not
		// ready was left by a killed process.
		if !displaced[b.ID] && c.live(b) {
			kept = append(kept, b)
			continue
		}
		t, freed, err := c.unmake(b.ID, b, !displaced[b.ID])
		if err != nil {
			errs = append(errs, err)
			kept = append(kept, b)
			continue
		}
		bundleTrash = appendNonEmpty(bundleTrash, t)
		report.FreedBytes += freed
		report.Bundles = append(report.Bundles, b.ID)
	}

	images, err := c.images()
	if err != nil {
		return trash, bundleTrash, err
	}
	refs := c.layerRefs(images, kept, true)
	layers, err := c.layers()
	if err != nil {
		return trash, bundleTrash, err
	}
	for _, m := range layers {
		if err := ctx.Err(); err != nil {
			return trash, bundleTrash, err
		}
		if refs[m.DiffID] > 0 {
			continue
		}
		t, removed, err := c.removeLayer(m.DiffID)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		trash = appendNonEmpty(trash, t)
		if removed {
			report.Layers = append(report.Layers, m.DiffID)
			report.FreedBytes += m.Size
		}
	}
	if err := c.removeStaleStaging(); err != nil {
		errs = append(errs, err)
	}
	if err := c.pruneLocks(); err != nil {
		errs = append(errs, err)
	}
	return trash, bundleTrash, errors.Join(errs...)
}

func appendNonEmpty(list []string, s string) []string {
	if s == "" {
		return list
	}
	return append(list, s)
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

// removeLayer renames an unreferenced layer into trash/, unless a
// process has it pinned (it is about to record an image using it) or
// locked, and returns the trash directory for the caller to delete.
func (c *Cache) removeLayer(d digest.Digest) (trash string, removed bool, err error) {
	name, err := layerName(d)
	if err != nil {
		return "", false, err
	}
	pinPath, lockPath := c.pinLock(name), c.layerLock(name)
	pin, err := tryLock(pinPath, unix.LOCK_EX)
	if errors.Is(err, errLocked) {
		return "", false, nil
	}
	if err != nil {
		return "", false, fmt.Errorf("layer %s: %w", d, err)
	}
	lk, err := tryLock(lockPath, unix.LOCK_EX)
	if errors.Is(err, errLocked) {
		pin.Close()
		return "", false, nil
	}
	if err != nil {
		pin.Close()
		return "", false, fmt.Errorf("layer %s: %w", d, err)
	}
	tmp, err := c.trash(c.layerDir(name))
	unlockAndRemove(lk, lockPath)
	unlockAndRemove(pin, pinPath)
	if err != nil {
		return "", false, fmt.Errorf("layer %s: remove: %w", d, err)
	}
	return tmp, true, nil
}
