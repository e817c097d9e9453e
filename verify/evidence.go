package verify

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/sigstore/sigstore/pkg/cryptoutils"

	"github.com/guest-puller/guest-puller/internal/errdefs"
	"github.com/guest-puller/guest-puller/internal/untrusted"
	"github.com/guest-puller/guest-puller/policy"
)

// Bounds on what an untrusted registry or lookaside store can make us read
// and hold: a signature manifest, one cosign payload or GPG signature, the
// number of signatures per digest and kind (containers/image allows 128
// lookaside signatures; attachments and referrers together get the same),
// and all the signature bytes of one image together, so that a store
// answering every signature-N with 4 MiB costs 8 MiB of reading, not 512.
const (
	maxManifestSize    = 4 << 20
	maxPayloadSize     = 1 << 20
	maxSignatureSize   = 4 << 20
	maxSignatures      = 128
	maxImageSignatures = 8 << 20
	defaultHTTPTimeout = 2 * time.Minute
)

// rawSigstore is a cosign-format signature as fetched, not yet verified.
type rawSigstore struct {
	digest    string // the digest whose attachment or referrer held it
	payload   []byte
	signature []byte
	// certificate (PEM) and chain (PEM, up to the root) of a keyless
	// signature, and the Rekor SET (cosign's bundle, JSON) of a logged one.
	certificate, chain, bundle []byte
}

// evidence implements policy.Evidence for one Target. Cosign signatures
// are fetched at most once, on first use, and checked against each key
// asked about. Lookaside signatures are verified as they arrive and not
// kept: the store is walked once per keyring asked about, and only the
// claims are kept. All of it reads from one budget of bytes.
type evidence struct {
	v        *Verifier
	t        Target
	budget   *byteBudget
	sigstore *once[[]rawSigstore]

	mu     sync.Mutex
	simple map[[sha256.Size]byte]*once[[]policy.Claim] // by keyring
}

// byteBudget is what is left of the signature bytes one image may read.
type byteBudget struct {
	mu   sync.Mutex
	left int64
}

func newByteBudget() *byteBudget { return &byteBudget{left: maxImageSignatures} }

// errBudget is the budget spent.
var errBudget = fmt.Errorf("the image's signatures exceed %d bytes in all", maxImageSignatures)

// take spends n bytes, or fails when fewer are left.
func (b *byteBudget) take(n int64) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if n < 0 || n > b.left {
		b.left = 0
		return errBudget
	}
	b.left -= n
	return nil
}

func (b *byteBudget) remaining() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.left
}

var _ policy.Evidence = (*evidence)(nil)

func (e *evidence) Sigstore(ctx context.Context, trust policy.SigstoreTrust) ([]policy.Claim, []policy.Rejection, error) {
	sigs, err := e.sigstore.get(ctx, e.fetchSigstore)
	if err != nil {
		return nil, nil, fmt.Errorf("sigstore signatures of %s: %w", e.name(), untrusted.Error(err))
	}
	if trust.PublicKey == nil {
		claims, rejections := e.keylessClaims(sigs, trust)
		return claims, rejections, nil
	}
	return e.keyClaims(sigs, trust)
}

// keyClaims returns the claims of the signatures that verify with
// trust.PublicKey and, when trust has Rekor keys, carry a Rekor SET that
// logs them with that key. A signature that does not verify with the key
// is someone else's and is not rejected: it is not this key's.
func (e *evidence) keyClaims(sigs []rawSigstore, trust policy.SigstoreTrust) ([]policy.Claim, []policy.Rejection, error) {
	verifiers, err := sigstoreVerifiers(trust.PublicKey)
	if err != nil {
		return nil, nil, err
	}
	der, err := cryptoutils.MarshalPublicKeyToDER(trust.PublicKey)
	if err != nil {
		return nil, nil, fmt.Errorf("sigstore key: %w: %v", errdefs.ErrInvalidConfig, err)
	}
	sum := sha256.Sum256(der)
	keyID := hex.EncodeToString(sum[:])
	var pemKey []byte
	if len(trust.RekorKeys) > 0 {
		if pemKey, err = keyPEM(trust.PublicKey); err != nil {
			return nil, nil, fmt.Errorf("sigstore key: %w: %v", errdefs.ErrInvalidConfig, err)
		}
	}
	var claims []policy.Claim
	var rejections []policy.Rejection
	for _, s := range sigs {
		if !verifySigstore(verifiers, s.signature, s.payload) {
			continue
		}
		if len(trust.RekorKeys) > 0 {
			if _, rej := checkSET(s, trust.RekorKeys, pemKey); rej != nil {
				rejections = append(rejections, *rej)
				continue
			}
		}
		if c, ok := sigstoreClaim(s, keyID, nil); ok {
			claims = appendClaim(claims, c)
		}
	}
	return claims, rejections, nil
}

// sigstoreClaim is what a verified signature s claims, made with the key
// keyID (and, keyless, by signer). ok is false for a signature that is
// valid but no claim about this image: its payload is not cosign's or
// names another manifest.
func sigstoreClaim(s rawSigstore, keyID string, signer *policy.Signer) (c policy.Claim, ok bool) {
	p, err := parsePayload(s.payload, cosignPayloadType)
	if err != nil || p.manifestDigest.String() != s.digest {
		return policy.Claim{}, false
	}
	return policy.Claim{
		DockerReference: p.dockerReference,
		ManifestDigest:  p.manifestDigest,
		KeyID:           keyID,
		Signer:          signer,
	}, true
}

// keylessClaims returns the claims of the signatures made under trust's
// certificate identity, and why each other signature is not.
func (e *evidence) keylessClaims(sigs []rawSigstore, trust policy.SigstoreTrust) ([]policy.Claim, []policy.Rejection) {
	now := e.v.now()
	var claims []policy.Claim
	var rejections []policy.Rejection
	for _, s := range sigs {
		signer, keyID, rej := checkKeyless(s, trust, now)
		if rej != nil {
			rejections = append(rejections, *rej)
			continue
		}
		if c, ok := sigstoreClaim(s, keyID, signer); ok {
			claims = appendClaim(claims, c)
		}
	}
	return claims, rejections
}

func (e *evidence) SimpleSigning(ctx context.Context, keyring []byte) ([]policy.Claim, error) {
	kr, err := parseKeyring(keyring)
	if err != nil {
		return nil, err
	}
	e.mu.Lock()
	o, ok := e.simple[sha256.Sum256(keyring)]
	if !ok {
		o = newOnce[[]policy.Claim]()
		e.simple[sha256.Sum256(keyring)] = o
	}
	e.mu.Unlock()
	claims, err := o.get(ctx, func(ctx context.Context) ([]policy.Claim, error) { return e.walkSimple(ctx, kr) })
	if err != nil {
		return nil, fmt.Errorf("simple-signing signatures of %s: %w", e.name(), untrusted.Error(err))
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
	if slices.ContainsFunc(claims, func(o policy.Claim) bool {
		return o.DockerReference == c.DockerReference && o.ManifestDigest == c.ManifestDigest && o.KeyID == c.KeyID &&
			(o.Signer == c.Signer || (o.Signer != nil && c.Signer != nil && *o.Signer == *c.Signer))
	}) {
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
