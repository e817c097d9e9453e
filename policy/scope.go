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
// with its check of a non-empty scope name, which is containers/image's own
// (ValidatePolicyConfigurationScope). A section for any other transport is
// refused where containers/image accepts it unchecked: it could only be a
// typo, and a typo in a policy must not pass silently.
var transportScopeValidators = map[string]func(scope string) error{
	"docker":             anyScope,
	"atomic":             validateAtomicScope,
	"containers-storage": validateStorageScope,
	"dir":                validatePathScope,
	"oci":                validatePathScope,
	"oci-archive":        validatePathScope,
	"sif":                validatePathScope,
	"ostree":             anyScope, // a stub in containers/image: the transport was removed
	"docker-daemon":      validateDaemonScope,
	"docker-archive":     onlyDefaultScope,
	"tarball":            onlyDefaultScope,
}

var atomicScope = regexp.MustCompile(`^[^/]*(/[^:/]*(/[^:/]*(:[^:/]*)?)?)?$`)

// anyScope is containers/image's rule for docker scopes: any string is
// accepted, and one that no reference can produce ("busybox" rather than
// docker.io/library/busybox) never matches. Policy.Warnings names those.
func anyScope(string) error { return nil }

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

func validateAtomicScope(scope string) error {
	if !atomicScope.MatchString(scope) {
		return errors.New("must be HOST[/NAMESPACE[/STREAM[:TAG]]]")
	}
	return nil
}

func validateDaemonScope(scope string) error {
	if _, err := digest.Parse(scope); err == nil {
		return errors.New("an image ID (algo:digest) cannot be a scope")
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
	switch {
	case withDriver && (driver == "" || root == ""):
		return errors.New("the store must be [DRIVER@GRAPHROOT] or [GRAPHROOT]")
	case !withDriver:
		root = store
	}
	if !filepath.IsAbs(root) {
		return errors.New("the store's graph root must be an absolute path")
	}
	if image == "" {
		return nil
	}
	fields := strings.SplitN(image, "@", 3)
	switch len(fields) {
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
	}
	return nil
}

func isImageID(s string) bool {
	_, err := digest.Parse("sha256:" + s)
	return err == nil
}

func onlyDefaultScope(string) error {
	return errors.New(`this transport supports only the default "" scope`)
}

// dockerScopeCanMatch reports whether the scope lookup of some reference
// can produce scope (see dockerScopes): a fully expanded reference with a
// tag or a digest, a repository or namespace, a host[:port], or a *.domain
// wildcard.
func dockerScopeCanMatch(scope string) bool {
	if rest, ok := strings.CutPrefix(scope, "*."); ok {
		return wildcardHostname.MatchString(rest)
	}
	host, path, hasPath := strings.Cut(scope, "/")
	if !anchoredDomain.MatchString(host) || !isRegistryHost(host) || host == "index.docker.io" {
		return false
	}
	if !hasPath {
		return true
	}
	if !strings.ContainsAny(path, ":@") {
		return anchoredPath.MatchString(path)
	}
	ref, err := reference.ParseNormalizedNamed(scope)
	if err != nil {
		return false
	}
	_, tagged := ref.(reference.Tagged)
	_, digested := ref.(reference.Digested)
	// docker.io/busybox:1 never matches: lookups spell it
	// docker.io/library/busybox:1.
	return tagged != digested && ref.String() == scope
}

var (
	anchoredDomain   = regexp.MustCompile(`^` + reference.DomainRegexp.String() + `$`)
	anchoredPath     = regexp.MustCompile(`^[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*)*$`)
	wildcardHostname = regexp.MustCompile(`^(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])(?:\.(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]))*$`)
)

// isRegistryHost applies docker's rule for telling a registry host from the
// first path component of a short name: it has a dot or a port, is
// localhost, or has upper-case letters.
func isRegistryHost(host string) bool {
	return strings.ContainsAny(host, ".:") || host == "localhost" || strings.ToLower(host) != host
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
