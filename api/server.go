package api

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"sync"
	"time"

	"github.com/containerd/ttrpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/guest-puller/guest-puller/api/agentpb"
	"github.com/guest-puller/guest-puller/api/cdhpb"
	guestpullerv1 "github.com/guest-puller/guest-puller/api/v1"
	"github.com/guest-puller/guest-puller/internal/errdefs"
	"github.com/guest-puller/guest-puller/internal/refname"
	"github.com/guest-puller/guest-puller/internal/untrusted"
	"github.com/guest-puller/guest-puller/pull"
	"github.com/guest-puller/guest-puller/unpack"
)

// DefaultSocket is where kata-agent looks for the confidential-data-hub.
const DefaultSocket = "/run/confidential-containers/cdh.sock"

// Service implements the ttrpc services. Its pulls all go through one
// pull.Puller, so concurrent requests share downloads.
type Service struct {
	opts Options
}

// Options configure a Service.
type Options struct {
	// Puller returns the Puller for one request and a release, which the
	// request calls once it is done with the Puller and its cache. It is
	// asked at each request, so that a daemon may build its Puller at the
	// first request that needs one (loading the policy, contacting the
	// KBS) and try again at the next request after a failure: the error
	// fails that request only. Between a request's Puller and its release,
	// the daemon keeps the Puller and its cache in place (the
	// confidential-data-hub replaces both when kata-agent mounts its
	// trusted storage over the cache, and waits for the requests holding
	// them).
	Puller func(ctx context.Context) (p *pull.Puller, release func(), err error)
	// Cache returns the layer cache the native service reports on and
	// cleans, for one request, and its release, as Puller does; nil means
	// the daemon has none.
	Cache func(ctx context.Context) (c *unpack.Cache, release func(), err error)
	// GCInterval, if positive, is how often Serve reclaims what containers
	// left once they are gone (see Service.reclaim); 0 leaves it to the
	// native service's GC.
	GCInterval time.Duration
	// Log receives one line per request (image, container, outcome,
	// duration; never credentials nor secrets).
	Log     *slog.Logger
	Version string
	// Pulled, if set, is told of every successful pull before it is
	// answered, with the image as the caller named it; an error fails the
	// request. The confidential-data-hub mode records measured pulls here.
	Pulled func(ctx context.Context, image string, res *pull.Result) error
	// Resources, Secrets and Mounts serve the confidential-data-hub's other
	// three services; a nil one answers Unimplemented, saying why.
	Resources ResourceGetter
	Secrets   SecretUnsealer
	Mounts    SecureMounter
}

// New returns the handlers for opts.
func New(opts Options) *Service {
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	return &Service{opts: opts}
}

// Register adds the services to srv: the confidential-data-hub's four
// (package api), kata-agent's grpc.Image, and guestpuller.v1.
func (s *Service) Register(srv *ttrpc.Server) {
	cdhpb.RegisterImagePullServiceService(srv, cdhService{s})
	cdhpb.RegisterGetResourceServiceService(srv, cdhService{s})
	cdhpb.RegisterSealedSecretServiceService(srv, cdhService{s})
	cdhpb.RegisterSecureMountServiceService(srv, cdhService{s})
	agentpb.RegisterImageService(srv, agentService{s})
	guestpullerv1.RegisterGuestPullerService(srv, nativeService{s})
}

// Serve serves the services on the unix socket at path until ctx ends. The
// socket is made for root only, and the server only talks to root peers.
// Serve refuses a socket another daemon answers on (ErrAlreadyExists),
// replaces one left by a daemon that died, and on return removes the
// socket only if it is still the one it made.
func Serve(ctx context.Context, s *Service, path string) error {
	sock, err := listenSocket(path)
	if err != nil {
		return err
	}
	defer sock.Close()
	srv, err := ttrpc.NewServer(ttrpc.WithServerHandshaker(ttrpc.UnixSocketRequireUidGid(os.Geteuid(), -1)))
	if err != nil {
		return err
	}
	s.Register(srv)
	attrs := []any{"socket", path, "version", s.opts.Version}
	if s.opts.Cache != nil {
		if c, release, err := s.opts.Cache(ctx); err == nil {
			attrs = append(attrs, "cache", c.Root())
			release()
		}
	}
	s.opts.Log.Info("serving", attrs...)
	if s.opts.GCInterval > 0 && s.opts.Cache != nil {
		rctx, stop := context.WithCancel(ctx)
		var wg sync.WaitGroup
		wg.Go(func() { s.reclaim(rctx, s.opts.GCInterval) })
		defer func() { stop(); wg.Wait() }()
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ctx, sock.UnixListener) }()
	select {
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
		return nil
	case err := <-errc:
		if errors.Is(err, ttrpc.ErrServerClosed) {
			return nil
		}
		return err
	}
}

