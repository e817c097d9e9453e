package cdhconfig

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	"github.com/BurntSushi/toml"

	"github.com/guest-puller/guest-puller/attest"
	"github.com/guest-puller/guest-puller/internal/errdefs"
)

const (
	// KataConfigPath is where kata-agent writes cdh.toml from init-data,
	// and passes it with -c when it exists.
	KataConfigPath = "/run/confidential-containers/initdata/cdh.toml"
	// DefaultSocket is CDH's ttrpc address, where kata-agent waits for it.
	DefaultSocket = "unix:///run/confidential-containers/cdh.sock"
	// DefaultWorkDir is image-rs's work directory: guest-puller's cache.
	DefaultWorkDir = "/run/kata-containers/image/"
	// DefaultMaxConcurrentLayerDownloads is image-rs's default.
	DefaultMaxConcurrentLayerDownloads = 3
	// CredentialDir is where [[credentials]] may be written, as CDH allows.
	CredentialDir = "/run/confidential-containers/cdh/kbs"
	// CCKBC is the one KBS client guest-puller speaks: Trustee's protocol.
	CCKBC = "cc_kbc"

	maxConfig = 1 << 20
)

// Config is the drop-in's configuration in guest-puller's terms.
type Config struct {
	// Source says where the configuration came from, for the start-up log.
	Source string
	// Socket is the path of the unix socket to serve.
	Socket string
	// KBS is the Key Broker Service; a zero KBS means none is configured.
	KBS KBS
	// AASocket is the path of the attestation-agent's socket.
	AASocket string
	// Credentials are KBS resources written to files at start.
	Credentials []Credential
	Image       Image
	// SkipSealedSecretVerification unseals secrets without checking their
	// signature.
	SkipSealedSecretVerification bool
	// LogLevel is trace, debug, info, warn or error.
	LogLevel string
	// Notes are what the start-up log must say about this configuration:
	// where it follows CDH rather than guest-puller's own defaults, and
	// what overrode what.
	Notes []string
}

// KBS is [kbc].
type KBS struct {
	URL string
	// Cert is PEM the KBS's TLS certificate must chain to; nil means the
	// system's roots.
	Cert []byte
}

// Credential is one [[credentials]] entry.
type Credential struct {
	ResourceURI string
	Path        string
}

// Image is [image], image-rs's ImageConfig.
type Image struct {
	// Cache is work_dir: guest-puller's layer cache root.
	Cache string
	// Policy is image_security_policy_uri; PolicyInline the policy given
	// in the file (used when there is no URI). Neither set means image-rs's
	// default: no policy, every image accepted.
	Policy       *URI
	PolicyInline []byte
	// SigstoreConfig is sigstore_config_uri, a registries.d file; or
	// SigstoreConfigInline.
	SigstoreConfig       *URI
	SigstoreConfigInline []byte
	// AuthFile is authenticated_registry_credentials_uri.
	AuthFile *URI
	// RegistriesConf is registry_configuration_uri, a registries.conf; the
	// inline registry_config table wins over it.
	RegistriesConf       *URI
	RegistriesConfInline []byte
	// MaxConcurrentDownloads is max_concurrent_layer_downloads_per_image.
	MaxConcurrentDownloads int
	Proxy                  Proxy
	// ExtraRootCerts are PEM CAs registries may chain to, besides the
	// system's.
	ExtraRootCerts [][]byte
	// CacheDevice is guest-puller's cache_device (no CDH key): the block
	// device the cache is sealed on (--cache-device); CacheDeviceKey,
	// cache_device_key, the URI of its key (--cache-device-key).
	CacheDevice    string
	CacheDeviceKey *URI
}

// Proxy is image_pull_proxy.
type Proxy struct {
	HTTPS, HTTP, NoProxy string
}

