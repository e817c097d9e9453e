package compat_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	// Every transport is registered, so that containers/image checks each
	// transport's policy scopes as skopeo and podman do; all but
	// containers-storage, whose package needs the storage library's cgo
	// graph drivers (its scope check is guest-puller's too, unit-tested in
	// policy/).
	"github.com/sirupsen/logrus"
	_ "go.podman.io/image/v5/directory"
	"go.podman.io/image/v5/docker"
	_ "go.podman.io/image/v5/docker/archive"
	_ "go.podman.io/image/v5/docker/daemon"
	"go.podman.io/image/v5/image"
	_ "go.podman.io/image/v5/oci/archive"
	_ "go.podman.io/image/v5/oci/layout"
	_ "go.podman.io/image/v5/openshift"
	_ "go.podman.io/image/v5/sif"
	"go.podman.io/image/v5/signature"
	_ "go.podman.io/image/v5/tarball"
	"go.podman.io/image/v5/transports"
	"go.podman.io/image/v5/types"

	"github.com/guest-puller/guest-puller/internal/config"
	"github.com/guest-puller/guest-puller/internal/testutil"
)

func init() {
	// containers/image logs through logrus; its "not implemented" errors
	// for signedBaseLayer are verdicts here, not news.
	logrus.SetLevel(logrus.FatalLevel)
	// As alltransports does: the ostree transport was removed, and its
	// policy sections are accepted unchecked.
	transports.Register(transports.NewStubTransport("ostree"))
}

// corpus is what the policy and registries.d corpora run against: one
// registry holding every image under its logical name's path (the corpus
// registries.conf maps each logical host there), the keys the policies
// name, and a lookaside store with GPG simple signatures.
type corpus struct {
	reg       *testutil.Registry
	keys      string // a.pub b.pub w.pub (cosign), g.asc h.asc (gpg), rekor.pub, ca.pem, garbage.pub
	lookaside string
	conf      string // registries.conf mapping the logical hosts to reg
	scratch   string
	digestX   string
	vars      *regexp.Regexp
}

// Images evaluated by the policy corpus, by their logical names. X, Y and Z
// are three distinct images; who signed what is set up in newCorpus.
var policyImages = []string{
	"registry.example.com/ns/app:1",           // X: cosign a (identity :1), cosign b (the repository), gpg g (:1)
	"registry.example.com/ns/app:2",           // X under another tag
	"registry.example.com/ns/app@${DIGEST_X}", // X by digest
	"registry.example.com/ns/other:1",         // Y, unsigned
	"registry.example.com/team/x:1",           // Z: cosign a, identity mirror.example.net/vendor/x:1
	"docker.io/library/busybox:1",             // Y: cosign a (exact)
	"quay.example.org/ns/tool:1",              // Z: cosign b, gpg g (exact)
	"other.example.com/app:1",                 // X, unsigned in this repository
	"localhost:5000/ns/app:1",                 // Y: cosign a (exact)
}

// newBareCorpus starts the registry and writes the registries.conf: what
// every corpus needs.
func newBareCorpus(t *testing.T) *corpus {
	t.Helper()
	c := &corpus{
		reg:       testutil.StartRegistry(t, testutil.RegistryOptions{}),
		keys:      t.TempDir(),
		lookaside: t.TempDir(),
		scratch:   t.TempDir(),
		vars:      regexp.MustCompile(`\$\{([A-Z_]+)(?::([^}]+))?\}`),
	}
	c.conf = filepath.Join(c.scratch, "registries.conf")
	writeFile(t, c.conf, fmt.Sprintf(`
[[registry]]
location = "%[1]s"
insecure = true

[[registry]]
prefix = "registry.example.com"
location = "%[1]s/registry.example.com"
insecure = true

[[registry]]
prefix = "docker.io"
location = "%[1]s/docker.io"
insecure = true

[[registry]]
prefix = "*.example.org"
location = "%[1]s/example.org"
insecure = true

[[registry]]
prefix = "other.example.com"
location = "%[1]s/other.example.com"
insecure = true

[[registry]]
prefix = "localhost:5000"
location = "%[1]s/localhost5000"
insecure = true
`, c.reg.Host))
	return c
}

