package pull

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/opencontainers/go-digest"
	ispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sync/errgroup"

	"github.com/guest-puller/guest-puller/decrypt"
	"github.com/guest-puller/guest-puller/internal/errdefs"
	"github.com/guest-puller/guest-puller/internal/mediatype"
	"github.com/guest-puller/guest-puller/internal/refname"
	"github.com/guest-puller/guest-puller/internal/registry"
	"github.com/guest-puller/guest-puller/internal/untrusted"
	"github.com/guest-puller/guest-puller/policy"
	"github.com/guest-puller/guest-puller/unpack"
	"github.com/guest-puller/guest-puller/verify"
)

// DefaultMaxConcurrentDownloads is how many layers are fetched at once.
const DefaultMaxConcurrentDownloads = 3

// Options are the parts a Puller works with. Registry and Policy are
// required; Cache too, except for Check.
type Options struct {
	Registry Registry
	Cache    Cache
	Policy   *policy.Policy
	// RegistriesD configures where signatures are looked up (lookaside,
	// sigstore attachments); nil means the defaults.
	RegistriesD *verify.RegistriesD
	// Keys unwraps encrypted layers; nil means no key: an encrypted image
	// fails with errdefs.ErrDecrypt.
	Keys *decrypt.Keyring
	// Creds are registry credentials USER:PASSWORD (--creds) for the
	// registry of the image each pull names, sent to that registry alone
	// (Registry.ForRequest); a Request's own Creds replace them.
	Creds string
	// MaxConcurrentDownloads bounds the layers fetched at once by one
	// pull, and the layers decompressed at once by all the Puller's pulls
	// together (see compression.go).
	MaxConcurrentDownloads int
	// Progress, if set, is told what each layer is doing.
	Progress Progress
	// VerifyCached reads a cached layer back before reusing it
	// (unpack.Cache.VerifyLayer): for a cache on storage the host
	// provides, where what was written may not be what reads back.
	VerifyCached bool
}

// Puller pulls images. It is safe for concurrent use: concurrent pulls
// that need the same layer fetch it once.
type Puller struct {
	opts     Options
	decoders decoders
}

// New returns a Puller.
func New(opts Options) (*Puller, error) {
	if opts.Registry == nil || opts.Policy == nil {
		return nil, errors.New("pull: Registry and Policy are required")
	}
	if opts.MaxConcurrentDownloads <= 0 {
		opts.MaxConcurrentDownloads = DefaultMaxConcurrentDownloads
	}
	if opts.Progress == nil {
		opts.Progress = nopProgress{}
	}
	return &Puller{opts: opts, decoders: newDecoders(opts.MaxConcurrentDownloads)}, nil
}

// PolicyWarnings are what the policy holds that is valid but cannot do
// what its author meant (policy.Policy.Warnings), for the caller to show.
func (p *Puller) PolicyWarnings() []string { return p.opts.Policy.Warnings() }

// Cache is the layer cache the Puller unpacks into: nil for a checker, or
// when the Puller's Cache is not an *unpack.Cache.
func (p *Puller) Cache() *unpack.Cache {
	if c, ok := p.opts.Cache.(unpackCache); ok {
		return c.Cache
	}
	return nil
}

// Request is one pull.
type Request struct {
	// Image is the reference to pull ("registry.example.com/app:1.0").
	Image string
	// ContainerID names the bundle; "" derives one from the image.
	ContainerID string
	// BundleDir is where config.json and rootfs/ go; "" puts the bundle
	// under the cache.
	BundleDir string
	// Creds, if set, are registry credentials USER[:PASS] for this pull
	// only, in place of the Puller's.
	Creds string
}

// Result is the outcome of a pull, as `--json` prints it.
type Result struct {
	Image          string                   `json:"image"`
	ManifestDigest string                   `json:"manifestDigest"`
	ConfigDigest   string                   `json:"configDigest"`
	Bundle         string                   `json:"bundle"`
	Rootfs         string                   `json:"rootfs"`
	RootfsType     string                   `json:"rootfsType"`
	Layers         []LayerResult            `json:"layers"`
	Policy         PolicyResult             `json:"policy"`
	Signatures     []policy.SignatureResult `json:"signatures"`
}

