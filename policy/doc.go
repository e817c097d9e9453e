// Package policy owns the policy file: the containers-policy.json(5) model
// read strictly (an unknown field or type is an error), the guest-puller
// extensions ("encrypted", "sigstoreThreshold"), scope lookup as
// containers/image does it, and the decision with its reasons.
//
// It does no network I/O: keys named by the policy are loaded through the
// caller's ReadFunc, and signatures are reached through the Evidence
// interface that verify/ implements. policy decides; verify only checks.
package policy
