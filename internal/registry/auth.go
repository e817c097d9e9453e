package registry

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/docker/cli/cli/config/configfile"
	"github.com/docker/cli/cli/config/types"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"

	"github.com/guest-puller/guest-puller/internal/errdefs"
	"github.com/guest-puller/guest-puller/internal/refname"
)

// Credentials say where registry credentials come from. At most one of
// Creds and the auth file is consulted for a registry: Creds wins.
type Credentials struct {
	// Creds is USER:PASSWORD for every registry the client reaches. Only a
	// caller that chooses every registry itself may use it: the
	// credentials of a request go to its registry alone, through
	// Client.ForRequest.
	Creds string
	// AuthFile is the content of a docker config.json or containers
	// auth.json (--auth-file, possibly a kbs:// resource the caller fetched).
	// Nil means the default search: $REGISTRY_AUTH_FILE, then
	// ~/.docker/config.json.
	AuthFile []byte
	// AuthFileName names AuthFile in errors.
	AuthFileName string
}

// Keychain returns the keychain for c. Parse errors wrap
// errdefs.ErrInvalidConfig; no credential content is ever put in an error.
func (c Credentials) Keychain() (authn.Keychain, error) {
	if c.Creds != "" {
		auth, err := basicAuthenticator(c.Creds)
		if err != nil {
			return nil, err
		}
		return staticKeychain{auth}, nil
	}
	data, src := c.AuthFile, c.AuthFileName
	if data == nil {
		var err error
		if data, src, err = defaultAuthFile(); err != nil {
			return nil, err
		}
		if data == nil {
			return authn.NewMultiKeychain(), nil // anonymous
		}
	}
	cf, err := parseAuthFile(data)
	if err != nil {
		return nil, fmt.Errorf("auth file %s: %w: not a docker config.json or containers auth.json", src, errdefs.ErrInvalidConfig)
	}
	if err := canonicalKeys(cf); err != nil {
		return nil, fmt.Errorf("auth file %s: %w: %v", src, errdefs.ErrInvalidConfig, err)
	}
	return &fileKeychain{cf: cf}, nil
}

type staticKeychain struct{ a authn.Authenticator }

func (k staticKeychain) Resolve(authn.Resource) (authn.Authenticator, error) { return k.a, nil }

// basicAuthenticator reads USER:PASSWORD. Its errors never hold the value.
func basicAuthenticator(creds string) (authn.Authenticator, error) {
	user, pass, ok := strings.Cut(creds, ":")
	if user == "" {
		return nil, fmt.Errorf("registry credentials: %w: user name is empty", errdefs.ErrInvalidConfig)
	}
	if !ok {
		// An empty password is sent only when asked for as "USER:";
		// the command line asks for a missing one on a terminal.
		return nil, fmt.Errorf("registry credentials: %w: a user name without a password (want USER:PASSWORD)", errdefs.ErrInvalidConfig)
	}
	return authn.FromConfig(authn.AuthConfig{Username: user, Password: pass}), nil
}

// boundKeychain gives auth to the registries in hosts (spelled by
// refname.Host) and defers to others for every other registry.
type boundKeychain struct {
	hosts  map[string]bool
	auth   authn.Authenticator
	others authn.Keychain
}

func (k boundKeychain) Resolve(target authn.Resource) (authn.Authenticator, error) {
	if k.hosts[refname.Host(target.RegistryStr())] {
		return k.auth, nil
	}
	return k.others.Resolve(target)
}

// defaultAuthFile is the first of $REGISTRY_AUTH_FILE and the docker
// config ($DOCKER_CONFIG/config.json, else ~/.docker/config.json) that
// exists, or nil. A file named by an environment variable was asked for:
// if it cannot be read, that is an error. ~/.docker/config.json nobody
// asked for: one that cannot be read (the home of another user, as when
// HOME is still root's) is skipped with a note, as a missing one is.
func defaultAuthFile() ([]byte, string, error) {
	type candidate struct {
		path, env string
	}
	var paths []candidate
	if p := os.Getenv("REGISTRY_AUTH_FILE"); p != "" {
		paths = append(paths, candidate{p, "REGISTRY_AUTH_FILE"})
	}
	if dir := os.Getenv("DOCKER_CONFIG"); dir != "" {
		paths = append(paths, candidate{filepath.Join(dir, "config.json"), "DOCKER_CONFIG"})
	} else if home, err := os.UserHomeDir(); err == nil {
		paths = append(paths, candidate{filepath.Join(home, ".docker", "config.json"), ""})
	}
	for _, c := range paths {
		data, err := os.ReadFile(c.path)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			continue
		case err != nil && c.env != "":
			return nil, c.path, fmt.Errorf("auth file %s (from $%s): %w: %w", c.path, c.env, errdefs.ErrInvalidConfig, unwrapPath(err))
		case err != nil:
			slog.Default().Warn("default registry auth file skipped: it cannot be read", "path", c.path, "error", unwrapPath(err))
			continue
		}
		return data, c.path, nil
	}
	return nil, "", nil
}

