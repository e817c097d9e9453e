package config

import (
	"context"
	"fmt"
	"os"
	"slices"
	"time"

	"github.com/guest-puller/guest-puller/decrypt"
	"github.com/guest-puller/guest-puller/internal/errdefs"
	"github.com/guest-puller/guest-puller/internal/lazy"
	"github.com/guest-puller/guest-puller/internal/registry"
	"github.com/guest-puller/guest-puller/policy"
	"github.com/guest-puller/guest-puller/pull"
	"github.com/guest-puller/guest-puller/securemount"
	"github.com/guest-puller/guest-puller/unpack"
	"github.com/guest-puller/guest-puller/verify"
)

// Puller is a pull.Puller with what Open acquired for it: the cache (and
// the sealed store it may be on), which Close releases.
type Puller struct {
	*pull.Puller
	close func() error
}

// Close releases what Open acquired.
func (p *Puller) Close() error { return p.close() }

// Open builds a Puller from cfg: registry client, cache, policy, KBS
// client and keys. Resources named kbs:///… (the policy, its keys, the auth
// file, decryption keys) are fetched through the KBS after attestation.
// Close the Puller when done.
func Open(ctx context.Context, cfg Config, progress pull.Progress) (*Puller, error) {
	return open(ctx, cfg, progress, true)
}

// OpenChecker is Open for Check only: it opens no cache and loads no
// decryption keys.
func OpenChecker(ctx context.Context, cfg Config) (*Puller, error) {
	return open(ctx, cfg, nil, false)
}

func open(ctx context.Context, cfg Config, progress pull.Progress, full bool) (*Puller, error) {
	s, err := newSetup(ctx, cfg, progress, full)
	if err != nil {
		return nil, err
	}
	p, err := s.build(ctx)
	if err != nil {
		s.close()
		return nil, err
	}
	return &Puller{Puller: p, close: s.close}, nil
}

// Daemon is the Puller of a daemon that serves while the KBS may not be
// up yet: `guest-puller serve`.
type Daemon struct {
	setup  *setup
	puller *lazy.Value[*pull.Puller]
}

// daemonBuildTimeout bounds the shared work of building the Puller at a
// request: attesting, fetching the policy, the auth file and keys.
const daemonBuildTimeout = 2 * time.Minute

// OpenDaemon opens the cache and loads every local file cfg names now, so
// that a missing or bad one (the policy, the auth file, registries.conf, a
// decryption key) stops the daemon at start, as a configuration error.
// What the KBS holds (a kbs:/// policy, auth file or decryption key) is
// fetched at the first call of Puller, which builds the Puller then: a
// failed build fails that call, naming the resource, and the next call
// tries again, so the daemon serves while the KBS is down and pulls once
// it is up, without a restart. A config that names no kbs:/// resource is
// built whole now. (A sealed cache's kbs:/// key is fetched at start: no
// request can be served before the cache is there.)
func OpenDaemon(ctx context.Context, cfg Config) (*Daemon, error) {
	s, err := newSetup(ctx, cfg, nil, true)
	if err != nil {
		return nil, err
	}
	d := &Daemon{setup: s, puller: lazy.New(s.build, daemonBuildTimeout)}
	if !s.remote() {
		if _, err := d.puller.Get(ctx); err != nil {
			s.close()
			return nil, err
		}
	}
	return d, nil
}

// Puller returns the Puller, building it at the first call (and after a
// failed build).
func (d *Daemon) Puller(ctx context.Context) (*pull.Puller, error) { return d.puller.Get(ctx) }

// Cache is the layer cache the Puller unpacks into.
func (d *Daemon) Cache() *unpack.Cache { return d.setup.cache }

// Close releases the cache.
func (d *Daemon) Close() error { return d.setup.close() }

