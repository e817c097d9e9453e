// Package policy owns the policy file: the containers-policy.json(5) model
// read strictly (an unknown field or type is an error), the guest-puller
// extensions ("encrypted", "sigstoreThreshold"), scope lookup as
// containers/image does it, and the decision with its reasons.
//
// It does no network I/O: keys named by the policy are loaded through the
// caller's ReadFunc, and signatures are reached through the Evidence
// interface that verify/ implements. policy decides; verify only checks.
//
// Load checks the structure (fields, types, requirement and identity types,
// transport scopes) and reads no key. As in containers/image, the keys,
// keyrings and CA bundles a requirement names are read and parsed when that
// requirement is evaluated: a key that is missing or does not parse refuses
// the images of the scopes that name it, with a reason naming the key, and
// affects no other scope. What parses but cannot be verified here refuses
// the image at evaluation, with a reason: signedBy key types other than
// GPGKeys, and signedBaseLayer (as in containers/image).
//
// sigstoreSigned and sigstoreThreshold trust signers (signerSpec): public
// keys, or keyless identities (fulcio: a CA, an OIDC issuer and an email,
// with Rekor keys; pki: a private CA's roots and intermediates, an email or
// a host name), optionally with Rekor keys whose SET a signature must
// carry. Evidence does the cryptography (verify/) and says why a signature
// is refused by naming the check; policy counts signers (a threshold
// counts each signing key once) and matches claims to the image.
// Docker scopes are any string, as in containers/image; those no reference
// can match are reported by Policy.Warnings.
//
// Scope lookup for the docker transport tries, most specific first, the
// image's reference with its tag or digest, its repository, each parent
// namespace, the registry host (with port), the host's parent domains as
// "*.domain" wildcards, then the transport's "" scope and the global
// "default". Decision.Scope names the scope that decided.
package policy
