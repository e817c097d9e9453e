// Package devkbs is a development Key Broker Service speaking Trustee's
// KBS protocol (kbs-types 0.4.0, RCAR): challenge, attestation, token and
// JWE-wrapped resources. It verifies TPM evidence for real (registered
// attestation keys, quote signature, nonce binding, PCR reference values),
// accepts sample evidence only when told to, and serves resources from a
// directory laid out as <repo>/<type>/<tag>.
//
// It is for tests and demos on the host side and is never imported by the
// guest side.
package devkbs
