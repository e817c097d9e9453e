package verify

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/sigstore/sigstore/pkg/signature"
	"github.com/sigstore/sigstore/pkg/signature/options"

	"github.com/guest-puller/guest-puller/internal/errdefs"
	"github.com/guest-puller/guest-puller/internal/untrusted"
)

// cosign's storage format: each signature is a manifest layer whose blob is
// the signed payload and whose annotation holds the base64 signature. With
// --registry-referrers-mode=oci-1-1 the same manifest is an OCI 1.1
// artifact of this type whose subject is the signed image.
const (
	simpleSigningMediaType = "application/vnd.dev.cosign.simplesigning.v1+json"
	signatureAnnotation    = "dev.cosignproject.cosign/signature"
	cosignSigArtifactType  = "application/vnd.dev.cosign.artifact.sig.v1+json"
)

// fetchSigstore collects the cosign signatures of every target digest from
// its sha256-<hex>.sig attachment tag and its referrers.
func (e *evidence) fetchSigstore(ctx context.Context) ([]rawSigstore, error) {
	use, err := e.v.opts.RegistriesD.useSigstoreAttachments(e.t.fetched())
	if err != nil || !use {
		return nil, err
	}
	opts := append(slices.Clone(e.v.opts.Remote), remote.WithContext(ctx))
	p, err := remote.NewPuller(opts...)
	if err != nil {
		return nil, err
	}
	// Referrers share the puller so that the registry token is fetched once.
	opts = append(opts, remote.Reuse(p))
	blobs := e.v.opts.Blobs
	if blobs == nil {
		blobs = remoteBlobs{p}
	}
	get, ok := blobs.(Manifests)
	if !ok {
		get = remoteManifests{p}
	}

	var out []rawSigstore
	for _, d := range e.t.Digests {
		sigs, err := fetchAttachment(ctx, get, blobs, e.t.Repo, d, maxSignatures, e.budget)
		if err != nil {
			return nil, err
		}
		out = append(out, sigs...)
		more, err := fetchReferrers(ctx, get, blobs, opts, e.t.Repo, d, maxSignatures-len(sigs), e.budget)
		if err != nil {
			return nil, err
		}
		out = append(out, more...)
	}
	return out, nil
}

// fetchAttachment reads the signatures of d stored under cosign's
// attachment tag, at most limit of them. No such tag means no signatures.
func fetchAttachment(ctx context.Context, get Manifests, blobs Blobs, repo name.Repository, d v1.Hash, limit int, budget *byteBudget) ([]rawSigstore, error) {
	tag := repo.Tag(fmt.Sprintf("%s-%s.sig", d.Algorithm, d.Hex))
	raw, mt, err := get.Manifest(ctx, tag)
	if isNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("signature tag %s: %w", tag, err)
	}
	sigs, err := readSignatureManifest(ctx, blobs, repo, d, raw, mt, false, limit, budget)
	if err != nil {
		return nil, fmt.Errorf("signature tag %s: %w", tag, err)
	}
	return sigs, nil
}

