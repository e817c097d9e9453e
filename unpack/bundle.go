package unpack

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"

	"github.com/guest-puller/guest-puller/internal/errdefs"
	"github.com/guest-puller/guest-puller/internal/fspath"
)

// Bundle states in a bundle record.
const (
	bundleCreating = "creating" // rootfs or config.json may be half made
	bundleReady    = "ready"
)

// bundleState is containers/<id>/bundle.json. It is written before
// anything else of the bundle exists, so a crash always leaves a record of
// what to undo.
type bundleState struct {
	BundleRecord
	State string `json:"state"`
	// CreatedDir: CreateBundle made Dir, so teardown removes it.
	CreatedDir bool      `json:"createdDir"`
	Created    time.Time `json:"created"`
	// Stale: a layer under the rootfs was removed for failing to read back
	// (VerifyLayer); the rootfs still shows it and must be mounted again
	// over the layer fetched anew.
	Stale bool `json:"stale,omitempty"`
}

func (c *Cache) readBundle(id string) (*bundleState, error) {
	var rec bundleState
	err := readJSON(filepath.Join(c.containerDir(id), bundleRecordFile), &rec)
	if isNotExist(err) {
		return nil, fmt.Errorf("bundle %s: %w", id, errdefs.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("bundle %s: %w", id, err)
	}
	return &rec, nil
}

func (c *Cache) writeBundle(rec *bundleState) error {
	if err := writeJSONAtomic(filepath.Join(c.containerDir(rec.ID), bundleRecordFile), rec); err != nil {
		return fmt.Errorf("bundle %s: %w", rec.ID, err)
	}
	return nil
}

// CreateBundle writes config.json and mounts (or copies) the rootfs.
//
// A container id names one bundle and a bundle directory holds one, and
// CreateBundle never makes room for a bundle by deleting another's data:
//
//   - the same id, directory and image (manifest) again return the bundle
//     as it is; if its rootfs was unmounted behind our back, it is mounted
//     again over the container's own upper directory, writes and all;
//   - an id whose bundle is live in another directory, or runs another
//     image, is refused with ErrAlreadyExists;
//   - a directory that exists and is not empty is refused with
//     ErrAlreadyExists: the caller makes it (empty) or lets CreateBundle;
//   - an id or directory whose earlier bundle is gone (its directory or
//     config.json deleted, its image removed, or half made by a killed
//     process) is reclaimed first, then made anew.
//
// Content that fails to read back while the bundle is made (an I/O error
// of the cache's storage: on a sealed store, a block the host changed) is
// an integrity failure that names the layer, and that layer is removed
// from the cache, so the next pull fetches it again (see unreadable).
func (c *Cache) CreateBundle(ctx context.Context, spec BundleSpec) (*Bundle, error) {
	b, err := c.createBundle(ctx, spec)
	if err != nil && errors.Is(err, unix.EIO) {
		return nil, c.unreadable(ctx, spec, err)
	}
	return b, err
}

// unreadable finds which of spec's layers failed to read back when making
// its bundle failed with err, an I/O error, and removes them from the
// cache. Which layer a failure came from is not always known where it
// happens (copy_file_range reports a failed read of the layer as a failed
// write of the copy, and an overlay's mount names no layer), so each layer
// is read back whole (VerifyLayer, which removes one that fails). The
// bundle's locks are released by now: VerifyLayer takes the layer's lock
// and, removing it, the locks of the bundles over it. If every layer reads
// back, err was the storage's failure elsewhere (the container's upper
// directory, the copy's destination) and is returned as it is.
func (c *Cache) unreadable(ctx context.Context, spec BundleSpec, err error) error {
	var bad []error
	seen := map[digest.Digest]bool{}
	for _, d := range spec.Layers {
		if seen[d] {
			continue
		}
		seen[d] = true
		release, lerr := c.LockLayer(ctx, d)
		if lerr != nil {
			break // ctx ended
		}
		verr := c.VerifyLayer(ctx, d)
		release()
		if errors.Is(verr, errdefs.ErrIntegrity) {
			bad = append(bad, verr)
		}
	}
	if len(bad) == 0 {
		return err
	}
	// One line, the first failure wrapped (errdefs.ErrIntegrity).
	rest := ""
	for _, e := range bad[1:] {
		rest += "; " + e.Error()
	}
	return fmt.Errorf("bundle %s: %w%s", spec.ID, bad[0], rest)
}

func (c *Cache) createBundle(ctx context.Context, spec BundleSpec) (*Bundle, error) {
	if err := ValidateBundleID(spec.ID); err != nil {
		return nil, err
	}
	dir, err := c.bundleDir(spec)
	if err != nil {
		return nil, err
	}
	layers := make([]string, len(spec.Layers))
	for i, d := range spec.Layers {
		if layers[i], err = layerName(d); err != nil {
			return nil, fmt.Errorf("bundle %s: %w", spec.ID, err)
		}
	}

	unlock, err := c.lockCache(ctx, unix.LOCK_SH)
	if err != nil {
		return nil, err
	}
	defer unlock()
	// The directory's lock, then the id's: one bundle is made in a
	// directory at a time, so two ids cannot both find it empty and claim
	// it. Always in this order, so two requests cannot deadlock.
	unlockDir, err := c.lockDir(ctx, dir)
	if err != nil {
		return nil, fmt.Errorf("bundle %s: %w", spec.ID, err)
	}
	defer unlockDir()
	bl, err := lock(ctx, c.bundleLock(spec.ID), unix.LOCK_EX)
	if err != nil {
		return nil, fmt.Errorf("bundle %s: %w", spec.ID, err)
	}
	defer bl.Close()

	// Under the cache lock, GC cannot remove these layers from now on.
	for i, name := range layers {
		if !c.hasLayer(name) {
			return nil, fmt.Errorf("bundle %s: layer %s: %w", spec.ID, spec.Layers[i], errdefs.ErrNotFound)
		}
	}

	old, err := c.readBundle(spec.ID)
	if err != nil && !errors.Is(err, errdefs.ErrNotFound) {
		return nil, err
	}
	if old != nil {
		if c.live(old) {
			if err := old.conflict(spec, dir); err != nil {
				return nil, fmt.Errorf("bundle %s: %w", spec.ID, err)
			}
			if old.Stale && old.RootfsType == RootfsOverlay {
				// Never serve content that failed to read: the container's
				// rootfs goes over the layer as fetched again, its own
				// writes (the upper directory) kept.
				if err := unmountAll(old.Rootfs); err != nil {
					return nil, fmt.Errorf("bundle %s: remount over a layer fetched again: %w", spec.ID, err)
				}
				old.Stale = false
			}
			if !c.intact(old) {
				if err := c.restoreRootfs(ctx, old, layers); err != nil {
					return nil, fmt.Errorf("bundle %s: remount: %w", spec.ID, err)
				}
			}
			b := old.Bundle
			return &b, nil
		}
		// Its container is gone: reclaim what it left. Its directory, if
		// another, is touched only under that directory's lock: one
		// being claimed by a new bundle right now is the claimer's, who
		// reclaims this record's part there (claimDir).
		inDir, release := true, func() {}
		if old.Dir != dir {
			var err error
			release, err = c.tryLockDir(old.Dir)
			if err != nil && !errors.Is(err, errLocked) {
				return nil, fmt.Errorf("bundle %s: %w", spec.ID, err)
			}
			if inDir = err == nil; !inDir {
				release = func() {}
			}
		}
		err := c.teardown(old.ID, old, inDir)
		release()
		if err != nil {
			return nil, fmt.Errorf("bundle %s: reclaim the earlier bundle: %w", spec.ID, err)
		}
	}

	rec := &bundleState{
		BundleRecord: BundleRecord{
			Bundle:         Bundle{ID: spec.ID, Dir: dir, Rootfs: filepath.Join(dir, rootfsDir)},
			Image:          spec.Image,
			ManifestDigest: spec.ManifestDigest,
			Layers:         slices.Clone(spec.Layers),
		},
		State:   bundleCreating,
		Created: time.Now().UTC(),
	}
	if err := c.claimDir(rec); err != nil {
		return nil, fmt.Errorf("bundle %s: %w", spec.ID, err)
	}
	if err := c.makeBundle(ctx, rec, layers, spec); err != nil {
		if terr := c.teardown(spec.ID, rec, true); terr != nil {
			c.log.Warn("cannot undo failed bundle", "bundle", spec.ID, "err", terr)
		}
		return nil, fmt.Errorf("bundle %s: %w", spec.ID, storageError(err))
	}
	b := rec.Bundle
	return &b, nil
}

// lockDir takes the lock on bundle directory dir (by its real path), and
// returns its release.
func (c *Cache) lockDir(ctx context.Context, dir string) (func(), error) {
	path := c.dirLock(dir)
	f, err := lock(ctx, path, unix.LOCK_EX)
	if err != nil {
		return nil, fmt.Errorf("bundle dir %s: %w", dir, err)
	}
	return func() { unlockAndRemove(f, path) }, nil
}

// tryLockDir is lockDir without waiting: errLocked when a bundle is being
// made in dir.
func (c *Cache) tryLockDir(dir string) (func(), error) {
	path := c.dirLock(dir)
	f, err := tryLock(path, unix.LOCK_EX)
	if err != nil {
		return nil, err
	}
	return func() { unlockAndRemove(f, path) }, nil
}

func (c *Cache) dirLock(dir string) string {
	sum := sha256.Sum256([]byte(fspath.ResolveExisting(dir)))
	return c.path(dirLocks, "dir-"+hex.EncodeToString(sum[:16])+".lock")
}

// conflict says why rec, a live bundle, is not the one spec asks for, or
// nil if it is. The image's name may be spelled differently (by tag, by
// digest): the same manifest is the same rootfs.
func (rec *bundleState) conflict(spec BundleSpec, dir string) error {
	end := fmt.Sprintf("end that container (unmount %s, delete %s) or use another container id", rec.Rootfs, rec.Dir)
	if rec.Dir != dir {
		return fmt.Errorf("%w: container id %s has a live bundle at %s; %s", errdefs.ErrAlreadyExists, rec.ID, rec.Dir, end)
	}
	if rec.ManifestDigest != spec.ManifestDigest || !slices.Equal(rec.Layers, spec.Layers) {
		return fmt.Errorf("%w: the live bundle at %s runs %s (manifest %s), not manifest %s; %s", errdefs.ErrAlreadyExists, rec.Dir, rec.Image, rec.ManifestDigest, spec.ManifestDigest, end)
	}
	return nil
}

// claimDir makes sure rec.Dir is free for a new bundle: absent, or an
// empty directory. Any other bundle recorded there is then gone (its
// config.json and rootfs were in it), and is reclaimed without touching
// the directory, which is rec's from now on. The caller holds the
// directory's lock.
func (c *Cache) claimDir(rec *bundleState) error {
	fi, err := os.Lstat(rec.Dir)
	switch {
	case isNotExist(err):
		rec.CreatedDir = true
	case err != nil:
		return err
	case !fi.IsDir():
		return fmt.Errorf("%w: bundle dir %s exists and is not a directory", errdefs.ErrAlreadyExists, rec.Dir)
	default:
		names, err := dirNames(rec.Dir)
		if err != nil {
			return err
		}
		if len(names) > 0 {
			return fmt.Errorf("%w: bundle dir %s is not empty (it holds %q); give an empty or new directory", errdefs.ErrAlreadyExists, rec.Dir, names[0])
		}
	}
	others, err := c.bundles()
	if err != nil {
		return err
	}
	for _, o := range others {
		if o.ID == rec.ID || o.Dir != rec.Dir {
			continue
		}
		if err := c.reclaimDisplaced(o.ID, rec.Dir); err != nil {
			return err
		}
	}
	return nil
}

// reclaimDisplaced removes what is left of bundle id, recorded in dir
// that another bundle is claiming, without touching dir. If id's lock is
// held, a request is making id anew elsewhere right now: it reclaims its
// old record itself, and leaves dir alone (its lock is the claimer's).
// Not waiting for it keeps two claims from waiting on each other.
func (c *Cache) reclaimDisplaced(id, dir string) error {
	bl, err := tryLock(c.bundleLock(id), unix.LOCK_EX)
	if errors.Is(err, errLocked) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("bundle %s: %w", id, err)
	}
	defer bl.Close()
	o, err := c.readBundle(id)
	if errors.Is(err, errdefs.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if o.Dir != dir {
		return nil
	}
	c.log.Info("reclaiming a bundle whose directory was reused", "bundle", id, "dir", dir)
	return c.teardown(id, o, false)
}

// restoreRootfs mounts the rootfs of rec, a live bundle whose rootfs is
// not there, again; an overlay keeps the container's upper directory.
func (c *Cache) restoreRootfs(ctx context.Context, rec *bundleState, layers []string) error {
	if err := checkMountpoint(rec.Rootfs); err != nil {
		return fmt.Errorf("%w: %w", errdefs.ErrAlreadyExists, err)
	}
	if err := os.Mkdir(rec.Rootfs, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return err
	}
	typ, err := c.makeRootfs(ctx, rec.ID, rec.Rootfs, layers, true)
	if err != nil {
		return err
	}
	rec.RootfsType = typ
	return c.writeBundle(rec)
}

// bundleDir is where spec's bundle goes: an absolute path, and inside the
// cache only at its default place.
func (c *Cache) bundleDir(spec BundleSpec) (string, error) {
	def := c.path(dirBundles, spec.ID)
	if spec.Dir == "" {
		return def, nil
	}
	dir, err := filepath.Abs(spec.Dir)
	if err != nil {
		return "", fmt.Errorf("bundle %s: dir: %w", spec.ID, err)
	}
	// Compare real paths: a symlink must not lead a bundle into the cache.
	real := fspath.ResolveExisting(dir)
	if dir != def && (fspath.Within(real, c.root) || fspath.Within(c.root, real)) {
		return "", fmt.Errorf("bundle %s: %w: bundle dir %s overlaps the cache %s", spec.ID, errdefs.ErrInvalidConfig, dir, c.root)
	}
	return dir, nil
}

func (c *Cache) makeBundle(ctx context.Context, rec *bundleState, layers []string, spec BundleSpec) error {
	if err := os.Mkdir(c.containerDir(rec.ID), 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return err
	}
	// The record goes first: from now on teardown knows what to undo.
	if err := c.writeBundle(rec); err != nil {
		return err
	}
	if err := os.MkdirAll(rec.Dir, 0o700); err != nil {
		return err
	}
	if err := os.Mkdir(rec.Rootfs, 0o755); err != nil {
		return err
	}
	typ, err := c.makeRootfs(ctx, rec.ID, rec.Rootfs, layers, false)
	if err != nil {
		return err
	}
	rec.RootfsType = typ
	if err := writeRuntimeSpec(rec.Dir, rec.Rootfs, c.containerDir(rec.ID), spec.Config); err != nil {
		return err
	}
	rec.State = bundleReady
	return c.writeBundle(rec)
}

// checkMountpoint accepts a rootfs path that is absent or an empty
// directory that is not a mount: anything else there is not ours.
func checkMountpoint(rootfs string) error {
	err := requireDir(rootfs)
	if isNotExist(err) {
		return nil
	}
	if err != nil {
		return err
	}
	if mounted, err := isMountPoint(rootfs); err != nil || mounted {
		if err == nil {
			err = fmt.Errorf("%s is already a mount point", rootfs)
		}
		return err
	}
	names, err := dirNames(rootfs)
	if err != nil {
		return err
	}
	if len(names) > 0 {
		return fmt.Errorf("%s exists and is not empty", rootfs)
	}
	return nil
}

func requireDir(path string) error {
	fi, err := os.Lstat(path)
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		return fmt.Errorf("%s is not a directory", path)
	}
	return nil
}