// URI is a resource CDH takes by URI: a KBS resource (kbs:///repo/type/tag)
// or a local file (file:///path, or a bare absolute path as image-rs
// takes it).
type URI struct {
	// KBS is the resource URI, "kbs:///repo/type/tag"; empty for a file.
	KBS string
	// Path is the file's path; empty for a KBS resource.
	Path string
}

func (u *URI) String() string {
	if u.KBS != "" {
		return u.KBS
	}
	return "file://" + u.Path
}

// ParseURI parses a CDH resource URI. Other schemes, relative paths and
// malformed resource names wrap errdefs.ErrInvalidConfig.
func ParseURI(s string) (*URI, error) {
	switch {
	case strings.HasPrefix(s, "kbs://"):
		r, err := attest.ParseResourceURI(s)
		if err != nil {
			return nil, err
		}
		return &URI{KBS: r.String()}, nil
	case strings.HasPrefix(s, "file://"):
		u, err := url.Parse(s)
		if err != nil || (u.Host != "" && u.Host != "localhost") || u.RawQuery != "" || u.Fragment != "" || !filepath.IsAbs(u.Path) {
			return nil, fmt.Errorf("%q: %w: want file:///absolute/path", s, errdefs.ErrInvalidConfig)
		}
		return &URI{Path: filepath.Clean(u.Path)}, nil
	case strings.Contains(s, "://"):
		return nil, fmt.Errorf("%q: %w: scheme not supported (want kbs:/// or file://)", s, errdefs.ErrInvalidConfig)
	case filepath.IsAbs(s):
		return &URI{Path: filepath.Clean(s)}, nil
	default:
		return nil, fmt.Errorf("%q: %w: want kbs:///repo/type/tag, file:///absolute/path or an absolute path", s, errdefs.ErrInvalidConfig)
	}
}

// Env is what the configuration is read with besides the file.
type Env struct {
	// Cmdline is the kernel command line.
	Cmdline string
	// LookupEnv reads an environment variable.
	LookupEnv func(string) (string, bool)
}

// SystemEnv is this process's environment and the running kernel's
// command line.
func SystemEnv() Env {
	cmdline, _ := os.ReadFile("/proc/cmdline")
	return Env{Cmdline: string(cmdline), LookupEnv: os.LookupEnv}
}

// The file's shape. Pointers tell "absent" from "empty".
type file struct {
	Socket      *string          `toml:"socket"`
	KBC         *fileKBC         `toml:"kbc"`
	AA          *fileAA          `toml:"aa"`
	Credentials []fileCredential `toml:"credentials"`
	Image       *fileImage       `toml:"image"`
	Skip        bool             `toml:"skip_sealed_secret_verification"`
	Log         *struct {
		Level *string `toml:"level"`
	} `toml:"log"`
}

type fileKBC struct {
	Name    *string `toml:"name"`
	URL     *string `toml:"url"`
	KBSCert *string `toml:"kbs_cert"`
}

type fileAA struct {
	AASocket *string `toml:"aa_socket"`
}

type fileCredential struct {
	ResourceURI *string `toml:"resource_uri"`
	Path        *string `toml:"path"`
}

type fileImage struct {
	WorkDir               *string        `toml:"work_dir"`
	PolicyURI             *string        `toml:"image_security_policy_uri"`
	Policy                *string        `toml:"image_security_policy"`
	SigstoreConfigURI     *string        `toml:"sigstore_config_uri"`
	SigstoreConfig        *string        `toml:"sigstore_config"`
	AuthURI               *string        `toml:"authenticated_registry_credentials_uri"`
	RegistriesConfURI     *string        `toml:"registry_configuration_uri"`
	RegistryConfig        toml.Primitive `toml:"registry_config"`
	MaxConcurrent         *int64         `toml:"max_concurrent_layer_downloads_per_image"`
	Proxy                 toml.Primitive `toml:"image_pull_proxy"`
	SkipProxyIPs          *string        `toml:"skip_proxy_ips"`
	ExtraRootCertificates []string       `toml:"extra_root_certificates"`
	CacheDevice           *string        `toml:"cache_device"`
	CacheDeviceKey        *string        `toml:"cache_device_key"`
}