// setup is what a Puller is made of, loaded in two steps: at once what
// this machine holds (local files, the cache), then in build what the KBS
// holds. A build that fails keeps what it loaded, for the next try.
type setup struct {
	cfg      Config
	progress pull.Progress
	full     bool
	res      *resources

	pol       *policy.Policy
	creds     registry.Credentials
	credsRead bool
	conf      *registry.Conf
	rd        *verify.RegistriesD
	keys      *decrypt.Keyring
	keysRead  bool
	cache     *unpack.Cache
	sealed    bool
}

func newSetup(ctx context.Context, cfg Config, progress pull.Progress, full bool) (_ *setup, err error) {
	if cfg.Policy == "" {
		return nil, fmt.Errorf("%w: no policy: give --policy or a config file that sets \"policy\" (there is no accept-all default)", errdefs.ErrInvalidConfig)
	}
	s := &setup{cfg: cfg, progress: progress, full: full, res: newResources(cfg)}
	if cfg.KBS == "" {
		// Said now rather than at the first request that needs it.
		if uris := s.remoteURIs(); len(uris) > 0 {
			return nil, fmt.Errorf("%s: %w: a kbs:// resource needs --kbs", uris[0], errdefs.ErrInvalidConfig)
		}
	}
	if !isKBS(cfg.Policy) {
		if s.pol, err = LoadPolicy(ctx, cfg.Policy, s.res.read); err != nil {
			return nil, err
		}
	}
	if cfg.AuthFile == "" || !isKBS(cfg.AuthFile) {
		if err := s.readCreds(ctx); err != nil {
			return nil, err
		}
	}
	if cfg.RegistriesConf != "" {
		if s.conf, err = registry.LoadConf(cfg.RegistriesConf); err != nil {
			return nil, err
		}
	}
	regD := cfg.RegistriesD
	if regD == "" {
		if fi, err := os.Stat(DefaultRegistriesD); err == nil && fi.IsDir() {
			regD = DefaultRegistriesD
		}
	}
	if regD != "" {
		if s.rd, err = verify.LoadRegistriesD(regD); err != nil {
			return nil, err
		}
	}
	if !full {
		return s, nil
	}
	if !slices.ContainsFunc(cfg.DecryptionKeys, isKBS) {
		if err := s.loadKeys(ctx); err != nil {
			return nil, err
		}
	}
	root := cfg.Cache
	if root == "" {
		root = unpack.DefaultRoot
	}
	if cfg.CacheDevice != "" {
		if err := openStore(ctx, cfg, root, s.res); err != nil {
			return nil, err
		}
	} else if cfg.CacheDeviceKey != "" {
		return nil, fmt.Errorf("%w: --cache-device-key without --cache-device", errdefs.ErrInvalidConfig)
	}
	if s.cache, err = openCache(ctx, root, cfg.Cache == ""); err != nil {
		return nil, err
	}
	// On storage the host provides, a cached layer is read back before it
	// is reused: a block the host changed fails there, not in a container.
	if st, err := securemount.Describe(s.cache.Root()); err == nil && st != nil {
		s.sealed = true
	}
	return s, nil
}

// OpenCache opens the layer cache cfg names, or the default root: what
// the cache commands work on.
func OpenCache(ctx context.Context, cfg Config) (*unpack.Cache, error) {
	root := cfg.Cache
	if root == "" {
		root = unpack.DefaultRoot
	}
	return openCache(ctx, root, cfg.Cache == "")
}

// openCache opens the cache at root. The default root is root's: a user
// other than root who did not name a cache is told how to have one.
func openCache(ctx context.Context, root string, defaulted bool) (*unpack.Cache, error) {
	c, err := unpack.Open(ctx, root)
	if err != nil && defaulted && os.Geteuid() != 0 {
		return nil, fmt.Errorf("%w; as a user other than root, give --cache DIR (a directory of your own)", err)
	}
	return c, err
}

