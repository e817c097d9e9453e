// Package policy owns the policy file: the containers-policy.json(5) model
// read strictly (an unknown field or type is an error), the guest-puller
// extensions ("encrypted", "sigstoreThreshold"), scope lookup as
// containers/image does it, and the decision with its reasons.
//
// It does no network I/O: keys named by the policy are loaded through the
// caller's ReadFunc, and signatures are reached through the Evidence
// interface that verify/ implements. policy decides; verify only checks.
//
// Everything that can be checked is checked at Load: every key, keyring
// and CA bundle is read and parsed then, so evaluation never fails for a
// configuration reason. What parses but cannot be verified here refuses
// the image at evaluation, with a reason: keyless sigstore (fulcio, pki,
// rekor), signedBy key types other than GPGKeys, and signedBaseLayer.
//
// Scope lookup for the docker transport tries, most specific first, the
// image's reference with its tag or digest, its repository, each parent
// namespace, the registry host (with port), the host's parent domains as
// "*.domain" wildcards, then the transport's "" scope and the global
// "default". Decision.Scope names the scope that decided.
package policy
