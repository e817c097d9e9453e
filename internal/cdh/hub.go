package cdh

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/http/httpproxy"
	"golang.org/x/sync/semaphore"

	"github.com/guest-puller/guest-puller/api"
	"github.com/guest-puller/guest-puller/attest"
	"github.com/guest-puller/guest-puller/decrypt"
	"github.com/guest-puller/guest-puller/internal/cdhconfig"
	"github.com/guest-puller/guest-puller/internal/config"
	"github.com/guest-puller/guest-puller/internal/errdefs"
	"github.com/guest-puller/guest-puller/internal/lazy"
	"github.com/guest-puller/guest-puller/internal/registry"
	"github.com/guest-puller/guest-puller/internal/sealedsecret"
	"github.com/guest-puller/guest-puller/policy"
	"github.com/guest-puller/guest-puller/pull"
	"github.com/guest-puller/guest-puller/securemount"
	"github.com/guest-puller/guest-puller/unpack"
	"github.com/guest-puller/guest-puller/verify"
)

const (
	// DefaultEventLog is where guest-puller keeps its own event log when it
	// attests with its own TPM.
	DefaultEventLog = "/run/guest-puller/eventlog"

	// buildTimeout bounds the shared work of a first request: attesting,
	// fetching the policy and its keys.
	buildTimeout = 2 * time.Minute

	// acceptAll is image-rs's behaviour without a policy.
	acceptAll = `{"default":[{"type":"insecureAcceptAnything"}]}`
)

// Options configure a Hub.
type Options struct {
	Config *cdhconfig.Config
	// Attester is the evidence source: "auto" (the attestation-agent when
	// its socket exists, else configfs-tsm, then a TPM), "aa" (the agent,
	// required), "tpm", "tsm" or "sample".
	Attester string
	// TPM is the TPM device or mssim://HOST:PORT for the tpm attester.
	TPM string
	// InitData, if the guest has init-data, is sent in every attest request
	// and, with guest-puller's own TPM, bound into PCR 8.
	InitData *attest.InitData
	// EventLog and EventLogPCR are where guest-puller's own TPM attester
	// logs pulls; defaults DefaultEventLog and attest.DefaultTPMEventLogPCR.
	EventLog    string
	EventLogPCR int
	Log         *slog.Logger
	Version     string
}

// Hub is the confidential-data-hub's state: the cache, and the parts built
// at first need.
type Hub struct {
	opts     Options
	cfg      *cdhconfig.Config
	log      *slog.Logger
	unsealer *sealedsecret.Unsealer

	tee *lazy.Value[*tee]
	kbs *lazy.Value[*attest.Client]

	// storage is held, one unit each, by the requests that use the cache
	// or the Puller, and whole by a SecureMount over the cache's root,
	// which replaces both (see mountOver).
	storage *semaphore.Weighted
	cache   *lazy.Value[*unpack.Cache]
	puller  *lazy.Value[*pull.Puller]
}

// storageUnits is the weight of storage: more than requests ever run.
const storageUnits = 1 << 30

// tee is where evidence comes from and runtime events go.
type tee struct {
	attester attest.Attester
	// measurer is nil when this TEE records no runtime events here.
	measurer attest.Measurer
	close    func() error
}

