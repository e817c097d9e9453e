package verify

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"go.yaml.in/yaml/v3"

	"github.com/guest-puller/guest-puller/internal/errdefs"
	"github.com/guest-puller/guest-puller/internal/refname"
)

// registriesDFile is one file of a containers-registries.d directory, as
// containers-registries.d(5) describes it.
type registriesDFile struct {
	DefaultDocker *namespace           `yaml:"default-docker"`
	Docker        map[string]namespace `yaml:"docker"`
}

// namespace is the configuration of one scope. The staging locations are
// where signers write; they are accepted in the file and never read.
type namespace struct {
	Lookaside              string `yaml:"lookaside"`
	LookasideStaging       string `yaml:"lookaside-staging"`
	SigStore               string `yaml:"sigstore"`
	SigStoreStaging        string `yaml:"sigstore-staging"`
	UseSigstoreAttachments *bool  `yaml:"use-sigstore-attachments"`
}

// readLocation is where signatures of this scope are read from, "" when the
// scope names none. "sigstore" is the old name of "lookaside".
func (ns namespace) readLocation() string {
	if ns.Lookaside != "" {
		return ns.Lookaside
	}
	return ns.SigStore
}

func loadRegistriesD(dir string) (*RegistriesD, error) {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return &RegistriesD{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("registries.d %s: %w", dir, err)
	}
	// Sorted so that which of two conflicting files is named in the error
	// does not depend on directory order.
	sort.Slice(entries, func(i, j int) bool { return entries[i].Name() < entries[j].Name() })

	r := &RegistriesD{docker: map[string]namespace{}}
	for _, e := range entries {
		if e.IsDir() || !strings.HasSuffix(e.Name(), ".yaml") {
			continue
		}
		p := filepath.Join(dir, e.Name())
		data, err := os.ReadFile(p)
		if err != nil {
			return nil, fmt.Errorf("registries.d: %w", err)
		}
		if err := r.add(p, data); err != nil {
			return nil, err
		}
	}
	return r, nil
}

// add parses the registries.d file name and adds its namespaces to r.
func (r *RegistriesD) add(name string, data []byte) error {
	f, err := parseRegistriesDFile(data)
	if err != nil {
		return fmt.Errorf("registries.d %s: %w: %v", name, errdefs.ErrInvalidConfig, err)
	}
	if f.DefaultDocker != nil {
		if r.defaultDocker != nil {
			return fmt.Errorf("registries.d %s: %w: default-docker is defined in more than one file", name, errdefs.ErrInvalidConfig)
		}
		r.defaultDocker = f.DefaultDocker
	}
	for scope, ns := range f.Docker {
		// Looked up with the registry host spelled canonically
		// (refname.Host), so it is spelled that way here too.
		key := refname.Scope(scope)
		if _, dup := r.docker[key]; dup {
			return fmt.Errorf("registries.d %s: %w: docker namespace %q is defined more than once", name, errdefs.ErrInvalidConfig, scope)
		}
		r.docker[key] = ns
	}
	return nil
}

// parseRegistriesDFile decodes one file strictly: unknown fields, duplicate
// keys and more than one YAML document are errors, and every read location
// must be a URL this package can fetch.
func parseRegistriesDFile(data []byte) (*registriesDFile, error) {
	var f registriesDFile
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&f); err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	var extra any
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return nil, errors.New("more than one YAML document")
	}
	if f.DefaultDocker != nil {
		if err := f.DefaultDocker.validate(); err != nil {
			return nil, fmt.Errorf("default-docker: %w", err)
		}
	}
	for scope, ns := range f.Docker {
		if scope == "" {
			return nil, errors.New("docker: empty namespace")
		}
		if err := ns.validate(); err != nil {
			return nil, fmt.Errorf("docker %q: %w", scope, err)
		}
	}
	return &f, nil
}

func (ns namespace) validate() error {
	for _, loc := range []string{ns.Lookaside, ns.SigStore} {
		if loc == "" {
			continue
		}
		if _, err := parseLocation(loc); err != nil {
			return err
		}
	}
	return nil
}

// parseLocation parses a lookaside base URL. Only file:// on this host and
// http(s):// can be read.
func parseLocation(loc string) (*url.URL, error) {
	u, err := url.Parse(loc)
	if err != nil {
		return nil, fmt.Errorf("lookaside: %w", err)
	}
	switch u.Scheme {
	case "http", "https":
		if u.Host == "" {
			return nil, fmt.Errorf("lookaside %s: no host", u.Redacted())
		}
	case "file":
		if u.Host != "" && u.Host != "localhost" {
			return nil, fmt.Errorf("lookaside %s: file URL names another host", u.Redacted())
		}
		if !path.IsAbs(u.Path) {
			return nil, fmt.Errorf("lookaside %s: file URL path is not absolute", u.Redacted())
		}
	default:
		return nil, fmt.Errorf("lookaside %s: unsupported scheme %q", u.Redacted(), u.Scheme)
	}
	return u, nil
}

// useSigstoreAttachments reports whether cosign attachments are looked up
// in repo. Unlike containers/image, the default is on: only an explicit
// false turns it off.
func (r *RegistriesD) useSigstoreAttachments(repo name.Repository) bool {
	if r == nil {
		return true
	}
	for _, scope := range scopes(refname.Repository(repo), refname.Repository(repo)) {
		if ns, ok := r.docker[scope]; ok && ns.UseSigstoreAttachments != nil {
			return *ns.UseSigstoreAttachments
		}
	}
	if r.defaultDocker != nil && r.defaultDocker.UseSigstoreAttachments != nil {
		return *r.defaultDocker.UseSigstoreAttachments
	}
	return true
}

// lookaside returns the base URL of ref's signatures in the lookaside store
// of its most specific scope that names one, with the repository path
// appended (containers/image's layout), or nil when no scope names one.
func (r *RegistriesD) lookaside(ref name.Reference) (*url.URL, error) {
	if r == nil {
		return nil, nil
	}
	loc := ""
	for _, scope := range scopes(refname.Reference(ref), refname.Repository(ref.Context())) {
		if ns, ok := r.docker[scope]; ok && ns.readLocation() != "" {
			loc = ns.readLocation()
			break
		}
	}
	if loc == "" && r.defaultDocker != nil {
		loc = r.defaultDocker.readLocation()
	}
	if loc == "" {
		return nil, nil
	}
	u, err := parseLocation(loc)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errdefs.ErrInvalidConfig, err)
	}
	repo := ref.Context().RepositoryStr()
	if path.Clean("/"+repo) != "/"+repo || strings.Contains("/"+repo+"/", "/../") {
		return nil, fmt.Errorf("repository %q: unsafe path for a lookaside store", repo)
	}
	u.Path = strings.TrimSuffix(u.Path, "/") + "/" + repo
	u.RawPath = ""
	return u, nil
}

// lookasideURL is the URL of the index-th (1-based) signature of d below
// base: <base>@sha256=<hex>/signature-<index>.
func lookasideURL(base *url.URL, d v1.Hash, index int) *url.URL {
	u := *base
	u.Path = fmt.Sprintf("%s@%s=%s/signature-%d", base.Path, d.Algorithm, d.Hex, index)
	return &u
}

// scopes lists the registries.d keys that can configure an image, most
// specific first, as containers/image looks them up: the full identity,
// then refname.Namespaces of the repository.
func scopes(identity, repo string) []string {
	out := []string{identity}
	for _, n := range refname.Namespaces(repo) {
		if n != identity {
			out = append(out, n)
		}
	}
	return out
}
