// Package encrypt makes encrypted copies of images, the build side of
// guest-puller (`guest-puller encrypt`): it reads an image from an OCI
// layout or a registry, encrypts the chosen layers for the recipients in
// ocicrypt's format (decrypt.Recipients: JWE public keys, attestation-agent
// KEKs), and writes the same image, its configuration unchanged, to an OCI
// layout or a registry.
//
// Each layer is read once: its plain digest is checked as it streams into
// the cipher, and its ciphertext is written once, into the destination
// layout's blob directory or, for a registry, a spool file in TempDir that
// is uploaded and removed. A layer is never held in memory.
//
// A Docker schema 2 image becomes an OCI image (ocicrypt's encrypted media
// types are OCI's), as skopeo does when it encrypts.
package encrypt

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/match"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"
	ispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/guest-puller/guest-puller/decrypt"
	"github.com/guest-puller/guest-puller/internal/errdefs"
	"github.com/guest-puller/guest-puller/internal/mediatype"
	"github.com/guest-puller/guest-puller/internal/refname"
	"github.com/guest-puller/guest-puller/internal/registry"
)

// Location is where an image is read from or written to: an OCI layout
// directory and tag, or a registry reference.
type Location struct {
	Layout string
	Tag    string
	Ref    name.Reference
}

func (l Location) String() string {
	if l.Ref != nil {
		return "docker://" + refname.Reference(l.Ref)
	}
	if l.Tag == "" {
		return "oci:" + l.Layout
	}
	return "oci:" + l.Layout + ":" + l.Tag
}

// ParseLocation reads skopeo's spelling: "oci:DIR[:TAG]" for an OCI
// layout, "docker://REF" or a bare REF for a registry.
func ParseLocation(s string) (Location, error) {
	if rest, ok := strings.CutPrefix(s, "oci:"); ok {
		dir, tag, _ := strings.Cut(rest, ":")
		if dir == "" {
			return Location{}, fmt.Errorf("%q: %w: an OCI layout needs a directory: oci:DIR[:TAG]", s, errdefs.ErrInvalidConfig)
		}
		return Location{Layout: dir, Tag: tag}, nil
	}
	ref, err := refname.Parse(strings.TrimPrefix(s, "docker://"))
	if err != nil {
		return Location{}, fmt.Errorf("%q: %w: not oci:DIR[:TAG], docker://REF or an image reference: %v", s, errdefs.ErrInvalidConfig, err)
	}
	return Location{Ref: ref}, nil
}

// Options say what to encrypt and how to reach registries.
type Options struct {
	// Recipients can decrypt every encrypted layer.
	Recipients *decrypt.Recipients
	// Layers are the indexes of the layers to encrypt, 0 the bottom one,
	// negative from the top (-1 the last), as skopeo's --encrypt-layer;
	// none means all.
	Layers []int
	// Source and Dest read and write registry locations (credentials,
	// insecure hosts, platform); nil when that side is a layout.
	Source, Dest *registry.Client
	// TempDir holds a layer's ciphertext until it is uploaded to a
	// registry; "" is os.TempDir().
	TempDir string
}

// Result is what was written.
type Result struct {
	ManifestDigest string  `json:"manifestDigest"`
	Layers         []Layer `json:"layers"`
}

// Layer is one layer of the written image.
type Layer struct {
	Digest    string `json:"digest"`
	MediaType string `json:"mediaType"`
	Encrypted bool   `json:"encrypted"`
}

// source is an image being read.
type source struct {
	manifest  ispec.Manifest
	mediaType types.MediaType
	config    []byte
	blob      func(ctx context.Context, d ispec.Descriptor) (io.ReadCloser, error)
}

