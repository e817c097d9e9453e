package unpack

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"

	"github.com/guest-puller/guest-puller/internal/errdefs"
)

// Cache is the guest-local layer cache: committed layers keyed by diff_id,
// image records, and bundles. Several processes may share one root; a
// Cache is safe for concurrent use.
type Cache struct {
	root string
	// userXattrs: layers mark whiteouts in user.overlay.* (see layout).
	userXattrs bool
	// rootless: owners cannot be set; umoci keeps them in an xattr.
	rootless bool
	log      *slog.Logger

	// mknod caches whether this process may create device nodes.
	mknodOnce sync.Once
	mknodOK   bool

	// forceCopy makes CreateBundle skip overlay, so tests can check the
	// copy fallback on a machine that has overlay.
	forceCopy bool

	// maxSparse bounds the size sparse files of one layer may declare
	// (see Staging.Apply); tests lower it.
	maxSparse int64

	// overlay is how this kernel takes an overlay's layers, probed once
	// (overlayAPIOf); forceOverlay, when set, replaces the probe, so tests
	// can check the classic mount(2) path on a kernel with lowerdir+.
	overlayOnce  sync.Once
	overlay      overlayAPI
	overlayErr   error
	forceOverlay overlayAPI

	mu     sync.Mutex
	pins   map[string]*pin // layer name -> this process's shared pin lock
	closed bool
	// trashWarned: trash entries whose deletion failed, said once.
	trashWarned map[string]bool
}

// Open opens (creating if needed, mode 0700) the cache at root, and removes
// staging directories and half-made bundles left by killed processes.
func Open(ctx context.Context, root string) (*Cache, error) {
	if root == "" {
		return nil, fmt.Errorf("cache root: %w: empty path", errdefs.ErrInvalidConfig)
	}
	abs, err := filepath.Abs(root)
	if err != nil {
		return nil, fmt.Errorf("cache root %s: %w", root, err)
	}
	if err := os.MkdirAll(abs, 0o700); err != nil {
		return nil, fmt.Errorf("create cache %s: %w", abs, err)
	}
	// Resolve once so that mount sources and "is this inside the cache"
	// checks see the real path.
	if abs, err = filepath.EvalSymlinks(abs); err != nil {
		return nil, fmt.Errorf("cache root %s: %w", root, err)
	}
	if err := makePrivate(abs); err != nil {
		return nil, err
	}
	for _, d := range cacheDirs {
		if err := os.Mkdir(filepath.Join(abs, d), 0o700); err != nil && !errors.Is(err, os.ErrExist) {
			return nil, fmt.Errorf("create cache %s: %w", abs, err)
		}
	}

	c := &Cache{
		root:        abs,
		rootless:    os.Geteuid() != 0,
		log:         slog.Default().With("cache", abs),
		pins:        map[string]*pin{},
		trashWarned: map[string]bool{},
	}

	unlock, err := c.lockCache(ctx, unix.LOCK_EX)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if err := c.loadLayout(); err != nil {
		return nil, err
	}
	if err := c.recover(ctx); err != nil {
		return nil, err
	}
	return c, nil
}

// makePrivate makes sure others cannot read the cache root: decrypted
// layers live below it. A directory that is empty or already a cache is
// made 0700; any other directory open to others is refused rather than
// changed, since a mistyped --cache (say /tmp) must not alter a shared
// directory.
func makePrivate(root string) error {
	var st unix.Stat_t
	if err := unix.Stat(root, &st); err != nil {
		return &os.PathError{Op: "stat", Path: root, Err: err}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return fmt.Errorf("cache root %s: %w: not a directory", root, errdefs.ErrInvalidConfig)
	}
	if st.Uid != uint32(os.Geteuid()) {
		return fmt.Errorf("cache root %s: %w: owned by uid %d, not by this user (uid %d)", root, errdefs.ErrInvalidConfig, st.Uid, os.Geteuid())
	}
	if st.Mode&0o077 == 0 {
		return nil
	}
	names, err := dirNames(root)
	if err != nil {
		return fmt.Errorf("cache root %s: %w", root, err)
	}
	if len(names) > 0 && !slices.Contains(names, layoutFile) {
		return fmt.Errorf("cache root %s: %w: an existing directory with mode %04o that is not a cache; want an empty or 0700 directory", root, errdefs.ErrInvalidConfig, st.Mode&0o7777)
	}
	return os.Chmod(root, 0o700)
}