// Load reads the configuration: the TOML file at path, or, when path is
// "", CDH's defaults with the kernel command line (agent.aa_kbc_params and
// image-rs's agent.* parameters). Either way the environment's
// AA_KBC_PARAMS and CDH_DEFAULT_IMAGE_AUTHENTICATED_REGISTRY_CREDENTIALS
// and the command line's cdh.kbs_resources apply as they do to CDH. Errors
// wrap errdefs.ErrInvalidConfig and name the key.
func Load(path string, env Env) (*Config, error) {
	if env.LookupEnv == nil {
		env.LookupEnv = func(string) (string, bool) { return "", false }
	}
	var c *Config
	var err error
	if path == "" {
		c, err = fromCmdline(env)
	} else {
		c, err = fromFile(path, env)
	}
	if err != nil {
		return nil, err
	}
	return finish(c, env)
}

// finish applies what CDH applies whatever the source: environment and
// command line additions, and the checks of the result.
func finish(c *Config, env Env) (*Config, error) {
	if v, ok := env.LookupEnv("CDH_DEFAULT_IMAGE_AUTHENTICATED_REGISTRY_CREDENTIALS"); ok {
		u, err := ParseURI(v)
		if err != nil {
			return nil, fmt.Errorf("CDH_DEFAULT_IMAGE_AUTHENTICATED_REGISTRY_CREDENTIALS: %w", err)
		}
		c.Image.AuthFile = u
		c.Notes = append(c.Notes, "registry credentials from $CDH_DEFAULT_IMAGE_AUTHENTICATED_REGISTRY_CREDENTIALS: "+u.String())
	}
	creds, err := cmdlineCredentials(env.Cmdline)
	if err != nil {
		return nil, err
	}
	c.Credentials = append(c.Credentials, creds...)
	for i, cr := range c.Credentials {
		if err := checkCredential(cr); err != nil {
			return nil, fmt.Errorf("credentials[%d]: %w", i, err)
		}
	}
	if len(c.Credentials) > 0 && c.KBS.URL == "" {
		return nil, fmt.Errorf("credentials: %w: %d resources are to be fetched, but no KBS is configured ([kbc] url)", errdefs.ErrInvalidConfig, len(c.Credentials))
	}
	if c.Image.Policy == nil && c.Image.PolicyInline == nil {
		c.Notes = append(c.Notes, "no image security policy (image_security_policy_uri): every image is accepted, as image-rs does without one")
	}
	return c, nil
}

func defaults() *Config {
	return &Config{
		Socket:   strings.TrimPrefix(DefaultSocket, "unix://"),
		AASocket: strings.TrimPrefix(attest.DefaultAgentSocket, "unix://"),
		LogLevel: "info",
	}
}

func fromFile(path string, env Env) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config %s: %w: %w", path, errdefs.ErrInvalidConfig, err)
	}
	if len(data) > maxConfig {
		return nil, fmt.Errorf("config %s: %w: larger than %d bytes", path, errdefs.ErrInvalidConfig, maxConfig)
	}
	c, err := parseFile(data, env)
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	c.Source = path
	return c, nil
}

