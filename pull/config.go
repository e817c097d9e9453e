package pull

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/guest-puller/guest-puller/attest"
	"github.com/guest-puller/guest-puller/decrypt"
	"github.com/guest-puller/guest-puller/internal/errdefs"
	"github.com/guest-puller/guest-puller/internal/jsonerr"
	"github.com/guest-puller/guest-puller/internal/lazy"
	"github.com/guest-puller/guest-puller/internal/registry"
	"github.com/guest-puller/guest-puller/policy"
	"github.com/guest-puller/guest-puller/securemount"
	"github.com/guest-puller/guest-puller/unpack"
	"github.com/guest-puller/guest-puller/verify"
)

// Config is every setting of a pull, as the command line's flags and the
// config file name them (DESIGN.md, "CLI"). The daemon uses it as its
// defaults.
type Config struct {
	Policy                 string   `json:"policy"`
	Cache                  string   `json:"cache,omitempty"`
	CacheDevice            string   `json:"cache-device,omitempty"`
	CacheDeviceKey         string   `json:"cache-device-key,omitempty"`
	AuthFile               string   `json:"auth-file,omitempty"`
	Creds                  string   `json:"creds,omitempty"`
	DecryptionKeys         []string `json:"decryption-key,omitempty"`
	KeyDir                 string   `json:"key-dir,omitempty"`
	KidResourceTypes       []string `json:"kid-resource-type,omitempty"`
	KBS                    string   `json:"kbs,omitempty"`
	KBSCert                string   `json:"kbs-cert,omitempty"`
	Attester               string   `json:"attester,omitempty"`
	TPM                    string   `json:"tpm,omitempty"`
	MaxConcurrentDownloads int      `json:"max-concurrent-downloads,omitempty"`
	InsecureRegistries     []string `json:"insecure-registry,omitempty"`
	RegistriesConf         string   `json:"registries-conf,omitempty"`
	RegistriesD            string   `json:"registries-d,omitempty"`
	Platform               string   `json:"platform,omitempty"`
	// IdleTimeout: a registry or KBS that sends nothing for this long,
	// for an answer or mid-body, fails the request, which is retried (a
	// blob resumed); 0 means idleread.DefaultTimeout.
	IdleTimeout Duration `json:"idle-timeout,omitempty"`
}

// Duration is a time.Duration that a config file writes as Go writes
// durations ("30s", "1m30s") and the command line takes as a flag value.
type Duration time.Duration

// String implements flag.Value.
func (d *Duration) String() string { return time.Duration(*d).String() }

// Set implements flag.Value: a positive duration.
func (d *Duration) Set(s string) error {
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	if v <= 0 {
		return fmt.Errorf("%s is not a positive duration", s)
	}
	*d = Duration(v)
	return nil
}

// UnmarshalJSON reads "30s".
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("want a duration such as \"30s\": %w", err)
	}
	return d.Set(s)
}

// MarshalJSON writes "30s".
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// DefaultRegistriesD is read for lookaside and attachment settings when
// Config.RegistriesD is empty and the directory exists.
const DefaultRegistriesD = "/etc/containers/registries.d"

// LoadConfig reads a JSON config file strictly: an unknown setting is an
// error (an *UnknownSettingError), never ignored, and a syntax error names
// its line and column.
func LoadConfig(path string) (Config, error) {
	var c Config
	data, err := os.ReadFile(path)
	if err != nil {
		return c, fmt.Errorf("config %s: %w: %w", path, errdefs.ErrInvalidConfig, err)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		// encoding/json has no typed error for an unknown field.
		if key, ok := strings.CutPrefix(err.Error(), "json: unknown field "); ok {
			if k, err := strconv.Unquote(key); err == nil {
				return c, &UnknownSettingError{File: path, Key: k}
			}
		}
		return c, fmt.Errorf("config %s: %w: %v", path, errdefs.ErrInvalidConfig, jsonerr.Describe(data, err))
	}
	if dec.More() {
		line, col := jsonerr.Position(data, dec.InputOffset())
		return c, fmt.Errorf("config %s: %w: line %d, column %d: data after the JSON object", path, errdefs.ErrInvalidConfig, line, col)
	}
	return c, nil
}

// UnknownSettingError is a config file key that names no setting.
type UnknownSettingError struct {
	File, Key string
}

func (e *UnknownSettingError) Error() string {
	return fmt.Sprintf("config %s: %v: unknown setting %q", e.File, errdefs.ErrInvalidConfig, e.Key)
}

// Unwrap makes it a configuration error (exit 2).
func (e *UnknownSettingError) Unwrap() error { return errdefs.ErrInvalidConfig }

// Open builds a Puller from cfg: registry client, cache, policy, KBS
// client and keys. Resources named kbs:///… (the policy, its keys, the auth
// file, decryption keys) are fetched through the KBS after attestation.
// Close the Puller when done.
func Open(ctx context.Context, cfg Config, progress Progress) (*Puller, error) {
	return open(ctx, cfg, progress, true)
}

// OpenChecker is Open for Check only: it opens no cache and loads no
// decryption keys.
func OpenChecker(ctx context.Context, cfg Config) (*Puller, error) {
	return open(ctx, cfg, nil, false)
}

func open(ctx context.Context, cfg Config, progress Progress, full bool) (*Puller, error) {
	s, err := newSetup(ctx, cfg, progress, full)
	if err != nil {
		return nil, err
	}
	p, err := s.build(ctx)
	if err != nil {
		s.close()
		return nil, err
	}
	p.closers = append(p.closers, s.close)
	return p, nil
}