// Close releases the cache's resources (not its mounts).
func (c *Cache) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	for name, p := range c.pins {
		p.f.Close()
		delete(c.pins, name)
	}
	c.closed = true
	return nil
}

// RemoveIfEmpty removes the whole cache if it holds nothing a pull made: no
// layer, image record, bundle or container, and no staging directory in
// use. It reports whether it removed it. A command that created the cache
// and then failed calls it, so that a mistyped image or a refused one
// leaves no new directory behind; call Close after it.
func (c *Cache) RemoveIfEmpty(ctx context.Context) (bool, error) {
	unlock, err := c.lockCache(ctx, unix.LOCK_EX)
	if err != nil {
		return false, err
	}
	defer unlock()
	for _, d := range []string{dirStaging, dirLayers, dirImages, dirBundles, dirContainers, dirTrash} {
		names, err := dirNames(c.path(d))
		if err != nil {
			return false, fmt.Errorf("cache %s: %w", c.root, err)
		}
		if len(names) > 0 {
			return false, nil
		}
	}
	if err := os.RemoveAll(c.root); err != nil {
		return false, fmt.Errorf("remove cache %s: %w", c.root, err)
	}
	return true, nil
}

// Root is the cache's root directory.
func (c *Cache) Root() string { return c.root }

// HasLayer reports whether the layer with this diff_id is committed. It
// pins nothing: a caller that goes on to use the layer looks it up through
// a Lease.
func (c *Cache) HasLayer(diffID digest.Digest) bool {
	name, err := layerName(diffID)
	if err != nil {
		return false
	}
	return c.hasLayer(name)
}

func (c *Cache) hasLayer(name string) bool {
	fi, err := os.Lstat(filepath.Join(c.layerDir(name), layerMetaFile))
	return err == nil && fi.Mode().IsRegular()
}

// LockLayer takes the exclusive lock on one layer, shared by every process
// using the cache, so a layer is fetched and applied once at a time. After
// taking it, look the layer up again: another process may have committed
// it.
func (c *Cache) LockLayer(ctx context.Context, diffID digest.Digest) (release func(), err error) {
	name, err := layerName(diffID)
	if err != nil {
		return nil, err
	}
	f, err := lock(ctx, c.layerLock(name), unix.LOCK_EX)
	if err != nil {
		return nil, fmt.Errorf("layer %s: %w", diffID, err)
	}
	return sync.OnceFunc(func() { f.Close() }), nil
}

// lockCache takes the cache-wide lock: shared for operations that add to
// the cache, exclusive for those that remove from it (GC, RemoveImage,
// Open's recovery).
func (c *Cache) lockCache(ctx context.Context, how int) (unlock func(), err error) {
	f, err := lock(ctx, c.cacheLock(), how)
	if err != nil {
		return nil, fmt.Errorf("cache %s: %w", c.root, err)
	}
	return func() { f.Close() }, nil
}

func (c *Cache) loadLayout() error {
	p := c.path(layoutFile)
	var l layout
	err := readJSON(p, &l)
	switch {
	case isNotExist(err):
		l = layout{Version: layoutVersion, OverlayXattrs: xattrsTrusted}
		if c.rootless {
			l.OverlayXattrs = xattrsUser
		}
		if err := writeJSONAtomic(p, l); err != nil {
			return fmt.Errorf("cache %s: write layout: %w", c.root, err)
		}
	case err != nil:
		return fmt.Errorf("cache %s: %w", c.root, err)
	}
	if l.Version != layoutVersion || (l.OverlayXattrs != xattrsTrusted && l.OverlayXattrs != xattrsUser) {
		return fmt.Errorf("cache %s: %w: layout version %d with %q xattrs is not supported", c.root, errdefs.ErrInvalidConfig, l.Version, l.OverlayXattrs)
	}
	c.userXattrs = l.OverlayXattrs == xattrsUser
	return nil
}

