package registry

import (
	"context"
	"fmt"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
)

// Write pushes img to ref, with the client's credentials and over its
// transport: the same TLS rules, insecure hosts, proxy and retries as
// reads. Blobs the repository has are not sent again. The handshake asks
// for push scope and is not kept: an image is written once.
func (c *Client) Write(ctx context.Context, ref name.Reference, img v1.Image) error {
	ref = c.pinScheme(ref, false)
	repo := ref.Context()
	auth, err := authn.Resolve(ctx, c.keychain, repo)
	if err != nil {
		return fmt.Errorf("credentials for %s: %w", repo.RegistryStr(), err)
	}
	rt, err := transport.NewWithContext(ctx, repo.Registry, auth, c.rt, []string{repo.Scope(transport.PushScope)})
	if err != nil {
		return describe(repo, err)
	}
	if err := remote.Write(ref, img, remote.WithContext(ctx), remote.WithTransport(rt)); err != nil {
		return describe(ref, err)
	}
	return nil
}
