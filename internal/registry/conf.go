package registry

import (
	"fmt"
	"os"
	"sort"
	"strings"

	"github.com/BurntSushi/toml"
	"github.com/google/go-containerregistry/pkg/name"

	"github.com/guest-puller/guest-puller/internal/errdefs"
	"github.com/guest-puller/guest-puller/internal/refname"
)

// Conf is a containers-registries.conf(5) file in its version 2 format: the
// [[registry]] tables with their prefixes, locations, mirrors, blocked and
// insecure flags. Short-name settings are accepted and ignored, because
// guest-puller always normalizes references to fully qualified names.
type Conf struct {
	registries []confRegistry
}

type confRegistry struct {
	Prefix             string         `toml:"prefix"`
	Location           string         `toml:"location"`
	Insecure           bool           `toml:"insecure"`
	Blocked            bool           `toml:"blocked"`
	MirrorByDigestOnly bool           `toml:"mirror-by-digest-only"`
	Mirrors            []confEndpoint `toml:"mirror"`
}

type confEndpoint struct {
	Location       string `toml:"location"`
	Insecure       bool   `toml:"insecure"`
	PullFromMirror string `toml:"pull-from-mirror"`
}

type confFile struct {
	UnqualifiedSearchRegistries []string          `toml:"unqualified-search-registries"`
	ShortNameMode               string            `toml:"short-name-mode"`
	CredentialHelpers           []string          `toml:"credential-helpers"`
	Aliases                     map[string]string `toml:"aliases"`
	Registries                  []confRegistry    `toml:"registry"`
}

// LoadConf reads a registries.conf v2 file. Unknown keys, the deprecated v1
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

// ParseConf parses the content of a registries.conf v2 file.
func ParseConf(data []byte) (*Conf, error) {
	var f confFile
	md, err := toml.Decode(string(data), &f)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errdefs.ErrInvalidConfig, err)
	}
	if und := md.Undecoded(); len(und) > 0 {
		keys := make([]string, len(und))
		for i, k := range und {
			keys[i] = k.String()
		}
		if md.IsDefined("registries") {
			return nil, fmt.Errorf("%w: the version 1 format ([registries.*]) is not supported; use [[registry]] tables", errdefs.ErrInvalidConfig)
		}
		return nil, fmt.Errorf("%w: unknown keys %s", errdefs.ErrInvalidConfig, strings.Join(keys, ", "))
	}
	seen := map[string]bool{}
	for i := range f.Registries {
		r := &f.Registries[i]
		if r.Prefix == "" {
			r.Prefix = r.Location
		}
		// Prefixes are matched against references whose host is spelled
		// canonically (refname.Parse), so they are spelled the same way.
		r.Prefix = refname.Scope(r.Prefix)
		if r.Prefix == "" {
			return nil, fmt.Errorf("%w: [[registry]] #%d has neither prefix nor location", errdefs.ErrInvalidConfig, i+1)
		}
		if seen[r.Prefix] {
			return nil, fmt.Errorf("%w: prefix %q is defined twice", errdefs.ErrInvalidConfig, r.Prefix)
		}
		seen[r.Prefix] = true
		if err := validatePrefix(r.Prefix); err != nil {
			return nil, fmt.Errorf("%w: [[registry]] prefix %q: %v", errdefs.ErrInvalidConfig, r.Prefix, err)
		}
		if strings.HasPrefix(r.Prefix, "*.") && r.Location != "" {
			return nil, fmt.Errorf("%w: [[registry]] prefix %q: a wildcard prefix cannot have a location", errdefs.ErrInvalidConfig, r.Prefix)
		}
		if r.Location != "" {
			if err := validateLocation(r.Location); err != nil {
				return nil, fmt.Errorf("%w: [[registry]] location %q: %v", errdefs.ErrInvalidConfig, r.Location, err)
			}
		}
		for _, m := range r.Mirrors {
			if err := validateLocation(m.Location); err != nil {
				return nil, fmt.Errorf("%w: mirror %q of %q: %v", errdefs.ErrInvalidConfig, m.Location, r.Prefix, err)
			}
			switch m.PullFromMirror {
			case "", "all", "digest-only", "tag-only":
			default:
				return nil, fmt.Errorf("%w: mirror %q: pull-from-mirror must be all, digest-only or tag-only", errdefs.ErrInvalidConfig, m.Location)
			}
			if m.PullFromMirror != "" && m.PullFromMirror != "all" && r.MirrorByDigestOnly {
				return nil, fmt.Errorf("%w: mirror %q: pull-from-mirror conflicts with mirror-by-digest-only", errdefs.ErrInvalidConfig, m.Location)
			}
		}
	}
	return &Conf{registries: f.Registries}, nil
}

