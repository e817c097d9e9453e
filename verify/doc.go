// Package verify finds the signatures of an image and checks them: cosign
// signatures from sha256-<hex>.sig attachment tags and the OCI 1.1 referrers
// API, and GPG simple-signing signatures from containers-registries.d
// lookaside stores (file:// and http(s)://). A signature is reported only if
// it verifies with the key asked about and its payload names the very digest
// under which it was stored; a valid signature of another image moved next
// to this one proves nothing and is dropped.
//
// Where it looks follows containers/image, with one difference: sigstore
// attachments (and referrers) are read unless registries.d turns them off
// with an explicit use-sigstore-attachments: false, because in a
// confidential guest a policy that asks for a signature must be able to
// find one without extra configuration. There is no built-in lookaside
// directory: only configured locations are read.
//
// Nothing is fetched until the policy asks (Evidence is lazy), and
// everything read is bounded in size and count, since registry and
// lookaside server are untrusted: cosign signatures are read once per image
// and kept for every key asked about; lookaside signatures are verified as
// they arrive and dropped, so a store is walked once per keyring; all the
// signature bytes of one image share one budget (8 MiB); signature
// manifests are refused past 65,536 JSON tokens before they are decoded
// (Manifests, which pull's registry client provides); and a lookaside
// store may redirect only within its own host, never from https to http.
//
// verify produces facts (policy.Claim); it never decides allow or deny:
// that is policy/'s job.
package verify