// reclaim runs the cache's GC every interval while the daemon serves, so
// that what a container leaves once kata-agent has cleaned it up (rootfs
// unmounted, bundle directory deleted) goes while the pod lives, not at
// the next boot: its upper and work directories with everything it wrote,
// and layers no image record or live bundle uses any more. In a guest
// whose cache is in RAM, each would otherwise be memory lost for the
// pod's lifetime. A live bundle (its directory and config.json there) and
// its layers are never touched.
func (s *Service) reclaim(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		rep, err := s.gc(ctx)
		if ctx.Err() != nil {
			return
		}
		if rep != nil && len(rep.Bundles)+len(rep.Layers) > 0 {
			s.opts.Log.Info("reclaimed", "bundles", rep.Bundles, "layers", len(rep.Layers), "freed", rep.FreedBytes)
		}
		if err != nil {
			s.opts.Log.Warn("reclaim", "error", err.Error())
		}
	}
}

// gc runs the cache's GC, holding the cache while it runs.
func (s *Service) gc(ctx context.Context) (*unpack.GCReport, error) {
	c, release, err := s.opts.Cache(ctx)
	if err != nil {
		return nil, err
	}
	defer release()
	return c.GC(ctx)
}

// pull runs one pull, logging it, and maps its error to a ttrpc status.
func (s *Service) pull(ctx context.Context, api string, req pull.Request) (*pull.Result, error) {
	start := time.Now()
	res, err := s.pullAndRecord(ctx, req)
	id := req.ContainerID
	if id == "" && req.BundleDir != "" {
		id = pull.BundleContainerID(req.BundleDir)
	}
	// The request's names are the host's, the error may quote a
	// registry's: bounded and escaped before they reach the log.
	attrs := []any{"api", api, "image", untrusted.Text(req.Image), "container", untrusted.Text(id), "duration", time.Since(start).Round(time.Millisecond)}
	if err != nil {
		s.opts.Log.Warn("pull failed", append(attrs, "exit", errdefs.ExitCode(err), "error", untrusted.Escape(err.Error()))...)
		return nil, toStatus(err)
	}
	cached := 0
	for _, l := range res.Layers {
		if l.Cached {
			cached++
		}
	}
	s.opts.Log.Info("pulled", append(attrs, "manifest", res.ManifestDigest, "layers", len(res.Layers), "cached", cached, "bundle", res.Bundle)...)
	return res, nil
}

func (s *Service) pullAndRecord(ctx context.Context, req pull.Request) (*pull.Result, error) {
	p, release, err := s.opts.Puller(ctx)
	if err != nil {
		return nil, err
	}
	defer release()
	res, err := p.Pull(ctx, req)
	if err != nil {
		return nil, err
	}
	if s.opts.Pulled != nil {
		if err := s.opts.Pulled(ctx, req.Image, res); err != nil {
			return nil, fmt.Errorf("%s: pulled %s, but recording the pull failed: %w", req.Image, res.ManifestDigest, err)
		}
	}
	return res, nil
}

// toStatus maps guest-puller's error kinds onto gRPC codes (one mapping,
// errdefs.GRPCCode), so a caller can tell a refusal from a failure without
// parsing the message.
func toStatus(err error) error {
	code := errdefs.GRPCCode(err)
	msg := err.Error()
	if code == codes.Unauthenticated {
		// The command line names its flags; a daemon's caller has its own
		// credentials in the request, or relies on the daemon's.
		msg += "; check the request's registry credentials (source_creds), or the daemon's auth file (--auth-file)"
	}
	return status.Error(code, untrusted.Escape(msg))
}

type cdhService struct{ *Service }

func (s cdhService) PullImage(ctx context.Context, req *cdhpb.ImagePullRequest) (*cdhpb.ImagePullResponse, error) {
	if req.ImageUrl == "" {
		return nil, status.Error(codes.InvalidArgument, "image_url is empty")
	}
	res, err := s.pull(ctx, "api.ImagePullService", pull.Request{
		// The container id is the bundle directory's name, as kata-agent
		// names it (pull.BundleContainerID).
		Image:     req.ImageUrl,
		BundleDir: req.BundlePath,
	})
	if err != nil {
		return nil, err
	}
	return &cdhpb.ImagePullResponse{ManifestDigest: res.ManifestDigest}, nil
}

type agentService struct{ *Service }

func (s agentService) PullImage(ctx context.Context, req *agentpb.PullImageRequest) (*agentpb.PullImageResponse, error) {
	if req.Image == "" {
		return nil, status.Error(codes.InvalidArgument, "image is empty")
	}
	res, err := s.pull(ctx, "grpc.Image", pull.Request{
		Image:       req.Image,
		ContainerID: req.ContainerId,
		Creds:       req.SourceCreds,
	})
	if err != nil {
		return nil, err
	}
	return &agentpb.PullImageResponse{ImageRef: res.Image}, nil
}

