package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"text/tabwriter"

	"github.com/guest-puller/guest-puller/internal/errdefs"
	"github.com/guest-puller/guest-puller/internal/refname"
	"github.com/guest-puller/guest-puller/unpack"
)

const cacheUsage = "usage: guest-puller cache ls [--json] | rm IMAGE | gc [--json]  [--cache DIR]"

func cmdCache(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return fmt.Errorf("%w: %s", errdefs.ErrInvalidConfig, cacheUsage)
	}
	sub := args[0]
	fs := flag.NewFlagSet("cache "+sub, flag.ContinueOnError)
	fs.SetOutput(stderr)
	root := fs.String("cache", unpack.DefaultRoot, "layer cache root")
	asJSON := fs.Bool("json", false, "print JSON on stdout")
	pos, err := parseInterleaved(fs, args[1:])
	if err != nil {
		return helpOK(err)
	}
	want := 0
	if sub == "rm" {
		want = 1
	}
	if len(pos) != want {
		return fmt.Errorf("%w: %s", errdefs.ErrInvalidConfig, cacheUsage)
	}
	c, err := unpack.Open(ctx, *root)
	if err != nil {
		return err
	}
	defer c.Close()
	switch sub {
	case "ls":
		l, err := c.List(ctx)
		if err != nil {
			return err
		}
		if *asJSON {
			return writeJSON(stdout, l)
		}
		printListing(stdout, l)
		return nil
	case "rm":
		ref, err := refname.Parse(pos[0])
		if err != nil {
			return fmt.Errorf("image %q: %w: %v", pos[0], errdefs.ErrInvalidConfig, err)
		}
		if err := c.RemoveImage(ctx, refname.Reference(ref)); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "removed %s (its bundles and unused layers go at the next 'cache gc')\n", refname.Reference(ref))
		return nil
	case "gc":
		rep, err := c.GC(ctx)
		if err != nil {
			return err
		}
		if *asJSON {
			return writeJSON(stdout, rep)
		}
		fmt.Fprintf(stdout, "removed %d bundles and %d layers, freed %s\n", len(rep.Bundles), len(rep.Layers), human(rep.FreedBytes))
		return nil
	}
	return fmt.Errorf("%w: unknown cache command %q; %s", errdefs.ErrInvalidConfig, sub, cacheUsage)
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

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