// remoteURIs are the kbs:/// resources the config names.
func (s *setup) remoteURIs() []string {
	var uris []string
	for _, u := range append([]string{s.cfg.Policy, s.cfg.AuthFile, s.cfg.CacheDeviceKey}, s.cfg.DecryptionKeys...) {
		if isKBS(u) {
			uris = append(uris, u)
		}
	}
	return uris
}

// remote reports whether build has something to fetch from the KBS.
func (s *setup) remote() bool {
	return s.pol == nil || !s.credsRead || (s.full && !s.keysRead)
}

func (s *setup) readCreds(ctx context.Context) error {
	if s.cfg.AuthFile != "" {
		// --creds go to each pull's own registry (Options.Creds), never to
		// every registry: the client itself knows only the auth file,
		// whose credentials are bound to registries by their keys.
		data, err := s.res.read(ctx, s.cfg.AuthFile)
		if err != nil {
			return fmt.Errorf("--auth-file %s: %w", s.cfg.AuthFile, err)
		}
		s.creds = registry.Credentials{AuthFile: data, AuthFileName: s.cfg.AuthFile}
	}
	s.credsRead = true
	return nil
}

func (s *setup) loadKeys(ctx context.Context) error {
	cfg := s.cfg
	if len(cfg.DecryptionKeys) > 0 || cfg.KeyDir != "" || cfg.KBS != "" {
		kopts := decrypt.Options{Keys: cfg.DecryptionKeys, KeyDir: cfg.KeyDir, KidResourceTypes: cfg.KidResourceTypes}
		if cfg.KBS != "" {
			kopts.Resources = s.res
		}
		keys, err := decrypt.NewKeyring(ctx, kopts)
		if err != nil {
			return err
		}
		s.keys = keys
	}
	s.keysRead = true
	return nil
}

// build loads what the KBS holds, if anything, and makes the Puller.
func (s *setup) build(ctx context.Context) (*pull.Puller, error) {
	var err error
	if s.pol == nil {
		if s.pol, err = LoadPolicy(ctx, s.cfg.Policy, s.res.read); err != nil {
			return nil, err
		}
	}
	if !s.credsRead {
		if err := s.readCreds(ctx); err != nil {
			return nil, err
		}
	}
	if s.full && !s.keysRead {
		if err := s.loadKeys(ctx); err != nil {
			return nil, err
		}
	}
	rc, err := registry.New(registry.Options{
		Credentials: s.creds,
		Insecure:    s.cfg.InsecureRegistries,
		Conf:        s.conf,
		Platform:    s.cfg.Platform,
		UserAgent:   "guest-puller/" + Version,
		IdleTimeout: time.Duration(s.cfg.IdleTimeout),
	})
	if err != nil {
		return nil, err
	}
	opts := pull.Options{
		Registry:               pull.FromClient(rc),
		Policy:                 s.pol,
		RegistriesD:            s.rd,
		Creds:                  s.cfg.Creds,
		MaxConcurrentDownloads: s.cfg.MaxConcurrentDownloads,
		Progress:               s.progress,
		Keys:                   s.keys,
		VerifyCached:           s.sealed,
	}
	if s.cache != nil {
		opts.Cache = pull.FromCache(s.cache)
	}
	return pull.New(opts)
}

// close releases the cache.
func (s *setup) close() error {
	if s.cache == nil {
		return nil
	}
	return s.cache.Close()
}

// openStore mounts the sealed store on cfg.CacheDevice at root, with the
// key cfg.CacheDeviceKey names or, without one, a fresh key that only this
// guest's memory will ever hold.
func openStore(ctx context.Context, cfg Config, root string, res *resources) error {
	var key []byte
	if cfg.CacheDeviceKey != "" {
		var err error
		if key, err = res.read(ctx, cfg.CacheDeviceKey); err != nil {
			return fmt.Errorf("cache device key %s: %w", cfg.CacheDeviceKey, err)
		}
		defer clear(key)
	}
	_, err := securemount.MountCache(ctx, cfg.CacheDevice, root, key)
	return err
}
