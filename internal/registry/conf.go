package registry

import (
	"errors"
	"fmt"
	"os"
	"regexp"
	"sort"
	"strings"

	"github.com/BurntSushi/toml"
	"github.com/distribution/reference"
	"github.com/google/go-containerregistry/pkg/name"

	"github.com/guest-puller/guest-puller/internal/errdefs"
	"github.com/guest-puller/guest-puller/internal/refname"
)

// Conf is a containers-registries.conf(5) file in its version 2 format, read
// as containers/image (go.podman.io/image/v5) reads it: the [[registry]]
// tables with their prefixes, locations, mirrors, blocked and insecure flags,
// and the short-name settings (unqualified-search-registries, aliases,
// short-name-mode). The README lists where guest-puller differs
// ("Differences from containers/image"): unknown keys and a prefix defined
// twice are errors, blocked also applies to the asked name's prefix, and
// keys guest-puller cannot honour are refused.
type Conf struct {
	// registries are sorted by prefix: of two prefixes of the same length
	// that match, the first wins, as in containers/image.
	registries []confRegistry
	search     []string
	searchSet  bool // unqualified-search-registries is present, even empty
	mode       string
	aliases    map[string]reference.Named // a nil value unsets the alias
}

type confRegistry struct {
	Prefix             string         `toml:"prefix"`
	Location           string         `toml:"location"`
	Insecure           bool           `toml:"insecure"`
	Blocked            bool           `toml:"blocked"`
	MirrorByDigestOnly bool           `toml:"mirror-by-digest-only"`
	PullFromMirror     string         `toml:"pull-from-mirror"`
	NamespaceProxy     string         `toml:"namespace-proxy"`
	Mirrors            []confEndpoint `toml:"mirror"`
}

type confEndpoint struct {
	Location       string `toml:"location"`
	Insecure       bool   `toml:"insecure"`
	PullFromMirror string `toml:"pull-from-mirror"`
	NamespaceProxy string `toml:"namespace-proxy"`
}

type confFile struct {
	UnqualifiedSearchRegistries    []string          `toml:"unqualified-search-registries"`
	ShortNameMode                  string            `toml:"short-name-mode"`
	CredentialHelpers              []string          `toml:"credential-helpers"`
	AdditionalLayerStoreAuthHelper string            `toml:"additional-layer-store-auth-helper"`
	Aliases                        map[string]string `toml:"aliases"`
	Registries                     []confRegistry    `toml:"registry"`
}

// Short-name modes (containers-registries.conf(5)).
const (
	ShortNameDisabled   = "disabled"
	ShortNamePermissive = "permissive"
	ShortNameEnforcing  = "enforcing"
)

// LoadConf reads a registries.conf v2 file. Unknown keys, the version 1
// format and inconsistent tables are errors wrapping errdefs.ErrInvalidConfig.
func LoadConf(path string) (*Conf, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("registries.conf: %w: %w", errdefs.ErrInvalidConfig, err)
	}
	c, err := ParseConf(data)
	if err != nil {
		return nil, fmt.Errorf("registries.conf %s: %w", path, err)
	}
	return c, nil
}

func confErrorf(format string, args ...any) error {
	return fmt.Errorf("%w: %s", errdefs.ErrInvalidConfig, fmt.Sprintf(format, args...))
}

// ParseConf parses the content of a registries.conf v2 file.
func ParseConf(data []byte) (*Conf, error) {
	var f confFile
	md, err := toml.Decode(string(data), &f)
	if err != nil {
		return nil, confErrorf("%v", err)
	}
	if und := md.Undecoded(); len(und) > 0 {
		if md.IsDefined("registries") {
			return nil, confErrorf("the version 1 format ([registries.*]) is not supported; use [[registry]] tables")
		}
		keys := make([]string, len(und))
		for i, k := range und {
			keys[i] = k.String()
		}
		// containers/image ignores unknown keys; a misspelt "blocked" or
		// "insecure" must not silently change what is pulled from where.
		return nil, confErrorf("unknown keys %s", strings.Join(keys, ", "))
	}
	if f.AdditionalLayerStoreAuthHelper != "" {
		return nil, confErrorf("additional-layer-store-auth-helper is not supported: guest-puller has no additional layer store")
	}
	c := &Conf{searchSet: md.IsDefined("unqualified-search-registries")}
	if c.registries, err = postProcess(f.Registries); err != nil {
		return nil, err
	}
	for _, r := range f.UnqualifiedSearchRegistries {
		r, err := trimLocation(r)
		if err != nil {
			return nil, err
		}
		if !anchoredDomain.MatchString(r) {
			return nil, confErrorf("unqualified-search-registries: %q is not a registry host[:port]", r)
		}
		c.search = append(c.search, r)
	}
	switch f.ShortNameMode {
	case "", ShortNameDisabled, ShortNamePermissive, ShortNameEnforcing:
		c.mode = f.ShortNameMode
	default:
		return nil, confErrorf("short-name-mode %q: must be disabled, permissive or enforcing", f.ShortNameMode)
	}
	if c.aliases, err = parseAliases(f.Aliases); err != nil {
		return nil, err
	}
	return c, nil
}

