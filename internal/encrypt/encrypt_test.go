package encrypt

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/random"
	ispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/guest-puller/guest-puller/decrypt"
	"github.com/guest-puller/guest-puller/internal/errdefs"
)

// randomLayout writes a random Docker schema 2 image of n layers to a new
// layout, tagged v1.
func randomLayout(t *testing.T, n int) (string, v1.Image) {
	t.Helper()
	img, err := random.Image(4096, int64(n))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.AppendImage(img, layout.WithAnnotations(map[string]string{ispec.AnnotationRefName: "v1"})); err != nil {
		t.Fatal(err)
	}
	return dir, img
}

func kekRecipients(t *testing.T) *decrypt.Recipients {
	t.Helper()
	kek := make([]byte, 32)
	rand.Read(kek)
	path := filepath.Join(t.TempDir(), "kek")
	if err := os.WriteFile(path, kek, 0o600); err != nil {
		t.Fatal(err)
	}
	r, err := decrypt.ParseRecipients([]string{"provider:attestation-agent:keypath=" + path + "::keyid=kbs:///default/key/1"})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func readManifest(t *testing.T, dir, tag string) ispec.Manifest {
	t.Helper()
	p, desc, err := findInLayout(Location{Layout: dir, Tag: tag})
	if err != nil {
		t.Fatal(err)
	}
	raw, err := readBlob(p, desc.Digest, desc.Size)
	if err != nil {
		t.Fatal(err)
	}
	var m ispec.Manifest
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

// A Docker image in a layout becomes an OCI image in another, the chosen
// layers encrypted, the others and the config as they were.
func TestImageLayoutToLayout(t *testing.T) {
	src, img := randomLayout(t, 3)
	dst := filepath.Join(t.TempDir(), "out")
	res, err := Image(context.Background(), Location{Layout: src, Tag: "v1"}, Location{Layout: dst, Tag: "enc"},
		Options{Recipients: kekRecipients(t), Layers: []int{0, -1}})
	if err != nil {
		t.Fatal(err)
	}
	m := readManifest(t, dst, "enc")
	cfg, _ := img.ConfigName()
	plain, _ := img.Manifest()
	if m.MediaType != ispec.MediaTypeImageManifest || m.Config.MediaType != ispec.MediaTypeImageConfig || m.Config.Digest.String() != cfg.String() {
		t.Errorf("manifest type %s, config %s %s; want OCI with config %s", m.MediaType, m.Config.MediaType, m.Config.Digest, cfg)
	}
	if len(m.Layers) != 3 || len(res.Layers) != 3 {
		t.Fatalf("%d layers (result %d), want 3", len(m.Layers), len(res.Layers))
	}
	for i, l := range m.Layers {
		encrypted := i != 1
		if got := strings.HasSuffix(l.MediaType, "+encrypted"); got != encrypted || res.Layers[i].Encrypted != encrypted {
			t.Errorf("layer %d: %s, encrypted %v; want encrypted %v", i, l.MediaType, res.Layers[i].Encrypted, encrypted)
		}
		if !encrypted && l.Digest.String() != plain.Layers[i].Digest.String() {
			t.Errorf("layer %d was to be copied as it is: %s, want %s", i, l.Digest, plain.Layers[i].Digest)
		}
		if _, err := os.Stat(filepath.Join(dst, "blobs", "sha256", l.Digest.Encoded())); err != nil {
			t.Errorf("layer %d: blob not in the layout: %v", i, err)
		}
	}
	leftovers, _ := filepath.Glob(filepath.Join(dst, "blobs", "sha256", ".encrypting-*"))
	if len(leftovers) != 0 {
		t.Errorf("temporary files left in the layout: %q", leftovers)
	}
}

func TestImageRefusals(t *testing.T) {
	ctx := context.Background()
	src, _ := randomLayout(t, 2)
	r := kekRecipients(t)

	t.Run("tampered source blob", func(t *testing.T) {
		src, img := randomLayout(t, 1)
		m, _ := img.Manifest()
		blob := filepath.Join(src, "blobs", "sha256", m.Layers[0].Digest.Hex)
		data, _ := os.ReadFile(blob)
		data[len(data)/2] ^= 1
		os.WriteFile(blob, data, 0o644)
		dst := filepath.Join(t.TempDir(), "out")
		_, err := Image(ctx, Location{Layout: src, Tag: "v1"}, Location{Layout: dst, Tag: "enc"}, Options{Recipients: r})
		if !errors.Is(err, errdefs.ErrIntegrity) {
			t.Fatalf("Image = %v, want an integrity failure", err)
		}
		if _, _, err := findInLayout(Location{Layout: dst, Tag: "enc"}); err == nil {
			t.Error("the tag was written although a layer failed")
		}
		if blobs, _ := os.ReadDir(filepath.Join(dst, "blobs", "sha256")); len(blobs) != 0 {
			t.Errorf("blobs left in the destination: %v", blobs)
		}
	})
	t.Run("already encrypted", func(t *testing.T) {
		dst := t.TempDir()
		if _, err := Image(ctx, Location{Layout: src, Tag: "v1"}, Location{Layout: dst, Tag: "enc"}, Options{Recipients: r}); err != nil {
			t.Fatal(err)
		}
		_, err := Image(ctx, Location{Layout: dst, Tag: "enc"}, Location{Layout: dst, Tag: "twice"}, Options{Recipients: r})
		if !errors.Is(err, errdefs.ErrInvalidConfig) || !strings.Contains(err.Error(), "already encrypted") {
			t.Errorf("encrypting an encrypted layer: %v", err)
		}
	})
	for _, tc := range []struct {
		name     string
		src, dst Location
		layers   []int
		want     string
	}{
		{"layer out of range", Location{Layout: src, Tag: "v1"}, Location{Layout: t.TempDir()}, []int{2}, "the image has 2 layers"},
		{"negative out of range", Location{Layout: src, Tag: "v1"}, Location{Layout: t.TempDir()}, []int{-3}, "--encrypt-layer -3"},
		{"no such tag", Location{Layout: src, Tag: "v2"}, Location{Layout: t.TempDir()}, nil, `no image tagged "v2"`},
		{"not a layout", Location{Layout: t.TempDir(), Tag: "v1"}, Location{Layout: t.TempDir()}, nil, "not an OCI layout"},
		{"destination not empty", Location{Layout: src, Tag: "v1"}, Location{Layout: filepath.Dir(filepath.Join(src, "index.json")) + "/blobs"}, nil, "neither an OCI layout nor empty"},
		{"registry destination without a client", Location{Layout: src, Tag: "v1"}, mustLocation(t, "registry.example.com/app:1"), nil, "no registry client"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Image(ctx, tc.src, tc.dst, Options{Recipients: r, Layers: tc.layers})
			if !errors.Is(err, errdefs.ErrInvalidConfig) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Image = %v, want a configuration error saying %q", err, tc.want)
			}
		})
	}
}

func mustLocation(t *testing.T, s string) Location {
	t.Helper()
	l, err := ParseLocation(s)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func TestParseLocation(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"oci:/tmp/l:v1", "oci:/tmp/l:v1"},
		{"oci:/tmp/l", "oci:/tmp/l"},
		{"docker://registry.example.com/app:1", "docker://registry.example.com/app:1"},
		{"busybox", "docker://docker.io/library/busybox:latest"},
	} {
		l, err := ParseLocation(tc.in)
		if err != nil || l.String() != tc.want {
			t.Errorf("ParseLocation(%q) = %v, %v; want %s", tc.in, l, err, tc.want)
		}
	}
	for _, bad := range []string{"oci:", "docker://UPPER/Case:x:y", ""} {
		if _, err := ParseLocation(bad); !errors.Is(err, errdefs.ErrInvalidConfig) {
			t.Errorf("ParseLocation(%q) = %v, want a configuration error", bad, err)
		}
	}
}