func newCorpus(t *testing.T) *corpus {
	t.Helper()
	c := newBareCorpus(t)
	h := c.reg.Host

	// Keys.
	a, b, w := testutil.NewCosignKey(t), testutil.NewCosignKey(t), testutil.NewCosignKey(t)
	g, gOther := testutil.NewGPGKey(t, "Corpus Signer <signer@example.com>"), testutil.NewGPGKey(t, "Corpus Other <other@example.com>")
	for name, src := range map[string]string{"a.pub": a.Pub, "b.pub": b.Pub, "w.pub": w.Pub, "g.asc": g.Pub, "h.asc": gOther.Pub} {
		data, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		writeFile(t, filepath.Join(c.keys, name), string(data))
	}
	writeFile(t, filepath.Join(c.keys, "garbage.pub"), "not a key\n")
	writeFile(t, filepath.Join(c.keys, "rekor.pub"), ecPublicKeyPEM(t))
	writeFile(t, filepath.Join(c.keys, "ca.pem"), caCertPEM(t))

	// Images: X, Y and Z pushed under the physical paths of their logical
	// names.
	build := func(content string) string {
		return testutil.BuildImage(t, testutil.ImageSpec{Layers: [][]byte{
			testutil.Tar(t, testutil.Dir("app/", 0o755), testutil.File("app/hello", content, 0o644)),
		}})
	}
	x, y, z := build("corpus X"), build("corpus Y"), build("corpus Z")
	push := func(src, logical string) string {
		repo, tag, _ := strings.Cut(physicalPath(logical), ":")
		c.reg.Push(t, src, repo+":"+tag)
		sum := sha256.Sum256(c.reg.RawManifest(t, repo, tag))
		return "sha256:" + hex.EncodeToString(sum[:])
	}
	dX := push(x, "registry.example.com/ns/app:1")
	push(x, "registry.example.com/ns/app:2")
	push(y, "registry.example.com/ns/other:1")
	dZ := push(z, "registry.example.com/team/x:1")
	dY := push(y, "docker.io/library/busybox:1")
	push(z, "quay.example.org/ns/tool:1")
	push(x, "other.example.com/app:1")
	push(y, "localhost:5000/ns/app:1")
	c.digestX = dX

	// Signatures.
	cosign := func(k testutil.CosignKey, logical, digest, identity string) {
		repo, _, _ := strings.Cut(physicalPath(logical), ":")
		k.Sign(t, h+"/"+repo+"@"+digest, "--sign-container-identity", identity)
	}
	cosign(a, "registry.example.com/ns/app:1", dX, "registry.example.com/ns/app:1")
	cosign(b, "registry.example.com/ns/app:1", dX, "registry.example.com/ns/app")
	cosign(a, "registry.example.com/team/x:1", dZ, "mirror.example.net/vendor/x:1")
	cosign(a, "docker.io/library/busybox:1", dY, "docker.io/library/busybox:1")
	cosign(b, "quay.example.org/ns/tool:1", dZ, "quay.example.org/ns/tool:1")
	cosign(a, "localhost:5000/ns/app:1", dY, "localhost:5000/ns/app:1")
	c.gpgSign(t, g, "registry.example.com/ns/app:1", dX)
	c.gpgSign(t, g, "quay.example.org/ns/tool:1", dZ)
	return c
}

// physicalPath is where the corpus registries.conf puts a logical name in
// the registry: "registry.example.com/ns/app:1" is at
// HOST/registry.example.com/ns/app:1.
func physicalPath(logical string) string {
	for _, m := range [][2]string{
		{"quay.example.org/", "example.org/"},
		{"localhost:5000/", "localhost5000/"},
	} {
		if rest, ok := strings.CutPrefix(logical, m[0]); ok {
			return m[1] + rest
		}
	}
	return logical
}