// Image encrypts the image at src into dst. Failures wrap
// errdefs.ErrInvalidConfig (bad locations, layer indexes, an image already
// encrypted), errdefs.ErrIntegrity (a source blob that does not match its
// digest) or are I/O and registry errors; nothing is written to dst's tag
// unless every layer was encrypted.
func Image(ctx context.Context, src, dst Location, opts Options) (*Result, error) {
	if opts.Recipients == nil {
		return nil, fmt.Errorf("%w: no recipients", errdefs.ErrInvalidConfig)
	}
	s, err := open(ctx, src, opts.Source)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", src, err)
	}
	selected, err := selectLayers(len(s.manifest.Layers), opts.Layers)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", src, err)
	}

	// Ciphertext goes where it stays: into a layout's blob directory
	// (named by its digest once complete), or into a spool directory of
	// its own for the upload to a registry, removed at the end.
	var dstPath layout.Path
	var spool string
	if dst.Ref == nil {
		if dstPath, err = openLayout(dst.Layout); err != nil {
			return nil, fmt.Errorf("%s: %w", dst, err)
		}
		spool = filepath.Join(string(dstPath), "blobs", "sha256")
	} else {
		if opts.Dest == nil {
			return nil, fmt.Errorf("%s: %w: no registry client", dst, errdefs.ErrInvalidConfig)
		}
		if spool, err = os.MkdirTemp(opts.TempDir, "guest-puller-encrypt-"); err != nil {
			return nil, err
		}
		defer os.RemoveAll(spool)
	}

	out := &image{config: s.config, layers: map[v1.Hash]partial.CompressedLayer{}}
	m := s.manifest
	m.Layers = make([]ispec.Descriptor, len(s.manifest.Layers))
	res := &Result{}
	for i, d := range s.manifest.Layers {
		if !selected[i] {
			m.Layers[i] = d
			out.layers[hashOf(d.Digest)] = &sourceLayer{ctx: ctx, desc: d, blob: s.blob}
			res.Layers = append(res.Layers, Layer{Digest: d.Digest.String(), MediaType: d.MediaType})
			continue
		}
		enc, path, err := encryptLayer(ctx, s, d, opts.Recipients, spool)
		if err != nil {
			return nil, fmt.Errorf("%s: layer %d (%s): %w", src, i, d.Digest, err)
		}
		m.Layers[i] = enc
		out.layers[hashOf(enc.Digest)] = &fileLayer{desc: enc, path: path}
		res.Layers = append(res.Layers, Layer{Digest: enc.Digest.String(), MediaType: enc.MediaType, Encrypted: true})
	}
	if out.manifest, err = json.Marshal(m); err != nil {
		return nil, err
	}
	out.mediaType = types.MediaType(m.MediaType)
	img, err := partial.CompressedToImage(out)
	if err != nil {
		return nil, err
	}
	if dst.Ref != nil {
		err = opts.Dest.Write(ctx, dst.Ref, img)
	} else {
		tag := dst.Tag
		if tag == "" {
			tag = "latest"
		}
		ann := map[string]string{ispec.AnnotationRefName: tag}
		err = dstPath.ReplaceImage(img, match.Annotation(ispec.AnnotationRefName, tag), layout.WithAnnotations(ann))
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", dst, err)
	}
	d, err := img.Digest()
	if err != nil {
		return nil, err
	}
	res.ManifestDigest = d.String()
	return res, nil
}

// selectLayers turns skopeo-style indexes into a set.
func selectLayers(n int, indexes []int) (map[int]bool, error) {
	if n == 0 {
		return nil, fmt.Errorf("%w: the image has no layer to encrypt", errdefs.ErrInvalidConfig)
	}
	sel := map[int]bool{}
	if len(indexes) == 0 {
		for i := range n {
			sel[i] = true
		}
		return sel, nil
	}
	for _, i := range indexes {
		j := i
		if j < 0 {
			j += n
		}
		if j < 0 || j >= n {
			return nil, fmt.Errorf("%w: --encrypt-layer %d: the image has %d layers (0 to %d, or -1 to -%d)", errdefs.ErrInvalidConfig, i, n, n-1, n)
		}
		sel[j] = true
	}
	return sel, nil
}

// encryptLayer streams layer d of s through the cipher into a file in
// dir, named by its digest once complete, and returns the encrypted
// descriptor and the file.
func encryptLayer(ctx context.Context, s *source, d ispec.Descriptor, r *decrypt.Recipients, dir string) (ispec.Descriptor, string, error) {
	if mediatype.IsEncrypted(d.MediaType) {
		return d, "", fmt.Errorf("%w: the layer is already encrypted", errdefs.ErrInvalidConfig)
	}
	if _, err := mediatype.ParseLayer(d.MediaType); err != nil {
		return d, "", fmt.Errorf("%w: %v", errdefs.ErrInvalidConfig, err)
	}
	if d.Digest.Algorithm() != digest.SHA256 {
		return d, "", fmt.Errorf("%w: digest algorithm %q is not supported", errdefs.ErrIntegrity, d.Digest.Algorithm())
	}
	rc, err := s.blob(ctx, d)
	if err != nil {
		return d, "", err
	}
	defer rc.Close()
	plainSum := sha256.New()
	plain := &countingReader{r: io.TeeReader(rc, plainSum)}
	ct, finish, err := r.EncryptLayer(plain, d)
	if err != nil {
		return d, "", err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return d, "", err
	}
	f, err := os.CreateTemp(dir, ".encrypting-")
	if err != nil {
		return d, "", err
	}
	path := f.Name()
	ctSum := sha256.New()
	size, err := io.Copy(io.MultiWriter(f, ctSum), readerCtx{ctx, ct})
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
		return d, "", err
	}
	if got := sumOf(plainSum); got != d.Digest.Encoded() || plain.n != d.Size {
		os.Remove(path)
		return d, "", fmt.Errorf("%w: the blob read has digest sha256:%s and %d bytes, not the descriptor's %s and %d", errdefs.ErrIntegrity, got, plain.n, d.Digest, d.Size)
	}
	ann, err := finish()
	if err != nil {
		os.Remove(path)
		return d, "", err
	}
	for k, v := range d.Annotations {
		if _, ok := ann[k]; !ok {
			ann[k] = v
		}
	}
	enc := ispec.Descriptor{
		MediaType:   d.MediaType + "+encrypted",
		Digest:      digest.NewDigestFromEncoded(digest.SHA256, sumOf(ctSum)),
		Size:        size,
		Annotations: ann,
	}
	final := filepath.Join(dir, enc.Digest.Encoded())
	if err := os.Rename(path, final); err != nil {
		os.Remove(path)
		return d, "", err
	}
	return enc, final, nil
}