func parseFile(data []byte, env Env) (*Config, error) {
	var f file
	md, err := toml.Decode(string(data), &f)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errdefs.ErrInvalidConfig, err)
	}
	c := defaults()
	if f.Socket != nil {
		if c.Socket, err = unixSocket(*f.Socket); err != nil {
			return nil, fmt.Errorf("socket: %w", err)
		}
	}
	if f.KBC == nil || f.KBC.Name == nil {
		return nil, fmt.Errorf("kbc.name: %w: [kbc] name is required (cc_kbc)", errdefs.ErrInvalidConfig)
	}
	kbcURL := ""
	if f.KBC.URL != nil {
		kbcURL = *f.KBC.URL
	}
	if v, ok := env.LookupEnv("AA_KBC_PARAMS"); ok {
		// CDH hands [kbc] to its KBS client through this variable, and
		// leaves one that is already set alone.
		name, u, err := splitKBCParams(v)
		if err != nil {
			return nil, fmt.Errorf("AA_KBC_PARAMS: %w", err)
		}
		c.Notes = append(c.Notes, fmt.Sprintf("$AA_KBC_PARAMS (%s::%s) overrides [kbc] of the file, as in CDH", name, u))
		f.KBC.Name, kbcURL = &name, u
	}
	switch *f.KBC.Name {
	case CCKBC:
		if c.KBS.URL, err = kbsURL(kbcURL); err != nil {
			return nil, fmt.Errorf("kbc.url: %w", err)
		}
	default:
		return nil, fmt.Errorf("kbc.name: %w: %q is not supported: guest-puller speaks to a Key Broker Service (%s)", errdefs.ErrInvalidConfig, *f.KBC.Name, CCKBC)
	}
	if f.KBC.KBSCert != nil && *f.KBC.KBSCert != "" {
		if err := checkPEMCerts(*f.KBC.KBSCert); err != nil {
			return nil, fmt.Errorf("kbc.kbs_cert: %w", err)
		}
		c.KBS.Cert = []byte(*f.KBC.KBSCert)
	}
	if f.AA != nil && f.AA.AASocket != nil {
		if c.AASocket, err = unixSocket(*f.AA.AASocket); err != nil {
			return nil, fmt.Errorf("aa.aa_socket: %w", err)
		}
	}
	for i, cr := range f.Credentials {
		if cr.ResourceURI == nil || cr.Path == nil {
			return nil, fmt.Errorf("credentials[%d]: %w: resource_uri and path are both required", i, errdefs.ErrInvalidConfig)
		}
		c.Credentials = append(c.Credentials, Credential{ResourceURI: *cr.ResourceURI, Path: *cr.Path})
	}
	if f.Image != nil {
		if err := c.Image.fromFile(md, f.Image); err != nil {
			return nil, err
		}
	} else {
		// CDH's default for a missing [image]: image-rs's defaults and
		// the kernel command line.
		if err := c.Image.fromCmdline(env.Cmdline); err != nil {
			return nil, err
		}
	}
	c.SkipSealedSecretVerification = f.Skip
	if f.Skip {
		c.Notes = append(c.Notes, "skip_sealed_secret_verification = true: sealed secrets are unsealed without checking their signature")
	}
	if f.Log != nil && f.Log.Level != nil {
		switch l := strings.ToLower(*f.Log.Level); l {
		case "trace", "debug", "info", "warn", "error":
			c.LogLevel = l
		default:
			return nil, fmt.Errorf("log.level: %w: %q: want trace, debug, info, warn or error", errdefs.ErrInvalidConfig, *f.Log.Level)
		}
	}
	// Every key guest-puller reads has been decoded by now; anything left
	// is a key it would silently not apply.
	var keys []string
	for _, k := range md.Undecoded() {
		// The registry_config table was taken whole (its keys are checked
		// by the registries.conf parser); the decoder does not mark keys
		// of its arrays of tables as read.
		if len(k) > 2 && k[0] == "image" && k[1] == "registry_config" {
			continue
		}
		keys = append(keys, k.String())
	}
	if len(keys) > 0 {
		return nil, fmt.Errorf("%w: unknown key %s: guest-puller does not honour it", errdefs.ErrInvalidConfig, strings.Join(keys, ", "))
	}
	return c, nil
}

