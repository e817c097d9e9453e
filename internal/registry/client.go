package registry

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/containerd/platforms"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/google/go-containerregistry/pkg/v1/types"
	ispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sync/singleflight"

	"github.com/guest-puller/guest-puller/internal/errdefs"
	"github.com/guest-puller/guest-puller/internal/idleread"
	"github.com/guest-puller/guest-puller/internal/refname"
	"github.com/guest-puller/guest-puller/internal/untrusted"
)

const (
	// maxManifestSize bounds what a registry can make us read for a
	// manifest or index (containers/image uses the same limit).
	maxManifestSize = 4 << 20
	// maxManifestTokens bounds the JSON tokens (keys, values, brackets)
	// of a manifest or index. Decoded, a token costs up to twenty times
	// its bytes (an annotation `"1":""` is 7 bytes of JSON and some 140 in
	// a map): 4 MiB of annotations took 50 MiB of memory per pull, 460
	// MiB in a daemon serving 8 at once. Real manifests hold a few
	// thousand (an index of 100 platforms, 500 layers with their
	// annotations).
	maxManifestTokens = 1 << 16
	// maxConfigSize bounds an image configuration blob, as
	// containers/image does (iolimits.MaxConfigBodySize): real ones are a
	// few KiB, and what a pull decodes of one is bounded in pull.
	maxConfigSize = 4 << 20
)

// Options configure a Client.
type Options struct {
	Credentials Credentials
	// Insecure lists registries (host[:port]) that may be reached over plain
	// http or with a certificate that does not verify.
	Insecure []string
	// Conf is the registries.conf (mirrors, blocked, insecure); nil for none.
	Conf *Conf
	// Platform selects from an index, OS/ARCH[/VARIANT]; "" means the
	// running platform. A single-platform image whose config names another
	// platform is refused, unless AnyPlatform.
	Platform string
	// AnyPlatform takes a single-platform image whatever platform it is
	// for: for tools that copy images (encrypt), not for pulls that run
	// them.
	AnyPlatform bool
	// UserAgent is sent with every request.
	UserAgent string
	// Transport replaces the network transports (tests). It then serves
	// both secure and insecure hosts.
	Transport http.RoundTripper
	// Retry says how failed requests are repeated; zero fields take
	// DefaultRetry's.
	Retry Retry
	// Proxy picks each request's proxy, as http.Transport.Proxy does; nil
	// means the environment's (HTTPS_PROXY, HTTP_PROXY, NO_PROXY).
	Proxy func(*http.Request) (*url.URL, error)
	// RootCAs, if set, are the CAs a registry's certificate must chain to,
	// in place of the system's.
	RootCAs *x509.CertPool
	// IdleTimeout is how long a registry may send nothing while a request
	// waits for its answer or reads its body before the request fails
	// (and is retried, or the blob resumed); 0 means
	// idleread.DefaultTimeout.
	IdleTimeout time.Duration
}

// Client reads images from registries. It is safe for concurrent use.
//
// A Client is its credentials (a keychain) over connections it shares:
// clients made by WithCredentials reuse their parent's transports, so
// per-request credentials cost no new connection pool.
type Client struct {
	*shared
	keychain authn.Keychain

	// auths holds, per repository, the transport that authenticates to it
	// (the token handshake done once, shared by every later request);
	// flight makes concurrent first requests share one handshake.
	mu     sync.Mutex
	auths  map[string]http.RoundTripper
	flight singleflight.Group
}

// shared is what every Client made from one New has in common.
type shared struct {
	opts     Options
	conf     *Conf
	insecure map[string]bool
	platform ispec.Platform
	match    platforms.MatchComparer
	retry    Retry
	// rt is the stack under authentication, for every repository: the
	// one retry layer, the user agent, the idle timeout, TLS-by-default,
	// the connections.
	rt http.RoundTripper
}

// handshakeTimeout bounds a shared token handshake (ping and token, with
// their retries), which runs on no caller's context.
const handshakeTimeout = 2 * time.Minute

