package attest

import (
	"errors"
	"fmt"
	"net/url"
	"strings"

	"github.com/guest-puller/guest-puller/internal/errdefs"
	"github.com/guest-puller/guest-puller/internal/untrusted"
)

// ResourceURI names a KBS resource: kbs:///<repo>/<type>/<tag>.
type ResourceURI struct {
	Repo, Type, Tag string
}

// ParseResourceURI parses "kbs:///repo/type/tag". The host part, if any, is
// ignored (the KBS is the one the client was configured with). Exactly three
// non-empty path segments of letters, digits, '.', '_' and '-' are accepted,
// none made of dots only; queries and fragments are refused. Errors wrap
// errdefs.ErrInvalidConfig.
func ParseResourceURI(s string) (ResourceURI, error) {
	u, err := url.Parse(s)
	if err != nil {
		// url.Error repeats s: keep only what went wrong.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return ResourceURI{}, fmt.Errorf("resource URI %s: %w: %s", untrusted.Quote(s), errdefs.ErrInvalidConfig, untrusted.Text(err.Error()))
	}
	if u.Scheme != "kbs" {
		return ResourceURI{}, fmt.Errorf("resource URI %s: %w: scheme must be kbs", untrusted.Quote(s), errdefs.ErrInvalidConfig)
	}
	if u.Opaque != "" || u.RawQuery != "" || u.ForceQuery || u.Fragment != "" || u.User != nil {
		return ResourceURI{}, fmt.Errorf("resource URI %s: %w: want kbs:///repo/type/tag", untrusted.Quote(s), errdefs.ErrInvalidConfig)
	}
	// The escaped path is split so that an encoded slash cannot smuggle a
	// fourth segment into a valid-looking one.
	segs := strings.Split(strings.TrimPrefix(u.EscapedPath(), "/"), "/")
	if len(segs) != 3 {
		return ResourceURI{}, fmt.Errorf("resource URI %s: %w: want 3 path segments repo/type/tag, got %d", untrusted.Quote(s), errdefs.ErrInvalidConfig, len(segs))
	}
	for _, seg := range segs {
		if err := validSegment(seg); err != nil {
			return ResourceURI{}, fmt.Errorf("resource URI %s: %w: %v", untrusted.Quote(s), errdefs.ErrInvalidConfig, err)
		}
	}
	return ResourceURI{Repo: segs[0], Type: segs[1], Tag: segs[2]}, nil
}

// validSegment admits the characters a resource name needs and nothing that a
// path or URL could interpret.
func validSegment(seg string) error {
	if seg == "" {
		return fmt.Errorf("empty path segment")
	}
	if strings.Trim(seg, ".") == "" {
		return fmt.Errorf("path segment %s is not a name", untrusted.Quote(seg))
	}
	for _, r := range seg {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '.', r == '_', r == '-':
		default:
			return fmt.Errorf("path segment %s has character %q", untrusted.Quote(seg), r)
		}
	}
	return nil
}

// Path is "repo/type/tag", the part after /kbs/v0/resource/.
func (r ResourceURI) Path() string { return r.Repo + "/" + r.Type + "/" + r.Tag }

// String is the canonical "kbs:///repo/type/tag".
func (r ResourceURI) String() string { return "kbs:///" + r.Path() }
