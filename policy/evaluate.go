package policy

import (
	"context"
	"crypto/sha256"
	"fmt"
	"slices"
	"strings"
	"unicode"

	"github.com/distribution/reference"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/guest-puller/guest-puller/internal/errdefs"
	"github.com/guest-puller/guest-puller/internal/mediatype"
	"github.com/guest-puller/guest-puller/internal/refname"
	"github.com/guest-puller/guest-puller/internal/untrusted"
)

// evaluation is the state of one Evaluate call. Claims are remembered per
// key, so a key that several requirements name is looked up once.
type evaluation struct {
	img      Image
	intended reference.Named
	keys     *keyReader
	sigstore map[string]lookup   // by signer.cache
	gpg      map[[32]byte]lookup // by SHA-256 of the keyring
}

type lookup struct {
	claims     []Claim
	rejections []Rejection
	err        error
}

// dockerReference converts the image reference into containers/image's
// form: docker.io rather than go-containerregistry's index.docker.io,
// checked against the docker reference grammar.
func dockerReference(ref name.Reference) (reference.Named, error) {
	switch ref.(type) {
	case name.Tag, name.Digest:
	default:
		return nil, fmt.Errorf("reference %s has neither a tag nor a digest", ref)
	}
	named, err := reference.ParseNamed(refname.Reference(ref))
	if err != nil {
		return nil, fmt.Errorf("reference %s: %w", ref, err)
	}
	return named, nil
}

// lookup returns the most specific scope of the docker transport that
// covers ref, and its requirements.
func (p *Policy) lookup(ref reference.Named) (string, []requirement) {
	for _, scope := range dockerScopes(ref) {
		if reqs, ok := p.docker[scope]; ok {
			return p.scopeNames[scope], reqs
		}
	}
	if reqs, ok := p.docker[ScopeTransportDefault]; ok {
		return ScopeTransportDefault, reqs
	}
	return ScopeGlobalDefault, p.def
}

func (p *Policy) rejectsOutright(ref name.Reference) (*Decision, error) {
	intended, err := dockerReference(ref)
	if err != nil {
		return nil, fmt.Errorf("policy: %w: %w", errdefs.ErrInvalidConfig, err)
	}
	scope, reqs := p.lookup(intended)
	d := &Decision{Image: ref.String(), Scope: scope, Signatures: []SignatureResult{}}
	for _, r := range reqs {
		if rej, ok := r.(reject); ok {
			res, _ := rej.evaluate(context.Background(), nil)
			d.Requirements = append(d.Requirements, res)
		}
	}
	if len(d.Requirements) == 0 {
		return nil, nil
	}
	return d, nil
}

func (p *Policy) evaluate(ctx context.Context, img Image) (*Decision, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if img.Ref == nil {
		return nil, fmt.Errorf("policy: %w: no image reference to decide on", errdefs.ErrInvalidConfig)
	}
	intended, err := dockerReference(img.Ref)
	if err != nil {
		return nil, fmt.Errorf("policy: %w: %w", errdefs.ErrInvalidConfig, err)
	}
	scope, reqs := p.lookup(intended)
	ev := &evaluation{
		img:      img,
		intended: intended,
		keys:     p.keys,
		sigstore: map[string]lookup{},
		gpg:      map[[32]byte]lookup{},
	}
	// Signatures is empty rather than nil when no requirement looks for
	// one, so that the JSON outputs (pull --json, policy check --json)
	// show a list, as DESIGN.md's contract says, never null.
	d := &Decision{Allowed: true, Image: img.Ref.String(), Scope: scope, Signatures: []SignatureResult{}}
	for _, r := range reqs {
		res, sigs := r.evaluate(ctx, ev)
		// A canceled lookup is not a verdict on the image.
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		res.Reason = oneLine(res.Reason)
		for i := range sigs {
			sigs[i].Reason = oneLine(sigs[i].Reason)
		}
		d.Allowed = d.Allowed && res.OK
		d.Requirements = append(d.Requirements, res)
		d.Signatures = append(d.Signatures, sigs...)
	}
	return d, nil
}