// Daemon is the Puller of a daemon that serves while the KBS may not be
// up yet: `guest-puller serve`.
type Daemon struct {
	setup  *setup
	puller *lazy.Value[*Puller]
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
func (d *Daemon) Puller(ctx context.Context) (*Puller, error) { return d.puller.Get(ctx) }

// Cache is the layer cache the Puller unpacks into.
func (d *Daemon) Cache() *unpack.Cache { return d.setup.cache }

// Close releases the cache.
func (d *Daemon) Close() error { return d.setup.close() }

// setup is what a Puller is made of, loaded in two steps: at once what
// this machine holds (local files, the cache), then in build what the KBS
// holds. A build that fails keeps what it loaded, for the next try.
type setup struct {
	cfg      Config
	progress Progress
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

func newSetup(ctx context.Context, cfg Config, progress Progress, full bool) (_ *setup, err error) {
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
	if s.cache, err = unpack.Open(ctx, root); err != nil {
		return nil, err
	}
	// On storage the host provides, a cached layer is read back before it
	// is reused: a block the host changed fails there, not in a container.
	if st, err := securemount.Describe(s.cache.Root()); err == nil && st != nil {
		s.sealed = true
	}
	return s, nil
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
func (s *setup) build(ctx context.Context) (*Puller, error) {
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
	opts := Options{
		Registry:               FromClient(rc),
		Policy:                 s.pol,
		RegistriesD:            s.rd,
		Creds:                  s.cfg.Creds,
		MaxConcurrentDownloads: s.cfg.MaxConcurrentDownloads,
		Progress:               s.progress,
		Keys:                   s.keys,
		VerifyCached:           s.sealed,
	}
	if s.cache != nil {
		opts.Cache = FromCache(s.cache)
	}
	return New(opts)
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

// LoadPolicy reads the policy at path (a file or a kbs:/// resource) with
// key paths resolved by read, relative ones against the policy's directory.
func LoadPolicy(ctx context.Context, path string, read policy.ReadFunc) (*policy.Policy, error) {
	data, err := read(ctx, path)
	if err != nil {
		if errors.Is(err, errdefs.ErrNotFound) {
			// A policy that does not exist is a configuration problem
			// wherever it was to come from (exit 2), not a refusal to
			// decrypt; a KBS that refuses the attestation stays exit 4.
			return nil, fmt.Errorf("policy %s: %w: it does not exist: %w", path, errdefs.ErrInvalidConfig, err)
		}
		return nil, fmt.Errorf("policy %s: %w", path, err)
	}
	base := ""
	if isKBS(path) {
		// A policy from the KBS has no directory: a relative key path
		// would silently mean one of the guest's working directory.
		kbsRead := read
		read = func(ctx context.Context, p string) ([]byte, error) {
			if !isKBS(p) && !filepath.IsAbs(p) {
				return nil, fmt.Errorf("%w: key path %q is relative, but the policy came from the KBS: use an absolute path or kbs:///", errdefs.ErrInvalidConfig, p)
			}
			return kbsRead(ctx, p)
		}
	} else {
		base = filepath.Dir(path)
	}
	p, err := policy.Load(ctx, data, policy.LoadOptions{BaseDir: base, Read: read})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return p, nil
}

// Version is guest-puller's version, set at build time.
var Version = "dev"

func isKBS(path string) bool { return strings.HasPrefix(path, "kbs://") }

// resources reads local files and kbs:/// resources. The KBS client, and
// with it attestation, is only set up when a kbs:// resource is first
// needed, so a pull that needs none works without a TEE or TPM; one that
// cannot be set up (no TPM yet) is tried again at the next need.
type resources struct {
	cfg    Config
	client *lazy.Value[*attest.Client]
}

func newResources(cfg Config) *resources {
	r := &resources{cfg: cfg}
	r.client = lazy.New(func(context.Context) (*attest.Client, error) { return r.newClient() }, daemonBuildTimeout)
	return r
}

func (r *resources) read(ctx context.Context, path string) ([]byte, error) {
	if isKBS(path) {
		return r.GetResource(ctx, path)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errdefs.ErrInvalidConfig, err)
	}
	return data, nil
}

// GetResource implements decrypt.ResourceGetter.
func (r *resources) GetResource(ctx context.Context, uri string) ([]byte, error) {
	c, err := r.client.Get(ctx)
	if err != nil {
		return nil, err
	}
	return c.GetResource(ctx, uri)
}

func (r *resources) newClient() (*attest.Client, error) {
	if r.cfg.KBS == "" {
		return nil, fmt.Errorf("%w: a kbs:// resource needs --kbs", errdefs.ErrInvalidConfig)
	}
	kind := r.cfg.Attester
	if kind == "" {
		kind = "auto"
	}
	att, err := attest.NewAttester(kind, attest.AttesterOptions{TPM: r.cfg.TPM})
	if err != nil {
		// No evidence, no KBS resource: exit 4 as when the KBS refuses,
		// unless --attester itself is wrong (exit 2). attest's error
		// names the attester.
		if errors.Is(err, errdefs.ErrInvalidConfig) {
			return nil, err
		}
		return nil, fmt.Errorf("%w: %w", errdefs.ErrDecrypt, err)
	}
	opts := attest.ClientOptions{IdleTimeout: time.Duration(r.cfg.IdleTimeout)}
	if r.cfg.KBSCert != "" {
		if opts.CACert, err = os.ReadFile(r.cfg.KBSCert); err != nil {
			return nil, fmt.Errorf("--kbs-cert: %w: %w", errdefs.ErrInvalidConfig, err)
		}
	}
	return attest.NewClient(r.cfg.KBS, att, opts)
}

// Close releases what Open acquired.
func (p *Puller) Close() error {
	var errs []error
	for _, c := range p.closers {
		errs = append(errs, c())
	}
	return errors.Join(errs...)
}
