package main

import (
	"context"

	"github.com/guest-puller/guest-puller/decrypt"
)

// cmdKeyProvider answers one ocicrypt keyprovider request on stdin/stdout,
// as the attestation-agent provider.
func cmdKeyProvider(ctx context.Context, inv *invocation) error {
	f := inv.flags(`Answer one request of ocicrypt's keyprovider protocol: JSON on stdin,
JSON on stdout. It is the attestation-agent key provider's wrap side, for
skopeo and buildah builds whose ocicrypt speaks the protocol. Point
OCICRYPT_KEYPROVIDER_CONFIG at a file like

  {"key-providers": {"attestation-agent": {"cmd": {
      "path": "/usr/local/bin/guest-puller", "args": ["keyprovider"]}}}}

and encrypt with

  --encryption-key provider:attestation-agent:keypath=KEK::keyid=kbs:///REPO/TYPE/TAG

KEK is a file of exactly 32 random bytes; keyid names the KBS resource that
holds the same 32 bytes, which guest-puller, image-rs and the
confidential-data-hub fetch after attestation to decrypt. Both parameters are
required (no key is generated or registered), as is one attestation-agent
recipient per image. keyunwrap needs keypath; keyid, if given, must name the
packet's kid.

Debian's skopeo 1.9.3 predates the protocol: use 'guest-puller encrypt'.`)
	if _, err := f.parse(inv.args, 0); err != nil {
		return err
	}
	return decrypt.ServeKeyProvider(ctx, inv.stdin, inv.stdout, decrypt.KeyProviderOptions{})
}