// LayerResult is one layer of a Result.
type LayerResult struct {
	Digest    string `json:"digest"`
	DiffID    string `json:"diffID"`
	MediaType string `json:"mediaType"`
	Encrypted bool   `json:"encrypted"`
	Cached    bool   `json:"cached"`
}

// PolicyResult says which scope decided and how each requirement fared.
type PolicyResult struct {
	Scope        string                     `json:"scope"`
	Requirements []policy.RequirementResult `json:"requirements"`
}

// Pull resolves, checks, fetches, decrypts and unpacks req.Image and makes
// its bundle. A cached image still goes through resolve, policy and
// signature verification, and through its own key unwrap: having a layer
// cached is never a way around the policy or a missing key.
func (p *Puller) Pull(ctx context.Context, req Request) (*Result, error) {
	if p.opts.Cache == nil {
		return nil, errors.New("pull: no cache")
	}
	rc, img, decision, err := p.resolve(ctx, req.Image, req.Creds)
	if err != nil {
		return nil, err
	}
	if err := decision.Err(); err != nil {
		return nil, err
	}
	res := &Result{
		Image:          refname.Reference(img.Ref),
		ManifestDigest: img.Digest.String(),
		ConfigDigest:   img.Manifest.Config.Digest.String(),
		Policy:         PolicyResult{Scope: decision.Scope, Requirements: decision.Requirements},
		Signatures:     decision.Signatures,
	}
	cfg, err := parseConfig(res.Image, img.RawConfig)
	if err != nil {
		return nil, err
	}
	jobs, err := planLayers(res.Image, img.Manifest.Layers, cfg.RootFS.DiffIDs)
	if err != nil {
		return nil, err
	}
	if err := p.unwrapKeys(ctx, res.Image, jobs); err != nil {
		return nil, err
	}

	// The lease pins every layer this pull finds or commits until the
	// image record and the bundle name them, and lets go of them all
	// when the pull ends, however it ends.
	lease := p.opts.Cache.NewLease()
	defer lease.Release()
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(p.opts.MaxConcurrentDownloads)
	for _, j := range jobs {
		g.Go(func() error { return p.fetchLayer(gctx, rc, lease, img.Repo(), j) })
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}

	rec := unpack.ImageRecord{
		Ref:            res.Image,
		ManifestDigest: digest.Digest(img.Digest.String()),
		ConfigDigest:   digest.Digest(img.Manifest.Config.Digest.String()),
		Pulled:         time.Now().UTC(),
	}
	diffIDs := make([]digest.Digest, len(jobs))
	for i, j := range jobs {
		diffIDs[i] = j.diffID
		rec.Layers = append(rec.Layers, unpack.LayerRecord{Digest: digest.Digest(j.desc.Digest.String()), DiffID: j.diffID, MediaType: string(j.desc.MediaType), Size: j.desc.Size})
		res.Layers = append(res.Layers, LayerResult{
			Digest:    j.desc.Digest.String(),
			DiffID:    j.diffID.String(),
			MediaType: string(j.desc.MediaType),
			Encrypted: j.key != nil,
			Cached:    j.cached,
		})
	}
	if err := p.opts.Cache.PutImage(ctx, rec); err != nil {
		return nil, fmt.Errorf("%s: %w", res.Image, err)
	}
	id := req.ContainerID
	switch {
	case id != "":
	case req.BundleDir != "":
		id = BundleContainerID(req.BundleDir)
	default:
		id = DefaultContainerID(img.Ref, img.Digest)
	}
	b, err := p.opts.Cache.CreateBundle(ctx, unpack.BundleSpec{
		ID:             id,
		Dir:            req.BundleDir,
		Image:          res.Image,
		ManifestDigest: rec.ManifestDigest,
		Layers:         diffIDs,
		Config:         cfg,
	})
	if err != nil {
		// unpack's error names the bundle.
		return nil, fmt.Errorf("%s: %w", res.Image, err)
	}
	res.Bundle, res.Rootfs, res.RootfsType = b.Dir, b.Rootfs, b.RootfsType
	return res, nil
}

