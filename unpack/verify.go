package unpack

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"

	"github.com/guest-puller/guest-puller/internal/errdefs"
	"github.com/guest-puller/guest-puller/internal/untrusted"
)

// VerifyLayer reads back all of a committed layer: every directory, every
// symlink and every file's content. It is how a layer kept on storage the
// host provides (a sealed store, see package securemount) is checked
// before it is reused: there a block the host changed reads back as an I/O
// error, never as other content, so reading everything checks everything.
// A layer that fails to read is removed from the cache, so the next pull
// fetches it again, and the error wraps errdefs.ErrIntegrity. The caller
// holds LockLayer.
func (c *Cache) VerifyLayer(ctx context.Context, diffID digest.Digest) error {
	name, err := layerName(diffID)
	if err != nil {
		return err
	}
	buf := make([]byte, 1<<20)
	root := filepath.Join(c.layerDir(name), layerDiffDir)
	err = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		switch {
		case d.Type().IsRegular():
			return readAll(path, buf)
		case d.Type()&fs.ModeSymlink != 0:
			_, err := os.Readlink(path)
			return err
		}
		return nil
	})
	if err == nil {
		_, err = os.ReadFile(filepath.Join(c.layerDir(name), layerMetaFile))
	}
	if err == nil {
		return nil
	}
	if !errors.Is(err, unix.EIO) {
		return fmt.Errorf("layer %s: verify: %w", diffID, err)
	}
	outcome := "it is removed from the cache"
	removed, rerr := c.evictLayer(ctx, name, diffID)
	switch {
	case !removed:
		// Its own directory may be what fails (moving it rewrites its
		// ".."): the message must not say it is gone.
		outcome = fmt.Sprintf("it could not be removed from the cache (%s): the cache's storage is damaged", untrusted.Error(rerr))
	case rerr != nil:
		c.log.Warn("a layer that fails to read is removed, but not all bundles over it are marked to be mounted again", "layer", diffID, "err", rerr)
	}
	return fmt.Errorf("layer %s: %w: the cache's storage failed to read it back (%s); %s", diffID, errdefs.ErrIntegrity, untrusted.Error(err), outcome)
}

// readAll reads a file to its end.
func readAll(path string, buf []byte) error {
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NOFOLLOW|unix.O_NOATIME, 0)
	if errors.Is(err, unix.EPERM) {
		// O_NOATIME is for the file's owner (or root) only.
		f, err = os.OpenFile(path, os.O_RDONLY|unix.O_NOFOLLOW, 0)
	}
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = io.CopyBuffer(io.Discard, onlyReader{f}, buf)
	return err
}

// onlyReader hides a file's WriterTo, so io.CopyBuffer uses the buffer.
type onlyReader struct{ io.Reader }

// evictLayer takes a broken layer out of the cache at once, whoever pins
// it (pins keep GC away from layers in use; this one is unusable): content
// that failed to read must not be served again. The bundles over it are
// marked stale, so the next CreateBundle of theirs mounts them over the
// layer fetched again. The caller holds the layer's lock. removed says
// whether the layer is out of the cache; err, what else went wrong.
func (c *Cache) evictLayer(ctx context.Context, name string, diffID digest.Digest) (removed bool, err error) {
	t, err := c.trash(c.layerDir(name))
	if err != nil {
		return false, err
	}
	if t != "" {
		// Out of sight now. What fails to read may fail to delete too
		// (its directories unreadable): then it stays in trash/, and the
		// next Open or GC tries again.
		if err := removeAll(t); err != nil {
			c.log.Debug("cannot delete a removed layer yet", "layer", diffID, "err", err)
		}
	}
	bundles, err := c.bundles()
	if err != nil {
		return true, err
	}
	var errs []error
	for _, b := range bundles {
		if !slices.Contains(b.Layers, diffID) || b.Stale {
			continue
		}
		errs = append(errs, c.markStale(ctx, b.ID, diffID))
	}
	return true, errors.Join(errs...)
}

// markStale marks bundle id stale, under its lock.
func (c *Cache) markStale(ctx context.Context, id string, diffID digest.Digest) error {
	bl, err := lock(ctx, c.bundleLock(id), unix.LOCK_EX)
	if err != nil {
		return fmt.Errorf("bundle %s: %w", id, err)
	}
	defer bl.Close()
	rec, err := c.readBundle(id)
	if err != nil || !slices.Contains(rec.Layers, diffID) {
		return nil
	}
	rec.Stale = true
	return c.writeBundle(rec)
}

// storageError makes an I/O error of the cache's own storage an integrity
// failure: on a sealed store that is what a block the host changed reads
// back as, and on any storage it means the content cannot be trusted.
func storageError(err error) error {
	if errors.Is(err, unix.EIO) && !errors.Is(err, errdefs.ErrIntegrity) {
		return fmt.Errorf("%w: the cache's storage failed: %w", errdefs.ErrIntegrity, err)
	}
	return err
}
