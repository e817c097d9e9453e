package tests

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ispec "github.com/opencontainers/image-spec/specs-go/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	guestpullerv1 "github.com/guest-puller/guest-puller/api/v1"
	"github.com/guest-puller/guest-puller/internal/testutil"
)

// Layer provenance (DESIGN.md; issue 8, holes 1 and 2): a hostile registry
// writes image configs, so a diff_id is only a claim. These tests play the
// attacker against the real binary and a real registry: images encrypted
// by skopeo, manifests and configs forged by hand.

// provenanceWorld is a registry with a public image and a genuinely
// encrypted one, and a policy where "secure/" needs encrypted layers and
// everything else is accepted.
type provenanceWorld struct {
	reg       *testutil.Registry
	key       testutil.KeyPair
	public    string // reference of the plain image
	encrypted string // reference of the encrypted image
	pubM      ispec.Manifest
	encM      ispec.Manifest
	e         *env
	args      []string
}

func newProvenanceWorld(t *testing.T) *provenanceWorld {
	t.Helper()
	testutil.Need(t, "skopeo", "umoci", "openssl")
	w := &provenanceWorld{reg: testutil.StartRegistry(t, testutil.RegistryOptions{})}
	w.key = testutil.RSAKey(t, t.TempDir(), "prov", "")
	w.public = w.reg.Push(t, testutil.BuildImage(t, testutil.ImageSpec{Layers: [][]byte{
		testutil.Tar(t, testutil.Dir("app/", 0o755), testutil.File("app/who", "the attacker's public layer", 0o644)),
	}}), "public/app:1")
	w.encrypted = w.reg.Push(t, testutil.BuildImage(t, testutil.ImageSpec{Layers: [][]byte{
		testutil.Tar(t, testutil.Dir("app/", 0o755), testutil.File("app/who", "the vendor's confidential layer", 0o600)),
	}}), "secure/app:1", "--encryption-key", "jwe:"+w.key.Public)
	for ref, m := range map[string]*ispec.Manifest{"public/app": &w.pubM, "secure/app": &w.encM} {
		if err := json.Unmarshal(w.reg.RawManifest(t, ref, "1"), m); err != nil {
			t.Fatal(err)
		}
	}
	if len(w.encM.Layers) != 1 || !strings.HasSuffix(w.encM.Layers[0].MediaType, "+encrypted") {
		t.Fatalf("skopeo did not encrypt the layer: %+v", w.encM.Layers)
	}
	w.e = newEnv(t)
	pol := w.e.write("policy.json", fmt.Sprintf(`{"default":[{"type":"insecureAcceptAnything"}],
		"transports":{"docker":{"%s/secure":[{"type":"encrypted"}]}}}`, w.reg.Host))
	w.args = []string{"--policy", pol, "--insecure-registry", w.reg.Host}
	return w
}

// config returns the config blob of m in repo with its diff_ids replaced.
func (w *provenanceWorld) forgeConfig(t *testing.T, repo string, m ispec.Manifest, diffIDs ...string) ispec.Descriptor {
	t.Helper()
	var cfg map[string]any
	if err := json.Unmarshal(w.reg.GetBlob(t, repo, m.Config.Digest.String()), &cfg); err != nil {
		t.Fatal(err)
	}
	ids := make([]any, len(diffIDs))
	for i, d := range diffIDs {
		ids[i] = d
	}
	cfg["rootfs"].(map[string]any)["diff_ids"] = ids
	raw, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	d := m.Config
	d.Digest, d.Size = digest.Digest(w.reg.UploadBlob(t, repo, raw)), int64(len(raw))
	return d
}

// forgeEncryptedClaim (hole 1) publishes, in the scope that requires
// encryption, the genuine encrypted layer's descriptor (media type,
// annotations, blob: its key unwraps) with a config claiming diffID.
func (w *provenanceWorld) forgeEncryptedClaim(t *testing.T, diffID string) string {
	t.Helper()
	cfg := w.forgeConfig(t, "secure/app", w.encM, diffID)
	return forgeManifest(t, w.reg, "secure/app", "forged", w.encM, func(m *ispec.Manifest) { m.Config = cfg })
}