func sumOf(h hash.Hash) string { return hex.EncodeToString(h.Sum(nil)) }

func hashOf(d digest.Digest) v1.Hash {
	return v1.Hash{Algorithm: string(d.Algorithm()), Hex: d.Encoded()}
}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// readerCtx stops a copy when ctx ends.
type readerCtx struct {
	ctx context.Context
	r   io.Reader
}

func (r readerCtx) Read(p []byte) (int, error) {
	if err := r.ctx.Err(); err != nil {
		return 0, err
	}
	return r.r.Read(p)
}

// open reads the manifest and config of the image at loc.
func open(ctx context.Context, loc Location, rc *registry.Client) (*source, error) {
	var raw, config []byte
	var mt types.MediaType
	var blob func(ctx context.Context, d ispec.Descriptor) (io.ReadCloser, error)
	if loc.Ref != nil {
		if rc == nil {
			return nil, fmt.Errorf("%w: no registry client", errdefs.ErrInvalidConfig)
		}
		img, err := rc.Resolve(ctx, loc.Ref)
		if err != nil {
			return nil, err
		}
		raw, mt, config = img.RawManifest, img.MediaType, img.RawConfig
		repo := img.Repo()
		blob = func(ctx context.Context, d ispec.Descriptor) (io.ReadCloser, error) {
			return rc.Blob(ctx, repo, v1.Descriptor{MediaType: types.MediaType(d.MediaType), Digest: hashOf(d.Digest), Size: d.Size})
		}
	} else {
		p, desc, err := findInLayout(loc)
		if err != nil {
			return nil, err
		}
		if raw, err = readBlob(p, desc.Digest, desc.Size); err != nil {
			return nil, fmt.Errorf("manifest: %w", err)
		}
		mt = desc.MediaType
		var m struct {
			Config v1.Descriptor `json:"config"`
		}
		if err := json.Unmarshal(raw, &m); err != nil {
			return nil, fmt.Errorf("manifest %s: %w", desc.Digest, err)
		}
		if config, err = readBlob(p, m.Config.Digest, m.Config.Size); err != nil {
			return nil, fmt.Errorf("config: %w", err)
		}
		blob = func(_ context.Context, d ispec.Descriptor) (io.ReadCloser, error) {
			return p.Blob(hashOf(d.Digest))
		}
	}
	s := &source{mediaType: mt, config: config, blob: blob}
	if err := json.Unmarshal(raw, &s.manifest); err != nil {
		return nil, fmt.Errorf("manifest: %w", err)
	}
	switch mt {
	case types.OCIManifestSchema1:
		s.manifest.MediaType = string(types.OCIManifestSchema1)
	case types.DockerManifestSchema2:
		if err := toOCI(&s.manifest); err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("%w: manifest media type %q cannot be encrypted (an OCI or Docker schema 2 image manifest can)", errdefs.ErrInvalidConfig, mt)
	}
	return s, nil
}

// toOCI turns a Docker schema 2 manifest into the OCI manifest of the
// same image: the config and the layer blobs stay, their media types are
// OCI's.
func toOCI(m *ispec.Manifest) error {
	m.MediaType = ispec.MediaTypeImageManifest
	m.Config.MediaType = ispec.MediaTypeImageConfig
	for i, l := range m.Layers {
		pl, err := mediatype.ParseLayer(l.MediaType)
		if err != nil {
			return fmt.Errorf("%w: layer %d: %v", errdefs.ErrInvalidConfig, i, err)
		}
		if strings.Contains(l.MediaType, "foreign") {
			return fmt.Errorf("%w: layer %d is a foreign (non-distributable) layer", errdefs.ErrInvalidConfig, i)
		}
		switch {
		case pl.Encrypted:
			return fmt.Errorf("%w: layer %d: a Docker image with encrypted layers", errdefs.ErrInvalidConfig, i)
		case pl.Compression == mediatype.Gzip:
			m.Layers[i].MediaType = ispec.MediaTypeImageLayerGzip
		case pl.Compression == mediatype.Zstd:
			m.Layers[i].MediaType = ispec.MediaTypeImageLayerZstd
		default:
			m.Layers[i].MediaType = ispec.MediaTypeImageLayer
		}
	}
	return nil
}