// recover removes what killed processes left behind. The caller holds the
// cache lock exclusively, so no bundle is being made right now.
func (c *Cache) recover(ctx context.Context) error {
	if err := c.removeStaleStaging(); err != nil {
		return err
	}
	ids, err := dirNames(c.path(dirContainers))
	if err != nil {
		return fmt.Errorf("cache %s: %w", c.root, err)
	}
	for _, id := range ids {
		if err := ctx.Err(); err != nil {
			return err
		}
		if ValidateBundleID(id) != nil {
			continue
		}
		rec, err := c.readBundle(id)
		if err != nil && !errors.Is(err, errdefs.ErrNotFound) {
			return err
		}
		if rec != nil && rec.State == bundleReady {
			continue
		}
		c.log.Info("removing half-made bundle", "bundle", id)
		if err := c.teardown(id, rec, true); err != nil {
			return err
		}
	}
	return c.emptyTrash()
}

// removeStaleStaging removes staging directories whose lock is free: their
// owner is gone (a live owner holds its lock until Commit or Abort).
func (c *Cache) removeStaleStaging() error {
	names, err := dirNames(c.path(dirStaging))
	if err != nil {
		return fmt.Errorf("cache %s: %w", c.root, err)
	}
	for _, name := range names {
		lockPath := c.stagingLock(name)
		f, err := tryLock(lockPath, unix.LOCK_EX)
		if errors.Is(err, errLocked) {
			continue
		}
		if err != nil {
			return fmt.Errorf("staging %s: %w", name, err)
		}
		c.log.Info("removing stale staging directory", "staging", name)
		err = removeAll(c.path(dirStaging, name))
		unlockAndRemove(f, lockPath)
		if err != nil {
			return fmt.Errorf("remove stale staging %s: %w", name, err)
		}
	}
	return nil
}

// trash renames path into trash/ and returns where it went, for the
// caller to delete; "" if path did not exist. An interrupted delete is
// finished by the next Open or GC.
func (c *Cache) trash(path string) (string, error) {
	tmp, err := os.MkdirTemp(c.path(dirTrash), filepath.Base(path)+"-")
	if err != nil {
		return "", err
	}
	if err := os.Rename(path, trashed(tmp)); err != nil {
		os.Remove(tmp)
		if isNotExist(err) {
			return "", nil
		}
		return "", err
	}
	return tmp, nil
}

// trashed is where trash moved a path to, in the directory it returned.
func trashed(tmp string) string { return filepath.Join(tmp, "x") }

// emptyTrash deletes what trash/ holds. What cannot be deleted is logged
// and left for the next try, and stops nothing: trash is out of every
// reader's sight, and a layer removed for failing to read back may well
// fail to delete too (its directories unreadable), which must not keep
// the cache from opening, or GC from collecting the rest.
func (c *Cache) emptyTrash() error {
	names, err := dirNames(c.path(dirTrash))
	if err != nil {
		return err
	}
	for _, name := range names {
		if err := removeAll(c.path(dirTrash, name)); err != nil {
			// Said once per process: GC comes back here every interval.
			c.mu.Lock()
			said := c.trashWarned[name]
			c.trashWarned[name] = true
			c.mu.Unlock()
			if !said {
				c.log.Warn("cannot delete from trash; will try again", "entry", name, "err", err)
			}
		}
	}
	return nil
}

// canMknod finds out, once, whether device nodes can be created here:
// euid 0 is not enough (user namespaces, dropped CAP_MKNOD). dir is a
// directory the caller owns (its staging directory).
func (c *Cache) canMknod(dir string) bool {
	c.mknodOnce.Do(func() {
		// The probe is /dev/null's numbers: a real device, unlike the 0:0
		// whiteout that unprivileged users may create.
		p := filepath.Join(dir, ".mknod-probe")
		if err := unix.Mknod(p, unix.S_IFCHR|0o600, int(unix.Mkdev(1, 3))); err == nil {
			c.mknodOK = true
			os.Remove(p)
		}
	})
	return c.mknodOK
}
