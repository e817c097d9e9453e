package main

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/guest-puller/guest-puller/api"
	"github.com/guest-puller/guest-puller/internal/config"
	"github.com/guest-puller/guest-puller/internal/errdefs"
	"github.com/guest-puller/guest-puller/pull"
	"github.com/guest-puller/guest-puller/unpack"
)

// cmdServe runs the ttrpc daemon kata-agent calls. The settings (flags and
// the config file) are the defaults of every request.
func cmdServe(ctx context.Context, inv *invocation) error {
	f := inv.flags(`Serve, on a unix socket only root may use, the ttrpc services kata-agent
calls: the confidential-data-hub's api.ImagePullService and the agent's
grpc.Image, plus guestpuller.v1.GuestPuller (pull with the full result,
status, list, remove, gc). The settings below are the defaults of every
request. A request's own registry credentials go to its registry alone; the
daemon's own credentials come from --auth-file, keyed by registry (a USER:PASSWORD
for every request would go to whatever registry a request names).
The socket opens at once. Local files (policy, auth file, keys) are read at
start: a missing or bad one stops the daemon. What is named kbs:///… is
fetched at the first request that needs it; while the KBS is down, such a
request fails, and the next one tries again.
SIGTERM or SIGINT stops the daemon and removes the socket.`)
	s := f.settings(func(name string) bool { return name != "creds" })
	socket := f.fs.String("socket", api.DefaultSocket, "unix socket `PATH` to serve on")
	gcEvery := f.fs.Duration("gc-interval", DefaultGCInterval, "every `DURATION`, reclaim what containers left once their bundle directory is gone (upper directories, records) and layers nothing uses any more; 0 turns it off")
	if _, err := f.parse(inv.args, 0); err != nil {
		return err
	}
	inv.credsHint = ""
	cfg, err := s.config()
	if err != nil {
		return err
	}
	if cfg.Creds != "" {
		return fmt.Errorf("serve: %w: the config file sets \"creds\", which the daemon would send to whatever registry a request names; give the daemon's credentials per registry in an auth file (\"auth-file\"), and kata's per-request source_creds go to their request's registry alone", errdefs.ErrInvalidConfig)
	}
	d, err := config.OpenDaemon(ctx, cfg)
	if err != nil {
		return err
	}
	defer d.Close()
	log := slog.New(slog.NewTextHandler(inv.stderr, nil))
	svc := api.New(api.Options{
		Puller: func(ctx context.Context) (*pull.Puller, func(), error) {
			p, err := d.Puller(ctx)
			return p, func() {}, err
		},
		Cache: func(context.Context) (*unpack.Cache, func(), error) {
			return d.Cache(), func() {}, nil
		},
		Log:        log,
		Version:    version(),
		GCInterval: *gcEvery,
	})
	return api.Serve(ctx, svc, *socket)
}

// DefaultGCInterval is serve's --gc-interval: often enough that a guest
// whose cache is in RAM gets a removed container's memory back soon, and
// a sweep that finds nothing costs a few file reads.
const DefaultGCInterval = 30 * time.Second
