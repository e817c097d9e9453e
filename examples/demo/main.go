// Command demo shows guest-puller end to end with no outside service: it
// starts go-containerregistry's registry in-process on loopback, builds a
// small image, publishes it under registry.example.com (mapped to the local
// registry by a registries.conf mirror) as a public, a signed and an
// encrypted image, and pulls each into bundles under policy.example.json,
// including the pull that policy refuses.
//
// It is guest-puller used as Go packages; `guest-puller pull` does the same
// from the command line.
package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/containers/ocicrypt"
	occonfig "github.com/containers/ocicrypt/config"
	"github.com/google/go-containerregistry/pkg/name"
	ggcrregistry "github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"
	ispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/guest-puller/guest-puller/internal/config"
	"github.com/guest-puller/guest-puller/internal/errdefs"
	"github.com/guest-puller/guest-puller/pull"
	"github.com/guest-puller/guest-puller/unpack"
)

func main() {
	policyPath := flag.String("policy", "policy.example.json", "policy file")
	keyPath := flag.String("signing-key", "examples/keys/signer.key", "PKCS#8 private key the demo signs with")
	cacheDir := flag.String("cache", "", "cache root (default: a temporary directory, removed at the end)")
	flag.Parse()
	if err := run(context.Background(), *policyPath, *keyPath, *cacheDir); err != nil {
		log.Fatalf("demo: %v", err)
	}
}

func run(ctx context.Context, policyPath, keyPath, cacheDir string) error {
	work, err := os.MkdirTemp("", "guest-puller-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	keepCache := cacheDir != ""
	if !keepCache {
		cacheDir = filepath.Join(work, "cache")
	}

	// 1. A registry in this process, on a loopback port.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: ggcrregistry.New(ggcrregistry.Logger(log.New(io.Discard, "", 0))), ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(l)
	defer srv.Close()
	host := l.Addr().String()
	step("registry", "in-process registry at %s, published as registry.example.com", host)

	// registry.example.com is a name in the policy; a mirror points it here.
	conf := filepath.Join(work, "registries.conf")
	if err := os.WriteFile(conf, []byte(fmt.Sprintf("[[registry]]\nprefix = \"registry.example.com\"\nlocation = %q\ninsecure = true\n", host)), 0o600); err != nil {
		return err
	}

	// 2. The image: two layers and a config, built in memory.
	img, err := buildImage()
	if err != nil {
		return err
	}
	push := func(repo string, img v1.Image) (name.Reference, error) {
		ref, err := name.ParseReference(host+"/"+repo, name.Insecure)
		if err != nil {
			return nil, err
		}
		return ref, remote.Write(ref, img)
	}
	if _, err := push("public/hello:1.0", img); err != nil {
		return err
	}
	if _, err := push("signed/unsigned:1.0", img); err != nil {
		return err
	}
	signedRef, err := push("signed/hello:1.0", img)
	if err != nil {
		return err
	}
	if err := sign(signedRef, img, keyPath, "registry.example.com/signed/hello"); err != nil {
		return fmt.Errorf("sign: %w", err)
	}
	privKey, encImg, err := encryptLayers(img)
	if err != nil {
		return fmt.Errorf("encrypt: %w", err)
	}
	if _, err := push("encrypted/hello:1.0", encImg); err != nil {
		return err
	}
	keyFile := filepath.Join(work, "layer-key.pem")
	if err := os.WriteFile(keyFile, privKey, 0o600); err != nil {
		return err
	}
	step("images", "public/hello, signed/hello (cosign-format signature by %s), signed/unsigned, encrypted/hello (every layer JWE-encrypted to a fresh RSA key)", keyPath)

	// 3. Pull them under policy.example.json.
	cfg := config.Config{
		Policy:         policyPath,
		Cache:          cacheDir,
		RegistriesConf: conf,
		DecryptionKeys: []string{keyFile},
	}
	p, err := config.Open(ctx, cfg, nil)
	if err != nil {
		return err
	}
	defer p.Close()
	// The encrypted image goes first, so its layers are fetched and
	// decrypted. The public image has the same diff_ids but fetches its own
	// blobs: a layer known only from decryption is not handed to a plain
	// image. The signed image, made of the public one's blobs, takes both
	// from the cache. Every pull is resolved and judged by the policy anew,
	// and the unsigned image must be refused: the demo fails otherwise.
	for i, tc := range []struct {
		image   string
		refused bool
	}{
		{"registry.example.com/encrypted/hello:1.0", false},
		{"registry.example.com/public/hello:1.0", false},
		{"registry.example.com/signed/hello:1.0", false},
		{"registry.example.com/signed/unsigned:1.0", true},
	} {
		image := tc.image
		start := time.Now()
		res, err := p.Pull(ctx, pull.Request{Image: image, ContainerID: fmt.Sprintf("demo-%d", i)})
		switch {
		case err != nil && tc.refused && errdefs.ExitCode(err) == 3:
			step("refused", "%s, as policy.example.json wants\n            (exit code 3: %v)", image, err)
			continue
		case err != nil:
			return fmt.Errorf("%s: %w", image, err)
		case tc.refused:
			return fmt.Errorf("%s was pulled, but policy.example.json should refuse it", image)
		}
		cached := 0
		for _, l := range res.Layers {
			if l.Cached {
				cached++
			}
		}
		step("pulled", "%s in %s (%d of %d layers from the cache)\n            scope %q, bundle %s (%s rootfs)",
			image, time.Since(start).Round(time.Millisecond), cached, len(res.Layers), res.Policy.Scope, res.Bundle, res.RootfsType)
		for _, r := range res.Policy.Requirements {
			step("", "  requirement %s: ok=%v %s", r.Type, r.OK, r.Reason)
		}
		for _, s := range res.Signatures {
			step("", "  signature by %s: verified=%v", s.KeyName, s.Verified)
		}
		{
			hello, err := os.ReadFile(filepath.Join(res.Rootfs, "hello/message"))
			if err != nil {
				return err
			}
			step("", "  rootfs/hello/message: %q", strings.TrimSpace(string(hello)))
		}
	}
	if !keepCache {
		return cleanup(ctx, cacheDir)
	}
	fmt.Printf("\nThe cache stays at %s: try `guest-puller cache ls --cache %s`.\n", cacheDir, cacheDir)
	return nil
}

func step(tag, format string, args ...any) {
	fmt.Printf("%-10s  %s\n", tag, fmt.Sprintf(format, args...))
}

// buildImage makes a two-layer image: a base with /etc files and an app
// layer with the message.
func buildImage() (v1.Image, error) {
	base, err := gzLayer(map[string]string{"etc/os-release": "NAME=demo\n", "etc/passwd": "root:x:0:0:root:/root:/bin/sh\ndemo:x:1000:1000::/home/demo:/bin/sh\n", "etc/group": "root:x:0:\ndemo:x:1000:\n"})
	if err != nil {
		return nil, err
	}
	app, err := gzLayer(map[string]string{"hello/message": "Hello from a confidential guest!\n"})
	if err != nil {
		return nil, err
	}
	img, err := mutate.AppendLayers(mutate.MediaType(empty.Image, types.OCIManifestSchema1), base, app)
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", runtime.GOARCH
	cf.Config.Entrypoint = []string{"/bin/cat"}
	cf.Config.Cmd = []string{"/hello/message"}
	cf.Config.Env = []string{"PATH=/usr/bin:/bin", "GREETING=hello"}
	cf.Config.User = "demo"
	cf.Config.WorkingDir = "/hello"
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		return nil, err
	}
	return mutate.ConfigMediaType(img, types.OCIConfigJSON), nil
}