// New opens the cache and returns the Hub; it contacts nothing and reads
// no file the configuration names.
func New(ctx context.Context, opts Options) (*Hub, error) {
	if opts.Config == nil {
		return nil, errors.New("cdh: no configuration")
	}
	switch opts.Attester {
	case "":
		opts.Attester = "auto"
	case "auto", "aa", "tpm", "tsm", "sample":
	default:
		return nil, fmt.Errorf("--attester %q: %w: want auto, aa, tpm, tsm or sample", opts.Attester, errdefs.ErrInvalidConfig)
	}
	if opts.EventLog == "" {
		opts.EventLog = DefaultEventLog
	}
	if opts.EventLogPCR == 0 {
		opts.EventLogPCR = attest.DefaultTPMEventLogPCR
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	cfg := opts.Config
	h := &Hub{opts: opts, cfg: cfg, log: opts.Log}
	// What a first request would only find out later is checked now.
	if cfg.Image.RegistriesConfInline != nil {
		if _, err := registry.ParseConf(cfg.Image.RegistriesConfInline); err != nil {
			return nil, fmt.Errorf("image.registry_config: %w", err)
		}
	}
	if cfg.Image.SigstoreConfigInline != nil {
		if _, err := verify.ParseRegistriesD("image.sigstore_config", cfg.Image.SigstoreConfigInline); err != nil {
			return nil, err
		}
	}
	h.unsealer = sealedsecret.New(sealedsecret.Options{Resources: h, SkipVerification: cfg.SkipSealedSecretVerification})
	h.tee = lazy.New(h.buildTEE, buildTimeout)
	h.kbs = lazy.New(h.buildKBS, buildTimeout)
	h.puller = lazy.New(h.buildPuller, buildTimeout)
	h.storage = semaphore.NewWeighted(storageUnits)
	h.cache = lazy.New(func(ctx context.Context) (*unpack.Cache, error) { return unpack.Open(ctx, cfg.Image.Cache) }, buildTimeout)
	if cfg.Image.CacheDevice != "" {
		if err := h.mountCache(ctx); err != nil {
			return nil, err
		}
	}
	// The cache is opened now: a root that cannot be one stops the Hub.
	if _, err := h.cache.Get(ctx); err != nil {
		return nil, err
	}
	return h, nil
}

// ServiceOptions are the api.Options that serve this Hub.
func (h *Hub) ServiceOptions() api.Options {
	o := api.Options{
		Puller:  h.pullerFor,
		Cache:   h.cacheFor,
		Log:     h.log,
		Version: h.opts.Version,
		Pulled:  h.pulled,
		Secrets: h.unsealer,
		Mounts:  mounter{h},
	}
	if h.cfg.KBS.URL != "" {
		o.Resources = h
	}
	return o
}

// Close releases the cache and the attestation-agent connection.
func (h *Hub) Close() error {
	var errs []error
	if c, ok := h.cache.Peek(); ok {
		errs = append(errs, c.Close())
	}
	if t, ok := h.tee.Peek(); ok && t.close != nil {
		errs = append(errs, t.close())
	}
	return errors.Join(errs...)
}

// hold holds the storage for one request, until release.
func (h *Hub) hold(ctx context.Context) (release func(), err error) {
	if err := h.storage.Acquire(ctx, 1); err != nil {
		return nil, err
	}
	return sync.OnceFunc(func() { h.storage.Release(1) }), nil
}

// pullerFor is api.Options.Puller: the Puller, held for one request.
func (h *Hub) pullerFor(ctx context.Context) (*pull.Puller, func(), error) {
	release, err := h.hold(ctx)
	if err != nil {
		return nil, nil, err
	}
	p, err := h.puller.Get(ctx)
	if err != nil {
		release()
		return nil, nil, err
	}
	return p, release, nil
}

// cacheFor is api.Options.Cache: the cache, held for one request.
func (h *Hub) cacheFor(ctx context.Context) (*unpack.Cache, func(), error) {
	release, err := h.hold(ctx)
	if err != nil {
		return nil, nil, err
	}
	c, err := h.cache.Get(ctx)
	if err != nil {
		release()
		return nil, nil, err
	}
	return c, release, nil
}

// LogStart says at start what the Hub will do and where it differs from
// guest-puller's own defaults.
func (h *Hub) LogStart(socket string) {
	c := h.cfg
	kbs := c.KBS.URL
	if kbs == "" {
		kbs = "none"
	}
	h.log.Info("guest-puller as the confidential-data-hub", "version", h.opts.Version, "config", c.Source, "socket", socket,
		"kbs", kbs, "cache", c.Image.Cache, "attester", h.opts.Attester, "aa_socket", c.AASocket)
	for _, n := range c.Notes {
		h.log.Info("config: " + n)
	}
	if strings.HasPrefix(c.KBS.URL, "http://") {
		h.log.Info("config: the KBS is reached over plain http (kbc.url), as CDH allows; resources stay encrypted to the attested tee key")
	}
	if h.opts.InitData != nil {
		h.log.Info("init-data", "algorithm", h.opts.InitData.Algorithm, "digest", fmt.Sprintf("%x", h.opts.InitData.Digest))
	}
}

// GetResource returns a KBS resource through the one attested client:
// api's GetResource, sealed secrets, credentials and the pulls all use it.
func (h *Hub) GetResource(ctx context.Context, uri string) ([]byte, error) {
	c, err := h.kbs.Get(ctx)
	if err != nil {
		return nil, err
	}
	return c.GetResource(ctx, uri)
}

func (h *Hub) buildTEE(ctx context.Context) (*tee, error) {
	kind := h.opts.Attester
	if kind == "aa" || (kind == "auto" && isSocket(h.cfg.AASocket)) {
		a, err := attest.DialAgent(ctx, "unix://"+h.cfg.AASocket)
		if err != nil {
			return nil, err
		}
		h.log.Info("evidence and runtime measurement from the attestation-agent", "socket", h.cfg.AASocket, "tee", a.TEE())
		return &tee{attester: a, measurer: a, close: a.Close}, nil
	}
	aopts := attest.AttesterOptions{TPM: h.opts.TPM, InitData: h.opts.InitData}
	att, err := attest.NewAttester(kind, aopts)
	if err != nil {
		return nil, err
	}
	t := &tee{attester: att}
	if att.TEE() == "tpm" {
		el, err := attest.OpenEventLog(ctx, h.opts.TPM, h.opts.EventLog, h.opts.EventLogPCR)
		if err != nil {
			return nil, err
		}
		aopts.EventLog = el
		if t.attester, err = attest.NewAttester("tpm", aopts); err != nil {
			return nil, err
		}
		t.measurer = el
		h.log.Info("evidence from the TPM; pulls are logged and extended into a PCR", "eventlog", el.Path(), "pcr", el.PCR())
	} else {
		h.log.Info("evidence from guest-puller's own attester", "tee", att.TEE())
	}
	return t, nil
}

func (h *Hub) buildKBS(ctx context.Context) (*attest.Client, error) {
	if h.cfg.KBS.URL == "" {
		return nil, fmt.Errorf("%w: no Key Broker Service is configured ([kbc] url, or agent.aa_kbc_params)", errdefs.ErrInvalidConfig)
	}
	t, err := h.tee.Get(ctx)
	if err != nil {
		if errors.Is(err, errdefs.ErrInvalidConfig) {
			return nil, err
		}
		// No evidence, no resource: a refusal to decrypt (exit 4).
		return nil, errdefs.Kind(errdefs.ErrDecrypt, err)
	}
	return attest.NewClient(h.cfg.KBS.URL, t.attester, attest.ClientOptions{
		CACert: h.cfg.KBS.Cert,
		// CDH speaks plain http to a KBS whose URL says so.
		Insecure: strings.HasPrefix(h.cfg.KBS.URL, "http://"),
		InitData: h.opts.InitData,
	})
}

func (h *Hub) buildPuller(ctx context.Context) (*pull.Puller, error) {
	img := h.cfg.Image
	cache, err := h.cache.Get(ctx)
	if err != nil {
		return nil, err
	}
	pol, err := h.loadPolicy(ctx)
	if err != nil {
		return nil, err
	}
	opts := registry.Options{UserAgent: "guest-puller/" + h.opts.Version}
	switch {
	case img.RegistriesConfInline != nil:
		if opts.Conf, err = registry.ParseConf(img.RegistriesConfInline); err != nil {
			return nil, fmt.Errorf("image.registry_config: %w", err)
		}
	case img.RegistriesConf != nil:
		data, err := h.read(ctx, img.RegistriesConf)
		if err != nil {
			return nil, fmt.Errorf("registry configuration %s: %w", img.RegistriesConf, err)
		}
		if opts.Conf, err = registry.ParseConf(data); err != nil {
			return nil, fmt.Errorf("registry configuration %s: %w", img.RegistriesConf, err)
		}
	}
	if img.AuthFile != nil {
		data, err := h.read(ctx, img.AuthFile)
		if err != nil {
			return nil, fmt.Errorf("registry credentials %s: %w", img.AuthFile, err)
		}
		opts.Credentials = registry.Credentials{AuthFile: data, AuthFileName: img.AuthFile.String()}
	}
	if opts.Proxy, err = proxyFunc(img.Proxy); err != nil {
		return nil, err
	}
	if len(img.ExtraRootCerts) > 0 {
		if opts.RootCAs, err = x509.SystemCertPool(); err != nil {
			opts.RootCAs = x509.NewCertPool()
		}
		for _, pem := range img.ExtraRootCerts {
			opts.RootCAs.AppendCertsFromPEM(pem)
		}
	}
	rc, err := registry.New(opts)
	if err != nil {
		return nil, err
	}
	var rd *verify.RegistriesD
	switch {
	case img.SigstoreConfig != nil:
		data, err := h.read(ctx, img.SigstoreConfig)
		if err != nil {
			return nil, fmt.Errorf("sigstore config %s: %w", img.SigstoreConfig, err)
		}
		if rd, err = verify.ParseRegistriesD(img.SigstoreConfig.String(), data); err != nil {
			return nil, err
		}
	case img.SigstoreConfigInline != nil:
		if rd, err = verify.ParseRegistriesD("image.sigstore_config", img.SigstoreConfigInline); err != nil {
			return nil, err
		}
	}
	var keys *decrypt.Keyring
	if h.cfg.KBS.URL != "" {
		if keys, err = decrypt.NewKeyring(ctx, decrypt.Options{Resources: h}); err != nil {
			return nil, err
		}
	}
	// On a sealed store (image.cache_device, or kata's trusted storage
	// mounted at work_dir), cached layers are read back before reuse.
	sealed, _ := securemount.Describe(cache.Root())
	p, err := pull.New(pull.Options{
		Registry:               pull.FromClient(rc),
		Cache:                  pull.FromCache(cache),
		Policy:                 pol,
		RegistriesD:            rd,
		Keys:                   keys,
		MaxConcurrentDownloads: img.MaxConcurrentDownloads,
		VerifyCached:           sealed != nil,
	})
	if err != nil {
		return nil, err
	}
	h.log.Info("image client ready", "policy", describe(img.Policy, img.PolicyInline, "none: every image accepted"),
		"registries", describe(img.RegistriesConf, img.RegistriesConfInline, "none"),
		"sigstore", describe(img.SigstoreConfig, img.SigstoreConfigInline, "none"))
	return p, nil
}

func describe(u *cdhconfig.URI, inline []byte, none string) string {
	switch {
	case u != nil:
		return u.String()
	case inline != nil:
		return "in the config file"
	}
	return none
}

// loadPolicy reads the image security policy: image_security_policy_uri,
// else image_security_policy, else image-rs's default of none at all
// (every image accepted; said at start).
func (h *Hub) loadPolicy(ctx context.Context) (*policy.Policy, error) {
	img := h.cfg.Image
	switch {
	case img.Policy != nil:
		path := img.Policy.Path
		if img.Policy.KBS != "" {
			path = img.Policy.KBS
		}
		return config.LoadPolicy(ctx, path, h.readPath)
	case img.PolicyInline != nil:
		// A policy in the config file has no directory of its own.
		return config.ParsePolicy(ctx, "image.image_security_policy", img.PolicyInline, "", h.readPath)
	default:
		return policy.Load(ctx, []byte(acceptAll), policy.LoadOptions{})
	}
}

// read returns what a CDH URI names.
func (h *Hub) read(ctx context.Context, u *cdhconfig.URI) ([]byte, error) {
	if u.KBS != "" {
		return h.GetResource(ctx, u.KBS)
	}
	return readFile(u.Path)
}

// readPath reads a kbs:// resource or a local file, as a policy's key
// paths name them.
func (h *Hub) readPath(ctx context.Context, p string) ([]byte, error) {
	if strings.HasPrefix(p, "kbs://") {
		return h.GetResource(ctx, p)
	}
	return readFile(p)
}

func readFile(p string) ([]byte, error) {
	data, err := os.ReadFile(p)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w: %w", errdefs.ErrNotFound, err)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errdefs.ErrInvalidConfig, err)
	}
	return data, nil
}