// makeRootfs mounts an overlay of the layers on rootfs, or copies them
// there when this system cannot mount overlay. With keepUpper, an overlay
// takes the container's existing upper directory (a remount) instead of
// an empty one.
func (c *Cache) makeRootfs(ctx context.Context, id, rootfs string, layers []string, keepUpper bool) (string, error) {
	diffs := make([]string, len(layers))
	for i, name := range layers {
		diffs[i] = filepath.Join(c.layerDir(name), layerDiffDir)
	}
	if len(diffs) == 0 {
		// An image without layers is an empty directory.
		empty := filepath.Join(c.containerDir(id), "empty")
		if err := os.Mkdir(empty, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
			return "", err
		}
		diffs = []string{empty}
	}
	if !c.forceCopy {
		err := c.mountRootfs(id, rootfs, diffs, keepUpper)
		if err == nil {
			return RootfsOverlay, nil
		}
		if !overlayUnavailable(err) {
			return "", err
		}
		c.log.InfoContext(ctx, "overlay unavailable, copying the rootfs", "bundle", id, "reason", err)
	}
	f := &flattener{dst: rootfs, ns: c.overlayNS(), rootless: c.rootless}
	if c.rootless {
		f.lock = func(ctx context.Context, i int) (func(), error) {
			if i >= len(layers) {
				return func() {}, nil // the empty stand-in for no layers
			}
			l, err := lock(ctx, c.layerLock(layers[i]), unix.LOCK_EX)
			if err != nil {
				return nil, fmt.Errorf("layer %s: %w", layers[i], err)
			}
			return func() { l.Close() }, nil
		}
	}
	if err := f.flatten(ctx, diffs); err != nil {
		return "", err
	}
	return RootfsCopy, nil
}