// forgePlainView (hole 2) publishes, where anyone may pull, the encrypted
// layer's ciphertext (same digest) under a plain tar+gzip descriptor, with
// a config claiming diffID, the decrypted layer's.
func (w *provenanceWorld) forgePlainView(t *testing.T, diffID string) string {
	t.Helper()
	encLayer := w.encM.Layers[0]
	w.reg.UploadBlob(t, "public/app", w.reg.GetBlob(t, "secure/app", encLayer.Digest.String()))
	cfg := w.forgeConfig(t, "public/app", w.pubM, diffID)
	return forgeManifest(t, w.reg, "public/app", "plain-view", w.pubM, func(m *ispec.Manifest) {
		m.Config = cfg
		m.Layers = []ispec.Descriptor{{
			MediaType: ispec.MediaTypeImageLayerGzip,
			Digest:    encLayer.Digest,
			Size:      encLayer.Size,
		}}
	})
}

func (w *provenanceWorld) pullJSON(t *testing.T, ref string, args ...string) pullResult {
	t.Helper()
	return w.e.pull(ref, append(slices.Clone(w.args), args...)...)
}

// noBundle checks that a refused pull made no bundle and recorded no image.
func (w *provenanceWorld) noBundle(t *testing.T, id, ref string) {
	t.Helper()
	l := w.e.cacheLs()
	for _, b := range l.Bundles {
		if b.ID == id {
			t.Errorf("bundle %s was made: %+v", id, b)
		}
	}
	for _, img := range l.Images {
		if strings.HasSuffix(ref, strings.TrimPrefix(img.Ref, w.reg.Host)) {
			t.Errorf("image %s was recorded", img.Ref)
		}
	}
	if _, err := os.Stat(filepath.Join(w.e.cache, "bundles", id)); !os.IsNotExist(err) {
		t.Errorf("bundle directory %s exists (%v)", id, err)
	}
}

// TestProvenanceEncryptedScopeNotSatisfiedByPlainLayer (hole 1): with a
// public layer X cached, an image in the scope that requires encryption
// copies a genuine encrypted layer descriptor (media type, annotations,
// blob: its key unwraps) and claims X's diff_id. The encrypted descriptor
// may only reuse a layer that very blob was decrypted into, so the blob is
// fetched, decrypted and found not to yield X: exit 5, nothing mounted.
// The honest images still pull, and say truthfully what was decrypted.
func TestProvenanceEncryptedScopeNotSatisfiedByPlainLayer(t *testing.T) {
	w := newProvenanceWorld(t)
	pub := w.pullJSON(t, w.public, "--container-id", "public")
	if pub.Layers[0].Encrypted {
		t.Fatalf("the public layer is reported encrypted")
	}
	forged := w.forgeEncryptedClaim(t, pub.Layers[0].DiffID)
	msg := w.e.pullFails(5, forged, append(slices.Clone(w.args), "--decryption-key", w.key.Private, "--container-id", "forged")...)
	if !strings.Contains(msg, w.encM.Layers[0].Digest.String()) || !strings.Contains(msg, "diff_id") {
		t.Errorf("error does not name the layer and the diff_id mismatch: %s", msg)
	}
	w.noBundle(t, "forged", forged)
	// The forged pull also gets no bundle through policy check's eyes:
	// the image is allowed by policy (its descriptor is encrypted), so
	// the refusal above came from verifying the blob.
	if c := w.e.gp(append([]string{"policy", "check", forged}, w.args...)...); c.Code != 0 {
		t.Errorf("policy check of the forgery: exit %d, want 0 (the refusal is the pull's): %s", c.Code, c.Stderr)
	}

	// The genuine encrypted image: decrypted by this pull, then reused
	// from the cache by the next, which unwrapped its key again.
	first := w.pullJSON(t, w.encrypted, "--decryption-key", w.key.Private, "--container-id", "enc-1")
	second := w.pullJSON(t, w.encrypted, "--decryption-key", w.key.Private, "--container-id", "enc-2")
	if l := first.Layers[0]; !l.Encrypted || l.Cached {
		t.Errorf("first pull of the encrypted image: %+v, want encrypted, not cached", l)
	}
	if l := second.Layers[0]; !l.Encrypted || !l.Cached {
		t.Errorf("second pull of the encrypted image: %+v, want encrypted and cached", l)
	}
	if got, _ := os.ReadFile(filepath.Join(second.Rootfs, "app/who")); string(got) != "the vendor's confidential layer" {
		t.Errorf("encrypted image's app/who = %q", got)
	}
	// And the forgery still fails, now that the encrypted blob's own layer
	// is cached too.
	w.e.pullFails(5, forged, append(slices.Clone(w.args), "--decryption-key", w.key.Private, "--container-id", "forged-2")...)
	w.noBundle(t, "forged-2", forged)
}