// gpgSign writes a simple-signing signature (containers-signature(5)) of
// digest claiming logical, made by gpg with k, into the lookaside store at
// the physical repository's path.
func (c *corpus) gpgSign(t *testing.T, k testutil.GPGKey, logical, digest string) {
	t.Helper()
	payload, err := json.Marshal(map[string]any{
		"critical": map[string]any{
			"type":     "atomic container signature",
			"identity": map[string]string{"docker-reference": logical},
			"image":    map[string]string{"docker-manifest-digest": digest},
		},
		"optional": map[string]any{"creator": "guest-puller compat corpus"},
	})
	if err != nil {
		t.Fatal(err)
	}
	in := filepath.Join(c.scratch, "payload.json")
	writeFile(t, in, string(payload))
	repo, _, _ := strings.Cut(physicalPath(logical), ":")
	algo, hexd, _ := strings.Cut(digest, ":")
	dir := filepath.Join(c.lookaside, repo+"@"+algo+"="+hexd)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	testutil.RunEnv(t, []string{"GNUPGHOME=" + k.Home}, "gpg", "--batch", "--yes", "--local-user", k.Fingerprint,
		"--output", filepath.Join(dir, "signature-1"), "--sign", in)
}

// expand fills a corpus template: ${KEYS}, ${DATA:file} (base64 of a key
// file), ${DIGEST_X}, ${HOST}, ${LOOKASIDE}.
func (c *corpus) expand(t *testing.T, s string) string {
	return c.vars.ReplaceAllStringFunc(s, func(m string) string {
		sub := c.vars.FindStringSubmatch(m)
		switch sub[1] {
		case "KEYS":
			return c.keys
		case "DATA":
			data, err := os.ReadFile(filepath.Join(c.keys, sub[2]))
			if err != nil {
				t.Fatal(err)
			}
			return base64.StdEncoding.EncodeToString(data)
		case "DIGEST_X":
			return c.digestX
		case "HOST":
			return c.reg.Host
		case "LOOKASIDE":
			return c.lookaside
		}
		t.Fatalf("unknown template variable %s", m)
		return ""
	})
}

// verdict is whether an image may run, or whether the policy loads.
type verdict struct {
	state  string // "allowed", "refused", "load error"
	detail string
}

func (v verdict) String() string {
	if v.detail == "" {
		return v.state
	}
	return v.state + " (" + v.detail + ")"
}

// upstreamLoad parses a policy as go.podman.io/image/v5 does.
func upstreamLoad(data []byte) (*signature.Policy, error) {
	return signature.NewPolicyFromBytes(data)
}

// upstreamVerdict evaluates image under pol as skopeo or podman would:
// through the docker transport, with registries.conf and registries.d.
func (c *corpus) upstreamVerdict(ctx context.Context, t *testing.T, pol *signature.Policy, registriesD, img string) verdict {
	sys := &types.SystemContext{
		SystemRegistriesConfPath:    c.conf,
		SystemRegistriesConfDirPath: filepath.Join(c.scratch, "no-registries.conf.d"),
		RegistriesDirPath:           registriesD,
		AuthFilePath:                filepath.Join(c.scratch, "no-auth.json"),
		UserShortNameAliasConfPath:  filepath.Join(c.scratch, "no-aliases.conf"),
	}
	pc, err := signature.NewPolicyContext(pol)
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Destroy()
	ref, err := docker.ParseReference("//" + img)
	if err != nil {
		t.Fatalf("%s: %v", img, err)
	}
	src, err := ref.NewImageSource(ctx, sys)
	if err != nil {
		return verdict{"refused", "image source: " + err.Error()}
	}
	defer src.Close()
	ok, err := pc.IsRunningImageAllowed(ctx, image.UnparsedInstance(src, nil))
	if !ok {
		return verdict{"refused", fmt.Sprint(err)}
	}
	return verdict{"allowed", ""}
}

// ourVerdict evaluates image as `guest-puller policy check` does.
func (c *corpus) ourVerdict(ctx context.Context, p *config.Puller, img string) verdict {
	_, d, err := p.Check(ctx, img)
	if err != nil {
		return verdict{"refused", "error: " + err.Error()}
	}
	if !d.Allowed {
		return verdict{"refused", d.Err().Error()}
	}
	return verdict{"allowed", ""}
}

func (c *corpus) checker(ctx context.Context, policyPath, registriesD string) (*config.Puller, error) {
	return config.OpenChecker(ctx, config.Config{
		Policy:         policyPath,
		RegistriesConf: c.conf,
		RegistriesD:    registriesD,
	})
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func ecPublicKeyPEM(t *testing.T) string {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKIXPublicKey(k.Public())
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
}

func caCertPEM(t *testing.T) string { return string(testutil.NewCA(t, "corpus CA").RootPEM()) }
