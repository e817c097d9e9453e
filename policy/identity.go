package policy

import (
	"encoding/json"
	"fmt"
	"regexp"
	"strings"

	"github.com/distribution/reference"
)

// identityMatcher is a signedIdentity: whether a signature claiming the
// identity signed may stand for the image the user asked for (intended,
// always tagged or digested).
type identityMatcher interface {
	matches(intended reference.Named, signed string) bool
	String() string
}

type (
	matchExact             struct{}
	matchRepoDigestOrExact struct{}
	matchRepository        struct{}
	exactReference         struct{ ref reference.Named }
	exactRepository        struct{ repo reference.Named }
	remapIdentity          struct{ prefix, signedPrefix string }
)

// parseIdentity reads a signedIdentity object. An absent signedIdentity is
// matchRepoDigestOrExact, as in containers/image.
func parseIdentity(raw json.RawMessage, at string) (identityMatcher, error) {
	o, err := readObject(raw, at)
	if err != nil {
		return nil, err
	}
	typ, err := o.requiredStr("type")
	if err != nil {
		return nil, err
	}
	var m identityMatcher
	switch typ {
	case "matchExact":
		m = matchExact{}
	case "matchRepoDigestOrExact":
		m = matchRepoDigestOrExact{}
	case "matchRepository":
		m = matchRepository{}
	case "exactReference":
		s, err := o.requiredStr("dockerReference")
		if err != nil {
			return nil, err
		}
		ref, err := reference.ParseNormalizedNamed(s)
		if err != nil {
			return nil, invalidf(o.field("dockerReference"), "%q: %v", s, err)
		}
		if reference.IsNameOnly(ref) {
			return nil, invalidf(o.field("dockerReference"), "%q has neither a tag nor a digest", s)
		}
		m = exactReference{ref: ref}
	case "exactRepository":
		s, err := o.requiredStr("dockerRepository")
		if err != nil {
			return nil, err
		}
		repo, err := reference.ParseNormalizedNamed(s)
		if err != nil {
			return nil, invalidf(o.field("dockerRepository"), "%q: %v", s, err)
		}
		m = exactRepository{repo: repo}
	case "remapIdentity":
		prefix, err := o.requiredStr("prefix")
		if err != nil {
			return nil, err
		}
		signedPrefix, err := o.requiredStr("signedPrefix")
		if err != nil {
			return nil, err
		}
		if err := validateRemapPrefix(prefix); err != nil {
			return nil, invalid(o.field("prefix"), err)
		}
		if err := validateRemapPrefix(signedPrefix); err != nil {
			return nil, invalid(o.field("signedPrefix"), err)
		}
		m = remapIdentity{prefix: prefix, signedPrefix: signedPrefix}
	default:
		return nil, invalidf(o.field("type"), "unknown signedIdentity type %q", typ)
	}
	if err := o.done(); err != nil {
		return nil, err
	}
	return m, nil
}

var (
	remapDomain       = regexp.MustCompile(`^` + reference.DomainRegexp.String() + `$`)
	remapDomainPrefix = regexp.MustCompile(`^` + reference.DomainRegexp.String() + `/`)
	remapName         = regexp.MustCompile(`^` + reference.NameRegexp.String() + `$`)
)

// validateRemapPrefix accepts a host[:port] or a fully expanded repository
// or namespace name, as containers/image does; unlike containers/image it
// also refuses short names ("busybox", "library/busybox"), which can never
// match a fully expanded reference.
func validateRemapPrefix(s string) error {
	host, _, _ := strings.Cut(s, "/")
	if isRegistryHost(host) && (remapDomain.MatchString(s) || (remapName.MatchString(s) && remapDomainPrefix.MatchString(s))) {
		return nil
	}
	return fmt.Errorf("prefix %q is not a host[:port] or a fully expanded repository namespace", s)
}

// parseSigned parses the identity a signature claims. A claim that does not
// parse matches nothing.
func parseSigned(signed string) (reference.Named, bool) {
	ref, err := reference.ParseNormalizedNamed(signed)
	return ref, err == nil
}

func (matchExact) String() string { return "matchExact" }

func (matchExact) matches(intended reference.Named, signed string) bool {
	sig, ok := parseSigned(signed)
	if !ok || reference.IsNameOnly(intended) || reference.IsNameOnly(sig) {
		return false
	}
	return sig.String() == intended.String()
}

func (matchRepoDigestOrExact) String() string { return "matchRepoDigestOrExact" }

func (matchRepoDigestOrExact) matches(intended reference.Named, signed string) bool {
	sig, ok := parseSigned(signed)
	return ok && repoDigestOrExact(intended, sig)
}

// repoDigestOrExact: a tagged image needs a signature for exactly that tag;
// an image pulled by digest needs only the repository to match, the digest
// being checked against the signature's own digest claim.
func repoDigestOrExact(intended, sig reference.Named) bool {
	if reference.IsNameOnly(sig) {
		return false
	}
	switch intended.(type) {
	case reference.NamedTagged:
		return sig.String() == intended.String()
	case reference.Canonical:
		return sig.Name() == intended.Name()
	default:
		return false
	}
}

func (matchRepository) String() string { return "matchRepository" }

func (matchRepository) matches(intended reference.Named, signed string) bool {
	sig, ok := parseSigned(signed)
	return ok && sig.Name() == intended.Name()
}

func (m exactReference) String() string {
	return fmt.Sprintf("exactReference %s", m.ref)
}

func (m exactReference) matches(_ reference.Named, signed string) bool {
	sig, ok := parseSigned(signed)
	if !ok || reference.IsNameOnly(sig) {
		return false
	}
	return sig.String() == m.ref.String()
}

func (m exactRepository) String() string {
	return fmt.Sprintf("exactRepository %s", m.repo.Name())
}

func (m exactRepository) matches(_ reference.Named, signed string) bool {
	sig, ok := parseSigned(signed)
	return ok && sig.Name() == m.repo.Name()
}

func (m remapIdentity) String() string {
	return fmt.Sprintf("remapIdentity %s => %s", m.prefix, m.signedPrefix)
}

func (m remapIdentity) matches(intended reference.Named, signed string) bool {
	sig, ok := parseSigned(signed)
	if !ok {
		return false
	}
	remapped, err := m.remap(intended)
	if err != nil {
		return false
	}
	return repoDigestOrExact(remapped, sig)
}

// remap replaces prefix by signedPrefix in ref when prefix covers ref's
// name: all of it, or a leading part ending at a "/".
func (m remapIdentity) remap(ref reference.Named) (reference.Named, error) {
	name := ref.Name()
	if name != m.prefix && !strings.HasPrefix(name, m.prefix+"/") {
		return ref, nil
	}
	return reference.ParseNamed(m.signedPrefix + strings.TrimPrefix(ref.String(), m.prefix))
}