type nativeService struct{ *Service }

func (s nativeService) Pull(ctx context.Context, req *guestpullerv1.PullRequest) (*guestpullerv1.PullResponse, error) {
	res, err := s.pull(ctx, "guestpuller.v1", pull.Request{
		Image:       req.Image,
		ContainerID: req.ContainerId,
		BundleDir:   req.BundlePath,
		Creds:       req.Creds,
	})
	if err != nil {
		return nil, err
	}
	out := &guestpullerv1.PullResponse{
		Image:          res.Image,
		ManifestDigest: res.ManifestDigest,
		ConfigDigest:   res.ConfigDigest,
		Bundle:         res.Bundle,
		Rootfs:         res.Rootfs,
		RootfsType:     res.RootfsType,
		PolicyScope:    res.Policy.Scope,
	}
	for _, l := range res.Layers {
		out.Layers = append(out.Layers, &guestpullerv1.Layer{Digest: l.Digest, DiffId: l.DiffID, MediaType: l.MediaType, Encrypted: l.Encrypted, Cached: l.Cached})
	}
	for _, sig := range res.Signatures {
		out.Signatures = append(out.Signatures, &guestpullerv1.Signature{KeyName: sig.KeyName, KeyId: sig.KeyID, Verified: sig.Verified})
	}
	return out, nil
}

// cache is the layer cache for one request of the native service, and its
// release; a daemon without one answers Unimplemented.
func (s nativeService) cache(ctx context.Context) (*unpack.Cache, func(), error) {
	if s.opts.Cache == nil {
		return nil, nil, status.Error(codes.Unimplemented, "this daemon has no layer cache")
	}
	c, release, err := s.opts.Cache(ctx)
	if err != nil {
		return nil, nil, toStatus(err)
	}
	return c, release, nil
}

func (s nativeService) Status(ctx context.Context, _ *guestpullerv1.StatusRequest) (*guestpullerv1.StatusResponse, error) {
	c, release, err := s.cache(ctx)
	if err != nil {
		return nil, err
	}
	defer release()
	l, err := c.List(ctx)
	if err != nil {
		return nil, toStatus(err)
	}
	out := &guestpullerv1.StatusResponse{
		Version:    s.opts.Version,
		CacheRoot:  c.Root(),
		Images:     int64(len(l.Images)),
		Layers:     int64(len(l.Layers)),
		Bundles:    int64(len(l.Bundles)),
		Goroutines: int64(runtime.NumGoroutine()),
	}
	for _, layer := range l.Layers {
		out.LayerBytes += layer.Size
	}
	return out, nil
}

func (s nativeService) ListImages(ctx context.Context, _ *guestpullerv1.ListImagesRequest) (*guestpullerv1.ListImagesResponse, error) {
	c, release, err := s.cache(ctx)
	if err != nil {
		return nil, err
	}
	defer release()
	l, err := c.List(ctx)
	if err != nil {
		return nil, toStatus(err)
	}
	out := &guestpullerv1.ListImagesResponse{}
	for _, img := range l.Images {
		i := &guestpullerv1.Image{Ref: img.Ref, ManifestDigest: img.ManifestDigest.String()}
		for _, layer := range img.Layers {
			i.DiffIds = append(i.DiffIds, layer.DiffID.String())
		}
		out.Images = append(out.Images, i)
	}
	return out, nil
}

func (s nativeService) RemoveImage(ctx context.Context, req *guestpullerv1.RemoveImageRequest) (*guestpullerv1.RemoveImageResponse, error) {
	ref, err := refname.Parse(req.Image)
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "image %s: %s", untrusted.Quote(req.Image), untrusted.Text(err.Error()))
	}
	c, release, err := s.cache(ctx)
	if err != nil {
		return nil, err
	}
	defer release()
	if err := c.RemoveImage(ctx, refname.Reference(ref)); err != nil {
		return nil, toStatus(err)
	}
	s.opts.Log.Info("removed", "image", refname.Reference(ref))
	return &guestpullerv1.RemoveImageResponse{}, nil
}

func (s nativeService) GC(ctx context.Context, _ *guestpullerv1.GCRequest) (*guestpullerv1.GCResponse, error) {
	c, release, err := s.cache(ctx)
	if err != nil {
		return nil, err
	}
	defer release()
	rep, err := c.GC(ctx)
	if err != nil {
		return nil, toStatus(err)
	}
	out := &guestpullerv1.GCResponse{Bundles: rep.Bundles, FreedBytes: rep.FreedBytes}
	for _, d := range rep.Layers {
		out.Layers = append(out.Layers, d.String())
	}
	s.opts.Log.Info("gc", "bundles", len(rep.Bundles), "layers", len(rep.Layers), "freed", rep.FreedBytes)
	return out, nil
}