func tarOf(files map[string]string) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	dirs := map[string]bool{}
	for p, content := range files {
		if d := filepath.Dir(p); !dirs[d] {
			dirs[d] = true
			if err := tw.WriteHeader(&tar.Header{Name: d + "/", Typeflag: tar.TypeDir, Mode: 0o755}); err != nil {
				return nil, err
			}
		}
		if err := tw.WriteHeader(&tar.Header{Name: p, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(content))}); err != nil {
			return nil, err
		}
		if _, err := io.WriteString(tw, content); err != nil {
			return nil, err
		}
	}
	return buf.Bytes(), tw.Close()
}

func gzLayer(files map[string]string) (v1.Layer, error) {
	raw, err := tarOf(files)
	if err != nil {
		return nil, err
	}
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(raw)
	if err := zw.Close(); err != nil {
		return nil, err
	}
	return &memLayer{blob: gz.Bytes(), plain: raw, mediaType: types.OCILayer}, nil
}

// memLayer is a layer whose blob and uncompressed (decrypted) tar are both
// in memory; diff_id is the tar's digest, as for any layer.
type memLayer struct {
	blob, plain []byte
	mediaType   types.MediaType
}

func sum(b []byte) v1.Hash {
	s := sha256.Sum256(b)
	return v1.Hash{Algorithm: "sha256", Hex: fmt.Sprintf("%x", s)}
}