// New returns a Client. Bad options wrap errdefs.ErrInvalidConfig.
func New(opts Options) (*Client, error) {
	kc, err := opts.Credentials.Keychain()
	if err != nil {
		return nil, err
	}
	p := platforms.DefaultSpec()
	if opts.Platform != "" {
		if p, err = platforms.Parse(opts.Platform); err != nil {
			return nil, fmt.Errorf("--platform %q: %w: %v", opts.Platform, errdefs.ErrInvalidConfig, err)
		}
	}
	p = platforms.Normalize(p)
	s := &shared{
		opts:     opts,
		conf:     opts.Conf,
		insecure: map[string]bool{},
		platform: p,
		match:    platforms.Only(p),
		retry:    opts.Retry.withDefaults(),
	}
	for _, h := range opts.Insecure {
		if _, err := name.NewRegistry(h, name.StrictValidation); err != nil {
			return nil, fmt.Errorf("--insecure-registry %q: %w: %v", h, errdefs.ErrInvalidConfig, err)
		}
		s.insecure[refname.Host(h)] = true
	}
	for _, h := range opts.Conf.InsecureHosts() {
		s.insecure[refname.Host(h)] = true
	}
	secure, insecure := opts.Transport, opts.Transport
	if opts.Transport == nil {
		secure, insecure = newBaseTransport(false, opts.Proxy, opts.RootCAs), newBaseTransport(true, opts.Proxy, nil)
	}
	idle := opts.IdleTimeout
	if idle <= 0 {
		idle = idleread.DefaultTimeout
	}
	var rt http.RoundTripper = &idleread.Transport{
		Next: &schemeGuard{secure: secure, insecure: insecure, allowed: s.isInsecure},
		Idle: idle,
	}
	if opts.UserAgent != "" {
		rt = transport.NewUserAgent(rt, opts.UserAgent)
	}
	s.rt = &retryTransport{next: rt, policy: s.retry}
	return &Client{shared: s, keychain: kc, auths: map[string]http.RoundTripper{}}, nil
}

// WithCredentials returns a client like c that authenticates with creds
// instead (per-request credentials of the daemon's API). It shares c's
// connections; only the keychain and the tokens it earns are its own.
func (c *Client) WithCredentials(creds Credentials) (*Client, error) {
	kc, err := creds.Keychain()
	if err != nil {
		return nil, err
	}
	return &Client{shared: c.shared, keychain: kc, auths: map[string]http.RoundTripper{}}, nil
}

// ForRequest returns a client like c for one request that brings its own
// credentials, creds (USER[:PASS]): they are sent only to the registry the
// request names, ref's host, and to the primary location registries.conf
// gives ref (the same registry under the name the guest's configuration
// uses). Any other registry, a mirror among them, is authenticated as by c.
// The host, which picks the image name in a confidential guest, therefore
// cannot have the credentials sent anywhere but where the request itself
// goes. Like WithCredentials, it shares c's connections.
func (c *Client) ForRequest(creds string, ref name.Reference) (*Client, error) {
	auth, err := basicAuthenticator(creds)
	if err != nil {
		return nil, err
	}
	hosts := map[string]bool{refname.Host(ref.Context().RegistryStr()): true}
	if srcs, err := c.conf.Sources(ref); err == nil {
		for _, s := range srcs {
			if !s.Mirror {
				hosts[refname.Host(s.Ref.Context().RegistryStr())] = true
			}
		}
	}
	kc := boundKeychain{hosts: hosts, auth: auth, others: c.keychain}
	return &Client{shared: c.shared, keychain: kc, auths: map[string]http.RoundTripper{}}, nil
}

// Platform is the platform the client selects from indexes.
func (c *Client) Platform() ispec.Platform { return c.platform }

func (s *shared) isInsecure(host string) bool {
	host = refname.Host(host)
	return s.insecure[host] || s.conf.insecureWildcard(host)
}