func (c *Cache) overlayNS() string {
	if c.userXattrs {
		return "user."
	}
	return "trusted."
}

// mountRootfs mounts the overlay of diffs (bottom first) with the
// container's upper and work directories, which stay inside the cache so
// that files copied up from decrypted layers never leave it. keepUpper
// mounts the upper directory the container already has, if any.
func (c *Cache) mountRootfs(id, rootfs string, diffs []string, keepUpper bool) error {
	upper := filepath.Join(c.containerDir(id), "upper")
	work := filepath.Join(c.containerDir(id), "work")
	lowers := slices.Clone(diffs)
	slices.Reverse(lowers)
	api, err := c.overlayAPI()
	if err != nil {
		return err
	}
	if keepUpper && requireDir(upper) == nil {
		// Overlay clears what a work directory holds when it mounts.
		if err := os.Mkdir(work, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
			return err
		}
		return mountOverlay(api, rootfs, lowers, upper, work, c.userXattrs)
	}
	for _, d := range []string{upper, work} {
		if err := removeAll(d); err != nil {
			return err
		}
		if err := os.Mkdir(d, 0o700); err != nil {
			return err
		}
	}
	// The merged root takes the upper directory's owner and mode: give it
	// the top layer's.
	top := diffs[len(diffs)-1]
	var st unix.Stat_t
	if err := unix.Lstat(top, &st); err != nil {
		return &os.PathError{Op: "lstat", Path: top, Err: err}
	}
	if !c.rootless {
		if err := os.Lchown(upper, int(st.Uid), int(st.Gid)); err != nil {
			return err
		}
	}
	if err := os.Chmod(upper, os.FileMode(st.Mode&0o777)|unixModeBits(st.Mode)); err != nil {
		return err
	}
	return mountOverlay(api, rootfs, lowers, upper, work, c.userXattrs)
}

