// Package refname spells image references the way containers/image does,
// for everything keyed by them: policy scopes, registries.d and
// registries.conf namespaces, auth file keys, image records. Docker Hub is
// docker.io (go-containerregistry says index.docker.io), library/ is kept.
package refname

import (
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
)

// Repository is repo as containers/image names it: "docker.io/library/busybox".
func Repository(repo name.Repository) string {
	reg := repo.RegistryStr()
	if reg == name.DefaultRegistry {
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
// never names the host it is written for, and ignores the port).
func Namespaces(repo string) []string {
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
	if i := strings.IndexByte(host, ':'); i >= 0 {
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