func (img *Image) fromFile(md toml.MetaData, f *fileImage) error {
	img.setDefaults()
	var err error
	if f.WorkDir != nil {
		if !filepath.IsAbs(*f.WorkDir) {
			return fmt.Errorf("image.work_dir: %w: %q is not an absolute path", errdefs.ErrInvalidConfig, *f.WorkDir)
		}
		img.Cache = filepath.Clean(*f.WorkDir)
	}
	for _, u := range []struct {
		key string
		v   *string
		dst **URI
	}{
		{"image.image_security_policy_uri", f.PolicyURI, &img.Policy},
		{"image.sigstore_config_uri", f.SigstoreConfigURI, &img.SigstoreConfig},
		{"image.authenticated_registry_credentials_uri", f.AuthURI, &img.AuthFile},
		{"image.registry_configuration_uri", f.RegistriesConfURI, &img.RegistriesConf},
		{"image.cache_device_key", f.CacheDeviceKey, &img.CacheDeviceKey},
	} {
		if u.v == nil {
			continue
		}
		if *u.dst, err = ParseURI(*u.v); err != nil {
			return fmt.Errorf("%s: %w", u.key, err)
		}
	}
	if f.CacheDevice != nil {
		if !filepath.IsAbs(*f.CacheDevice) {
			return fmt.Errorf("image.cache_device: %w: %q is not an absolute path", errdefs.ErrInvalidConfig, *f.CacheDevice)
		}
		img.CacheDevice = *f.CacheDevice
	}
	if img.CacheDeviceKey != nil && img.CacheDevice == "" {
		return fmt.Errorf("image.cache_device_key: %w: without image.cache_device", errdefs.ErrInvalidConfig)
	}
	if f.Policy != nil {
		img.PolicyInline = []byte(*f.Policy)
	}
	if f.SigstoreConfig != nil {
		img.SigstoreConfigInline = []byte(*f.SigstoreConfig)
	}
	if md.IsDefined("image", "registry_config") {
		var table map[string]any
		if err := md.PrimitiveDecode(f.RegistryConfig, &table); err != nil {
			return fmt.Errorf("image.registry_config: %w: %v", errdefs.ErrInvalidConfig, err)
		}
		// registries.conf is TOML too: the table is handed on as a file
		// would be.
		var buf bytes.Buffer
		if err := toml.NewEncoder(&buf).Encode(table); err != nil {
			return fmt.Errorf("image.registry_config: %w: %v", errdefs.ErrInvalidConfig, err)
		}
		img.RegistriesConfInline = buf.Bytes()
	}
	if f.MaxConcurrent != nil {
		if *f.MaxConcurrent < 1 || *f.MaxConcurrent > 1024 {
			return fmt.Errorf("image.max_concurrent_layer_downloads_per_image: %w: %d: want 1 to 1024", errdefs.ErrInvalidConfig, *f.MaxConcurrent)
		}
		img.MaxConcurrentDownloads = int(*f.MaxConcurrent)
	}
	if md.IsDefined("image", "image_pull_proxy") {
		switch md.Type("image", "image_pull_proxy") {
		case "String":
			// The older form: one proxy for both schemes.
			var p string
			md.PrimitiveDecode(f.Proxy, &p)
			img.Proxy.HTTPS, img.Proxy.HTTP = p, p
		case "Hash":
			var p struct {
				HTTPS *string `toml:"https_proxy"`
				HTTP  *string `toml:"http_proxy"`
				No    *string `toml:"no_proxy"`
			}
			if err := md.PrimitiveDecode(f.Proxy, &p); err != nil {
				return fmt.Errorf("image.image_pull_proxy: %w: %v", errdefs.ErrInvalidConfig, err)
			}
			for _, v := range []struct {
				src *string
				dst *string
			}{{p.HTTPS, &img.Proxy.HTTPS}, {p.HTTP, &img.Proxy.HTTP}, {p.No, &img.Proxy.NoProxy}} {
				if v.src != nil {
					*v.dst = *v.src
				}
			}
		default:
			return fmt.Errorf("image.image_pull_proxy: %w: want a table (https_proxy, http_proxy, no_proxy)", errdefs.ErrInvalidConfig)
		}
	}
	if f.SkipProxyIPs != nil {
		img.Proxy.NoProxy = *f.SkipProxyIPs
	}
	if err := img.Proxy.check("image.image_pull_proxy"); err != nil {
		return err
	}
	for i, pemCert := range f.ExtraRootCertificates {
		if err := checkPEMCerts(pemCert); err != nil {
			return fmt.Errorf("image.extra_root_certificates[%d]: %w", i, err)
		}
		img.ExtraRootCerts = append(img.ExtraRootCerts, []byte(pemCert))
	}
	return nil
}