var anchoredDomain = regexp.MustCompile(`^` + reference.DomainRegexp.String() + `$`)

// trimLocation drops trailing slashes and refuses URLs, as containers/image
// does for prefixes, locations and search registries.
func trimLocation(s string) (string, error) {
	t := strings.TrimRight(s, "/")
	if strings.HasPrefix(t, "http://") || strings.HasPrefix(t, "https://") {
		return "", confErrorf("invalid location %q: URI schemes are not supported", s)
	}
	return t, nil
}

// postProcess validates the [[registry]] tables as containers/image does
// and sorts them by prefix.
func postProcess(regs []confRegistry) ([]confRegistry, error) {
	byPrefix := map[string]bool{}
	byLocation := map[string][]*confRegistry{} // tables sharing a location (or a wildcard prefix)
	for i := range regs {
		r := &regs[i]
		var err error
		if r.Location, err = trimLocation(r.Location); err != nil {
			return nil, err
		}
		if r.Prefix == "" {
			if r.Location == "" {
				return nil, confErrorf("[[registry]] #%d has neither prefix nor location", i+1)
			}
			r.Prefix = r.Location
		} else {
			if r.Prefix, err = trimLocation(r.Prefix); err != nil {
				return nil, err
			}
			if !strings.HasPrefix(r.Prefix, "*.") && r.Location == "" {
				return nil, confErrorf("[[registry]] prefix %q has no location (only a *.domain prefix may go without one)", r.Prefix)
			}
		}
		// Prefixes are matched against references whose host is spelled
		// canonically (refname.Parse), so they are spelled the same way.
		r.Prefix = refname.Scope(r.Prefix)
		if strings.HasPrefix(r.Prefix, "*.") && strings.ContainsAny(r.Prefix, "/@:") {
			return nil, confErrorf("[[registry]] prefix %q: a wildcard prefix is a domain only (*.example.com)", r.Prefix)
		}
		// containers/image keeps the first of two tables with the same
		// prefix and ignores the second; which of two conflicting
		// settings was meant cannot be known.
		if byPrefix[r.Prefix] {
			return nil, confErrorf("[[registry]] prefix %q is defined twice", r.Prefix)
		}
		byPrefix[r.Prefix] = true
		if r.PullFromMirror != "" {
			return nil, confErrorf("[[registry]] %q: pull-from-mirror belongs in a [[registry.mirror]] table", r.Prefix)
		}
		if r.NamespaceProxy != "" {
			return nil, confErrorf("[[registry]] %q: namespace-proxy is not supported", r.Prefix)
		}
		for j := range r.Mirrors {
			m := &r.Mirrors[j]
			if m.Location, err = trimLocation(m.Location); err != nil {
				return nil, err
			}
			if m.Location == "" {
				return nil, confErrorf("[[registry]] %q: a mirror has no location", r.Prefix)
			}
			if m.NamespaceProxy != "" {
				return nil, confErrorf("mirror %q of %q: namespace-proxy is not supported", m.Location, r.Prefix)
			}
			if r.MirrorByDigestOnly && m.PullFromMirror != "" {
				return nil, confErrorf("mirror %q of %q: pull-from-mirror conflicts with the registry's mirror-by-digest-only", m.Location, r.Prefix)
			}
			switch m.PullFromMirror {
			case "", "all", "digest-only", "tag-only":
			default:
				return nil, confErrorf("mirror %q of %q: pull-from-mirror must be all, digest-only or tag-only, not %q", m.Location, r.Prefix, m.PullFromMirror)
			}
		}
		key := r.Location
		if key == "" {
			key = r.Prefix
		}
		byLocation[key] = append(byLocation[key], r)
	}
	for loc, rs := range byLocation {
		for _, r := range rs[1:] {
			if r.Insecure != rs[0].Insecure {
				return nil, confErrorf("registry %q is defined more than once with conflicting insecure settings", loc)
			}
			if r.Blocked != rs[0].Blocked {
				return nil, confErrorf("registry %q is defined more than once with conflicting blocked settings", loc)
			}
		}
	}
	out := append([]confRegistry(nil), regs...)
	sort.Slice(out, func(i, j int) bool { return out[i].Prefix < out[j].Prefix })
	return out, nil
}

