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

// nsEntry is one configured namespace (or default-docker), or why it cannot
// be used: a lookup that reaches a broken entry fails, since what it was
// meant to say is unknown. Other namespaces are unaffected.
type nsEntry struct {
	ns  namespace
	err error
}

func brokenEntry(file string, format string, args ...any) nsEntry {
	return nsEntry{err: fmt.Errorf("registries.d %s: %w: %s", file, errdefs.ErrInvalidConfig, fmt.Sprintf(format, args...))}
}

func loadRegistriesD(dir string) (*RegistriesD, error) {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return &RegistriesD{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("registries.d %s: %w", dir, err)
	}
	// Sorted so that which of two conflicting files is named in an error
	// does not depend on directory order.
	sort.Slice(entries, func(i, j int) bool { return entries[i].Name() < entries[j].Name() })

	r := newRegistriesD()
	for _, e := range entries {
		if e.IsDir() || !strings.HasSuffix(e.Name(), ".yaml") {
			continue
		}
		p := filepath.Join(dir, e.Name())
		data, err := os.ReadFile(p)
		if err != nil {
			// Which namespaces the file meant to configure is unknown:
			// every lookup fails until it can be read.
			r.broken = append(r.broken, fmt.Errorf("registries.d %s: %w: %v", p, errdefs.ErrInvalidConfig, err))
			continue
		}
		r.add(p, data)
	}
	return r, nil
}

func newRegistriesD() *RegistriesD {
	return &RegistriesD{docker: map[string]nsEntry{}, from: map[string]string{}}
}

// add parses the registries.d file name and adds its namespaces to r. A
// file whose namespaces cannot be read fails every lookup; a namespace
// defined by an earlier file too is broken, as is default-docker defined
// twice.
func (r *RegistriesD) add(name string, data []byte) {
	err := checkFileSize(data)
	var f *registriesDFile
	if err == nil {
		f, err = parseRegistriesDFile(name, data)
	}
	if err != nil {
		r.broken = append(r.broken, fmt.Errorf("registries.d %s: %w: %v", name, errdefs.ErrInvalidConfig, err))
		return
	}
	if f.defaultDocker != nil {
		if r.defaultDocker != nil {
			bad := brokenEntry(name, "default-docker is defined in %s too", r.defaultFrom)
			r.defaultDocker = &bad
		} else {
			r.defaultDocker, r.defaultFrom = f.defaultDocker, name
		}
	}
	for scope, ent := range f.docker {
		if other, dup := r.from[scope]; dup {
			r.docker[scope] = brokenEntry(name, "docker namespace %q is defined in %s too", scope, other)
			continue
		}
		r.docker[scope], r.from[scope] = ent, name
	}
}

// maxFileSize bounds one registries.d file; real ones are a few hundred
// bytes.
const maxFileSize = 1 << 20

func checkFileSize(data []byte) error {
	if len(data) > maxFileSize {
		return fmt.Errorf("larger than %d bytes", maxFileSize)
	}
	return nil
}

// registriesDFile is one file of a registries.d directory, each namespace
// parsed on its own.
type registriesDFile struct {
	defaultDocker *nsEntry
	docker        map[string]nsEntry
}

// parseRegistriesDFile reads one file. What makes its namespaces unknown is
// an error for the whole file: invalid YAML, more than one document, a
// top-level field other than default-docker and docker, docker not a
// mapping, a namespace named twice. What is wrong inside one namespace
// (an unknown field, a value of the wrong type, a lookaside that is not a
// URL this package can read) breaks only that namespace.
func parseRegistriesDFile(file string, data []byte) (*registriesDFile, error) {
	var doc yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return &registriesDFile{}, nil // an empty file
		}
		return nil, err
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return nil, errors.New("more than one YAML document")
	}
	f := &registriesDFile{docker: map[string]nsEntry{}}
	top := doc.Content[0]
	if top.Kind == yaml.ScalarNode && top.Tag == "!!null" {
		return f, nil
	}
	if top.Kind != yaml.MappingNode {
		return nil, fmt.Errorf("line %d: the file must be a mapping of default-docker and docker", top.Line)
	}
	seen := map[string]bool{}
	for i := 0; i+1 < len(top.Content); i += 2 {
		key, val := top.Content[i], top.Content[i+1]
		if seen[key.Value] {
			return nil, fmt.Errorf("line %d: %q is defined twice", key.Line, key.Value)
		}
		seen[key.Value] = true
		switch key.Value {
		case "default-docker":
			ent := parseNamespace(file, "default-docker", val)
			f.defaultDocker = &ent
		case "docker":
			if val.Kind == yaml.ScalarNode && val.Tag == "!!null" {
				continue
			}
			if val.Kind != yaml.MappingNode {
				return nil, fmt.Errorf("line %d: docker must be a mapping of namespaces", val.Line)
			}
			for j := 0; j+1 < len(val.Content); j += 2 {
				nk, nv := val.Content[j], val.Content[j+1]
				if nk.Kind != yaml.ScalarNode || nk.Value == "" {
					return nil, fmt.Errorf("line %d: a docker namespace must be a non-empty string", nk.Line)
				}
				// Looked up with the registry host spelled canonically
				// (refname.Host), so it is spelled that way here too.
				key := refname.Scope(nk.Value)
				if _, dup := f.docker[key]; dup {
					return nil, fmt.Errorf("line %d: docker namespace %q is defined twice", nk.Line, nk.Value)
				}
				f.docker[key] = parseNamespace(file, fmt.Sprintf("docker namespace %q", nk.Value), nv)
			}
		default:
			// containers/image ignores it; what it was meant to say,
			// and for which namespaces, is unknown.
			return nil, fmt.Errorf("line %d: unknown field %q", key.Line, key.Value)
		}
	}
	return f, nil
}