// Image is a resolved, digest-pinned image: its manifest and configuration,
// both checked against their digests.
type Image struct {
	// Ref is the reference as asked for.
	Ref name.Reference
	// Source is where the image was found (a mirror, possibly); its blobs
	// are read from Source.Ref's repository.
	Source Source
	// Digest is the platform manifest's digest; IndexDigest is that of the
	// index it was selected from, zero when the reference named a manifest.
	Digest      v1.Hash
	IndexDigest v1.Hash
	MediaType   types.MediaType
	Manifest    *v1.Manifest
	RawManifest []byte
	// RawConfig is the image configuration blob.
	RawConfig []byte
}

// Repo is the repository blobs and signatures are read from.
func (img *Image) Repo() name.Repository { return img.Source.Ref.Context() }

// ResolveName turns an image name as the user gave it into the references
// to try, resolving a short name through registries.conf (see Conf.Resolve).
func (c *Client) ResolveName(image string) (*Resolution, error) {
	return c.conf.Resolve(image)
}

// Resolve finds ref at its first working source (mirrors in order, then
// the primary location) and returns its platform manifest and config.
func (c *Client) Resolve(ctx context.Context, ref name.Reference) (*Image, error) {
	sources, err := c.conf.Sources(ref, c.nameOpts(ref.Context().RegistryStr())...)
	if err != nil {
		return nil, err
	}
	var errs []string
	for _, src := range sources {
		src.Ref = c.pinScheme(src.Ref, src.Insecure)
		img, err := c.resolveAt(ctx, ref, src)
		if err == nil {
			return img, nil
		}
		// An integrity failure or a refusal is the answer, not a reason to
		// try a mirror that may be more willing.
		if errors.Is(err, errdefs.ErrIntegrity) || errors.Is(err, errdefs.ErrInvalidConfig) || ctx.Err() != nil || len(sources) == 1 {
			return nil, err
		}
		errs = append(errs, fmt.Sprintf("%s: %v", src.Ref.Context().RegistryStr(), err))
	}
	return nil, fmt.Errorf("%s: no source has the image: %s", refname.Reference(ref), strings.Join(errs, "; "))
}

func (c *Client) nameOpts(host string) []name.Option {
	if c.isInsecure(host) {
		return []name.Option{name.Insecure}
	}
	return nil
}

// pinScheme re-parses ref so that go-containerregistry uses plain http
// exactly for the registries allowed to speak it.
func (c *Client) pinScheme(ref name.Reference, insecure bool) name.Reference {
	host := ref.Context().RegistryStr()
	if !insecure && !c.isInsecure(host) {
		return ref
	}
	r, err := name.ParseReference(ref.String(), name.Insecure)
	if err != nil {
		return ref
	}
	return r
}

func (c *Client) resolveAt(ctx context.Context, ref name.Reference, src Source) (*Image, error) {
	rt, err := c.transportFor(ctx, src.Ref.Context())
	if err != nil {
		return nil, err
	}
	raw, mt, dgst, err := c.manifest(ctx, src.Ref, rt)
	if err != nil {
		return nil, err
	}
	img := &Image{Ref: ref, Source: src}
	if mt.IsIndex() {
		idx, err := v1.ParseIndexManifest(bytes.NewReader(raw))
		if err != nil {
			return nil, fmt.Errorf("%s: index %s: %w", refname.Reference(ref), dgst, untrusted.Error(err))
		}
		child, err := c.selectPlatform(idx)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", refname.Reference(ref), err)
		}
		img.IndexDigest = dgst
		childRef := src.Ref.Context().Digest(child.Digest.String())
		if raw, mt, dgst, err = c.manifest(ctx, childRef, rt); err != nil {
			return nil, err
		}
		if mt.IsIndex() {
			return nil, fmt.Errorf("%s: index entry %s is itself an index", refname.Reference(ref), child.Digest)
		}
	}
	switch mt {
	case types.OCIManifestSchema1, types.DockerManifestSchema2:
	case types.DockerManifestSchema1, types.DockerManifestSchema1Signed:
		return nil, fmt.Errorf("%s: Docker schema 1 manifests are not supported", refname.Reference(ref))
	default:
		return nil, fmt.Errorf("%s: unsupported manifest media type %s", refname.Reference(ref), untrusted.Quote(string(mt)))
	}
	m, err := v1.ParseManifest(bytes.NewReader(raw))
	if err != nil {
		return nil, fmt.Errorf("%s: manifest %s: %w", refname.Reference(ref), dgst, untrusted.Error(err))
	}
	img.Digest, img.MediaType, img.Manifest, img.RawManifest = dgst, mt, m, raw
	if m.Config.Size > maxConfigSize {
		return nil, fmt.Errorf("%s: config %s is %d bytes, more than the %d allowed", refname.Reference(ref), m.Config.Digest, m.Config.Size, maxConfigSize)
	}
	rc, err := c.Blob(ctx, img.Repo(), m.Config)
	if err != nil {
		return nil, fmt.Errorf("%s: config %s: %w", refname.Reference(ref), m.Config.Digest, err)
	}
	defer rc.Close()
	img.RawConfig, err = readVerified(rc, m.Config.Digest, m.Config.Size)
	if err != nil {
		return nil, fmt.Errorf("%s: config %s: %w", refname.Reference(ref), m.Config.Digest, err)
	}
	if err := c.checkPlatform(img.RawConfig); err != nil {
		return nil, fmt.Errorf("%s: %w", refname.Reference(ref), err)
	}
	return img, nil
}