// findInLayout finds the image tagged loc.Tag in the layout (with no tag:
// its only image).
func findInLayout(loc Location) (layout.Path, v1.Descriptor, error) {
	p, err := layout.FromPath(loc.Layout)
	if err != nil {
		return "", v1.Descriptor{}, fmt.Errorf("%w: not an OCI layout: %v", errdefs.ErrInvalidConfig, err)
	}
	idx, err := p.ImageIndex()
	if err != nil {
		return "", v1.Descriptor{}, err
	}
	im, err := idx.IndexManifest()
	if err != nil {
		return "", v1.Descriptor{}, err
	}
	var found []v1.Descriptor
	var tags []string
	for _, d := range im.Manifests {
		tag := d.Annotations[ispec.AnnotationRefName]
		tags = append(tags, tag)
		if loc.Tag == "" || tag == loc.Tag {
			found = append(found, d)
		}
	}
	switch {
	case len(found) == 1:
		if !found[0].MediaType.IsImage() {
			return "", v1.Descriptor{}, fmt.Errorf("%w: %s is a %s, not an image manifest", errdefs.ErrInvalidConfig, loc, found[0].MediaType)
		}
		return p, found[0], nil
	case loc.Tag == "" && len(found) > 1:
		return "", v1.Descriptor{}, fmt.Errorf("%w: the layout has %d images (tags %q): name one, oci:DIR:TAG", errdefs.ErrInvalidConfig, len(found), tags)
	default:
		return "", v1.Descriptor{}, fmt.Errorf("%w: no image tagged %q in the layout (tags %q)", errdefs.ErrInvalidConfig, loc.Tag, tags)
	}
}

// readBlob reads a small blob of the layout and checks it.
func readBlob(p layout.Path, h v1.Hash, size int64) ([]byte, error) {
	rc, err := p.Blob(h)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	data, err := io.ReadAll(io.LimitReader(rc, size+1))
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(data)
	if h.Algorithm != "sha256" || hex.EncodeToString(sum[:]) != h.Hex || int64(len(data)) != size {
		return nil, fmt.Errorf("%w: blob %s does not match its digest and size", errdefs.ErrIntegrity, h)
	}
	return data, nil
}

// openLayout opens the layout at dir, creating an empty one if dir does
// not exist or is empty.
func openLayout(dir string) (layout.Path, error) {
	if p, err := layout.FromPath(dir); err == nil {
		return p, nil
	}
	entries, err := os.ReadDir(dir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return "", err
	}
	if len(entries) > 0 {
		return "", fmt.Errorf("%w: %s is neither an OCI layout nor empty", errdefs.ErrInvalidConfig, dir)
	}
	return layout.Write(dir, empty.Index)
}

// image is the encrypted image, as go-containerregistry writes it.
type image struct {
	manifest  []byte
	config    []byte
	mediaType types.MediaType
	layers    map[v1.Hash]partial.CompressedLayer
}

func (i *image) RawConfigFile() ([]byte, error)      { return i.config, nil }
func (i *image) MediaType() (types.MediaType, error) { return i.mediaType, nil }
func (i *image) RawManifest() ([]byte, error)        { return i.manifest, nil }
func (i *image) LayerByDigest(h v1.Hash) (partial.CompressedLayer, error) {
	if l, ok := i.layers[h]; ok {
		return l, nil
	}
	return nil, fmt.Errorf("no layer %s", h)
}

// fileLayer is an encrypted layer written to path.
type fileLayer struct {
	desc ispec.Descriptor
	path string
}

func (l *fileLayer) Digest() (v1.Hash, error) { return hashOf(l.desc.Digest), nil }
func (l *fileLayer) Size() (int64, error)     { return l.desc.Size, nil }
func (l *fileLayer) MediaType() (types.MediaType, error) {
	return types.MediaType(l.desc.MediaType), nil
}
func (l *fileLayer) Compressed() (io.ReadCloser, error) { return os.Open(l.path) }

// sourceLayer is a layer copied as it is, read again from the source when
// the destination does not have it.
type sourceLayer struct {
	ctx  context.Context
	desc ispec.Descriptor
	blob func(ctx context.Context, d ispec.Descriptor) (io.ReadCloser, error)
}

func (l *sourceLayer) Digest() (v1.Hash, error) { return hashOf(l.desc.Digest), nil }
func (l *sourceLayer) Size() (int64, error)     { return l.desc.Size, nil }
func (l *sourceLayer) MediaType() (types.MediaType, error) {
	return types.MediaType(l.desc.MediaType), nil
}
func (l *sourceLayer) Compressed() (io.ReadCloser, error) { return l.blob(l.ctx, l.desc) }
