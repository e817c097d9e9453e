package main

import (
	"context"
	"fmt"
	"io"

	"github.com/guest-puller/guest-puller/attest"
	"github.com/guest-puller/guest-puller/decrypt"
	"github.com/guest-puller/guest-puller/internal/errdefs"
)

// cmdKeyProvider answers one ocicrypt keyprovider request on stdin/stdout,
// as the attestation-agent provider: point OCICRYPT_KEYPROVIDER_CONFIG's
// "cmd" at `guest-puller keyprovider` and skopeo encrypts with
// provider:attestation-agent:keypath=KEK::keyid=kbs:///repo/type/tag.
func cmdKeyProvider(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	if len(args) != 0 {
		return fmt.Errorf("%w: usage: guest-puller keyprovider < request.json", errdefs.ErrInvalidConfig)
	}
	return decrypt.ServeKeyProvider(ctx, stdin, stdout, decrypt.KeyProviderOptions{})
}

// attestAKPEM is the TPM attestation key's public key, to register with a
// KBS (dev-kbs --tpm-ak).
func attestAKPEM(ctx context.Context, tpm string) ([]byte, error) {
	return attest.AKPublicPEM(ctx, tpm)
}