// planLayers pairs each layer with its diff_id and compression, refusing
// what cannot be pulled before anything is fetched.
func planLayers(image string, layers []v1.Descriptor, diffIDs []digest.Digest) ([]*layerJob, error) {
	if len(diffIDs) != len(layers) {
		return nil, fmt.Errorf("%s: %w: config lists %d diff_ids for %d layers", image, errdefs.ErrIntegrity, len(diffIDs), len(layers))
	}
	jobs := make([]*layerJob, len(layers))
	for i, desc := range layers {
		j := &layerJob{image: image, desc: desc, diffID: diffIDs[i]}
		if err := j.diffID.Validate(); err != nil || j.diffID.Algorithm() != digest.SHA256 {
			return nil, fmt.Errorf("%s: layer %s: %w: bad diff_id %s", image, desc.Digest, errdefs.ErrIntegrity, untrusted.Quote(string(j.diffID)))
		}
		var err error
		if j.layer, err = mediatype.ParseLayer(string(desc.MediaType)); err != nil {
			return nil, fmt.Errorf("%s: layer %s: %w", image, desc.Digest, err)
		}
		jobs[i] = j
	}
	return jobs, nil
}

// unwrapKeys unwraps every layer key before the first byte of any layer is
// fetched, cached or not: a missing key fails fast and costs nothing, and a
// cached layer is never a way around it.
func (p *Puller) unwrapKeys(ctx context.Context, image string, jobs []*layerJob) error {
	for _, j := range jobs {
		if !j.layer.Encrypted {
			continue
		}
		if p.opts.Keys == nil {
			return fmt.Errorf("%s: layer %s: %w: the layer is encrypted and no decryption key or KBS is configured", image, j.desc.Digest, errdefs.ErrDecrypt)
		}
		var err error
		if j.key, err = p.opts.Keys.Unwrap(ctx, toOCI(j.desc)); err != nil {
			return fmt.Errorf("%s: %w", image, err)
		}
	}
	return nil
}

// Check resolves image and evaluates the policy over it, fetching no layer:
// `guest-puller policy check`. When the policy rejects every image of the
// scope, the decision comes without contacting the registry and the
// returned Image is nil.
func (p *Puller) Check(ctx context.Context, image string) (*registry.Image, *policy.Decision, error) {
	_, img, d, err := p.resolve(ctx, image, "")
	return img, d, err
}

// registryFor is the Registry a pull of ref reads with: credentials (the
// request's, else the Puller's) go to ref's registry only.
func (p *Puller) registryFor(ref name.Reference, creds string) (Registry, error) {
	if creds == "" {
		creds = p.opts.Creds
	}
	if creds == "" {
		return p.opts.Registry, nil
	}
	return p.opts.Registry.ForRequest(creds, ref)
}

// resolve turns image's name into the references to try (a short name
// through registries.conf's aliases and search registries) and tries them
// in order, as containers/image does: the first that resolves and that the
// policy allows is the image. When none is allowed, the first refusal is
// the answer (exit 3, explained), and when none resolves, every
// candidate's error is. creds (else the Puller's) go to each candidate's
// registry only; the Registry returned is the one to fetch the image's
// blobs with. A candidate whose scope rejects every image is refused
// without contacting its registry (its Image is nil).
func (p *Puller) resolve(ctx context.Context, image, creds string) (Registry, *registry.Image, *policy.Decision, error) {
	res, err := p.opts.Registry.ResolveName(image)
	if err != nil {
		return nil, nil, nil, err
	}
	try := func(ref name.Reference) (Registry, *registry.Image, *policy.Decision, error) {
		rc, err := p.registryFor(ref, creds)
		if err != nil {
			return nil, nil, nil, err
		}
		img, d, err := p.check(ctx, ref, rc)
		return rc, img, d, err
	}
	if len(res.Candidates) == 1 {
		return try(res.Candidates[0])
	}
	var (
		refused *policy.Decision
		first   struct {
			rc  Registry
			img *registry.Image
		}
		errs []any
	)
	for _, ref := range res.Candidates {
		rc, img, d, err := try(ref)
		switch {
		case err != nil:
			if ctx.Err() != nil {
				return nil, nil, nil, err
			}
			errs = append(errs, err)
		case d.Allowed:
			return rc, img, d, nil
		case refused == nil:
			refused, first.rc, first.img = d, rc, img
		}
	}
	if refused != nil {
		return first.rc, first.img, refused, nil
	}
	return nil, nil, nil, fmt.Errorf("%s: no candidate can be pulled: "+strings.TrimSuffix(strings.Repeat("%w; ", len(errs)), "; "), append([]any{res.How}, errs...)...)
}