// checkPlatform refuses an image whose configuration names another
// platform than the one pulled for. A single-platform image is otherwise
// taken as it is: an arm64 image on an amd64 guest would unpack and only
// fail when its first binary runs. A config that names no platform makes
// no claim to check.
func (c *Client) checkPlatform(rawConfig []byte) error {
	var cfg struct {
		OS           string `json:"os"`
		Architecture string `json:"architecture"`
		Variant      string `json:"variant"`
	}
	if err := json.Unmarshal(rawConfig, &cfg); err != nil {
		return fmt.Errorf("image config: %w: %v", errdefs.ErrIntegrity, err)
	}
	if c.opts.AnyPlatform || cfg.OS == "" || cfg.Architecture == "" {
		return nil
	}
	p := platforms.Normalize(ispec.Platform{OS: cfg.OS, Architecture: cfg.Architecture, Variant: cfg.Variant})
	if c.match.Match(p) {
		return nil
	}
	if c.opts.Platform == "" {
		return fmt.Errorf("%w: the image is for %s, not for %s, the platform this runs on: give --platform %s to pull it anyway",
			errdefs.ErrInvalidConfig, platforms.Format(p), platforms.Format(c.platform), platforms.Format(p))
	}
	return fmt.Errorf("%w: the image is for %s, not for %s (--platform)", errdefs.ErrInvalidConfig, platforms.Format(p), platforms.Format(c.platform))
}

// manifestTypes are the manifest media types a pull asks a registry for
// (Docker schema 1 only to refuse it by name).
var manifestTypes = []string{
	string(types.OCIManifestSchema1), string(types.DockerManifestSchema2),
	string(types.OCIImageIndex), string(types.DockerManifestList),
	string(types.DockerManifestSchema1), string(types.DockerManifestSchema1Signed),
}

// manifest fetches the manifest or index ref names, over rt, as
// fetchManifest does, its errors said for ref.
func (c *Client) manifest(ctx context.Context, ref name.Reference, rt http.RoundTripper) ([]byte, types.MediaType, v1.Hash, error) {
	raw, mt, dgst, err := fetchManifest(ctx, ref, rt)
	if err != nil {
		return nil, "", v1.Hash{}, describe(ref, err)
	}
	return raw, mt, dgst, nil
}

// Manifest fetches the manifest or index ref names with the bounds of a
// pull's own (4 MiB, maxManifestTokens before it is decoded), checked
// against ref's digest when ref has one: for the signature manifests
// verify reads. Its errors are as go-containerregistry's remote.Get
// returns them (a *transport.Error for what the registry answered).
func (c *Client) Manifest(ctx context.Context, ref name.Reference) ([]byte, types.MediaType, error) {
	rt, err := c.transportFor(ctx, ref.Context())
	if err != nil {
		return nil, "", err
	}
	raw, mt, _, err := fetchManifest(ctx, ref, rt)
	return raw, mt, err
}

