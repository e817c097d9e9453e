package policy

// This file is the package's contract with pull/ and verify/ (see
// docs/ARCHITECTURE.md).

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/x509"
	"fmt"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// ReadFunc loads a file named in the policy (keyPath, keyPaths, ...): a local
// path, or a kbs:///repo/type/tag resource when the caller supports it. The
// policy package itself does no network I/O.
type ReadFunc func(ctx context.Context, path string) ([]byte, error)

// LoadOptions control how a policy file is read.
type LoadOptions struct {
	// BaseDir resolves relative key paths (the policy file's directory).
	BaseDir string
	// Read loads key files. Nil means local files only (os.ReadFile), and a
	// kbs:// path is an error.
	Read ReadFunc
}

// Policy is a parsed, validated containers-policy.json with the guest-puller
// extensions (encrypted, sigstoreThreshold). It is immutable and safe for
// concurrent use.
type Policy struct {
	def    []requirement
	docker map[string][]requirement // scope → requirements; "" is the transport default
	keys   *keyReader
	// scopeNames maps a docker scope, its host spelled by refname.Scope,
	// to the scope as the policy file wrote it (Decision.Scope).
	scopeNames map[string]string

	warnings []string
}

// Warnings lists what in the policy is valid but cannot do what its author
// meant: docker scopes that no image reference can match ("busybox" for
// docker.io/library/busybox), which containers/image accepts and never
// applies. Callers show them to the user (policy check) or log them.
func (p *Policy) Warnings() []string { return p.warnings }

// Load parses and validates a policy. It reads no key: as in
// containers/image, the keys, keyrings and CA bundles a requirement names are
// read (through LoadOptions.Read) when that requirement is evaluated, so a
// key that is missing or does not parse refuses the images of the scopes
// that name it (exit 3, the reason naming the key) and no other. Errors wrap
// errdefs.ErrInvalidConfig; ctx only cancels.
//
// Load reads containers-policy.json(5) as containers/image does, with the
// differences the README lists under "Differences from containers/image":
// it refuses unknown transport names, JSON nulls, empty strings and empty
// key lists, where containers/image lets them pass.
func Load(ctx context.Context, data []byte, opts LoadOptions) (*Policy, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("policy: %w", err)
	}
	return load(data, opts)
}

// Claim is what one signature asserts, once verify/ has checked it
// cryptographically and checked that it covers the digest it was asked about.
type Claim struct {
	// DockerReference is the identity in the signed payload
	// (critical.identity.docker-reference).
	DockerReference string
	// ManifestDigest is the signed digest (critical.image.docker-manifest-digest).
	ManifestDigest v1.Hash
	// KeyID identifies the key that verified it (GPG fingerprint, or the
	// SHA-256 of the public key's DER for sigstore keys, hex; for a keyless
	// signature, its certificate's key).
	KeyID string
	// Signer is who a keyless signature's certificate says signed; nil for
	// a signature by a public key.
	Signer *Signer
}

// Signer identifies the signer of a keyless signature, from its
// certificate.
type Signer struct {
	// Issuer is the OIDC issuer that vouched for the subject (Fulcio's
	// issuer extension), or the certificate's issuer for a private CA's
	// certificate that has none.
	Issuer string `json:"issuer"`
	// Subject is the signer: the certificate's email address, or its URI
	// or DNS name when it has none.
	Subject string `json:"subject"`
	// Serial is the certificate's serial number, hex.
	Serial string `json:"serial"`
}

// SigstoreTrust is one signer a sigstore requirement trusts: a public key,
// or a certificate identity (keyless), and the Rekor keys whose signed
// entry timestamp (SET) a signature must carry, as containers/image's
// sigstoreSigned reads them.
type SigstoreTrust struct {
	// PublicKey is the signing key; nil for a keyless identity.
	PublicKey crypto.PublicKey
	// Roots are the CA certificates a keyless signature's certificate must
	// chain to, through the intermediates the signature carries and
	// Intermediates; the certificate must allow code signing.
	Roots, Intermediates []*x509.Certificate
	// OIDCIssuer, when set, is what the certificate's Fulcio issuer
	// extension must say.
	OIDCIssuer string
	// SubjectEmail, when set, must be one of the certificate's email
	// addresses; SubjectHostname, when set, a name it is valid for.
	SubjectEmail, SubjectHostname string
	// RekorKeys, when set, require a Rekor SET (the cosign bundle) that
	// verifies with one of them and logs this very signature, its payload
	// and its key or certificate; a certificate must then have been valid
	// at the SET's integrated time. Without them a certificate must be
	// valid now.
	RekorKeys []*ecdsa.PublicKey
}

