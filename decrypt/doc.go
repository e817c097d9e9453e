// Package decrypt owns encrypted layers: unwrapping layer keys from ocicrypt
// annotations (JWE, PKCS7, PGP and the attestation-agent key provider) with
// keys from local files or a Key Broker Service, and the streaming
// AES_256_CTR_HMAC_SHA256 decryption of a layer blob. It is built on
// github.com/containers/ocicrypt and knows nothing of registries.
//
// It also holds the encryption side: the wrap side of the attestation-agent
// key provider, which `guest-puller keyprovider` serves to skopeo over
// ocicrypt's keyprovider protocol, and the encryption of a layer for JWE and
// attestation-agent recipients (Recipients.EncryptLayer), which
// `guest-puller encrypt` (internal/encrypt) runs over whole images.
//
// ocicrypt's JWE and PKCS7 key wrappers and its cipher options are used
// directly; its top-level package is not imported, because its init fills
// a package-level registry and runs key provider commands named by
// $OCICRYPT_KEYPROVIDER_CONFIG. The OpenPGP recipient is read by our own
// code (pgp.go): ocicrypt's inflates a packet without bound, offers the
// key's password to passphrase-encrypted session keys, and accepts
// messages that are not encrypted. Every unwrap is bounded before and while
// it parses (bounds.go): 64 KiB per packet and per result, 32 packets, 32
// levels of PKCS7 nesting, whatever an image's author wrote. The cipher's data path (AES-256-CTR with an
// HMAC-SHA256 checked at EOF) is a short loop of our own over those
// options: ocicrypt's reader copies and allocates every read twice, a third
// of an encrypted pull's decryption cost (see ctrReader).
// Whatever cannot be checked is refused: unknown packet and option fields,
// unauthenticated wrap types, public cipher options, keys that do not parse.
package decrypt