// parseNamespace decodes one namespace's settings strictly.
func parseNamespace(file, what string, node *yaml.Node) nsEntry {
	if node.Kind == yaml.ScalarNode && node.Tag == "!!null" {
		return nsEntry{}
	}
	// yaml.Node.Decode has no strict mode: re-encode the node and decode
	// it with unknown fields refused.
	raw, err := yaml.Marshal(node)
	if err != nil {
		return brokenEntry(file, "%s: %v", what, err)
	}
	var ns namespace
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	dec.KnownFields(true)
	if err := dec.Decode(&ns); err != nil {
		return brokenEntry(file, "%s (line %d): %v", what, node.Line, err)
	}
	if err := ns.validate(); err != nil {
		return brokenEntry(file, "%s (line %d): %v", what, node.Line, err)
	}
	return nsEntry{ns: ns}
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

// brokenErr is the error of a file whose namespaces are unknown: it fails
// every lookup.
func (r *RegistriesD) brokenErr() error {
	if len(r.broken) == 0 {
		return nil
	}
	return r.broken[0]
}

// find walks the scopes of ref (most specific first, then default-docker)
// and returns the first value pick finds set, or the error of the first
// broken entry met before one.
func find[T any](r *RegistriesD, identity, repo string, pick func(namespace) (T, bool)) (T, bool, error) {
	var zero T
	if err := r.brokenErr(); err != nil {
		return zero, false, err
	}
	for _, scope := range scopes(identity, repo) {
		ent, ok := r.docker[scope]
		if !ok {
			continue
		}
		if ent.err != nil {
			return zero, false, ent.err
		}
		if v, ok := pick(ent.ns); ok {
			return v, true, nil
		}
	}
	if r.defaultDocker != nil {
		if r.defaultDocker.err != nil {
			return zero, false, r.defaultDocker.err
		}
		if v, ok := pick(r.defaultDocker.ns); ok {
			return v, true, nil
		}
	}
	return zero, false, nil
}

// useSigstoreAttachments reports whether cosign attachments are looked up
// for ref, an image at the place it is fetched from (containers/image
// looks registries.d up for the mirror or location actually used). Unlike
// containers/image, the default is on: only an explicit false turns it off.
func (r *RegistriesD) useSigstoreAttachments(ref name.Reference) (bool, error) {
	if r == nil {
		return true, nil
	}
	use, ok, err := find(r, refname.Reference(ref), refname.Repository(ref.Context()), func(ns namespace) (bool, bool) {
		if ns.UseSigstoreAttachments == nil {
			return false, false
		}
		return *ns.UseSigstoreAttachments, true
	})
	if err != nil || !ok {
		return true, err
	}
	return use, nil
}

// lookaside returns the base URL of ref's signatures in the lookaside store
// of its most specific scope that names one, with the repository path
// appended (containers/image's layout), or nil when no scope names one. ref
// is the image at the place it is fetched from, as for
// useSigstoreAttachments.
func (r *RegistriesD) lookaside(ref name.Reference) (*url.URL, error) {
	if r == nil {
		return nil, nil
	}
	loc, ok, err := find(r, refname.Reference(ref), refname.Repository(ref.Context()), func(ns namespace) (string, bool) {
		l := ns.readLocation()
		return l, l != ""
	})
	if err != nil || !ok {
		return nil, err
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