func (l *memLayer) Digest() (v1.Hash, error) { return sum(l.blob), nil }
func (l *memLayer) DiffID() (v1.Hash, error) { return sum(l.plain), nil }
func (l *memLayer) Compressed() (io.ReadCloser, error) {
	return io.NopCloser(bytes.NewReader(l.blob)), nil
}
func (l *memLayer) Uncompressed() (io.ReadCloser, error) {
	return io.NopCloser(bytes.NewReader(l.plain)), nil
}
func (l *memLayer) Size() (int64, error)                { return int64(len(l.blob)), nil }
func (l *memLayer) MediaType() (types.MediaType, error) { return l.mediaType, nil }

// encryptLayers encrypts every layer with ocicrypt to a fresh RSA key, as
// `skopeo copy --encryption-key jwe:pub.pem` does, and returns the private
// key (PEM) and the new image.
func encryptLayers(img v1.Image) ([]byte, v1.Image, error) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, nil, err
	}
	pubDER, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return nil, nil, err
	}
	privDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	cc, err := occonfig.EncryptWithJwe([][]byte{pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER})})
	if err != nil {
		return nil, nil, err
	}
	layers, err := img.Layers()
	if err != nil {
		return nil, nil, err
	}
	out := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	for _, l := range layers {
		plain := l.(*memLayer)
		d := sum(plain.blob)
		r, finalize, err := ocicrypt.EncryptLayer(cc.EncryptConfig, bytes.NewReader(plain.blob), ispec.Descriptor{
			MediaType: string(plain.mediaType), Digest: digest.Digest(d.String()), Size: int64(len(plain.blob)),
		})
		if err != nil {
			return nil, nil, err
		}
		ct, err := io.ReadAll(r)
		if err != nil {
			return nil, nil, err
		}
		annotations, err := finalize()
		if err != nil {
			return nil, nil, err
		}
		enc := &memLayer{blob: ct, plain: plain.plain, mediaType: plain.mediaType + "+encrypted"}
		if out, err = mutate.Append(out, mutate.Addendum{Layer: enc, MediaType: enc.mediaType, Annotations: annotations}); err != nil {
			return nil, nil, err
		}
	}
	// Same configuration, same diff_ids: the decrypted layers are the
	// plain image's, and the cache knows them by diff_id.
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, nil, err
	}
	out, err = mutate.ConfigFile(out, cf)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: privDER}), mutate.ConfigMediaType(out, types.OCIConfigJSON), nil
}

// sign attaches a cosign-format signature of img by the PKCS#8 key at
// keyPath, as `cosign sign --key` would: a simple-signing payload in a
// sha256-<hex>.sig image next to the signed one.
func sign(ref name.Reference, img v1.Image, keyPath, identity string) error {
	keyPEM, err := os.ReadFile(keyPath)
	if err != nil {
		return err
	}
	block, _ := pem.Decode(keyPEM)
	if block == nil {
		return errors.New("no PEM key")
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return err
	}
	priv, ok := k.(*ecdsa.PrivateKey)
	if !ok {
		return errors.New("the demo signs with ECDSA keys")
	}
	d, err := img.Digest()
	if err != nil {
		return err
	}
	payload, err := json.Marshal(map[string]any{
		"critical": map[string]any{
			"identity": map[string]string{"docker-reference": identity},
			"image":    map[string]string{"docker-manifest-digest": d.String()},
			"type":     "cosign container image signature",
		},
		"optional": nil,
	})
	if err != nil {
		return err
	}
	h := sha256.Sum256(payload)
	sig, err := ecdsa.SignASN1(rand.Reader, priv, h[:])
	if err != nil {
		return err
	}
	layer := static.NewLayer(payload, "application/vnd.dev.cosign.simplesigning.v1+json")
	sigImg, err := mutate.Append(mutate.MediaType(empty.Image, types.OCIManifestSchema1), mutate.Addendum{
		Layer:       layer,
		Annotations: map[string]string{"dev.cosignproject.cosign/signature": base64.StdEncoding.EncodeToString(sig)},
	})
	if err != nil {
		return err
	}
	tag := ref.Context().Tag(fmt.Sprintf("%s-%s.sig", d.Algorithm, d.Hex))
	return remote.Write(tag, mutate.ConfigMediaType(sigImg, types.OCIConfigJSON))
}

// cleanup unmounts the demo's bundles (when it runs as root, they are
// overlay mounts) by removing every image and collecting the garbage.
func cleanup(ctx context.Context, cacheDir string) error {
	c, err := unpack.Open(ctx, cacheDir)
	if err != nil {
		return err
	}
	defer c.Close()
	l, err := c.List(ctx)
	if err != nil {
		return err
	}
	for _, img := range l.Images {
		if err := c.RemoveImage(ctx, img.Ref); err != nil {
			return err
		}
	}
	_, err = c.GC(ctx)
	return err
}
