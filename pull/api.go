package pull

// This file is what the pipeline consumes, as small interfaces defined
// here (as go-containerregistry's v1.Layer or containerd's
// content.Provider are): a registry to resolve images and read blobs, and
// a layer cache to look layers up, stage and commit them under a lease,
// record images and make bundles. *registry.Client and *unpack.Cache are
// the real ones (FromClient, FromCache); the pipeline's own tests run over
// a store in memory, without root or mounts.

import (
	"context"
	"io"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/opencontainers/go-digest"

	"github.com/guest-puller/guest-puller/internal/registry"
	"github.com/guest-puller/guest-puller/unpack"
	"github.com/guest-puller/guest-puller/verify"
)

// Registry is where images come from.
type Registry interface {
	// ResolveName turns an image name as the user gave it into the
	// references to try (a short name through registries.conf).
	ResolveName(image string) (*registry.Resolution, error)
	// Resolve finds ref and returns its digest-pinned manifest and config.
	Resolve(ctx context.Context, ref name.Reference) (*registry.Image, error)
	// Blob streams the blob desc of repo: exactly desc.Size bytes, not
	// checked against the digest (the pipeline hashes as it reads). Its
	// errors do not name the blob: the pipeline names the layer.
	Blob(ctx context.Context, repo name.Repository, desc v1.Descriptor) (io.ReadCloser, error)
	// RemoteOptions are the options signature lookups read repo with.
	RemoteOptions(ctx context.Context, repo name.Repository) ([]remote.Option, error)
	// ForRequest is the Registry for one request with its own credentials
	// (USER:PASSWORD), which go to ref's registry only.
	ForRequest(creds string, ref name.Reference) (Registry, error)
}

// Cache is where layers, image records and bundles are kept.
type Cache interface {
	// NewLease starts the pins of one pull; the pull releases it when it
	// ends, whatever the outcome.
	NewLease() Lease
	// LockLayer serializes the fetch of one layer across pulls and
	// processes.
	LockLayer(ctx context.Context, diffID digest.Digest) (release func(), err error)
	PutImage(ctx context.Context, rec unpack.ImageRecord) error
	CreateBundle(ctx context.Context, spec unpack.BundleSpec) (*unpack.Bundle, error)
	// VerifyLayer reads a committed layer back, and removes it if it
	// fails to (an integrity error).
	VerifyLayer(ctx context.Context, diffID digest.Digest) error
}

// Lease is what one pull holds in the cache (unpack.Lease).
type Lease interface {
	// Layer says whether diffID is committed (and then pins it) and
	// whether src may stand for it without being fetched, by the layer
	// provenance rules of DESIGN.md.
	Layer(diffID digest.Digest, src unpack.Source) (present, reusable bool)
	// AddSource records src, verified to yield the committed diffID.
	AddSource(diffID digest.Digest, src unpack.Source) error
	// Stage starts applying diffID made from src; its Commit pins the
	// layer under the lease.
	Stage(diffID digest.Digest, src unpack.Source) (Staging, error)
	Release()
}

// Staging is a layer being applied: exactly one of Commit or Abort ends it.
type Staging interface {
	Apply(ctx context.Context, tar io.Reader) error
	Commit() error
	Abort() error
}

// FromClient is c as a Registry.
func FromClient(c *registry.Client) Registry { return clientRegistry{c} }

type clientRegistry struct{ *registry.Client }

// The Registry a pull passes verify as its Blobs reads signature manifests
// too, bounded before they are decoded.
var _ verify.Manifests = clientRegistry{}

func (c clientRegistry) ForRequest(creds string, ref name.Reference) (Registry, error) {
	rc, err := c.Client.ForRequest(creds, ref)
	if err != nil {
		return nil, err
	}
	return clientRegistry{rc}, nil
}

// FromCache is c as a Cache.
func FromCache(c *unpack.Cache) Cache { return unpackCache{c} }

type unpackCache struct{ *unpack.Cache }

func (c unpackCache) NewLease() Lease { return unpackLease{c.Cache.NewLease()} }

type unpackLease struct{ *unpack.Lease }

func (l unpackLease) Stage(diffID digest.Digest, src unpack.Source) (Staging, error) {
	s, err := l.Lease.Stage(diffID, src)
	if err != nil {
		return nil, err
	}
	return s, nil
}
