package verify

import (
	"context"
	"crypto"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/sigstore/sigstore/pkg/cryptoutils"

	"github.com/guest-puller/guest-puller/internal/errdefs"
	"github.com/guest-puller/guest-puller/internal/untrusted"
	"github.com/guest-puller/guest-puller/policy"
)

// Bounds on what an untrusted registry or lookaside store can make us hold:
// a signature manifest, one cosign payload or GPG signature, and the number
// of signatures per digest and kind (containers/image allows 128 lookaside
// signatures; attachments and referrers together get the same).
const (
	maxManifestSize    = 4 << 20
	maxPayloadSize     = 1 << 20
	maxSignatureSize   = 4 << 20
	maxSignatures      = 128
	defaultHTTPTimeout = 2 * time.Minute
)

// rawSigstore is a cosign-format signature as fetched, not yet verified.
type rawSigstore struct {
	digest    string // the digest whose attachment or referrer held it
	payload   []byte
	signature []byte
}

// rawSimple is a GPG simple-signing signature as fetched, not yet verified.
type rawSimple struct {
	digest string // the digest whose lookaside path held it
	blob   []byte
}

// evidence implements policy.Evidence for one Target. Each kind of
// signature is fetched at most once, on first use; keys are checked on
// every call.
type evidence struct {
	v        *Verifier
	t        Target
	sigstore *once[[]rawSigstore]
	simple   *once[[]rawSimple]
}

var _ policy.Evidence = (*evidence)(nil)

func (e *evidence) Sigstore(ctx context.Context, pub crypto.PublicKey) ([]policy.Claim, error) {
	verifiers, err := sigstoreVerifiers(pub)
	if err != nil {
		return nil, err
	}
	der, err := cryptoutils.MarshalPublicKeyToDER(pub)
	if err != nil {
		return nil, fmt.Errorf("sigstore key: %w: %v", errdefs.ErrInvalidConfig, err)
	}
	sum := sha256.Sum256(der)
	keyID := hex.EncodeToString(sum[:])

	sigs, err := e.sigstore.get(ctx, e.fetchSigstore)
	if err != nil {
		return nil, fmt.Errorf("sigstore signatures of %s: %w", e.name(), untrusted.Error(err))
	}
	var claims []policy.Claim
	for _, s := range sigs {
		if !verifySigstore(verifiers, s.signature, s.payload) {
			continue
		}
		p, err := parsePayload(s.payload, cosignPayloadType)
		if err != nil || p.manifestDigest.String() != s.digest {
			// Validly signed, but not a claim about this image.
			continue
		}
		claims = appendClaim(claims, policy.Claim{
			DockerReference: p.dockerReference,
			ManifestDigest:  p.manifestDigest,
			KeyID:           keyID,
		})
	}
	return claims, nil
}

func (e *evidence) SimpleSigning(ctx context.Context, keyring []byte) ([]policy.Claim, error) {
	kr, err := parseKeyring(keyring)
	if err != nil {
		return nil, err
	}
	sigs, err := e.simple.get(ctx, e.fetchSimple)
	if err != nil {
		return nil, fmt.Errorf("simple-signing signatures of %s: %w", e.name(), untrusted.Error(err))
	}
	var claims []policy.Claim
	for _, s := range sigs {
		content, signer, err := verifyOpenPGP(kr, s.blob)
		if err != nil {
			continue
		}
		p, err := parsePayload(content, atomicPayloadType)
		if err != nil || p.manifestDigest.String() != s.digest {
			continue
		}
		claims = appendClaim(claims, policy.Claim{
			DockerReference: p.dockerReference,
			ManifestDigest:  p.manifestDigest,
			KeyID:           strings.ToUpper(hex.EncodeToString(signer.PrimaryKey.Fingerprint)),
		})
	}
	return claims, nil
}

// name is the image as errors name it.
func (e *evidence) name() string {
	if e.t.Identity != nil {
		return e.t.Identity.String()
	}
	return e.t.Repo.String()
}

// appendClaim appends c unless an equal claim is already there: the same
// signature may be stored both as an attachment and as a referrer.
func appendClaim(claims []policy.Claim, c policy.Claim) []policy.Claim {
	if slices.Contains(claims, c) {
		return claims
	}
	return append(claims, c)
}

// once runs a fetch at most once and shares its outcome with all callers.
// Unlike sync.OnceValues, a caller whose context ends while another fetches
// stops waiting, and a fetch cut short by its caller's context is not kept:
// the next caller fetches again.
type once[T any] struct {
	sem  chan struct{} // holds a token while a fetch runs or the state is read
	done bool
	val  T
	err  error
}

func newOnce[T any]() *once[T] {
	return &once[T]{sem: make(chan struct{}, 1)}
}

func (o *once[T]) get(ctx context.Context, fetch func(context.Context) (T, error)) (T, error) {
	select {
	case o.sem <- struct{}{}:
	case <-ctx.Done():
		var zero T
		return zero, ctx.Err()
	}
	defer func() { <-o.sem }()
	if o.done {
		return o.val, o.err
	}
	val, err := fetch(ctx)
	if err != nil && ctx.Err() != nil {
		return val, err
	}
	o.val, o.err, o.done = val, err, true
	return val, err
}