func (d *Decision) err() error {
	if d.Allowed {
		return nil
	}
	for _, r := range d.Requirements {
		if !r.OK {
			return fmt.Errorf("image %s: %w: %s: %s: %s", oneLine(d.Image), errdefs.ErrRefused, scopeLabel(d.Scope), r.Type, oneLine(r.Reason))
		}
	}
	return fmt.Errorf("image %s: %w: %s", oneLine(d.Image), errdefs.ErrRefused, scopeLabel(d.Scope))
}

func scopeLabel(scope string) string {
	switch scope {
	case ScopeTransportDefault:
		return `docker transport default scope ""`
	case ScopeGlobalDefault:
		return "global default"
	default:
		return fmt.Sprintf("scope %q", scope)
	}
}

// oneLine keeps reasons and errors on one line: they can carry text from
// signature stores, which the registry controls, to a terminal or a log.
func oneLine(s string) string {
	return strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return ' '
		}
		return r
	}, s)
}

// digestMatches reports whether a signature over d covers the image: d is
// its manifest's digest, or its index's.
func (ev *evaluation) digestMatches(d v1.Hash) bool {
	if d == (v1.Hash{}) {
		return false
	}
	return d == ev.img.ManifestDigest || (ev.img.IndexDigest != (v1.Hash{}) && d == ev.img.IndexDigest)
}

// accept finds a claim that is about this image (digest) and claims an
// identity id accepts for it; otherwise it says why none is. A claim whose
// KeyID is none of keyIDs (nil for any: a keyless signer's key is its
// certificate's) is not this signer's: Evidence should never return one,
// and checking keeps a threshold honest if it did.
func (ev *evaluation) accept(claims []Claim, id identityMatcher, keyIDs []string) (Claim, string, bool) {
	reason := ""
	for _, c := range claims {
		var why string
		switch {
		case keyIDs != nil && c.KeyID != "" && !slices.Contains(keyIDs, c.KeyID):
			why = fmt.Sprintf("signature was verified by key %q, not this key", c.KeyID)
		case !ev.digestMatches(c.ManifestDigest):
			why = fmt.Sprintf("signature is for digest %s, not the image's %s", c.ManifestDigest, ev.img.ManifestDigest)
		case !id.matches(ev.intended, c.DockerReference):
			why = fmt.Sprintf("signed identity %s is not accepted by %s for %s", untrusted.Quote(c.DockerReference), id, ev.intended)
		default:
			return c, "", true
		}
		if reason == "" {
			reason = why
		}
	}
	return Claim{}, reason, false
}

func (ev *evaluation) sigstoreClaims(ctx context.Context, s signer) lookup {
	if ev.img.Evidence == nil {
		return lookup{}
	}
	if l, ok := ev.sigstore[s.cache]; ok {
		return l
	}
	var l lookup
	l.claims, l.rejections, l.err = ev.img.Evidence.Sigstore(ctx, s.trust)
	ev.sigstore[s.cache] = l
	return l
}

func (ev *evaluation) gpgClaims(ctx context.Context, kr gpgKeyring) ([]Claim, error) {
	if ev.img.Evidence == nil {
		return nil, nil
	}
	sum := sha256.Sum256(kr.data)
	if l, ok := ev.gpg[sum]; ok {
		return l.claims, l.err
	}
	claims, err := ev.img.Evidence.SimpleSigning(ctx, kr.data)
	ev.gpg[sum] = lookup{claims: claims, err: err}
	return claims, err
}

// keyCheck gathers what the signers of one requirement found.
type keyCheck struct {
	results  []SignatureResult
	verified []string // names of the signers with an accepted signature
	rejected []string // "name: why" for signers whose signatures were all refused
	err      error    // the first lookup failure
}