// unwrapPath is a file error without its path, which the log line has.
func unwrapPath(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// canonicalKeys spells the hosts of the auth file's keys as refname.Host
// does, so that credentials written for "Registry.Example.com:443" are
// those of registry.example.com, and no other spelling of a host finds
// different credentials. Two keys that become one are an error: which
// credentials were meant is not clear.
func canonicalKeys(cf *configfile.ConfigFile) error {
	auths := make(map[string]types.AuthConfig, len(cf.AuthConfigs))
	for k, v := range cf.AuthConfigs {
		ck := canonicalAuthKey(k)
		if _, dup := auths[ck]; dup {
			return fmt.Errorf("two entries of \"auths\" name %s", ck)
		}
		auths[ck] = v
	}
	cf.AuthConfigs = auths
	helpers := make(map[string]string, len(cf.CredentialHelpers))
	for k, v := range cf.CredentialHelpers {
		ck := canonicalAuthKey(k)
		if _, dup := helpers[ck]; dup {
			return fmt.Errorf("two entries of \"credHelpers\" name %s", ck)
		}
		helpers[ck] = v
	}
	cf.CredentialHelpers = helpers
	return nil
}

// canonicalAuthKey is an auth file key ("host[:port][/path]", or docker's
// "https://host/v1/" form) with its host spelled as refname.Host does.
func canonicalAuthKey(k string) string {
	scheme := ""
	for _, s := range []string{"https://", "http://"} {
		if strings.HasPrefix(strings.ToLower(k), s) {
			scheme, k = s, k[len(s):]
			break
		}
	}
	return scheme + refname.Scope(k)
}

func parseAuthFile(data []byte) (*configfile.ConfigFile, error) {
	cf := configfile.New("")
	if err := cf.LoadFromReader(bytes.NewReader(data)); err != nil {
		return nil, err
	}
	return cf, nil
}

// fileKeychain resolves credentials from an auth file the way
// containers-auth.json(5) does: the most specific key wins, from
// host/namespace/repo up to the host, and credential helpers
// (credHelpers, credsStore) are run as docker does.
type fileKeychain struct {
	cf *configfile.ConfigFile
}

func (k *fileKeychain) Resolve(target authn.Resource) (authn.Authenticator, error) {
	return k.ResolveContext(context.Background(), target)
}

func (k *fileKeychain) ResolveContext(_ context.Context, target authn.Resource) (authn.Authenticator, error) {
	for _, key := range authKeys(target) {
		// Repository keys only exist in auth.json's "auths"; helpers are
		// keyed by host.
		if strings.Contains(key, "/") && !strings.HasPrefix(key, "https://") {
			if ac, ok := k.cf.AuthConfigs[key]; ok {
				return fromDocker(ac), nil
			}
			continue
		}
		ac, err := k.cf.GetAuthConfig(key)
		if err != nil {
			return nil, fmt.Errorf("credentials for %s: %w", target.RegistryStr(), err)
		}
		ac.ServerAddress = ""
		if ac != (types.AuthConfig{}) {
			return fromDocker(ac), nil
		}
	}
	return authn.Anonymous, nil
}

func fromDocker(ac types.AuthConfig) authn.Authenticator {
	return authn.FromConfig(authn.AuthConfig{
		Username:      ac.Username,
		Password:      ac.Password,
		Auth:          ac.Auth,
		IdentityToken: ac.IdentityToken,
		RegistryToken: ac.RegistryToken,
	})
}

// authKeys lists the auth file keys to try for target, most specific first.
func authKeys(target authn.Resource) []string {
	reg := refname.Host(target.RegistryStr())
	if reg == name.DefaultRegistry {
		reg = "docker.io"
	}
	var keys []string
	if repo, ok := target.(name.Repository); ok {
		path := reg + "/" + repo.RepositoryStr()
		for p := path; strings.Contains(p, "/"); p = p[:strings.LastIndex(p, "/")] {
			keys = append(keys, p)
		}
	}
	if reg == "docker.io" {
		// Docker writes the historical v1 URL, podman writes docker.io.
		return append(keys, reg, name.DefaultRegistry, authn.DefaultAuthKey)
	}
	return append(keys, reg)
}
