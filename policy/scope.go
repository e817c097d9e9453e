package policy

import (
	"errors"
	"fmt"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"

	"github.com/guest-puller/guest-puller/internal/refname"
)

// Scope names Decision.Scope uses for the two defaults.
const (
	// ScopeTransportDefault is the docker transport's "" scope.
	ScopeTransportDefault = ""
	// ScopeGlobalDefault is the policy's top-level "default".
	ScopeGlobalDefault = "default"
)

// transportScopeValidators are the transports containers/image knows, each
// with its check of a non-empty scope name. A section for any other
// transport is refused: it could only be a typo, and a typo in a policy
// must not pass silently.
var transportScopeValidators = map[string]func(scope string) error{
	"docker":             validateDockerScope,
	"atomic":             validateAtomicScope,
	"containers-storage": validateStorageScope,
	"dir":                validatePathScope,
	"oci":                validatePathScope,
	"oci-archive":        validatePathScope,
	"ostree":             validateOSTreeScope,
	"docker-archive":     onlyDefaultScope,
	"docker-daemon":      onlyDefaultScope,
	"sif":                onlyDefaultScope,
	"tarball":            onlyDefaultScope,
}

var (
	anchoredDomain   = regexp.MustCompile(`^` + reference.DomainRegexp.String() + `$`)
	anchoredTag      = regexp.MustCompile(`^` + reference.TagRegexp.String() + `$`)
	pathComponent    = regexp.MustCompile(`^[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*$`)
	wildcardHostname = regexp.MustCompile(`^(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])(?:\.(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]))*$`)
	atomicScope      = regexp.MustCompile(`^[^/]*(/[^:/]*(/[^:/]*(:[^:/]*)?)?)?$`)
)

// validateDockerScope accepts what a lookup of a docker reference can
// produce (see dockerScopes): host[:port][/path...][:tag|@digest] in the
// fully expanded form, or *.domain. containers/image accepts any string
// here and lets a mistyped scope never match; we refuse it instead, since a
// scope like "busybox" (meant as docker.io/library/busybox) silently
// falling through to a laxer default is exactly the mistake a policy must
// not allow.
func validateDockerScope(scope string) error {
	if rest, ok := strings.CutPrefix(scope, "*."); ok {
		if !wildcardHostname.MatchString(rest) {
			return errors.New("a wildcard scope must be *. followed by a domain name without port or path, such as *.example.com")
		}
		return nil
	}
	name, dgst, hasDigest := strings.Cut(scope, "@")
	host, path, hasPath := strings.Cut(name, "/")
	if !anchoredDomain.MatchString(host) {
		return fmt.Errorf("%q is not a registry host name", host)
	}
	if host == "index.docker.io" {
		return errors.New("scopes use the fully expanded form: write docker.io instead of index.docker.io")
	}
	if !isRegistryHost(host) {
		return fmt.Errorf("scopes use the fully expanded form: %q is not a registry host (for Docker Hub write docker.io/library/… or docker.io/…)", host)
	}
	if !hasPath {
		if hasDigest {
			return errors.New("a digest needs a repository")
		}
		return nil
	}
	tag := ""
	if i := strings.LastIndexByte(path, ':'); i >= 0 {
		path, tag = path[:i], path[i+1:]
		if hasDigest {
			return errors.New("a scope cannot have both a tag and a digest")
		}
		if !anchoredTag.MatchString(tag) {
			return fmt.Errorf("invalid tag %q", tag)
		}
	}
	for _, c := range strings.Split(path, "/") {
		if !pathComponent.MatchString(c) {
			return fmt.Errorf("invalid repository path component %q", c)
		}
	}
	if hasDigest {
		if _, err := digest.Parse(dgst); err != nil {
			return fmt.Errorf("invalid digest %q: %w", dgst, err)
		}
	}
	// Lookups only ever produce docker.io/library/NAME:TAG for official
	// images; docker.io/NAME without a tag or digest stays valid, as the
	// namespace of docker.io/NAME/*.
	if host == "docker.io" && !strings.Contains(path, "/") && (tag != "" || hasDigest) {
		return fmt.Errorf("scopes use the fully expanded form: write docker.io/library/%s", scope[len("docker.io/"):])
	}
	return nil
}