// overlayAPI is how this kernel takes overlay layers, found out at the
// first bundle and then kept.
func (c *Cache) overlayAPI() (overlayAPI, error) {
	c.overlayOnce.Do(func() {
		if c.forceOverlay != overlayProbe {
			c.overlay = c.forceOverlay
			return
		}
		c.overlay, c.overlayErr = probeOverlay(c.path(dirLayers))
		if c.overlayErr == nil {
			c.log.Debug("overlay mounts", "api", c.overlay.String())
		}
	})
	return c.overlay, c.overlayErr
}

func unixModeBits(m uint32) os.FileMode {
	var fm os.FileMode
	if m&unix.S_ISUID != 0 {
		fm |= os.ModeSetuid
	}
	if m&unix.S_ISGID != 0 {
		fm |= os.ModeSetgid
	}
	if m&unix.S_ISVTX != 0 {
		fm |= os.ModeSticky
	}
	return fm
}

// intact reports whether rec's bundle is still all there: config.json,
// and the rootfs mounted (overlay) or present (copy).
func (c *Cache) intact(rec *bundleState) bool {
	if !c.configPresent(rec) {
		return false
	}
	fi, err := os.Lstat(rec.Rootfs)
	if err != nil || !fi.IsDir() {
		return false
	}
	mounted, err := isMountPoint(rec.Rootfs)
	if err != nil {
		return false
	}
	return mounted == (rec.RootfsType == RootfsOverlay)
}

