package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"

	"github.com/guest-puller/guest-puller/api"
	"github.com/guest-puller/guest-puller/internal/errdefs"
	"github.com/guest-puller/guest-puller/pull"
)

// cmdServe runs the ttrpc daemon kata-agent calls. The pull flags (and
// the config file) are the defaults of every request.
func cmdServe(ctx context.Context, args []string, stderr io.Writer) error {
	f := newPullFlags("serve", stderr)
	socket := f.fs.String("socket", api.DefaultSocket, "unix socket to serve on (root only)")
	f.fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: guest-puller serve [flags]")
		printFlags(f.fs, stderr)
	}
	pos, err := parseInterleaved(f.fs, args)
	if err != nil {
		return helpOK(err)
	}
	if len(pos) != 0 {
		return fmt.Errorf("%w: usage: guest-puller serve [flags]", errdefs.ErrInvalidConfig)
	}
	cfg, err := f.config()
	if err != nil {
		return err
	}
	p, err := pull.Open(ctx, cfg, nil)
	if err != nil {
		return err
	}
	defer p.Close()
	log := slog.New(slog.NewTextHandler(stderr, nil))
	log.Info("serving", "socket", *socket, "cache", p.Cache().Root(), "version", version())
	return api.Serve(ctx, api.NewService(p, log, version()), *socket)
}
