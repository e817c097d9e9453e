// Package verify finds the signatures of an image and checks them: cosign
// signatures from sha256-<hex>.sig attachment tags and the OCI 1.1 referrers
// API, and GPG simple-signing signatures from containers-registries.d
// lookaside stores (file:// and http(s)://). A signature is reported only if
// it verifies with the key asked about and covers one of the image's digests.
//
// verify produces facts (policy.Claim); it never decides allow or deny:
// that is policy/'s job.
package verify