// proxyFunc is image_pull_proxy as a transport's Proxy; nil (the
// environment's) when none is configured.
func proxyFunc(p cdhconfig.Proxy) (func(*http.Request) (*url.URL, error), error) {
	if p.HTTPS == "" && p.HTTP == "" {
		return nil, nil
	}
	f := (&httpproxy.Config{HTTPSProxy: p.HTTPS, HTTPProxy: p.HTTP, NoProxy: p.NoProxy}).ProxyFunc()
	return func(r *http.Request) (*url.URL, error) { return f(r.URL) }, nil
}

// pulled records a successful pull as CDH does: the PullImage event, in
// the attestation-agent's log or in guest-puller's own. A TEE that records
// no runtime events is said in the log, and the pull stands; a recording
// that fails fails the pull.
func (h *Hub) pulled(ctx context.Context, image string, res *pull.Result) error {
	t, err := h.tee.Get(ctx)
	switch {
	case errors.Is(err, attest.ErrNoTEE):
		h.log.Warn("pull not measured: no attestation-agent and no TEE in this guest", "image", image, "manifest", res.ManifestDigest)
		return nil
	case err != nil:
		return fmt.Errorf("measure the pull: %w", err)
	case t.measurer == nil:
		h.log.Warn("pull not measured: "+t.attester.TEE()+" evidence has no runtime measurement here", "image", image, "manifest", res.ManifestDigest)
		return nil
	}
	err = t.measurer.Measure(ctx, attest.PullImageEvent(image, res.ManifestDigest))
	if errors.Is(err, attest.ErrMeasurementUnsupported) || errors.Is(err, attest.ErrMeasurementDisabled) {
		h.log.Warn("pull not measured", "image", image, "manifest", res.ManifestDigest, "reason", err.Error())
		return nil
	}
	if err != nil {
		return err
	}
	h.log.Info("pull measured", "image", image, "manifest", res.ManifestDigest)
	return nil
}