func validatePrefix(p string) error {
	if strings.HasPrefix(p, "*.") {
		if strings.ContainsAny(p, "/:@") {
			return fmt.Errorf("a wildcard prefix is a host name only (*.example.com)")
		}
		return nil
	}
	return validateLocation(p)
}

func validateLocation(l string) error {
	if l == "" {
		return fmt.Errorf("empty location")
	}
	host, _, _ := strings.Cut(l, "/")
	if _, err := name.NewRegistry(host, name.StrictValidation); err != nil {
		return err
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
// containers/image does. A nil Conf yields ref itself.
func (c *Conf) Sources(ref name.Reference, opts ...name.Option) ([]Source, error) {
	if c == nil {
		return []Source{{Ref: ref}}, nil
	}
	full := refname.Reference(ref)
	reg, matched := c.match(full)
	if reg == nil {
		return []Source{{Ref: ref}}, nil
	}
	if reg.Blocked {
		return nil, fmt.Errorf("%s: %w (prefix %q)", full, ErrBlocked, reg.Prefix)
	}
	_, byDigest := ref.(name.Digest)
	var out []Source
	for _, m := range reg.Mirrors {
		mode := m.PullFromMirror
		if reg.MirrorByDigestOnly {
			mode = "digest-only"
		}
		if (mode == "digest-only" && !byDigest) || (mode == "tag-only" && byDigest) {
			continue
		}
		r, err := rewrite(full, matched, m.Location, opts...)
		if err != nil {
			return nil, fmt.Errorf("%w: mirror %q for %s: %v", errdefs.ErrInvalidConfig, m.Location, full, err)
		}
		out = append(out, Source{Ref: r, Insecure: m.Insecure, Mirror: true})
	}
	loc := reg.Location
	if loc == "" {
		loc = matched
	}
	r, err := rewrite(full, matched, loc, opts...)
	if err != nil {
		return nil, fmt.Errorf("%w: location %q for %s: %v", errdefs.ErrInvalidConfig, loc, full, err)
	}
	return append(out, Source{Ref: r, Insecure: reg.Insecure}), nil
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
		if r.Insecure && !strings.HasPrefix(r.Prefix, "*.") {
			loc := r.Location
			if loc == "" {
				loc = r.Prefix
			}
			host, _, _ := strings.Cut(loc, "/")
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

// insecureWildcard reports whether an insecure wildcard prefix
// (*.example.com) covers host.
func (c *Conf) insecureWildcard(host string) bool {
	if c == nil {
		return false
	}
	hostOnly, _, _ := strings.Cut(refname.Host(host), ":")
	for _, r := range c.registries {
		if r.Insecure && strings.HasPrefix(r.Prefix, "*.") && strings.HasSuffix(hostOnly, r.Prefix[1:]) {
			return true
		}
	}
	return false
}

// match returns the [[registry]] table with the longest prefix matching the
// familiar reference full, and the part of full that the prefix matched (for
// a wildcard prefix, the host).
func (c *Conf) match(full string) (*confRegistry, string) {
	type cand struct {
		r       *confRegistry
		matched string
		length  int
	}
	var cands []cand
	host, _, _ := strings.Cut(full, "/")
	for i := range c.registries {
		r := &c.registries[i]
		if strings.HasPrefix(r.Prefix, "*.") {
			hostOnly, _, _ := strings.Cut(host, ":")
			if strings.HasSuffix(hostOnly, r.Prefix[1:]) {
				cands = append(cands, cand{r, host, len(r.Prefix)})
			}
			continue
		}
		if !strings.HasPrefix(full, r.Prefix) {
			continue
		}
		if len(full) > len(r.Prefix) && !strings.ContainsRune("/:@", rune(full[len(r.Prefix)])) {
			continue
		}
		// A ":" right after a host-only prefix is a port, not a tag.
		if len(full) > len(r.Prefix) && full[len(r.Prefix)] == ':' && !strings.Contains(r.Prefix, "/") {
			continue
		}
		cands = append(cands, cand{r, r.Prefix, len(r.Prefix) + 1}) // exact prefixes beat wildcards of equal length
	}
	if len(cands) == 0 {
		return nil, ""
	}
	sort.SliceStable(cands, func(i, j int) bool { return cands[i].length > cands[j].length })
	return cands[0].r, cands[0].matched
}

func rewrite(full, prefix, location string, opts ...name.Option) (name.Reference, error) {
	return name.ParseReference(location+full[len(prefix):], append([]name.Option{name.StrictValidation}, opts...)...)
}