// check decides on ref: at once when its scope rejects every image (the
// registry, which the image name may have been chosen to reach, is never
// contacted, and the Image is nil), otherwise over the resolved image and
// its signatures.
func (p *Puller) check(ctx context.Context, ref name.Reference, rc Registry) (*registry.Image, *policy.Decision, error) {
	d, err := p.opts.Policy.RejectsOutright(ref)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: policy: %w", refname.Reference(ref), err)
	}
	if d != nil {
		return nil, d, nil
	}
	img, err := rc.Resolve(ctx, ref)
	if err != nil {
		return nil, nil, err
	}
	digests := []v1.Hash{img.Digest}
	if img.IndexDigest != (v1.Hash{}) {
		digests = append(digests, img.IndexDigest)
	}
	// Signatures are read over the same authenticated connections as the
	// image, from where the image was found.
	ropts, err := rc.RemoteOptions(ctx, img.Repo())
	if err != nil {
		return nil, nil, err
	}
	v := verify.New(verify.Options{Remote: ropts, Blobs: rc, RegistriesD: p.opts.RegistriesD})
	mts := make([]string, len(img.Manifest.Layers))
	for i, l := range img.Manifest.Layers {
		mts[i] = string(l.MediaType)
	}
	d, err = p.opts.Policy.Evaluate(ctx, policy.Image{
		Ref:             ref,
		ManifestDigest:  img.Digest,
		IndexDigest:     img.IndexDigest,
		LayerMediaTypes: mts,
		Evidence:        v.Evidence(verify.Target{Repo: img.Repo(), Identity: ref, Digests: digests}),
	})
	if err != nil {
		return nil, nil, fmt.Errorf("%s: policy: %w", refname.Reference(ref), err)
	}
	return img, d, nil
}

type layerJob struct {
	image  string
	desc   v1.Descriptor
	diffID digest.Digest
	layer  mediatype.Layer
	key    *decrypt.LayerKey
	cached bool
}

// fetchLayer brings one layer into the cache unless the cache may stand
// for it already, by the layer provenance rules (unpack.Lease.Layer): an
// encrypted blob (whose key this pull unwrapped) reuses only a layer that
// exact blob was decrypted into, a plain blob only a layer some plain blob
// was verified to yield. Otherwise the blob is fetched and verified
// against the diff_id: applied and committed when the cache lacks the
// layer, or only verified, then recorded as a source, when the cache has
// it from other blobs.
//
// The per-layer cache lock makes concurrent pulls, in this process or
// another, fetch a layer once: whoever waits finds it committed.
func (p *Puller) fetchLayer(ctx context.Context, rc Registry, lease Lease, repo name.Repository, j *layerJob) error {
	prog := p.opts.Progress
	src := j.source()
	if _, reusable := lease.Layer(j.diffID, src); reusable && !p.opts.VerifyCached {
		j.cached = true
		prog.LayerState(j.desc.Digest, j.desc.Size, StateCached)
		return nil
	}
	prog.LayerState(j.desc.Digest, j.desc.Size, StateWaiting)
	release, err := p.opts.Cache.LockLayer(ctx, j.diffID)
	if err != nil {
		return fmt.Errorf("%s: layer %s: %w", j.image, j.desc.Digest, err)
	}
	defer release()
	present, reusable := lease.Layer(j.diffID, src)
	if reusable && p.opts.VerifyCached {
		if err := p.opts.Cache.VerifyLayer(ctx, j.diffID); err != nil {
			prog.LayerState(j.desc.Digest, j.desc.Size, StateFailed)
			return fmt.Errorf("%s: layer %s: %w", j.image, j.desc.Digest, err)
		}
	}
	if reusable {
		j.cached = true
		prog.LayerState(j.desc.Digest, j.desc.Size, StateCached)
		return nil
	}
	prog.LayerState(j.desc.Digest, j.desc.Size, StateDownloading)
	if present {
		// The cache has this diff_id from other blobs (or from this one
		// read the other way, plain or decrypted): this blob must prove it
		// yields the same content before the cached layer stands for it.
		err = p.verifyStream(ctx, rc, repo, j, nil)
		if err == nil {
			err = lease.AddSource(j.diffID, src)
		}
	} else {
		err = p.applyLayer(ctx, rc, lease, repo, j)
	}
	if err != nil {
		prog.LayerState(j.desc.Digest, j.desc.Size, StateFailed)
		return fmt.Errorf("%s: layer %s: %w", j.image, j.desc.Digest, err)
	}
	prog.LayerState(j.desc.Digest, j.desc.Size, StateDone)
	return nil
}