// Rejection says why a signature a trusted signer might have made is not
// accepted, naming the check that failed: "SET" (none), "SET signature",
// "SET body", "certificate", "chain", "validity time", "issuer",
// "subject" or "signature".
type Rejection struct {
	Check  string
	Reason string
}

func (r Rejection) String() string { return r.Check + ": " + r.Reason }

// Evidence gives access to the signatures of one image. verify/ implements
// it; it fetches lazily, so a policy that needs no signature touches no
// signature store. An error (store unreachable, malformed signature store)
// makes the requirement that asked fail: it is never an allow.
type Evidence interface {
	// Sigstore returns the claims of the image's cosign-format signatures
	// that trust accepts, and why the others that could be trust's were
	// not accepted (a signature by another key is no one's business and
	// is not among them).
	Sigstore(ctx context.Context, trust SigstoreTrust) ([]Claim, []Rejection, error)
	// SimpleSigning returns the claims of GPG simple-signing signatures of
	// the image that verify with a key of keyring (binary or armored
	// OpenPGP public keys, possibly concatenated).
	SimpleSigning(ctx context.Context, keyring []byte) ([]Claim, error)
}

// Image is what the decision is made over.
type Image struct {
	// Ref is the reference as the user asked for it (after normalization);
	// scope lookup and signedIdentity use it.
	Ref name.Reference
	// ManifestDigest is the digest of the platform manifest; IndexDigest that
	// of the index it came through, zero when none. A signature over either
	// is accepted, as containers/image does.
	ManifestDigest v1.Hash
	IndexDigest    v1.Hash
	// LayerMediaTypes are the manifest's layer media types, in order.
	LayerMediaTypes []string
	// Evidence gives the image's signatures. Nil means none can be found.
	Evidence Evidence
}

// Decision is the outcome of Evaluate, with the reasons.
type Decision struct {
	Allowed bool
	// Image is Ref.String() of the evaluated image.
	Image string
	// Scope is the scope that decided: the exact scope string of the policy
	// file ("docker.io/library/busybox", "*.example.com", ...), "" for the
	// docker transport's own default (ScopeTransportDefault), or "default"
	// for the global default (ScopeGlobalDefault). No docker scope of a
	// policy that loads can be spelled "default".
	Scope        string
	Requirements []RequirementResult
	Signatures   []SignatureResult
}

// RequirementResult is one requirement's verdict.
type RequirementResult struct {
	Type   string `json:"type"`
	OK     bool   `json:"ok"`
	Reason string `json:"reason,omitempty"`
}

// SignatureResult is one signer's view of the signatures found. KeyName is
// the threshold key's name, the keyPath (as written in the policy),
// "keyData[i]" for inline keys (i counting within the requirement's
// keyData/keyDatas), or "fulcio" or "pki" for a sigstoreSigned keyless
// identity. KeyID is the SHA-256 of a sigstore key's DER (for a verified
// keyless signature, its certificate's key), or the GPG fingerprint(s) of a
// keyring (the signing key's own when verified).
type SignatureResult struct {
	KeyName  string `json:"keyName"`
	KeyID    string `json:"keyID"`
	Verified bool   `json:"verified"`
	Reason   string `json:"reason,omitempty"`
	// Signer is who signed, for a verified keyless signature.
	*Signer `json:",omitempty"`
}

// Evaluate decides whether img may run. All requirements of the most
// specific matching scope must hold. The returned error is non-nil only when
// the decision could not be made at all: ctx canceled, or img.Ref missing or
// not a valid docker reference (that error wraps errdefs.ErrInvalidConfig).
//
// Every requirement is evaluated, even after one failed, so that the
// Decision explains all of them. An Evidence error fails the requirement
// that asked, with the error in its Reason.
func (p *Policy) Evaluate(ctx context.Context, img Image) (*Decision, error) {
	return p.evaluate(ctx, img)
}

// RejectsOutright returns the decision for ref when the scope that covers
// it has a "reject" requirement, so that no image could be allowed there:
// the caller refuses without resolving the image, contacting the registry
// or looking for signatures. The decision lists the reject requirements
// only. It returns nil when the decision needs the image itself, and an
// error (wrapping errdefs.ErrInvalidConfig) when ref is no valid docker
// reference.
func (p *Policy) RejectsOutright(ref name.Reference) (*Decision, error) {
	return p.rejectsOutright(ref)
}

// Err returns nil when d allows the image, and otherwise an error wrapping
// errdefs.ErrRefused that names the image, the scope and the first unmet
// requirement with its reason, on one line.
func (d *Decision) Err() error {
	return d.err()
}
