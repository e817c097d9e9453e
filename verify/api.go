package verify

// This file is the package's contract with pull/ (see docs/ARCHITECTURE.md).

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/guest-puller/guest-puller/policy"
)

// RegistriesD is a parsed containers-registries.d directory: per-namespace
// lookaside locations and use-sigstore-attachments. It is immutable; a nil
// *RegistriesD is the default configuration (attachments on, no lookaside).
type RegistriesD struct {
	defaultDocker *nsEntry
	defaultFrom   string // the file that defines default-docker
	docker        map[string]nsEntry
	from          map[string]string // namespace → the file that defines it
	broken        []error           // files whose namespaces cannot be known
}

// LoadRegistriesD reads every *.yaml file of dir. A missing dir is an empty
// configuration. A file that is wrong does not fail the load: a namespace
// it breaks (a bad field, a bad URL, defined in two files) fails the
// signature lookups of images in that namespace, and a file whose
// namespaces cannot be read at all (invalid YAML, an unknown top-level
// field) fails every signature lookup, each with an error wrapping
// errdefs.ErrInvalidConfig that names the file. Only a directory that
// cannot be read is an error here.
func LoadRegistriesD(dir string) (*RegistriesD, error) {
	return loadRegistriesD(dir)
}

// ParseRegistriesD reads one registries.d file's content, named name in
// errors: the confidential-data-hub's sigstore config, which image-rs takes
// as a single file (sigstore_config_uri). What is wrong in it fails
// lookups as a file of LoadRegistriesD's directory does, never the parse:
// the error result is always nil.
func ParseRegistriesD(name string, data []byte) (*RegistriesD, error) {
	r := newRegistriesD()
	r.add(name, data)
	return r, nil
}

// Options configure a Verifier.
type Options struct {
	// Remote are the registry options (auth, transport, retries) for
	// fetching sigstore attachments and referrers, as used for the image.
	Remote []remote.Option
	// Blobs reads the signature payloads those name as the image's layers
	// are read: retried, and resumed where a connection broke (pull gives
	// its Registry). Nil reads them through Remote, where a body that
	// breaks mid-way is an error.
	Blobs Blobs
	// RegistriesD configures lookaside and attachments; nil means defaults
	// (sigstore attachments on, no lookaside).
	RegistriesD *RegistriesD
	// HTTPClient fetches http(s) lookaside signatures; nil means a default
	// client with timeouts. Whatever the client, redirects are followed
	// only within the store's host, and never from https to http.
	HTTPClient *http.Client
	// Now is the time a keyless certificate must be valid at when no Rekor
	// SET gives one (pki); nil means time.Now.
	Now func() time.Time
}

// Blobs opens a blob of a repository for streaming: exactly desc.Size
// bytes, or an error, which need not name the blob (registry.Client's do
// not). The caller checks the digest.
type Blobs interface {
	Blob(ctx context.Context, repo name.Repository, desc v1.Descriptor) (io.ReadCloser, error)
}

// Manifests reads a manifest or index, bounded before it is decoded
// (registry.Client.Manifest). When the Blobs of Options has this method
// too, signature manifests are read with it; otherwise with
// go-containerregistry's remote.Get, which decodes each whole, however
// many small values 4 MiB of it holds. Errors are remote.Get's (a
// *transport.Error for what the registry answered).
type Manifests interface {
	Manifest(ctx context.Context, ref name.Reference) ([]byte, types.MediaType, error)
}

// Verifier finds and checks signatures. Safe for concurrent use.
type Verifier struct {
	opts Options
}

func (v *Verifier) now() time.Time {
	if v.opts.Now != nil {
		return v.opts.Now()
	}
	return time.Now()
}

// New returns a Verifier.
func New(opts Options) *Verifier {
	hc := &http.Client{Timeout: defaultHTTPTimeout}
	if opts.HTTPClient != nil {
		c := *opts.HTTPClient
		hc = &c
	}
	next := hc.CheckRedirect
	hc.CheckRedirect = func(req *http.Request, via []*http.Request) error {
		if err := sameStore(req, via); err != nil {
			return err
		}
		if next != nil {
			return next(req, via)
		}
		if len(via) >= maxRedirects {
			return fmt.Errorf("stopped after %d redirects", maxRedirects)
		}
		return nil
	}
	opts.HTTPClient = hc
	return &Verifier{opts: opts}
}

// Target names the image whose signatures are wanted.
type Target struct {
	// Repo is the repository the image was actually fetched from (a mirror,
	// possibly): cosign attachments and referrers are looked up there.
	// The zero Repository means Identity's repository.
	Repo name.Repository
	// Identity is the reference as the user named it.
	Identity name.Reference
	// Digests are the digests a signature may cover: the platform manifest
	// and, when the image came through an index, the index.
	Digests []v1.Hash
}

// fetched is the image at the place it was fetched from: Repo with
// Identity's tag or digest. registries.d is looked up for it, and lookaside
// paths derive from it, as containers/image does for the mirror or location
// it pulls from.
func (t Target) fetched() name.Reference {
	if t.Identity == nil {
		// No tag or digest is known: only the repository's scopes apply.
		return t.Repo.Tag("")
	}
	if d, ok := t.Identity.(name.Digest); ok {
		return t.Repo.Digest(d.DigestStr())
	}
	return t.Repo.Tag(t.Identity.Identifier())
}

// Evidence returns the lazily-fetched signatures of t. Fetching happens on
// the first call of a method and is shared by later calls.
func (v *Verifier) Evidence(t Target) policy.Evidence {
	if t.Repo.RepositoryStr() == "" && t.Identity != nil {
		t.Repo = t.Identity.Context()
	}
	return &evidence{
		v:        v,
		t:        t,
		budget:   newByteBudget(),
		sigstore: newOnce[[]rawSigstore](),
		simple:   map[[sha256.Size]byte]*once[[]policy.Claim]{},
	}
}