// isRegistryHost applies docker's rule for telling a registry host from the
// first path component of a short name: it has a dot or a port, is
// localhost, or has upper-case letters.
func isRegistryHost(host string) bool {
	return strings.ContainsAny(host, ".:") || host == "localhost" || strings.ToLower(host) != host
}

func validatePathScope(scope string) error {
	if !strings.HasPrefix(scope, "/") {
		return errors.New("must be an absolute path")
	}
	if scope == "/" {
		return errors.New(`"/" would shadow the transport default: use the "" scope`)
	}
	if clean := filepath.Clean(scope); clean != scope {
		return fmt.Errorf("path is not canonical, use %q", clean)
	}
	return nil
}

func validateOSTreeScope(scope string) error {
	repo, _, ok := strings.Cut(scope, ":")
	if !ok {
		return errors.New("must be REPO:IMAGE")
	}
	if err := validatePathScope(repo); err != nil {
		return fmt.Errorf("repository %w", err)
	}
	return nil
}

func validateAtomicScope(scope string) error {
	if !atomicScope.MatchString(scope) {
		return errors.New("must be HOST[/NAMESPACE[/STREAM[:TAG]]]")
	}
	return nil
}

// validateStorageScope checks "[driver@graphroot...]" followed by an
// optional image name, ID or digest, as containers/image's storage
// transport does.
func validateStorageScope(scope string) error {
	if !strings.HasPrefix(scope, "[") {
		return errors.New("must start with [STORE]")
	}
	end := strings.IndexByte(scope, ']')
	if end < 1 {
		return errors.New("must start with [STORE]")
	}
	store, image := scope[1:end], scope[end+1:]
	driver, root, withDriver := strings.Cut(store, "@")
	if !withDriver {
		root = driver
	} else if driver == "" {
		return errors.New("empty storage driver name")
	}
	root, _, _ = strings.Cut(root, "+") // graphroot+runroot
	root, _, _ = strings.Cut(root, ":") // driver options
	if !filepath.IsAbs(root) {
		return errors.New("the store's graph root must be an absolute path")
	}
	if image == "" {
		return nil
	}
	fields := strings.Split(image, "@")
	switch len(fields) {
	case 1:
	case 2:
		if !isImageID(fields[1]) {
			if _, err := digest.Parse(fields[1]); err != nil {
				return fmt.Errorf("%q is neither an image ID nor a digest", fields[1])
			}
		}
	case 3:
		if _, err := digest.Parse(fields[1]); err != nil {
			return fmt.Errorf("invalid digest %q: %w", fields[1], err)
		}
		if !isImageID(fields[2]) {
			return fmt.Errorf("invalid image ID %q", fields[2])
		}
	default:
		return errors.New("too many @ separators")
	}
	return nil
}

func isImageID(s string) bool {
	if len(s) != 64 {
		return false
	}
	for _, c := range s {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

func onlyDefaultScope(string) error {
	return errors.New(`this transport supports only the default "" scope`)
}

// dockerScopes lists the scopes to try for ref, most specific first, as
// containers/image's docker transport does (PolicyConfigurationIdentity
// then PolicyConfigurationNamespaces): the reference itself with its tag or
// digest, the repository, each parent namespace, the host with its port,
// then the host's parent domains as wildcards ("*.example.com", "*.com";
// a wildcard never matches the host it is written for). The transport's ""
// scope and the global default come after these.
func dockerScopes(ref reference.Named) []string {
	var identity string
	switch r := ref.(type) {
	case reference.Canonical:
		identity = ref.Name() + "@" + r.Digest().String()
	case reference.NamedTagged:
		identity = ref.Name() + ":" + r.Tag()
	}
	return append([]string{identity}, refname.Namespaces(ref.Name())...)
}
