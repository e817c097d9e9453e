package main

import (
	"context"
	"fmt"
	"io"
	"text/tabwriter"

	"github.com/guest-puller/guest-puller/internal/config"
	"github.com/guest-puller/guest-puller/internal/errdefs"
	"github.com/guest-puller/guest-puller/internal/refname"
	"github.com/guest-puller/guest-puller/securemount"
	"github.com/guest-puller/guest-puller/unpack"
)

// openCache opens the cache a cache command works on: --cache, else the
// config file's "cache", else the default root.
func openCache(ctx context.Context, s *pullSettings) (*unpack.Cache, error) {
	cfg, err := s.config()
	if err != nil {
		return nil, err
	}
	return config.OpenCache(ctx, cfg)
}

func cacheSetting(name string) bool { return name == "cache" }

func cmdCacheLs(ctx context.Context, inv *invocation) error {
	f := inv.flags(`List the cache's images (reference, manifest, layers, size), its layers
(diff_id, size, how many images use each) and its bundles (container id,
image, overlay or copy, live or removed, directory).`)
	s := f.settings(cacheSetting)
	asJSON := f.fs.Bool("json", false, "print the listing as JSON on stdout; a failure as {\"error\": {\"code\", \"message\"}}")
	if _, err := f.parse(inv.args, 0); err != nil {
		return err
	}
	inv.json = *asJSON
	c, err := openCache(ctx, s)
	if err != nil {
		return err
	}
	defer c.Close()
	l, err := c.List(ctx)
	if err != nil {
		return err
	}
	st, err := cacheStore(c.Root())
	if err != nil {
		return err
	}
	if *asJSON {
		return writeJSON(inv.stdout, cacheListing{Listing: l, Store: st})
	}
	fmt.Fprintln(inv.stdout, st)
	printListing(inv.stdout, l)
	return nil
}

// cacheListing is `cache ls --json`: the listing and where it is kept.
type cacheListing struct {
	*unpack.Listing
	Store *storeInfo `json:"store"`
}

// storeInfo says whether the cache is on a sealed store, and which.
type storeInfo struct {
	Root   string `json:"root"`
	Sealed bool   `json:"sealed"`
	// Device is the host's block device, Mapper the plaintext device,
	// Integrity dm-integrity's algorithm ("" without it).
	Device    string `json:"device,omitempty"`
	Mapper    string `json:"mapper,omitempty"`
	Integrity string `json:"integrity,omitempty"`
}

func cacheStore(root string) (*storeInfo, error) {
	st, err := securemount.Describe(root)
	if err != nil {
		return nil, fmt.Errorf("cache %s: %w", root, err)
	}
	if st == nil {
		return &storeInfo{Root: root}, nil
	}
	return &storeInfo{Root: root, Sealed: true, Device: st.Device, Mapper: st.Mapper, Integrity: st.Integrity}, nil
}

func (s *storeInfo) String() string {
	if !s.Sealed {
		return fmt.Sprintf("cache %s: not sealed", s.Root)
	}
	integrity := "without integrity"
	if s.Integrity != "" {
		integrity = "dm-integrity " + s.Integrity
	}
	return fmt.Sprintf("cache %s: sealed on %s (LUKS2, %s; %s)", s.Root, s.Device, integrity, s.Mapper)
}

func cmdCacheRm(ctx context.Context, inv *invocation) error {
	f := inv.flags(`Forget IMAGE: its record goes now; its bundles are marked removed, and
they and the layers no other image uses are deleted by the next 'cache gc'.`)
	s := f.settings(cacheSetting)
	pos, err := f.parse(inv.args, 1)
	if err != nil {
		return err
	}
	ref, err := refname.Parse(pos[0])
	if err != nil {
		return fmt.Errorf("image %q: %w: %v", pos[0], errdefs.ErrInvalidConfig, err)
	}
	c, err := openCache(ctx, s)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.RemoveImage(ctx, refname.Reference(ref)); err != nil {
		return err
	}
	fmt.Fprintf(inv.stdout, "removed %s (its bundles and unused layers go at the next 'cache gc')\n", refname.Reference(ref))
	return nil
}

func cmdCacheGC(ctx context.Context, inv *invocation) error {
	f := inv.flags(`Unmount and delete the bundles of removed images and of containers whose
bundle directory is gone, then delete the layers that no image and no live
bundle uses. Layers another process is pulling or using are kept.`)
	s := f.settings(cacheSetting)
	asJSON := f.fs.Bool("json", false, "print what was removed as JSON on stdout; a failure as {\"error\": {\"code\", \"message\"}}")
	if _, err := f.parse(inv.args, 0); err != nil {
		return err
	}
	inv.json = *asJSON
	c, err := openCache(ctx, s)
	if err != nil {
		return err
	}
	defer c.Close()
	rep, err := c.GC(ctx)
	if err != nil {
		return err
	}
	if *asJSON {
		return writeJSON(inv.stdout, rep)
	}
	fmt.Fprintf(inv.stdout, "removed %d bundles and %d layers, freed %s\n", len(rep.Bundles), len(rep.Layers), human(rep.FreedBytes))
	return nil
}

func printListing(w io.Writer, l *unpack.Listing) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "IMAGE\tMANIFEST\tLAYERS\tSIZE")
	sizes := map[string]int64{}
	for _, li := range l.Layers {
		sizes[li.DiffID.String()] = li.Size
	}
	for _, img := range l.Images {
		var size int64
		for _, layer := range img.Layers {
			size += sizes[layer.DiffID.String()]
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\n", img.Ref, shortDigest(img.ManifestDigest.String()), len(img.Layers), human(size))
	}
	fmt.Fprintln(tw)
	fmt.Fprintln(tw, "LAYER (diff_id)\tSIZE\tREFS")
	for _, li := range l.Layers {
		fmt.Fprintf(tw, "%s\t%s\t%d\n", shortDigest(li.DiffID.String()), human(li.Size), li.Refs)
	}
	fmt.Fprintln(tw)
	fmt.Fprintln(tw, "BUNDLE\tIMAGE\tROOTFS\tSTATE\tDIR")
	for _, b := range l.Bundles {
		state := "live"
		if b.Removed {
			state = "removed"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", b.ID, b.Image, b.RootfsType, state, b.Dir)
	}
	tw.Flush()
}

func shortDigest(d string) string {
	if len(d) > 19 {
		return d[:19]
	}
	return d
}