// fetchReferrers reads the signatures of d stored as OCI 1.1 referrers
// (the referrers API, or its tag schema on registries without it), at most
// limit of them.
func fetchReferrers(ctx context.Context, get Manifests, blobs Blobs, opts []remote.Option, repo name.Repository, d v1.Hash, limit int, budget *byteBudget) ([]rawSigstore, error) {
	subject := repo.Digest(d.String())
	idx, err := remote.Referrers(subject, opts...)
	if err != nil {
		return nil, fmt.Errorf("referrers of %s: %w", d, err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		return nil, fmt.Errorf("referrers of %s: %w", d, err)
	}
	var out []rawSigstore
	n := 0
	for _, desc := range im.Manifests {
		if desc.ArtifactType != cosignSigArtifactType {
			continue
		}
		if n++; n > maxSignatures {
			return nil, fmt.Errorf("referrers of %s: more than %d cosign signature artifacts", d, maxSignatures)
		}
		if desc.Size > maxManifestSize {
			return nil, fmt.Errorf("referrer %s of %s: manifest of %d bytes exceeds %d", desc.Digest, d, desc.Size, maxManifestSize)
		}
		// By digest: the bytes are checked against it.
		raw, mt, err := get.Manifest(ctx, repo.Digest(desc.Digest.String()))
		if err != nil {
			return nil, fmt.Errorf("referrer %s of %s: %w", desc.Digest, d, err)
		}
		sigs, err := readSignatureManifest(ctx, blobs, repo, d, raw, mt, true, limit-len(out), budget)
		if err != nil {
			return nil, fmt.Errorf("referrer %s of %s: %w", desc.Digest, d, err)
		}
		out = append(out, sigs...)
	}
	return out, nil
}

// readSignatureManifest extracts the signatures (at most limit) of a cosign
// signature manifest and fetches their payloads. Layers of other media
// types (attestations, bundles) are not ours and are skipped.
func readSignatureManifest(ctx context.Context, blobs Blobs, repo name.Repository, subject v1.Hash, raw []byte, mt types.MediaType, referrer bool, limit int, budget *byteBudget) ([]rawSigstore, error) {
	// Manifests bound what they read (remote.Get at its own 100 MiB); a
	// signature manifest is a few KiB.
	if len(raw) > maxManifestSize {
		return nil, fmt.Errorf("manifest of %d bytes exceeds %d", len(raw), maxManifestSize)
	}
	if err := budget.take(int64(len(raw))); err != nil {
		return nil, err
	}
	switch mt {
	case types.OCIManifestSchema1, types.DockerManifestSchema2:
	default:
		return nil, fmt.Errorf("media type %s is not an image manifest", untrusted.Quote(string(mt)))
	}
	m, err := v1.ParseManifest(bytes.NewReader(raw))
	if err != nil {
		return nil, err
	}
	if referrer {
		// The referrers list is the registry's word; the manifest itself
		// must say what it signs.
		if m.Subject == nil || m.Subject.Digest != subject {
			return nil, fmt.Errorf("subject is not %s", subject)
		}
	}
	var out []rawSigstore
	for _, l := range m.Layers {
		if l.MediaType != simpleSigningMediaType {
			continue
		}
		b64, ok := l.Annotations[signatureAnnotation]
		if !ok {
			continue
		}
		if len(out) >= limit {
			return nil, fmt.Errorf("more than %d signatures of %s", maxSignatures, subject)
		}
		sig, err := base64.StdEncoding.DecodeString(b64)
		if err != nil {
			// Cannot verify with any key: no claim, but not a broken store.
			continue
		}
		// Payloads are kept until every key asked about has seen them:
		// together they are bounded by the image's budget.
		if l.Size > 0 && l.Size <= maxPayloadSize {
			if err := budget.take(l.Size); err != nil {
				return nil, err
			}
		}
		payload, err := fetchBlob(ctx, blobs, repo, l, maxPayloadSize)
		if err != nil {
			return nil, err
		}
		out = append(out, rawSigstore{
			digest:      subject.String(),
			payload:     payload,
			signature:   sig,
			certificate: []byte(l.Annotations[certificateAnnotation]),
			chain:       []byte(l.Annotations[chainAnnotation]),
			bundle:      []byte(l.Annotations[bundleAnnotation]),
		})
	}
	return out, nil
}

// fetchBlob reads the blob desc describes, refusing more than limit bytes
// and bytes that do not match the descriptor. A mismatch is a bad signature
// store, which the policy turns into a refusal, not an integrity failure of
// the image.
func fetchBlob(ctx context.Context, blobs Blobs, repo name.Repository, desc v1.Descriptor, limit int64) ([]byte, error) {
	if desc.Size < 0 || desc.Size > limit {
		return nil, fmt.Errorf("blob %s: size %d exceeds %d", desc.Digest, desc.Size, limit)
	}
	if desc.Digest.Algorithm != "sha256" {
		return nil, fmt.Errorf("blob %s: unsupported digest algorithm", desc.Digest)
	}
	rc, err := blobs.Blob(ctx, repo, desc)
	if err != nil {
		return nil, fmt.Errorf("blob %s: %w", desc.Digest, err)
	}
	defer rc.Close()
	b, err := io.ReadAll(io.LimitReader(rc, desc.Size+1))
	if err != nil {
		return nil, fmt.Errorf("blob %s: %w", desc.Digest, err)
	}
	if int64(len(b)) != desc.Size {
		return nil, fmt.Errorf("blob %s: size is not %d", desc.Digest, desc.Size)
	}
	got, _, err := v1.SHA256(bytes.NewReader(b))
	if err != nil {
		return nil, err
	}
	if got != desc.Digest {
		return nil, fmt.Errorf("blob %s: content digest is %s", desc.Digest, got)
	}
	return b, nil
}

// remoteManifests reads manifests through go-containerregistry, for a
// Verifier whose Blobs are not also Manifests.
type remoteManifests struct{ p *remote.Puller }

func (r remoteManifests) Manifest(ctx context.Context, ref name.Reference) ([]byte, types.MediaType, error) {
	desc, err := r.p.Get(ctx, ref)
	if err != nil {
		return nil, "", err
	}
	return desc.Manifest, desc.MediaType, nil
}

// remoteBlobs reads blobs through go-containerregistry, for a Verifier
// given no Blobs: a body that breaks is an error, not resumed.
type remoteBlobs struct{ p *remote.Puller }

func (r remoteBlobs) Blob(ctx context.Context, repo name.Repository, desc v1.Descriptor) (io.ReadCloser, error) {
	l, err := r.p.Layer(ctx, repo.Digest(desc.Digest.String()))
	if err != nil {
		return nil, err
	}
	return l.Compressed()
}

func isNotFound(err error) bool {
	var terr *transport.Error
	return errors.As(err, &terr) && terr.StatusCode == http.StatusNotFound
}

// sigstoreVerifiers returns the ways pub may have signed a payload. cosign
// signs with the key's default algorithm (ECDSA P-384 with SHA-384, P-521
// with SHA-512, Ed25519 pre-hashed); containers/image (skopeo) and older
// cosign use SHA-256 and pure Ed25519 for every key. Both are accepted: each
// is a sound signature scheme over the same key.
func sigstoreVerifiers(pub crypto.PublicKey) ([]signature.Verifier, error) {
	def, err := signature.LoadDefaultVerifier(pub, options.WithED25519ph())
	if err != nil {
		return nil, fmt.Errorf("sigstore key: %w: %v", errdefs.ErrInvalidConfig, err)
	}
	vs := []signature.Verifier{def}
	alt := false
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		alt = k.Curve != elliptic.P256()
	case ed25519.PublicKey:
		alt = true
	}
	if alt {
		v, err := signature.LoadVerifier(pub, crypto.SHA256)
		if err != nil {
			return nil, fmt.Errorf("sigstore key: %w: %v", errdefs.ErrInvalidConfig, err)
		}
		vs = append(vs, v)
	}
	return vs, nil
}

func verifySigstore(verifiers []signature.Verifier, sig, payload []byte) bool {
	for _, v := range verifiers {
		if v.VerifySignature(bytes.NewReader(sig), bytes.NewReader(payload)) == nil {
			return true
		}
	}
	return false
}