// fetchManifest GETs the manifest or index ref names over rt, and checks
// its size, its JSON tokens and, when ref has one, its digest. It is read
// here rather than by go-containerregistry's remote.Get, which decodes
// every manifest it fetches (for its artifact type) before anyone can
// bound what the decoding costs: checkTokens does, first. Errors do not
// name ref.
func fetchManifest(ctx context.Context, ref name.Reference, rt http.RoundTripper) ([]byte, types.MediaType, v1.Hash, error) {
	repo := ref.Context()
	u := url.URL{Scheme: repo.Scheme(), Host: repo.RegistryStr(), Path: fmt.Sprintf("/v2/%s/manifests/%s", repo.RepositoryStr(), ref.Identifier())}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, "", v1.Hash{}, err
	}
	req.Header.Set("Accept", strings.Join(manifestTypes, ","))
	resp, err := (&http.Client{Transport: rt}).Do(req)
	if err != nil {
		return nil, "", v1.Hash{}, err
	}
	defer resp.Body.Close()
	if err := transport.CheckError(resp, http.StatusOK); err != nil {
		return nil, "", v1.Hash{}, err
	}
	var raw []byte
	if a, ok := resp.Body.(answer); ok {
		// Read whole by the retry layer already.
		raw = a.Bytes()
	} else if raw, err = io.ReadAll(io.LimitReader(resp.Body, maxManifestSize+1)); err != nil {
		return nil, "", v1.Hash{}, err
	}
	if len(raw) > maxManifestSize {
		return nil, "", v1.Hash{}, fmt.Errorf("manifest is larger than %d bytes", maxManifestSize)
	}
	sum := sha256.Sum256(raw)
	got := v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(sum[:])}
	if d, ok := ref.(name.Digest); ok && d.DigestStr() != got.String() {
		return nil, "", v1.Hash{}, fmt.Errorf("%w: manifest digest is %s", errdefs.ErrIntegrity, got)
	}
	if err := checkTokens(raw, maxManifestTokens); err != nil {
		return nil, "", v1.Hash{}, fmt.Errorf("manifest: %w", err)
	}
	mt := types.MediaType(resp.Header.Get("Content-Type"))
	if mt == "" {
		// An OCI manifest may leave mediaType out; sniff it.
		var probe struct {
			Manifests json.RawMessage `json:"manifests"`
		}
		_ = json.Unmarshal(raw, &probe)
		mt = types.OCIManifestSchema1
		if probe.Manifests != nil {
			mt = types.OCIImageIndex
		}
	}
	return raw, mt, got, nil
}

// checkTokens refuses JSON of more than max tokens before anything decodes
// it, reading it as a stream of tokens in constant memory. Malformed JSON
// is left for the decoder to report.
func checkTokens(raw []byte, max int) error {
	dec := json.NewDecoder(bytes.NewReader(raw))
	for n := 0; ; n++ {
		if _, err := dec.Token(); err != nil {
			return nil
		}
		if n == max {
			return fmt.Errorf("more than %d JSON tokens (keys, values and brackets), refused before decoding", max)
		}
	}
}

// selectPlatform picks the index entry that best matches the client's
// platform; entries without a platform (attestations, signatures) are
// never picked.
func (c *Client) selectPlatform(idx *v1.IndexManifest) (v1.Descriptor, error) {
	var best *v1.Descriptor
	var bestP ispec.Platform
	var avail []string
	for i := range idx.Manifests {
		d := &idx.Manifests[i]
		if d.Platform == nil || !d.MediaType.IsImage() && d.MediaType != "" {
			continue
		}
		p := ispec.Platform{OS: d.Platform.OS, Architecture: d.Platform.Architecture, Variant: d.Platform.Variant, OSVersion: d.Platform.OSVersion}
		avail = append(avail, platforms.Format(p))
		if !c.match.Match(p) {
			continue
		}
		if best == nil || c.match.Less(p, bestP) {
			best, bestP = d, p
		}
	}
	if best == nil {
		return v1.Descriptor{}, fmt.Errorf("%w: no manifest for platform %s in the index (it has: %s)", errdefs.ErrInvalidConfig, platforms.Format(c.platform), untrusted.Text(strings.Join(avail, ", ")))
	}
	return *best, nil
}

