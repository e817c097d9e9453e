// Package sealedsecret unseals the confidential-data-hub's sealed secrets:
// secrets a Kubernetes control plane stores and hands to the guest (as
// environment values and files starting with "sealed.") without being
// able to read or change them.
//
// A sealed secret is "sealed." followed by a JWS in compact form
// (guest-components, confidential-data-hub/docs/SEALED_SECRET.md). The
// JWS is signed with ES256 by a P-256 key named by the protected header's
// kid: a KBS resource (kid "kbs:///repo/type/tag") or a file provisioned
// under /run/confidential-containers/cdh/sealed-secret; the verification
// key is a JWK. The payload is the secret's JSON, version "0.1.0", of one
// of two types, both with provider "kbs":
//
//   - vault: the secret is the KBS resource named by "name";
//   - envelope: "encrypted_key" is the data key wrapped with AES-256 Key
//     Wrap (RFC 3394, JWA "A256KW") under the KBS resource "key_id", and
//     "encrypted_data" is the secret sealed with AES-256-GCM under the data
//     key with nonce "iv" (the 16-byte tag appended, no additional data).
//
// The confidential-data-hub leaves the key wrap of an envelope to the KMS
// that provides it (Alibaba, AWS, eHSM); it has no envelope provider for
// a KBS. AES Key Wrap is the standard way to wrap a key under a key, needs
// no nonce, and is authenticated, so a KEK that is wrong fails before the
// data is touched.
//
// Everything else is refused with an error naming what is wrong: another
// version, type or provider, a member this package does not know, a
// missing kid, a signature that does not verify. The plaintext never
// appears in an error.
package sealedsecret
