package registry

import (
	"fmt"
	"strings"

	"github.com/distribution/reference"
	"github.com/google/go-containerregistry/pkg/name"

	"github.com/guest-puller/guest-puller/internal/errdefs"
	"github.com/guest-puller/guest-puller/internal/refname"
	"github.com/guest-puller/guest-puller/internal/untrusted"
)

// Resolution is how an image name as the user gave it became the fully
// qualified references to try, in order.
type Resolution struct {
	// Candidates are tried in order; the first that can be pulled (found,
	// and allowed by the policy) is the image. A fully qualified name, an
	// alias, or a single search registry gives one.
	Candidates []name.Reference
	// How says how a short name was resolved, for logs and errors: "" for a
	// fully qualified name.
	How string
}

// Resolve turns image into the references to pull, as containers/image
// resolves short names for a caller without a terminal (a daemon, or a
// command in a confidential guest: guest-puller never prompts):
//
//   - a name whose first component is a registry (it has a dot or a port,
//     or is localhost) is used as it is, with ":latest" when it has neither
//     tag nor digest;
//   - a short name with an [aliases] entry resolves to the alias (keeping
//     its tag or digest);
//   - otherwise each of unqualified-search-registries gives a candidate, in
//     order. With short-name-mode "enforcing" more than one candidate is an
//     error, since enforcing mode would ask the user to choose and there is
//     no one to ask; "permissive" (the default) and "disabled" try them in
//     order. No search registries is an error.
//
// Without a registries.conf (c is nil) a short name is a Docker Hub name,
// as Docker and image-rs read it: containers/image would refuse it.
// Errors wrap errdefs.ErrInvalidConfig.
func (c *Conf) Resolve(image string) (*Resolution, error) {
	ref, err := reference.Parse(image)
	if err != nil {
		return nil, fmt.Errorf("image %s: %w: %s", untrusted.Quote(image), errdefs.ErrInvalidConfig, untrusted.Text(err.Error()))
	}
	named, ok := ref.(reference.Named)
	if !ok {
		return nil, fmt.Errorf("image %s: %w: a digest alone does not name an image", untrusted.Quote(image), errdefs.ErrInvalidConfig)
	}
	if c == nil || isHost(reference.Domain(named)) {
		r, err := toRef(image)
		if err != nil {
			return nil, err
		}
		return &Resolution{Candidates: []name.Reference{r}}, nil
	}

	short := reference.TrimNamed(named).String()
	if alias := c.aliases[short]; alias != nil {
		full := alias.String() + strings.TrimPrefix(image, short)
		r, err := toRef(full)
		if err != nil {
			return nil, err
		}
		return &Resolution{Candidates: []name.Reference{r}, How: fmt.Sprintf("short name %q is an alias of %s", short, alias)}, nil
	}
	if len(c.search) == 0 {
		return nil, fmt.Errorf("image %s: %w: a short name that is no alias needs unqualified-search-registries in registries.conf, and there are none: use a fully qualified name", untrusted.Quote(image), errdefs.ErrInvalidConfig)
	}
	if len(c.search) > 1 && c.mode == ShortNameEnforcing {
		return nil, fmt.Errorf("image %s: %w: short-name-mode is enforcing and %d unqualified-search-registries (%s) could serve this short name: without a terminal to choose on, use a fully qualified name or an alias", untrusted.Quote(image), errdefs.ErrInvalidConfig, len(c.search), strings.Join(c.search, ", "))
	}
	res := &Resolution{How: fmt.Sprintf("short name %s from unqualified-search-registries %s", untrusted.Quote(image), strings.Join(c.search, ", "))}
	for _, reg := range c.search {
		r, err := toRef(reg + "/" + image)
		if err != nil {
			return nil, err
		}
		res.Candidates = append(res.Candidates, r)
	}
	return res, nil
}

// toRef parses a fully qualified docker reference (distribution's grammar:
// "docker.io/busybox" is docker.io/library/busybox) into go-containerregistry's
// form, with ":latest" when it has neither tag nor digest and the registry
// host spelled as refname.Host spells it.
func toRef(s string) (name.Reference, error) {
	named, err := reference.ParseNormalizedNamed(s)
	if err != nil {
		return nil, fmt.Errorf("image %s: %w: %s", untrusted.Quote(s), errdefs.ErrInvalidConfig, untrusted.Text(err.Error()))
	}
	named = reference.TagNameOnly(named)
	r, err := refname.Parse(named.String())
	if err != nil {
		return nil, fmt.Errorf("image %s: %w: %s", untrusted.Quote(s), errdefs.ErrInvalidConfig, untrusted.Text(err.Error()))
	}
	return r, nil
}