// parseAliases checks [aliases] as containers/image does: each name is a
// short name without tag or digest, each value a fully qualified repository
// without tag or digest, or "" to unset the alias.
func parseAliases(in map[string]string) (map[string]reference.Named, error) {
	out := make(map[string]reference.Named, len(in))
	names := make([]string, 0, len(in))
	for n := range in {
		names = append(names, n)
	}
	sort.Strings(names) // a stable error
	for _, n := range names {
		if err := validateShortName(n); err != nil {
			return nil, confErrorf("aliases: %v", err)
		}
		v := in[n]
		if v == "" {
			out[n] = nil
			continue
		}
		ref, err := reference.Parse(v)
		if err != nil {
			return nil, confErrorf("aliases: %q = %q: %v", n, v, err)
		}
		named, ok := ref.(reference.Named)
		switch {
		case !ok:
			return nil, confErrorf("aliases: %q = %q: must name a registry and a repository", n, v)
		case isDigested(ref):
			return nil, confErrorf("aliases: %q = %q: must not have a digest", n, v)
		case isTagged(ref):
			return nil, confErrorf("aliases: %q = %q: must not have a tag", n, v)
		case !isHost(reference.Domain(named)):
			return nil, confErrorf("aliases: %q = %q: must name a registry and a repository", n, v)
		}
		if out[n], err = reference.ParseNormalizedNamed(v); err != nil {
			return nil, confErrorf("aliases: %q = %q: %v", n, v, err)
		}
	}
	return out, nil
}

func isTagged(r reference.Reference) bool   { _, ok := r.(reference.Tagged); return ok }
func isDigested(r reference.Reference) bool { _, ok := r.(reference.Digested); return ok }

// isHost is the rule containers/image's short names follow: the first
// component of a name is a registry when it has a dot or a port or is
// localhost.
func isHost(domain string) bool {
	return strings.ContainsAny(domain, ".:") || domain == "localhost"
}

// validateShortName accepts a name without registry, tag or digest.
func validateShortName(s string) error {
	ref, err := reference.Parse(s)
	if err != nil {
		return fmt.Errorf("short name %q: %v", s, err)
	}
	named, ok := ref.(reference.Named)
	switch {
	case !ok:
		return fmt.Errorf("short name %q has no name", s)
	case isDigested(ref):
		return fmt.Errorf("short name %q must not have a digest", s)
	case isTagged(ref):
		return fmt.Errorf("short name %q must not have a tag", s)
	case isHost(reference.Domain(named)):
		return fmt.Errorf("short name %q must not name a registry", s)
	}
	return nil
}

// Source is one place an image may be pulled from, in the order to try.
type Source struct {
	// Ref is the reference at this source (rewritten for a mirror or location).
	Ref name.Reference
	// Insecure allows plain http and unverified TLS for this source.
	Insecure bool
	// Mirror is true for a mirror, false for the primary location.
	Mirror bool
}

// ErrBlocked is wrapped by Sources when registries.conf blocks the image.
var ErrBlocked = fmt.Errorf("%w: registry is blocked by registries.conf", errdefs.ErrRefused)

