package cdh

import (
	"context"
	"fmt"
	"os"
	"strings"

	"github.com/guest-puller/guest-puller/api/cdhpb"
	"github.com/guest-puller/guest-puller/internal/errdefs"
	"github.com/guest-puller/guest-puller/securemount"
)

// mounter serves SecureMountService with package securemount, the code
// of the sealed layer store; keys come through the Hub's KBS client and
// sealed secrets.
type mounter struct{ h *Hub }

func (m mounter) SecureMount(ctx context.Context, req *cdhpb.SecureMountRequest) error {
	_, err := securemount.ServeCDH(ctx, securemount.CDHRequest{
		VolumeType: req.VolumeType,
		Options:    req.Options,
		Flags:      req.Flags,
		MountPoint: req.MountPoint,
	}, m.key)
	return err
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