// TestProvenanceDecryptedLayerNeedsItsKey (hole 2): after an encrypted
// image was pulled with its key, an image anyone may pull names the same
// encrypted blob digest under a plain tar+gzip media type, with the same
// diff_id. A layer known only from decryption is never reused for a plain
// descriptor: the blob is fetched and read as gzip, which ciphertext is
// not: exit 5, and no bundle shows the decrypted files to a pull without
// any key.
func TestProvenanceDecryptedLayerNeedsItsKey(t *testing.T) {
	w := newProvenanceWorld(t)
	victim := w.pullJSON(t, w.encrypted, "--decryption-key", w.key.Private, "--container-id", "victim")
	if !victim.Layers[0].Encrypted {
		t.Fatalf("victim layer not decrypted: %+v", victim.Layers)
	}
	encLayer := w.encM.Layers[0]
	forged := w.forgePlainView(t, victim.Layers[0].DiffID)
	r := w.e.gp("pull", forged, "--json", "--quiet", "--container-id", "thief", w.args[0], w.args[1], w.args[2], w.args[3])
	if r.Code == 0 {
		var got pullResult
		json.Unmarshal([]byte(r.Stdout), &got)
		data, _ := os.ReadFile(filepath.Join(got.Rootfs, "app/who"))
		t.Fatalf("a pull without any key got the decrypted layer (layers %+v): app/who = %q", got.Layers, data)
	}
	if r.Code != 5 || !strings.Contains(r.Stderr, encLayer.Digest.String()) || !strings.Contains(r.Stderr, "gzip") {
		t.Errorf("exit %d, want 5 naming the layer and its corrupt gzip data: %s", r.Code, r.Stderr)
	}
	w.noBundle(t, "thief", forged)

	// The victim's layer is intact and still its own.
	again := w.pullJSON(t, w.encrypted, "--decryption-key", w.key.Private, "--container-id", "victim-2")
	if l := again.Layers[0]; !l.Encrypted || !l.Cached {
		t.Errorf("victim's second pull: %+v, want encrypted and cached", l)
	}
	if got, _ := os.ReadFile(filepath.Join(again.Rootfs, "app/who")); string(got) != "the vendor's confidential layer" {
		t.Errorf("victim's app/who = %q", got)
	}
}

// TestProvenanceDecryptedLayerNeedsItsOwnKey (hole 1, the key): the
// guest's public key is public, so anyone can wrap a key of their own to
// it. After the vendor's encrypted image was pulled, an image names the
// vendor's ciphertext (same digest, same media type) with key annotations
// the attacker made for another image, and the vendor's diff_id: this pull
// does unwrap a key for the descriptor, but not the key that decrypted
// that blob, so the cached layer does not stand for it. The blob is
// fetched and decrypted with the attacker's key, and fails its HMAC:
// exit 5, nothing mounted.
func TestProvenanceDecryptedLayerNeedsItsOwnKey(t *testing.T) {
	w := newProvenanceWorld(t)
	victim := w.pullJSON(t, w.encrypted, "--decryption-key", w.key.Private, "--container-id", "victim")
	if !victim.Layers[0].Encrypted {
		t.Fatalf("victim layer not decrypted: %+v", victim.Layers)
	}
	w.reg.Push(t, testutil.BuildImage(t, testutil.ImageSpec{Layers: [][]byte{
		testutil.Tar(t, testutil.File("decoy", "the attacker's own encrypted layer", 0o644)),
	}}), "attacker/app:1", "--encryption-key", "jwe:"+w.key.Public)
	var am ispec.Manifest
	if err := json.Unmarshal(w.reg.RawManifest(t, "attacker/app", "1"), &am); err != nil {
		t.Fatal(err)
	}
	encLayer := w.encM.Layers[0]
	w.reg.UploadBlob(t, "attacker/app", w.reg.GetBlob(t, "secure/app", encLayer.Digest.String()))
	cfg := w.encM.Config
	w.reg.UploadBlob(t, "attacker/app", w.reg.GetBlob(t, "secure/app", cfg.Digest.String()))
	forged := forgeManifest(t, w.reg, "attacker/app", "rewrapped", am, func(m *ispec.Manifest) {
		m.Config = cfg
		m.Layers = []ispec.Descriptor{{
			MediaType:   encLayer.MediaType,
			Digest:      encLayer.Digest,
			Size:        encLayer.Size,
			Annotations: am.Layers[0].Annotations,
		}}
	})
	r := w.e.gp("pull", forged, "--json", "--quiet", "--container-id", "rewrapped", "--decryption-key", w.key.Private,
		w.args[0], w.args[1], w.args[2], w.args[3])
	if r.Code == 0 {
		var got pullResult
		json.Unmarshal([]byte(r.Stdout), &got)
		data, _ := os.ReadFile(filepath.Join(got.Rootfs, "app/who"))
		t.Fatalf("a key wrapped by the attacker stood for the vendor's (layers %+v): app/who = %q", got.Layers, data)
	}
	if r.Code != 5 || !strings.Contains(r.Stderr, encLayer.Digest.String()) || !strings.Contains(r.Stderr, "HMAC") {
		t.Errorf("exit %d, want 5 naming the layer's HMAC mismatch: %s", r.Code, r.Stderr)
	}
	w.noBundle(t, "rewrapped", forged)
}