// source is what this job's blob is to the cache: decrypted, with the key
// this pull unwrapped, when the layer is encrypted.
func (j *layerJob) source() unpack.Source {
	src := unpack.Source{Blob: digest.Digest(j.desc.Digest.String())}
	if j.key != nil {
		src.Decrypted, src.Key = true, j.key.Fingerprint()
	}
	return src
}

// applyLayer applies the layer into a staging directory as it streams and
// commits it into the cache once every check has held at EOF.
func (p *Puller) applyLayer(ctx context.Context, rc Registry, lease Lease, repo name.Repository, j *layerJob) error {
	stage, err := lease.Stage(j.diffID, j.source())
	if err != nil {
		return err
	}
	if err := p.verifyStream(ctx, rc, repo, j, func(tar io.Reader) error { return stage.Apply(ctx, tar) }); err != nil {
		stage.Abort()
		return err
	}
	return stage.Commit()
}

// verifyStream is the one streaming pass over a layer:
//
//	blob ─ sha256 = digest ─ decrypt ─ decompress ─ sha256 = diff_id ─ apply
//
// apply (nil to only verify) consumes the tar stream; the digests and the
// HMAC are checked at EOF, after it returned.
func (p *Puller) verifyStream(ctx context.Context, rc Registry, repo name.Repository, j *layerJob, apply func(io.Reader) error) error {
	if j.desc.Digest.Algorithm != "sha256" {
		return fmt.Errorf("%w: unsupported digest algorithm %s", errdefs.ErrIntegrity, untrusted.Quote(j.desc.Digest.Algorithm))
	}
	if j.layer.Compression != mediatype.Uncompressed {
		// A decoder first, so that a layer waiting for one holds no
		// connection.
		release, err := p.decoders.acquire(ctx)
		if err != nil {
			return err
		}
		defer release()
	}
	blob, err := rc.Blob(ctx, repo, j.desc)
	if err != nil {
		return err
	}
	defer blob.Close()

	blobSum := sha256.New()
	var r io.Reader = io.TeeReader(&countingReader{r: blob, layer: j.desc.Digest, prog: p.opts.Progress}, blobSum)
	if j.key != nil {
		if r, err = j.key.NewReader(r); err != nil {
			return err
		}
	}
	in := &errRecorder{r: r}
	out := &errRecorder{}
	tarStream, closeDecomp, err := decompress(j.layer.Compression, in)
	if err != nil {
		// The decompressor rejected the stream's header.
		out.err, closeDecomp = err, func() {}
	}
	defer closeDecomp()
	out.r = tarStream
	diffSum := sha256.New()
	if err == nil {
		tarStream = io.TeeReader(out, diffSum)
		if apply != nil {
			err = apply(tarStream)
		}
		if err == nil {
			// The tar's end-of-archive marker may be followed by padding,
			// and the compressed stream by its trailer: all of it is
			// covered by the digests.
			_, err = io.Copy(io.Discard, tarStream)
		}
	}
	// The decompressor reads ahead in its own goroutine; stop it before
	// looking at what it read, or reading what it left.
	closeDecomp()
	if err != nil {
		return j.cause(err, in, out)
	}
	if _, err := io.Copy(io.Discard, in); err != nil {
		return err
	}
	if err := checkSum(blobSum, j.desc.Digest.Hex); err != nil {
		return fmt.Errorf("%w: blob digest does not match the manifest: %v", errdefs.ErrIntegrity, err)
	}
	if err := checkSum(diffSum, j.diffID.Encoded()); err != nil {
		return fmt.Errorf("%w: uncompressed content does not match diff_id %s: %v", errdefs.ErrIntegrity, j.diffID, err)
	}
	return nil
}