func (img *Image) setDefaults() {
	img.Cache = filepath.Clean(DefaultWorkDir)
	img.MaxConcurrentDownloads = DefaultMaxConcurrentLayerDownloads
}

// fromCmdline is image-rs's ImageConfig::from_kernel_cmdline: defaults,
// with the proxy, registry credentials and (only when signature
// verification is enabled) the policy from agent.* parameters.
func (img *Image) fromCmdline(cmdline string) error {
	img.setDefaults()
	params := cmdlineParams(cmdline)
	img.Proxy = Proxy{HTTPS: params["agent.https_proxy"], HTTP: params["agent.http_proxy"], NoProxy: params["agent.no_proxy"]}
	if err := img.Proxy.check("agent.https_proxy/agent.http_proxy"); err != nil {
		return err
	}
	if v, ok := params["agent.image_registry_auth"]; ok {
		u, err := ParseURI(v)
		if err != nil {
			return fmt.Errorf("agent.image_registry_auth: %w", err)
		}
		img.AuthFile = u
	}
	// Rust's bool parsing: exactly "true".
	if params["agent.enable_signature_verification"] == "true" {
		if v, ok := params["agent.image_policy_file"]; ok {
			u, err := ParseURI(v)
			if err != nil {
				return fmt.Errorf("agent.image_policy_file: %w", err)
			}
			img.Policy = u
		}
	}
	return nil
}

func fromCmdline(env Env) (*Config, error) {
	c := defaults()
	c.Source = "defaults and the kernel command line (no -c file)"
	v, ok := env.LookupEnv("AA_KBC_PARAMS")
	key := "AA_KBC_PARAMS"
	if !ok {
		v, ok = firstParam(env.Cmdline, "agent.aa_kbc_params=")
		key = "agent.aa_kbc_params"
	}
	if ok {
		name, u, err := splitKBCParams(v)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", key, err)
		}
		switch name {
		case CCKBC:
			if c.KBS.URL, err = kbsURL(u); err != nil {
				return nil, fmt.Errorf("%s: %w", key, err)
			}
		case "offline_fs_kbc":
			c.Notes = append(c.Notes, key+" names offline_fs_kbc, which guest-puller does not support: no KBS is configured")
		default:
			return nil, fmt.Errorf("%s: %w: KBC %q is not supported: guest-puller speaks to a Key Broker Service (%s)", key, errdefs.ErrInvalidConfig, name, CCKBC)
		}
	} else {
		c.Notes = append(c.Notes, "no agent.aa_kbc_params: no KBS is configured")
	}
	if err := c.Image.fromCmdline(env.Cmdline); err != nil {
		return nil, err
	}
	return c, nil
}

// cmdlineParams maps key=value words of a kernel command line; a key given
// twice keeps its last value (image-rs collects them into a map).
func cmdlineParams(cmdline string) map[string]string {
	m := map[string]string{}
	for _, w := range strings.Fields(cmdline) {
		if k, v, ok := strings.Cut(w, "="); ok {
			m[k] = v
		}
	}
	return m
}

// firstParam is the value of the first word starting with prefix (how CDH
// finds agent.aa_kbc_params and cdh.kbs_resources).
func firstParam(cmdline, prefix string) (string, bool) {
	for _, w := range strings.Fields(cmdline) {
		if v, ok := strings.CutPrefix(w, prefix); ok {
			return v, true
		}
	}
	return "", false
}