// add records one signer's outcome: a lookup error, or the claims found and
// whether one was accepted (res.Verified, else res.Reason says why not).
func (c *keyCheck) add(res SignatureResult, l lookup) {
	switch {
	case l.err != nil:
		res.Verified, res.Reason = false, "signature lookup failed: "+l.err.Error()
		if c.err == nil {
			c.err = l.err
		}
	case res.Verified:
		c.verified = append(c.verified, res.KeyName)
	case len(l.claims) > 0 || len(l.rejections) > 0:
		c.rejected = append(c.rejected, res.KeyName+": "+res.Reason)
	}
	c.results = append(c.results, res)
}

// failure explains why the signers do not hold.
func (c *keyCheck) failure() string {
	switch {
	case c.err != nil:
		return "signature lookup failed: " + c.err.Error()
	case len(c.rejected) == 0:
		return "a signature was required, but no signature by the policy's signers exists"
	default:
		return "no signature is accepted: " + strings.Join(c.rejected, "; ")
	}
}

// checkSigstore checks every signer, even after one verified, so that the
// report lists them all.
func (ev *evaluation) checkSigstore(ctx context.Context, signers []signer, id identityMatcher) *keyCheck {
	c := &keyCheck{}
	for _, s := range signers {
		res := SignatureResult{KeyName: s.name, KeyID: s.id}
		l := ev.sigstoreClaims(ctx, s)
		if l.err == nil {
			var keyIDs []string
			if s.id != "" {
				keyIDs = []string{s.id}
			}
			claim, why, ok := ev.accept(l.claims, id, keyIDs)
			res.Verified = ok
			switch {
			case ok:
				res.KeyID, res.Signer = claim.KeyID, claim.Signer
			case why != "":
				res.Reason = why
			case len(l.rejections) > 0:
				res.Reason = joinRejections(l.rejections)
			case s.id == "":
				res.Reason = "no signature by this identity"
			default:
				res.Reason = "no signature verifies with this key"
			}
		}
		c.add(res, l)
	}
	return c
}