func (c *Cache) configPresent(rec *bundleState) bool {
	if requireDir(rec.Dir) != nil {
		return false
	}
	fi, err := os.Lstat(filepath.Join(rec.Dir, configFile))
	return err == nil && fi.Mode().IsRegular()
}

// teardown unmounts and deletes bundle id; rec is its record, or nil if
// it has none. With inDir false the bundle directory is left alone: it
// belongs to another bundle now. The record goes last, so a crash midway
// leaves it for the next attempt.
func (c *Cache) teardown(id string, rec *bundleState, inDir bool) error {
	tmp, _, err := c.unmake(id, rec, inDir)
	if err != nil || tmp == "" {
		return err
	}
	if err := removeAll(tmp); err != nil {
		return fmt.Errorf("bundle %s: %w", id, err)
	}
	return nil
}

// unmake is teardown up to renaming the container's directory (record,
// upper and work) into trash/; it returns where that went, for the caller
// to delete, and the bytes of a copied rootfs it deleted.
func (c *Cache) unmake(id string, rec *bundleState, inDir bool) (trash string, freed int64, err error) {
	if rec != nil && inDir && requireDir(rec.Dir) == nil {
		if err := unmountAll(rec.Rootfs); err != nil {
			return "", 0, err
		}
		// Never delete through a mount: unmountAll succeeded, but check.
		if mounted, err := isMountPoint(rec.Rootfs); err == nil && mounted {
			return "", 0, fmt.Errorf("bundle %s: %s is still mounted", id, rec.Rootfs)
		}
		// An overlay's mount point is empty now; a copied rootfs is the
		// container's whole filesystem.
		freed = fileBytes(rec.Rootfs)
		// A crash while writing config.json leaves its temporary file.
		tmps, _ := filepath.Glob(filepath.Join(rec.Dir, ".tmp-"+configFile+"-*"))
		for _, p := range append(tmps, filepath.Join(rec.Dir, configFile), rec.Rootfs) {
			if err := removeAll(p); err != nil {
				return "", 0, fmt.Errorf("bundle %s: %w", id, err)
			}
		}
		if rec.CreatedDir {
			// Only if empty: whatever else is there is not ours.
			if err := os.Remove(rec.Dir); err != nil && !isNotExist(err) && !errors.Is(err, unix.ENOTEMPTY) && !errors.Is(err, unix.EEXIST) {
				return "", 0, fmt.Errorf("bundle %s: %w", id, err)
			}
		}
	}
	tmp, err := c.trash(c.containerDir(id))
	if err != nil {
		return "", 0, fmt.Errorf("bundle %s: %w", id, err)
	}
	return tmp, freed, nil
}

// upperIn is where a container directory that trash moved to tmp keeps
// its upper directory: what the container wrote.
func upperIn(tmp string) string { return filepath.Join(trashed(tmp), "upper") }