// cmdlineCredentials reads cdh.kbs_resources=<uri>::<path>,… .
func cmdlineCredentials(cmdline string) ([]Credential, error) {
	v, ok := firstParam(cmdline, "cdh.kbs_resources=")
	if !ok {
		return nil, nil
	}
	var out []Credential
	for _, item := range strings.Split(v, ",") {
		if item == "" {
			continue
		}
		uri, path, ok := strings.Cut(item, "::")
		if !ok {
			return nil, fmt.Errorf("cdh.kbs_resources: %w: %q is not <resource uri>::<path>", errdefs.ErrInvalidConfig, item)
		}
		out = append(out, Credential{ResourceURI: uri, Path: path})
	}
	return out, nil
}

// splitKBCParams splits "<kbc>::<url>".
func splitKBCParams(v string) (string, string, error) {
	parts := strings.Split(v, "::")
	if len(parts) != 2 {
		return "", "", fmt.Errorf("%w: %q is not <kbc name>::<KBS URL>", errdefs.ErrInvalidConfig, v)
	}
	return parts[0], parts[1], nil
}

func kbsURL(s string) (string, error) {
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		return "", fmt.Errorf("%w: %q is not a KBS URL http(s)://host[:port]", errdefs.ErrInvalidConfig, s)
	}
	return s, nil
}

// unixSocket returns the path of "unix:///path". CDH accepts only this
// form for its ttrpc socket; a bare path would be taken relative to
// nothing in particular.
func unixSocket(s string) (string, error) {
	p, ok := strings.CutPrefix(s, "unix://")
	if !ok || !filepath.IsAbs(p) {
		return "", fmt.Errorf("%w: %q: want unix:///absolute/path", errdefs.ErrInvalidConfig, s)
	}
	return filepath.Clean(p), nil
}

func checkPEMCerts(s string) error {
	rest := []byte(s)
	n := 0
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			return fmt.Errorf("%w: a PEM %q block, want CERTIFICATE", errdefs.ErrInvalidConfig, b.Type)
		}
		if _, err := x509.ParseCertificate(b.Bytes); err != nil {
			return fmt.Errorf("%w: %v", errdefs.ErrInvalidConfig, err)
		}
		n++
	}
	if n == 0 || len(bytes.TrimSpace(rest)) != 0 {
		return fmt.Errorf("%w: not PEM certificates", errdefs.ErrInvalidConfig)
	}
	return nil
}

// check refuses proxy URLs the registry transport cannot use.
func (p Proxy) check(key string) error {
	for _, v := range []string{p.HTTPS, p.HTTP} {
		if v == "" {
			continue
		}
		u, err := url.Parse(v)
		if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https" && u.Scheme != "socks5") {
			return fmt.Errorf("%s: %w: %q is not a proxy URL (http://, https:// or socks5://host:port)", key, errdefs.ErrInvalidConfig, redactURL(v))
		}
	}
	return nil
}

// redactURL keeps a proxy's password out of errors.
func redactURL(s string) string {
	if u, err := url.Parse(s); err == nil && u.User != nil {
		return u.Redacted()
	}
	return s
}

// checkCredential applies CDH's rule: the resource goes to a file below
// CredentialDir, by a path without "." or ".." components.
func checkCredential(c Credential) error {
	if _, err := attest.ParseResourceURI(c.ResourceURI); err != nil {
		return fmt.Errorf("resource_uri: %w", err)
	}
	if !strings.HasPrefix(c.Path, CredentialDir+"/") {
		return fmt.Errorf("path: %w: %q is not below %s", errdefs.ErrInvalidConfig, c.Path, CredentialDir)
	}
	for _, seg := range strings.Split(c.Path, "/") {
		if seg == "." || seg == ".." {
			return fmt.Errorf("path: %w: %q has a %q component", errdefs.ErrInvalidConfig, c.Path, seg)
		}
	}
	return nil
}
