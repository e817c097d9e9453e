package decrypt

import (
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/containers/ocicrypt"
	keyproviderconfig "github.com/containers/ocicrypt/config/keyprovider-config"
	"github.com/containers/ocicrypt/helpers"
	"github.com/containers/ocicrypt/keywrap/keyprovider"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// The key provider tests drive the real ocicrypt library (the version in
// go.mod) the way skopeo's copy does, rather than skopeo itself: Debian's
// skopeo 1.9.3 is built against an ocicrypt without key provider support
// ("Invalid encryption keys: Provided protocol not recognized"), and a newer
// skopeo cannot be built here. ocicrypt runs the provider command exactly as
// it does under skopeo (keywrap/keyprovider: JSON on stdin and stdout).

var registerProvider sync.Once

// registerAAProvider makes ocicrypt's package-level registry (test binary
// only) run this test binary as the attestation-agent key provider, as
// $OCICRYPT_KEYPROVIDER_CONFIG would for skopeo.
func registerAAProvider(t testing.TB) {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	registerProvider.Do(func() {
		ocicrypt.RegisterKeyWrapper("provider."+aaProvider, keyprovider.NewKeyWrapper(aaProvider, keyproviderconfig.KeyProviderAttrs{
			Command: &keyproviderconfig.Command{Path: self, Args: []string{keyProviderArg}},
		}))
	})
}

// ocicryptEncrypt copies the OCI layout src (tag v1) to a new layout with
// every layer encrypted for recipients (skopeo's --encryption-key values),
// as containers/image does: ocicrypt.EncryptLayer, media type +encrypted,
// the finalizer's annotations on the descriptor.
func ocicryptEncrypt(t testing.TB, src string, recipients []string) image {
	t.Helper()
	registerAAProvider(t)
	cc, err := helpers.CreateCryptoConfig(recipients, nil)
	if err != nil {
		t.Fatalf("ocicrypt config: %v", err)
	}
	in := readImage(t, src, "v1")
	dst := filepath.Join(t.TempDir(), "enc")
	if err := os.MkdirAll(filepath.Join(dst, "blobs", "sha256"), 0o755); err != nil {
		t.Fatal(err)
	}
	out := image{dir: dst, manifest: in.manifest, config: in.config}
	out.manifest.Layers = nil
	copyBlob(t, src, dst, in.manifest.Config.Digest)
	for _, desc := range in.manifest.Layers {
		f, err := os.Open(blobPath(src, desc.Digest))
		if err != nil {
			t.Fatal(err)
		}
		r, finalize, err := ocicrypt.EncryptLayer(cc.EncryptConfig, f, desc)
		if err != nil {
			t.Fatalf("EncryptLayer: %v", err)
		}
		d, size := writeBlob(t, dst, r)
		f.Close()
		annotations, err := finalize()
		if err != nil {
			t.Fatalf("EncryptLayer finalizer: %v", err)
		}
		out.manifest.Layers = append(out.manifest.Layers, ocispec.Descriptor{
			MediaType:   desc.MediaType + "+encrypted",
			Digest:      d,
			Size:        size,
			Annotations: annotations,
		})
	}
	md, msize := writeBlob(t, dst, jsonReader(t, out.manifest))
	idx := ocispec.Index{Manifests: []ocispec.Descriptor{{
		MediaType:   ocispec.MediaTypeImageManifest,
		Digest:      md,
		Size:        msize,
		Annotations: map[string]string{ocispec.AnnotationRefName: "v1"},
	}}}
	idx.SchemaVersion = 2
	if err := os.WriteFile(filepath.Join(dst, "index.json"), must(json.Marshal(idx)), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dst, ocispec.ImageLayoutFile), []byte(`{"imageLayoutVersion":"1.0.0"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	return out
}

func writeBlob(t testing.TB, dir string, r io.Reader) (digest.Digest, int64) {
	t.Helper()
	tmp, err := os.CreateTemp(filepath.Join(dir, "blobs", "sha256"), ".tmp-")
	if err != nil {
		t.Fatal(err)
	}
	defer tmp.Close()
	dg := digest.SHA256.Digester()
	n, err := io.Copy(io.MultiWriter(tmp, dg.Hash()), r)
	if err != nil {
		t.Fatalf("writing blob: %v", err)
	}
	if err := os.Rename(tmp.Name(), blobPath(dir, dg.Digest())); err != nil {
		t.Fatal(err)
	}
	return dg.Digest(), n
}

func copyBlob(t testing.TB, from, to string, d digest.Digest) {
	t.Helper()
	f, err := os.Open(blobPath(from, d))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	writeBlob(t, to, f)
}

func jsonReader(t testing.TB, v any) io.Reader {
	t.Helper()
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(json.NewEncoder(pw).Encode(v)) }()
	return pr
}

// ocicryptDecrypt decrypts one layer with ocicrypt.DecryptLayer and the
// decryption keys given as skopeo's --decryption-key values.
func ocicryptDecrypt(t testing.TB, img image, i int, keys []string) digest.Digest {
	t.Helper()
	registerAAProvider(t)
	cc, err := helpers.CreateDecryptCryptoConfig(keys, nil)
	if err != nil {
		t.Fatalf("ocicrypt config: %v", err)
	}
	desc := img.manifest.Layers[i]
	f, err := os.Open(blobPath(img.dir, desc.Digest))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	plain, _, err := ocicrypt.DecryptLayer(cc.DecryptConfig, f, desc, false)
	if err != nil {
		t.Fatalf("layer %d: DecryptLayer: %v", i, err)
	}
	dg := digest.SHA256.Digester()
	if _, err := io.Copy(dg.Hash(), plain); err != nil {
		t.Fatalf("layer %d: decrypting: %v", i, err)
	}
	return dg.Digest()
}