// joinRejections lists why signatures were refused, each once.
func joinRejections(rs []Rejection) string {
	var out []string
	for _, r := range rs {
		if s := r.String(); !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	return strings.Join(out, "; ")
}

func (acceptAnything) evaluate(context.Context, *evaluation) (RequirementResult, []SignatureResult) {
	return RequirementResult{Type: TypeInsecureAcceptAnything, OK: true, Reason: "accepts any image"}, nil
}

func (reject) evaluate(context.Context, *evaluation) (RequirementResult, []SignatureResult) {
	return RequirementResult{Type: TypeReject, Reason: "the policy rejects every image in this scope"}, nil
}

func (signedBaseLayer) evaluate(context.Context, *evaluation) (RequirementResult, []SignatureResult) {
	return RequirementResult{Type: TypeSignedBaseLayer, Reason: "signedBaseLayer is not implemented (as in containers/image)"}, nil
}

func (r *signedBy) evaluate(ctx context.Context, ev *evaluation) (RequirementResult, []SignatureResult) {
	res := RequirementResult{Type: TypeSignedBy}
	if r.keyType != "GPGKeys" {
		res.Reason = fmt.Sprintf("keyType %q is not implemented (as in containers/image)", r.keyType)
		return res, nil
	}
	keyrings, err := ev.keys.keyrings(ctx, r.keyrings)
	if err != nil {
		res.Reason = err.Error()
		return res, nil
	}
	c := &keyCheck{}
	for _, kr := range keyrings {
		res := SignatureResult{KeyName: kr.name, KeyID: strings.Join(kr.fingerprints, ",")}
		claims, err := ev.gpgClaims(ctx, kr)
		if err == nil {
			var claim Claim
			claim, res.Reason, res.Verified = ev.accept(claims, r.identity, kr.fingerprints)
			switch {
			case res.Verified && claim.KeyID != "":
				res.KeyID = claim.KeyID // the one key of the keyring that signed
			case len(claims) == 0:
				res.Reason = "no signature verifies with this key"
			}
		}
		c.add(res, lookup{claims: claims, err: err})
	}
	if c.err == nil && len(c.verified) > 0 {
		res.OK, res.Reason = true, "signed by a key of "+strings.Join(c.verified, ", ")
	} else {
		res.Reason = c.failure()
	}
	return res, c.results
}

func (r *sigstoreSigned) evaluate(ctx context.Context, ev *evaluation) (RequirementResult, []SignatureResult) {
	res := RequirementResult{Type: TypeSigstoreSigned}
	signers, err := ev.keys.signers(ctx, r.signers)
	if err != nil {
		res.Reason = err.Error()
		return res, nil
	}
	c := ev.checkSigstore(ctx, signers, r.identity)
	if c.err == nil && len(c.verified) > 0 {
		res.OK, res.Reason = true, "signed by "+strings.Join(c.verified, ", ")
	} else {
		res.Reason = c.failure()
	}
	return res, c.results
}

func (r *sigstoreThreshold) evaluate(ctx context.Context, ev *evaluation) (RequirementResult, []SignatureResult) {
	res := RequirementResult{Type: TypeSigstoreThreshold}
	signers, err := ev.keys.signers(ctx, r.signers)
	if err != nil {
		res.Reason = err.Error()
		return res, nil
	}
	// The same key under two names would count twice toward the threshold.
	byID := map[string]string{}
	for _, s := range signers {
		if s.id == "" {
			continue
		}
		if other, dup := byID[s.id]; dup {
			res.Reason = fmt.Sprintf("keys %q and %q are the same public key: each signer must count once", other, s.name)
			return res, nil
		}
		byID[s.id] = s.name
	}
	c := ev.checkSigstore(ctx, signers, r.identity)
	// Each signing key counts once: two identities whose signatures were
	// made with one certificate's key are one signer.
	var counted []string
	used := map[string]bool{}
	for _, sr := range c.results {
		if sr.Verified && !used[sr.KeyID] {
			used[sr.KeyID] = true
			counted = append(counted, sr.KeyName)
		}
	}
	signed := fmt.Sprintf("%d of %d keys signed", len(counted), len(r.signers))
	if len(counted) > 0 {
		signed += " (" + strings.Join(counted, ", ") + ")"
	}
	signed = fmt.Sprintf("%s, %d needed", signed, r.threshold)
	switch {
	case c.err != nil:
		res.Reason = c.failure()
	case len(counted) >= r.threshold:
		res.OK, res.Reason = true, signed
	case len(c.rejected) > 0:
		res.Reason = signed + "; refused: " + strings.Join(c.rejected, "; ")
	default:
		res.Reason = signed
	}
	return res, c.results
}

// isEncrypted reports an encrypted layer type that the pipeline decrypts
// (internal/mediatype is the one list): a type that merely ends in
// "+encrypted" but is no layer type pull can read is not encrypted.
func isEncrypted(mediaType string) bool {
	return mediatype.IsEncrypted(mediaType)
}

func (r encrypted) evaluate(_ context.Context, ev *evaluation) (RequirementResult, []SignatureResult) {
	return r.check(ev.img.LayerMediaTypes), nil
}

func (r encrypted) check(layers []string) RequirementResult {
	res := RequirementResult{Type: TypeEncrypted}
	n := len(layers)
	if n == 0 {
		// Nothing is encrypted in an image without layers: fail closed.
		res.Reason = "the image has no layers"
		return res
	}
	count := 0
	firstPlain := -1
	for i, mt := range layers {
		if isEncrypted(mt) {
			count++
		} else if firstPlain < 0 {
			firstPlain = i
		}
	}
	switch {
	case !r.any && firstPlain >= 0:
		res.Reason = fmt.Sprintf("layer %d of %d is not encrypted (%s)", firstPlain+1, n, untrusted.Text(layers[firstPlain]))
	case r.any && count == 0:
		res.Reason = fmt.Sprintf("none of the %d layers is encrypted", n)
	default:
		res.OK, res.Reason = true, fmt.Sprintf("%d of %d layers are encrypted", count, n)
	}
	return res
}