// RemoteOptions are the go-containerregistry options for reading repo, with
// authentication done once and shared by every later request to it.
func (c *Client) RemoteOptions(ctx context.Context, repo name.Repository) ([]remote.Option, error) {
	rt, err := c.transportFor(ctx, repo)
	if err != nil {
		return nil, err
	}
	return []remote.Option{
		remote.WithContext(ctx),
		remote.WithTransport(rt),
	}, nil
}

// transportFor returns the transport that authenticates to repo. The
// handshake (ping, token) is done once per repository and shared: by
// concurrent first callers through flight, and by every later one through
// auths. It runs on none of its callers' contexts, so a caller that gives
// up (a cancelled daemon request) fails alone, not the others waiting on
// the same handshake. A failure is not kept: the next call tries again.
func (c *Client) transportFor(ctx context.Context, repo name.Repository) (http.RoundTripper, error) {
	key := repo.String()
	c.mu.Lock()
	rt := c.auths[key]
	c.mu.Unlock()
	if rt != nil {
		return rt, nil
	}
	ch := c.flight.DoChan(key, func() (any, error) {
		hctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), handshakeTimeout)
		defer cancel()
		auth, err := authn.Resolve(hctx, c.keychain, repo)
		if err != nil {
			return nil, fmt.Errorf("credentials for %s: %w", repo.RegistryStr(), err)
		}
		rt, err := transport.NewWithContext(hctx, repo.Registry, auth, c.rt, []string{repo.Scope(transport.PullScope)})
		if err != nil {
			return nil, describe(repo, err)
		}
		c.mu.Lock()
		c.auths[key] = rt
		c.mu.Unlock()
		return rt, nil
	})
	select {
	case <-ctx.Done():
		return nil, fmt.Errorf("%s: %w", repo, ctx.Err())
	case r := <-ch:
		if r.Err != nil {
			return nil, r.Err
		}
		return r.Val.(http.RoundTripper), nil
	}
}

// describe turns registry errors into one line a user can act on.
func describe(what fmt.Stringer, err error) error {
	var terr *transport.Error
	if errors.As(err, &terr) {
		switch terr.StatusCode {
		case http.StatusUnauthorized, http.StatusForbidden:
			// Which credentials to check is for the caller to say: flags
			// on the command line, source_creds in the daemon.
			return fmt.Errorf("%s: %w: the registry answered %d %s", what, errdefs.ErrUnauthenticated, terr.StatusCode, http.StatusText(terr.StatusCode))
		case http.StatusNotFound:
			return fmt.Errorf("%s: %w in the registry", what, errdefs.ErrNotFound)
		}
	}
	var plain *plainHTTPError
	if errors.As(err, &plain) {
		// Said once, though the https attempt and go-containerregistry's
		// http fallback (upgraded to https) both met it.
		return fmt.Errorf("%s: %w", what, plain)
	}
	var dial *net.OpError
	if errors.As(err, &dial) && dial.Op == "dial" {
		// Said once: go-containerregistry tries https and then, for a
		// registry named insecure, http, and joins both attempts' errors.
		return fmt.Errorf("%s: cannot reach the registry: %w", what, untrusted.Error(dial))
	}
	// The registry wrote the rest of the message.
	return fmt.Errorf("%s: %w", what, untrusted.Error(err))
}

// readVerified reads a small blob whole and checks its digest and size.
func readVerified(r io.Reader, want v1.Hash, size int64) ([]byte, error) {
	if want.Algorithm != "sha256" {
		return nil, fmt.Errorf("%w: unsupported digest algorithm %q", errdefs.ErrIntegrity, want.Algorithm)
	}
	data, err := io.ReadAll(io.LimitReader(r, size+1))
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(data)
	if got := hex.EncodeToString(sum[:]); got != want.Hex || int64(len(data)) != size {
		return nil, fmt.Errorf("%w: content has digest sha256:%s and %d bytes, want %s and %d", errdefs.ErrIntegrity, got, len(data), want, size)
	}
	return data, nil
}
