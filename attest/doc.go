// Package attest proves the guest's state to a Key Broker Service and
// fetches secrets from it. It owns the evidence providers (TPM 2.0 through
// go-tpm, configfs-tsm for TDX and SEV-SNP, and a sample one for
// development) and the client side of Trustee's KBS protocol (kbs-types
// 0.4.0): challenge, ephemeral tee key, evidence bound to the nonce and key,
// token, and JWE-wrapped resources named kbs:///repo/type/tag.
//
// It knows nothing of images: callers ask it for resources by name.
package attest
