// Package refname spells image references the way containers/image does,
// for everything keyed by them: policy scopes, registries.d and
// registries.conf namespaces, auth file keys, image records. Docker Hub is
// docker.io (go-containerregistry says index.docker.io), library/ is kept.
//
// Registry hosts are compared in one canonical spelling (Host): DNS names
// are case-insensitive and ":443" is the port https uses anyway, so
// "Registry.Example.com:443/app" and "registry.example.com/app" name the
// same repository for every lookup: a policy scope, a registries.conf
// prefix, a registries.d namespace or an auth file key written for one
// applies to the other. containers/image compares these strings as
// written; a puller that did so would let whoever picks the image name
// (the host, in a confidential guest) step past a scope by changing case.
package refname

import (
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
)

// defaultTLSPort is dropped from hosts: "host:443" is "host" over https.
const defaultTLSPort = ":443"

// Host is the canonical spelling of a registry host[:port]: lower case,
// without the default https port.
func Host(host string) string {
	return strings.TrimSuffix(strings.ToLower(host), defaultTLSPort)
}

// Scope is a configured name, "host[:port][/path...][:tag|@digest]" or a
// wildcard "*.domain", with its host spelled as Host spells it. The path,
// tag and digest are case-sensitive and kept as written.
func Scope(s string) string {
	if strings.HasPrefix(s, "*.") {
		return strings.ToLower(s)
	}
	host, rest, hasPath := strings.Cut(s, "/")
	if !hasPath {
		return Host(host)
	}
	return Host(host) + "/" + rest
}

// Parse parses a user's image reference ("busybox", "Registry.Example.com:443/app:1")
// and returns it with its registry spelled as Host spells it, so that the
// registry contacted and every lookup by name agree.
func Parse(s string, opts ...name.Option) (name.Reference, error) {
	ref, err := name.ParseReference(s, opts...)
	if err != nil {
		return nil, err
	}
	return Normalize(ref, opts...)
}

// Normalize returns ref with its registry host spelled as Host spells it.
func Normalize(ref name.Reference, opts ...name.Option) (name.Reference, error) {
	reg := ref.Context().RegistryStr()
	if Host(reg) == reg {
		return ref, nil
	}
	sep := ":"
	if _, ok := ref.(name.Digest); ok {
		sep = "@"
	}
	return name.ParseReference(Host(reg)+"/"+ref.Context().RepositoryStr()+sep+ref.Identifier(), opts...)
}

// Repository is repo as containers/image names it: "docker.io/library/busybox".
func Repository(repo name.Repository) string {
	reg := Host(repo.RegistryStr())
	if reg == strings.ToLower(name.DefaultRegistry) {
		reg = "docker.io"
	}
	return reg + "/" + repo.RepositoryStr()
}

// Reference is ref with its tag or digest: "docker.io/library/busybox:latest".
func Reference(ref name.Reference) string {
	repo := Repository(ref.Context())
	if d, ok := ref.(name.Digest); ok {
		return repo + "@" + d.DigestStr()
	}
	return repo + ":" + ref.Identifier()
}

// Namespaces lists, most specific first, the names under which a
// repository ("host[:port]/path") is configured, as containers/image's
// docker transport gives them (PolicyConfigurationNamespaces): the
// repository, each parent namespace, the host with its port, then the
// host's parent domains as wildcards ("*.example.com", "*.com"; a wildcard
// never names the host it is written for, and ignores the port). The host
// is spelled as Host spells it.
func Namespaces(repo string) []string {
	repo = Scope(repo)
	var out []string
	for n := repo; ; {
		out = append(out, n)
		i := strings.LastIndexByte(n, '/')
		if i < 0 {
			break
		}
		n = n[:i]
	}
	host := out[len(out)-1]
	if i := strings.LastIndexByte(host, ':'); i >= 0 && !strings.HasSuffix(host, "]") {
		host = host[:i]
	}
	for {
		i := strings.IndexByte(host, '.')
		if i < 0 {
			break
		}
		host = host[i+1:]
		out = append(out, "*."+host)
	}
	return out
}