// TestProvenanceInTheDaemon: the provenance rules hold in the long-lived
// daemon too (kata-agent's calls), which holds a decryption key for every
// request: after the vendor's encrypted image was pulled, the two
// forgeries above are refused with DataLoss while, at the same time, the
// vendor's image is pulled again from the cache, and no forgery's bundle
// shows the vendor's files.
func TestProvenanceInTheDaemon(t *testing.T) {
	w := newProvenanceWorld(t)
	d := startDaemon(t, w.e, append(slices.Clone(w.args), "--decryption-key", w.key.Private)...)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	native := guestpullerv1.NewGuestPullerClient(d.client)
	pull := func(ref, id string) (*guestpullerv1.PullResponse, error) {
		return native.Pull(ctx, &guestpullerv1.PullRequest{Image: ref, ContainerId: id})
	}
	pub, err := pull(w.public, "public")
	if err != nil {
		t.Fatalf("public image: %v\n%s", err, d.logs.String())
	}
	victim, err := pull(w.encrypted, "victim-1")
	if err != nil {
		t.Fatalf("encrypted image: %v\n%s", err, d.logs.String())
	}
	if len(victim.Layers) != 1 || !victim.Layers[0].Encrypted || victim.Layers[0].Cached {
		t.Fatalf("first pull of the encrypted image: %+v, want one layer, encrypted, not cached", victim.Layers)
	}
	claim := w.forgeEncryptedClaim(t, pub.Layers[0].DiffId)
	plainView := w.forgePlainView(t, victim.Layers[0].DiffId)

	var wg sync.WaitGroup
	var again *guestpullerv1.PullResponse
	var againErr, claimErr, viewErr error
	for _, f := range []func(){
		func() { again, againErr = pull(w.encrypted, "victim-2") },
		func() { _, claimErr = pull(claim, "claim") },
		func() { _, viewErr = pull(plainView, "thief") },
	} {
		wg.Add(1)
		go func() { defer wg.Done(); f() }()
	}
	wg.Wait()
	if againErr != nil {
		t.Errorf("the vendor's image again: %v", againErr)
	} else if l := again.Layers[0]; !l.Encrypted || !l.Cached {
		t.Errorf("the vendor's image again: %+v, want encrypted and cached", l)
	} else if got, _ := os.ReadFile(filepath.Join(again.Rootfs, "app/who")); string(got) != "the vendor's confidential layer" {
		t.Errorf("the vendor's app/who = %q", got)
	}
	for name, err := range map[string]error{"encrypted descriptor claiming the public layer": claimErr, "ciphertext as a plain layer": viewErr} {
		if status.Code(err) != codes.DataLoss || !strings.Contains(err.Error(), w.encM.Layers[0].Digest.String()) {
			t.Errorf("%s: %v, want DataLoss naming the layer", name, err)
		}
	}
	w.noBundle(t, "claim", claim)
	w.noBundle(t, "thief", plainView)
}
