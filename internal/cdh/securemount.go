package cdh

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/guest-puller/guest-puller/api/cdhpb"
	"github.com/guest-puller/guest-puller/internal/errdefs"
	"github.com/guest-puller/guest-puller/internal/fspath"
	"github.com/guest-puller/guest-puller/securemount"
)

// mounter serves SecureMountService with package securemount, the code
// of the sealed layer store; keys come through the Hub's KBS client and
// sealed secrets.
type mounter struct{ h *Hub }

func (m mounter) SecureMount(ctx context.Context, req *cdhpb.SecureMountRequest) error {
	return m.h.mountOver(ctx, req.MountPoint, func(ctx context.Context) (*securemount.Store, error) {
		return securemount.ServeCDH(ctx, securemount.CDHRequest{
			VolumeType: req.VolumeType,
			Options:    req.Options,
			Flags:      req.Flags,
			MountPoint: req.MountPoint,
		}, m.key)
	})
}

// mountOver runs mount, a SecureMount at mountPoint, and keeps the layer
// cache where the requests find it. kata-agent mounts its trusted image
// storage at image-rs's work_dir, which is the Hub's cache by default:
//
//   - A mount at the cache's root or above it hides the cache the Hub
//     opened. It runs while no request holds the cache or the Puller, and
//     then both are opened anew, on the new filesystem. It waits for the
//     requests in flight rather than refusing them: kata-agent fails the
//     pod when SecureMount fails, while a pull ends by itself, and a pull
//     cut off by a mount would write half a layer to each filesystem.
//     Requests that come meanwhile wait behind it (the semaphore is first
//     come, first served) and find the new cache. The wait is bounded by
//     the SecureMount request's own deadline.
//   - A mount inside the cache is refused: it would hide part of it.
//   - Elsewhere the mount runs alone.
func (h *Hub) mountOver(ctx context.Context, mountPoint string, mount func(context.Context) (*securemount.Store, error)) error {
	root := h.cfg.Image.Cache
	switch overlap(mountPoint, root) {
	case inside:
		return fmt.Errorf("secure mount: %w: mount_point %s is inside the layer cache %s (image.work_dir), and would hide part of it", errdefs.ErrInvalidConfig, mountPoint, root)
	case apart:
		_, err := mount(ctx)
		return err
	}
	if err := h.storage.Acquire(ctx, storageUnits); err != nil {
		return fmt.Errorf("secure mount at %s, over the layer cache: waiting for the pulls in flight: %w", mountPoint, err)
	}
	defer h.storage.Release(storageUnits)
	st, err := mount(ctx)
	if err != nil {
		return err
	}
	if st == nil || st.MountPoint == "" {
		return nil // a device, linked at the mount point: nothing is hidden
	}
	if st.Formatted && filepath.Clean(st.MountPoint) == root {
		// A new filesystem's root becomes what a new cache is.
		if err := securemount.InitCacheRoot(root); err != nil {
			return fmt.Errorf("secure mount at %s: %w", mountPoint, err)
		}
	}
	h.puller.Reset()
	if old, ok := h.cache.Reset(); ok {
		old.Close()
	}
	c, err := h.cache.Get(ctx)
	if err != nil {
		// The next request tries again.
		return fmt.Errorf("secure mount at %s: mounted, but the layer cache %s on it cannot be opened: %w", mountPoint, root, err)
	}
	h.log.Info("layer cache opened anew on the secure mount", "mount_point", mountPoint, "cache", c.Root(), "device", st.Device)
	return nil
}

type relation int

const (
	apart  relation = iota
	covers          // the mount point is the cache's root or above it
	inside          // the mount point is below the cache's root
)

// overlap says where mount point mp lies against the cache's root, as
// written and with the symlinks of what exists resolved (mount(2) follows
// them).
func overlap(mp, root string) relation {
	if !filepath.IsAbs(mp) {
		return apart // refused by securemount
	}
	mp = filepath.Clean(mp)
	forms := [][2]string{{mp, root}, {fspath.ResolveExisting(mp), fspath.ResolveExisting(root)}}
	for _, f := range forms {
		if fspath.Within(f[1], f[0]) {
			return covers
		}
	}
	for _, f := range forms {
		if fspath.Within(f[0], f[1]) {
			return inside
		}
	}
	return apart
}

// key resolves a request's key as CDH does: a sealed secret, a KBS
// resource or a local file.
func (m mounter) key(ctx context.Context, uri string) ([]byte, error) {
	switch {
	case strings.HasPrefix(uri, "sealed."):
		return m.h.unsealer.Unseal(ctx, []byte(uri))
	case strings.HasPrefix(uri, "kbs://"):
		return m.h.GetResource(ctx, uri)
	case strings.HasPrefix(uri, "file://"):
		data, err := os.ReadFile(strings.TrimPrefix(uri, "file://"))
		if err != nil {
			return nil, fmt.Errorf("%w: %w", errdefs.ErrInvalidConfig, err)
		}
		return data, nil
	}
	return nil, fmt.Errorf("%w: want sealed.…, kbs://… or file://…", errdefs.ErrInvalidConfig)
}

// mountCache seals the cache (work_dir) on image.cache_device before it is
// opened. A key from the KBS is fetched now: the one thing the Hub asks
// the KBS for at start, since no pull can run before the cache is there.
func (h *Hub) mountCache(ctx context.Context) error {
	img := h.cfg.Image
	var key []byte
	if u := img.CacheDeviceKey; u != nil {
		var err error
		if u.KBS != "" {
			key, err = h.GetResource(ctx, u.KBS)
		} else {
			key, err = os.ReadFile(u.Path)
		}
		if err != nil {
			return fmt.Errorf("image.cache_device_key %s: %w", u, err)
		}
		defer clear(key)
	}
	st, err := securemount.MountCache(ctx, img.CacheDevice, img.Cache, key)
	if err != nil {
		return err
	}
	h.log.Info("layer cache sealed", "device", st.Device, "mapper", st.Mapper, "root", img.Cache, "new", st.Formatted)
	return nil
}