// Sources returns the places to pull ref from, mirrors first, as
// containers/image does. A mirror or location whose own prefix is blocked
// is left out; the image is refused when its own prefix is blocked or no
// source is left. A nil Conf yields ref itself.
func (c *Conf) Sources(ref name.Reference, opts ...name.Option) ([]Source, error) {
	if c == nil {
		return []Source{{Ref: ref}}, nil
	}
	full := refname.Reference(ref)
	reg := c.find(refname.Repository(ref.Context()))
	if reg == nil {
		return []Source{{Ref: ref}}, nil
	}
	// containers/image checks blocked only for the host each source
	// connects to; a blocked prefix refuses its images here whatever
	// location it names.
	if reg.Blocked {
		return nil, fmt.Errorf("%s: %w (prefix %q)", full, ErrBlocked, reg.Prefix)
	}
	_, byDigest := ref.(name.Digest)
	var eps []confEndpoint
	for _, m := range reg.Mirrors {
		mode := m.PullFromMirror
		if reg.MirrorByDigestOnly {
			mode = "digest-only"
		}
		if (mode == "digest-only" && !byDigest) || (mode == "tag-only" && byDigest) {
			continue
		}
		eps = append(eps, m)
	}
	primary := len(eps)
	eps = append(eps, confEndpoint{Location: reg.Location, Insecure: reg.Insecure})
	var out []Source
	var blocked []string
	for i, ep := range eps {
		r, err := rewrite(full, reg.Prefix, ep.Location, opts...)
		if err != nil {
			return nil, fmt.Errorf("%w: registries.conf prefix %q, location %q for %s: %v", errdefs.ErrInvalidConfig, reg.Prefix, ep.Location, full, err)
		}
		if other := c.find(refname.Repository(r.Context())); other != nil && other.Blocked {
			blocked = append(blocked, refname.Reference(r))
			continue
		}
		out = append(out, Source{Ref: r, Insecure: ep.Insecure, Mirror: i < primary})
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s: %w (every source is: %s)", full, ErrBlocked, strings.Join(blocked, ", "))
	}
	return out, nil
}

// InsecureHosts lists the registries (host[:port]) that registries.conf
// marks insecure, as a primary location or as a mirror. TLS is a property of
// a host, so a namespace's insecure flag applies to its whole host.
func (c *Conf) InsecureHosts() []string {
	if c == nil {
		return nil
	}
	var hosts []string
	for _, r := range c.registries {
		if r.Insecure && r.Location != "" {
			host, _, _ := strings.Cut(r.Location, "/")
			hosts = append(hosts, host)
		}
		for _, m := range r.Mirrors {
			if m.Insecure {
				host, _, _ := strings.Cut(m.Location, "/")
				hosts = append(hosts, host)
			}
		}
	}
	return hosts
}

// insecureWildcard reports whether an insecure wildcard prefix without a
// location (*.example.com) covers host.
func (c *Conf) insecureWildcard(host string) bool {
	if c == nil {
		return false
	}
	for _, r := range c.registries {
		if r.Insecure && r.Location == "" && matchPrefix(refname.Host(host), r.Prefix) >= 0 {
			return true
		}
	}
	return false
}

// find returns the [[registry]] table whose prefix is the longest to match
// repo (host[:port]/path, as refname.Repository spells it), or nil.
func (c *Conf) find(repo string) *confRegistry {
	var best *confRegistry
	for i := range c.registries {
		r := &c.registries[i]
		if matchPrefix(repo, r.Prefix) >= 0 && (best == nil || len(r.Prefix) > len(best.Prefix)) {
			best = r
		}
	}
	return best
}

// matchPrefix returns the length of the part of ref that prefix matches, or
// -1: prefix must be followed in ref by its end, "/", ":" or "@". A
// wildcard prefix (*.example.com) matches a host ending in .example.com,
// and the matched part is that host.
func matchPrefix(ref, prefix string) int {
	if suffix, ok := strings.CutPrefix(prefix, "*"); ok {
		i := strings.Index(ref, suffix)
		if i < 0 || strings.Contains(ref[:i], "/") {
			return -1
		}
		i += len(suffix)
		if i < len(ref) && !strings.ContainsRune(":/@", rune(ref[i])) {
			return -1
		}
		return i
	}
	if !strings.HasPrefix(ref, prefix) {
		return -1
	}
	if len(ref) > len(prefix) && !strings.ContainsRune(":/@", rune(ref[len(prefix)])) {
		return -1
	}
	return len(prefix)
}

// rewrite replaces the part of full that prefix matches with location; an
// empty location (a wildcard prefix's) leaves full as it is.
func rewrite(full, prefix, location string, opts ...name.Option) (name.Reference, error) {
	if location != "" {
		n := matchPrefix(full, prefix)
		if n < 0 {
			return nil, errors.New("prefix does not match") // unreachable: find matched the repository
		}
		full = location + full[n:]
	}
	return name.ParseReference(full, append([]name.Option{name.StrictValidation}, opts...)...)
}