// FetchCredentials writes every [[credentials]] resource to its file (mode
// 0600), trying again with backoff until all are written or ctx ends.
func (h *Hub) FetchCredentials(ctx context.Context) {
	pending := h.cfg.Credentials
	backoff := time.Second
	for len(pending) > 0 {
		var left []cdhconfig.Credential
		for _, c := range pending {
			if err := h.writeCredential(ctx, c); err != nil {
				if ctx.Err() != nil {
					return
				}
				h.log.Warn("credential not written yet; will retry", "resource", c.ResourceURI, "path", c.Path, "error", err.Error())
				left = append(left, c)
				continue
			}
			h.log.Info("credential written", "resource", c.ResourceURI, "path", c.Path)
		}
		if pending = left; len(pending) == 0 {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 30*time.Second)
	}
}

// writeCredential writes one resource below cdhconfig.CredentialDir,
// through an os.Root so that no symlink there leads the write elsewhere,
// and by rename so that a reader never sees half a file.
func (h *Hub) writeCredential(ctx context.Context, c cdhconfig.Credential) error {
	data, err := h.GetResource(ctx, c.ResourceURI)
	if err != nil {
		return err
	}
	defer clear(data)
	if err := os.MkdirAll(cdhconfig.CredentialDir, 0o700); err != nil {
		return err
	}
	root, err := os.OpenRoot(cdhconfig.CredentialDir)
	if err != nil {
		return err
	}
	defer root.Close()
	rel := strings.TrimPrefix(c.Path, cdhconfig.CredentialDir+"/")
	if err := root.MkdirAll(filepath.Dir(rel), 0o700); err != nil {
		return err
	}
	tmp := filepath.Join(filepath.Dir(rel), "."+filepath.Base(rel)+".tmp")
	f, err := root.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Chmod(0o600)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = root.Rename(tmp, rel)
	}
	if err != nil {
		root.Remove(tmp)
	}
	return err
}

func isSocket(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode()&os.ModeSocket != 0
}