// cause finds why a layer's pass failed with err, so that the error names
// the first thing that went wrong rather than what a later stage made of
// it: the blob's own error (network) or the decryption's verdict (HMAC)
// first; then data the decompressor rejected, which is corrupt content
// (for an encrypted layer the HMAC, read to the end, says so precisely);
// and only then the tar reader's or the filesystem's error.
func (j *layerJob) cause(err error, in, out *errRecorder) error {
	if ierr := in.first(); ierr != nil {
		return ierr
	}
	oerr := out.first()
	if oerr == nil {
		return err
	}
	if werr := windowError(oerr); werr != nil {
		return werr
	}
	if j.key != nil {
		if _, derr := io.Copy(io.Discard, in); derr != nil && errors.Is(derr, errdefs.ErrIntegrity) {
			return derr
		}
	}
	return fmt.Errorf("%w: the layer's %s data is corrupt: %v", errdefs.ErrIntegrity, j.layer.Compression, oerr)
}

// errRecorder remembers the first error, other than EOF, of its reader.
// The decompressors read from their own goroutines, hence the lock.
type errRecorder struct {
	r   io.Reader
	mu  sync.Mutex
	err error
}

func (e *errRecorder) Read(p []byte) (int, error) {
	n, err := e.r.Read(p)
	if err != nil && err != io.EOF {
		e.mu.Lock()
		if e.err == nil {
			e.err = err
		}
		e.mu.Unlock()
	}
	return n, err
}

func (e *errRecorder) first() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.err
}

func checkSum(h hash.Hash, wantHex string) error {
	got := fmt.Sprintf("%x", h.Sum(nil))
	if got != wantHex {
		return fmt.Errorf("got sha256:%s", got)
	}
	return nil
}

// BundleContainerID names the bundle of a pull into dir without a
// container id: dir's last element, as kata-agent makes one directory per
// container, named after its id (/run/kata-containers/<id>). Two
// directories are two containers: if their names collide, the second pull
// is refused (unpack.CreateBundle), never given the first one's bundle. A
// name that cannot be a container id is replaced by a digest of the path.
func BundleContainerID(dir string) string {
	if abs, err := filepath.Abs(dir); err == nil {
		dir = abs
	}
	if base := filepath.Base(dir); unpack.ValidateBundleID(base) == nil {
		return base
	}
	sum := sha256.Sum256([]byte(dir))
	return fmt.Sprintf("bundle-%x", sum[:8])
}

// DefaultContainerID names the bundle of a pull without --container-id or
// --bundle: the repository, made file-name safe, and the manifest digest's
// prefix, so a second pull of the same image reuses the bundle.
func DefaultContainerID(ref name.Reference, d v1.Hash) string {
	repo := refname.Repository(ref.Context())
	safe := strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9', r == '-', r == '.':
			return r
		}
		return '_'
	}, repo)
	return safe + "-" + d.Hex[:12]
}

func toOCI(d v1.Descriptor) ispec.Descriptor {
	return ispec.Descriptor{
		MediaType:   string(d.MediaType),
		Digest:      digest.Digest(d.Digest.String()),
		Size:        d.Size,
		URLs:        d.URLs,
		Annotations: d.Annotations,
	}
}
