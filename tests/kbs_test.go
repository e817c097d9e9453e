package tests

// Issue 5 end to end: attestation and the Key Broker Service. swtpm is the
// guest's TPM, the dev-kbs binary the KBS (both on loopback ports picked at
// run time), and the real guest-puller binary pulls from Debian's
// docker-registry with htpasswd authentication.
//
// The provider-encrypted images are made the way `skopeo copy
// --encryption-key provider:attestation-agent:…` makes them, with ocicrypt
// in the test process running `guest-puller keyprovider` as the key
// provider command (testutil.EncryptLayout): Debian's skopeo 1.9.3 cannot
// use key providers. The encrypted OCI layout is then pushed with a plain
// `skopeo copy`.
//
// Covered elsewhere, not repeated here: a quote made by attest/ verifies
// with tpm2_checkquote (attest.TestTPMQuoteVerifiesWithTpm2Checkquote);
// the protocol-level refusals at the client (attest.TestClientRefusals) and
// at the KBS (devkbs.TestAttest, TestResource). The replayed nonce and the
// swapped tee key are cheap at the binary level with a proxy, so they are
// also here.

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/guest-puller/guest-puller/internal/devkbs/devkbstest"
	"github.com/guest-puller/guest-puller/internal/testutil"
)

const (
	kbsKeyID       = "kbs:///default/key/1"
	aaAnnotationID = "org.opencontainers.image.enc.keys.provider.attestation-agent"
)

// kbsImageSpec is a small image whose second layer changes the first
// (overwrite, whiteout) and holds content only an attested guest may read.
func kbsImageSpec(t *testing.T) testutil.ImageSpec {
	base := testutil.Tar(t,
		testutil.Dir("etc/", 0o755),
		testutil.File("etc/os-release", "ID=kbs-test\n", 0o644),
		testutil.Dir("bin/", 0o755),
		testutil.File("bin/app", "#!/bin/sh\necho v1\n", 0o755),
		testutil.File("bin/old", "removed by the top layer", 0o755),
		testutil.Dir("data/", 0o755),
		testutil.Entry{Name: "data/owned", Body: "owned by 1000", Mode: 0o640, UID: 1000, GID: 1000},
		testutil.Symlink("data/release", "../etc/os-release"),
	)
	top := testutil.Tar(t,
		testutil.File("bin/app", "#!/bin/sh\necho v2\n", 0o755),
		testutil.Whiteout("bin/old"),
		testutil.File("data/secret.txt", "weights only an attested guest may read\n", 0o600),
		testutil.Entry{Name: "data/big", Size: 300 << 10, Mode: 0o644},
	)
	return testutil.ImageSpec{
		Layers: [][]byte{base, top},
		Config: []string{"--config.entrypoint=/bin/app", "--config.env=MODE=kbs"},
	}
}

// kbsWorld is what the KBS tests share: an htpasswd registry holding the
// same image plain, encrypted (every layer) and mixed (only the top layer
// encrypted), a swtpm whose AK dev-kbs trusts, and the KEK.
type kbsWorld struct {
	reg       *testutil.Registry
	tpm       *devkbstest.Swtpm
	akFile    string
	kek       []byte
	kekFile   string
	src       string
	provider  string
	resources string
	kbs       *devkbstest.DevKBS

	authJSON string
	authFile string

	plainRef, encRef, mixedRef string
	encDigest                  string
	enc, mixed                 testutil.Manifest
	plain                      pullResult
	plainTree                  map[string]string
}

func newKBSWorld(t *testing.T) *kbsWorld {
	t.Helper()
	testutil.Need(t, "swtpm", "skopeo", "umoci", "docker-registry")
	w := &kbsWorld{}
	w.reg = testutil.StartRegistry(t, testutil.RegistryOptions{User: "kbs-user", Password: "pw-" + kbsRandomHex(t)})

	// Registry credentials: a local auth file for most pulls, the same
	// content as a KBS resource for one.
	auth := base64.StdEncoding.EncodeToString([]byte(w.reg.User + ":" + w.reg.Password))
	w.authJSON = fmt.Sprintf(`{"auths":{%q:{"auth":%q}}}`, w.reg.Host, auth)
	w.authFile = filepath.Join(t.TempDir(), "auth.json")
	if err := os.WriteFile(w.authFile, []byte(w.authJSON), 0o600); err != nil {
		t.Fatal(err)
	}

	w.tpm = devkbstest.StartSwtpm(t)
	w.akFile = akPEMFile(t, w.tpm)

	w.kek = make([]byte, 32)
	if _, err := rand.Read(w.kek); err != nil {
		t.Fatal(err)
	}
	w.resources = t.TempDir()
	testutil.WriteResource(t, w.resources, "default/key/1", w.kek)
	w.kbs = devkbstest.StartDevKBS(t, bins["dev-kbs"], "--resources", w.resources, "--tpm-ak", w.akFile)

	// Encrypt with `guest-puller keyprovider` as ocicrypt's key provider.
	w.kekFile = writeKEK(t, w.kek)
	w.src = testutil.BuildImage(t, kbsImageSpec(t))
	w.provider = testutil.WriteKeyProviderConfig(t, bins["guest-puller"], "keyprovider")
	recipient := []string{"attestation-agent:keypath=" + w.kekFile + "::keyid=" + kbsKeyID}
	encSrc := testutil.EncryptLayout(t, w.src, "enc", w.provider, recipient)
	mixedSrc := testutil.EncryptLayout(t, w.src, "mixed", w.provider, recipient, 1)

	w.plainRef = w.reg.Push(t, w.src, "kbs/plain:1")
	w.encRef = w.reg.Push(t, encSrc, "kbs/enc:1")
	w.mixedRef = w.reg.Push(t, mixedSrc, "kbs/mixed:1")
	w.enc, w.encDigest = testutil.ParseManifest(t, w.reg.RawManifest(t, "kbs/enc", "1"))
	w.mixed, _ = testutil.ParseManifest(t, w.reg.RawManifest(t, "kbs/mixed", "1"))
	// What was pushed is what the attestation-agent provider writes.
	for i, l := range w.enc.Layers {
		checkAAPacket(t, fmt.Sprintf("kbs/enc layer %d", i), kbsKeyID, l.MediaType, l.Annotations)
	}
	if l := w.mixed.Layers[0]; strings.HasSuffix(l.MediaType, "+encrypted") || l.Annotations[aaAnnotationID] != "" {
		t.Fatalf("kbs/mixed layer 0 is encrypted: %+v", l)
	}
	checkAAPacket(t, "kbs/mixed layer 1", kbsKeyID, w.mixed.Layers[1].MediaType, w.mixed.Layers[1].Annotations)

	// The reference: the plain image's bundle.
	e := newEnv(t)
	w.plain = e.pull(w.plainRef, "--policy", e.write("policy.json", acceptAll), "--insecure-registry", w.reg.Host, "--auth-file", w.authFile)
	if len(w.plain.Layers) != 2 {
		t.Fatalf("plain image: %d layers, want 2", len(w.plain.Layers))
	}
	w.plainTree = kbsTree(t, w.plain.Rootfs)
	if w.plainTree["data/secret.txt"] == "" || w.plainTree["bin/old"] != "" {
		t.Fatalf("plain bundle lacks the top layer's changes: %v", w.plainTree)
	}
	return w
}

// writeKEK stores a KEK for the keyprovider's keypath.
func writeKEK(t *testing.T, kek []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "kek")
	if err := os.WriteFile(p, kek, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func kekSecrets(kek []byte) []string {
	return []string{
		hex.EncodeToString(kek),
		base64.StdEncoding.EncodeToString(kek),
		base64.RawStdEncoding.EncodeToString(kek),
		base64.URLEncoding.EncodeToString(kek),
		base64.RawURLEncoding.EncodeToString(kek),
		string(kek),
	}
}

// checkAAPacket checks that a layer is encrypted for the attestation-agent
// provider with a v1 packet naming the KEK kbs:///default/key/1.
func checkAAPacket(t *testing.T, what, kid, mediaType string, ann map[string]string) {
	t.Helper()
	if !strings.HasSuffix(mediaType, "+encrypted") {
		t.Fatalf("%s: media type %s is not encrypted", what, mediaType)
	}
	raw, err := base64.StdEncoding.DecodeString(ann[aaAnnotationID])
	if err != nil {
		t.Fatalf("%s: annotation %s: %v (%q)", what, aaAnnotationID, err, ann[aaAnnotationID])
	}
	var pkt struct {
		Kid         string `json:"kid"`
		WrappedData string `json:"wrapped_data"`
		IV          string `json:"iv"`
		WrapType    string `json:"wrap_type"`
	}
	if err := json.Unmarshal(raw, &pkt); err != nil {
		t.Fatalf("%s: packet %s: %v", what, raw, err)
	}
	if pkt.Kid != kid || pkt.WrapType != "A256GCM" || pkt.WrappedData == "" || pkt.IV == "" {
		t.Fatalf("%s: packet %s, want kid %s, wrap_type A256GCM", what, raw, kid)
	}
	for k := range ann {
		if strings.HasPrefix(k, "org.opencontainers.image.enc.keys.") && k != aaAnnotationID {
			t.Fatalf("%s: unexpected key annotation %s", what, k)
		}
	}
}

// akPEMFile runs `guest-puller attest ak --tpm URI` and stores its output
// for dev-kbs --tpm-ak.
func akPEMFile(t *testing.T, tpm *devkbstest.Swtpm) string {
	t.Helper()
	r := testutil.Exec(t, nil, bins["guest-puller"], "attest", "ak", "--tpm", tpm.URI)
	if r.Code != 0 {
		t.Fatalf("attest ak: exit %d: %s", r.Code, r.Stderr)
	}
	return devkbstest.WriteFile(t, "ak.pem", []byte(r.Stdout))
}

// kbsArgs are the flags of a pull that gets its keys from the KBS at url
// with evidence from attester ("tpm": the world's swtpm).
func (w *kbsWorld) kbsArgs(url, attester string) []string {
	args := []string{"--insecure-registry", w.reg.Host, "--kbs", url, "--attester", attester}
	if attester == "tpm" {
		args = append(args, "--tpm", w.tpm.URI)
	}
	return args
}

// secrets are what must never show in guest-puller's output: the KEK in
// every usual encoding, the registry password and the auth file.
func (w *kbsWorld) secrets() []string {
	return append(kekSecrets(w.kek),
		w.reg.Password,
		base64.StdEncoding.EncodeToString([]byte(w.reg.User+":"+w.reg.Password)),
		w.authJSON,
	)
}

func kbsNoSecrets(t *testing.T, what, out string, secrets []string) {
	t.Helper()
	for _, s := range secrets {
		if len(s) >= 8 && strings.Contains(out, s) {
			t.Errorf("%s shows a secret (%.12q…):\n%s", what, s, out)
		}
	}
}

// pullOK runs a pull with progress on (no --quiet), so that everything
// guest-puller may print is looked at, and decodes --json.
func (w *kbsWorld) pullOK(t *testing.T, e *env, secrets []string, image string, args ...string) pullResult {
	t.Helper()
	r := e.gp(append([]string{"pull", image, "--json"}, args...)...)
	kbsNoSecrets(t, "stdout", r.Stdout, secrets)
	kbsNoSecrets(t, "stderr", r.Stderr, secrets)
	if r.Code != 0 {
		t.Fatalf("pull %s: exit %d: %s", image, r.Code, r.Stderr)
	}
	var res pullResult
	if err := json.Unmarshal([]byte(r.Stdout), &res); err != nil {
		t.Fatalf("pull --json output: %v\n%s", err, r.Stdout)
	}
	return res
}

// checkDecrypted says the pull of an encrypted image (every layer, or the
// top one of kbs/mixed) decrypted each encrypted layer itself and gave
// the plain image's files.
func (w *kbsWorld) checkDecrypted(t *testing.T, res pullResult, m testutil.Manifest) {
	t.Helper()
	if len(res.Layers) != len(m.Layers) {
		t.Fatalf("%d layers, want %d", len(res.Layers), len(m.Layers))
	}
	for i, l := range res.Layers {
		enc := strings.HasSuffix(m.Layers[i].MediaType, "+encrypted")
		if l.Digest != m.Layers[i].Digest || l.MediaType != m.Layers[i].MediaType || l.Encrypted != enc || l.Cached {
			t.Errorf("layer %d: %+v, want digest %s, media type %s, encrypted=%v, not cached", i, l, m.Layers[i].Digest, m.Layers[i].MediaType, enc)
		}
		if l.DiffID != w.plain.Layers[i].DiffID {
			t.Errorf("layer %d: diffID %s, the plain image's is %s", i, l.DiffID, w.plain.Layers[i].DiffID)
		}
	}
	compareKBSTrees(t, kbsTree(t, res.Rootfs), w.plainTree)
}

// TestKBS pulls images whose layer keys only the KBS holds, after the
// guest proved itself with swtpm evidence, and checks every refusal.
func TestKBS(t *testing.T) {
	w := newKBSWorld(t)

	t.Run("encrypted image decrypts with the KEK from the KBS", func(t *testing.T) {
		proxy := testutil.StartKBSProxy(t, w.kbs.URL, testutil.KBSProxyOptions{})
		e := newEnv(t)
		pol := e.write("policy.json", acceptAll)

		// Without the KBS the image cannot be opened at all.
		msg := e.pullFails(4, w.encRef, "--policy", pol, "--insecure-registry", w.reg.Host, "--auth-file", w.authFile)
		if !strings.Contains(msg, "kbs/enc") {
			t.Errorf("no-key refusal does not name the image: %s", msg)
		}

		args := append([]string{"--policy", pol, "--auth-file", w.authFile}, w.kbsArgs(proxy.URL, "tpm")...)
		res := w.pullOK(t, e, w.secrets(), w.encRef, args...)
		if res.ManifestDigest != w.encDigest {
			t.Errorf("manifestDigest %s, registry has %s", res.ManifestDigest, w.encDigest)
		}
		w.checkDecrypted(t, res, w.enc)
		if n := proxy.Requests("POST /kbs/v0/attest"); n != 1 {
			t.Errorf("%d attestations for one pull, want 1", n)
		}
		if n := proxy.Requests("GET /kbs/v0/resource/default/key/1"); n != 1 {
			t.Errorf("the KEK both layers share was asked of the KBS %d times, want 1", n)
		}
		// The session, the token and the JWE the KBS handed out stay
		// private too: pull again (a fresh process, a fresh attestation)
		// and look for the first pull's.
		res2 := w.pullOK(t, e, append(w.secrets(), proxy.Secrets()...), w.encRef, append(args, "--container-id", "second")...)
		if len(proxy.Secrets()) < 3 {
			t.Errorf("the proxy recorded only %d secrets: the test would not see a leak", len(proxy.Secrets()))
		}
		for _, l := range res2.Layers {
			if !l.Cached || !l.Encrypted {
				t.Errorf("second pull: layer %+v, want cached and encrypted", l)
			}
		}
		if n := proxy.Requests("GET /kbs/v0/resource/default/key/1"); n < 2 {
			t.Errorf("a cached encrypted layer was used without asking the KBS for its key again (%d KEK requests)", n)
		}
	})

	t.Run("policy, cosign key and auth file from the KBS", func(t *testing.T) {
		key := testutil.NewCosignKey(t)
		key.SignIn(t, w.reg, w.reg.Host+"/kbs/enc@"+w.encDigest)
		pub, err := os.ReadFile(key.Pub)
		if err != nil {
			t.Fatal(err)
		}
		scope := w.reg.Host + "/kbs/enc"
		policy := fmt.Sprintf(`{"default":[{"type":"reject"}],"transports":{"docker":{%q:[
			{"type":"sigstoreSigned","keyPath":"kbs:///default/cosign/1","signedIdentity":{"type":"matchRepository"}},
			{"type":"encrypted"}]}}}`, scope)
		testutil.WriteResource(t, w.resources, "default/policy/1", []byte(policy))
		testutil.WriteResource(t, w.resources, "default/cosign/1", pub)
		testutil.WriteResource(t, w.resources, "default/auth/1", []byte(w.authJSON))
		t.Cleanup(func() {
			for _, r := range []string{"policy", "cosign", "auth"} {
				os.RemoveAll(filepath.Join(w.resources, "default", r))
			}
		})
		proxy := testutil.StartKBSProxy(t, w.kbs.URL, testutil.KBSProxyOptions{})
		secrets := append(w.secrets(), policy)
		kbsOnly := append([]string{"--policy", "kbs:///default/policy/1", "--auth-file", "kbs:///default/auth/1"}, w.kbsArgs(proxy.URL, "tpm")...)

		e := newEnv(t)
		res := w.pullOK(t, e, secrets, w.encRef, kbsOnly...)
		w.checkDecrypted(t, res, w.enc)
		if res.Policy.Scope != scope {
			t.Errorf("policy scope %q, want %q", res.Policy.Scope, scope)
		}
		var types []string
		for _, r := range res.Policy.Requirements {
			types = append(types, r.Type)
			if !r.OK {
				t.Errorf("requirement %+v does not hold", r)
			}
		}
		if !slices.Equal(types, []string{"sigstoreSigned", "encrypted"}) {
			t.Errorf("requirements %v, want [sigstoreSigned encrypted]", types)
		}
		if len(res.Signatures) != 1 || !res.Signatures[0].Verified || res.Signatures[0].KeyID != key.KeyID(t) {
			t.Errorf("signatures %+v, want one verified by key %s", res.Signatures, key.KeyID(t))
		}
		for _, p := range []string{"policy/1", "cosign/1", "auth/1", "key/1"} {
			if proxy.Requests("GET /kbs/v0/resource/default/"+p) < 1 {
				t.Errorf("default/%s was not fetched from the KBS", p)
			}
		}
		if n := proxy.Requests("POST /kbs/v0/attest"); n != 1 {
			t.Errorf("%d attestations for one pull of four resources, want 1", n)
		}

		// policy check reads the same resources through the KBS.
		r := e.gp(append([]string{"policy", "check", w.encRef, "--json"}, kbsOnly...)...)
		kbsNoSecrets(t, "policy check", r.Stdout+r.Stderr, append(secrets, proxy.Secrets()...))
		var check struct {
			Allowed bool   `json:"allowed"`
			Scope   string `json:"scope"`
		}
		if r.Code != 0 || json.Unmarshal([]byte(r.Stdout), &check) != nil || !check.Allowed || check.Scope != scope {
			t.Errorf("policy check: exit %d, %s%s; want allowed by scope %s", r.Code, r.Stdout, r.Stderr, scope)
		}

		// The policy from the KBS decides: its default rejects kbs/mixed.
		msg := e.pullFails(3, w.mixedRef, append(kbsOnly, "--container-id", "mixed")...)
		if !strings.Contains(msg, "kbs/mixed") {
			t.Errorf("refusal does not name the image: %s", msg)
		}
		kbsNoSecrets(t, "refusal", msg, append(secrets, proxy.Secrets()...))

		// The registry wants the credentials the KBS served: without an
		// auth file the same pull fails.
		noAuth := []string{"REGISTRY_AUTH_FILE=", "DOCKER_CONFIG=" + t.TempDir()}
		args := append([]string{"pull", w.encRef, "--quiet", "--cache", e.cache, "--container-id", "noauth", "--policy", "kbs:///default/policy/1"}, w.kbsArgs(proxy.URL, "tpm")...)
		r = testutil.Exec(t, noAuth, bins["guest-puller"], args...)
		if r.Code == 0 {
			t.Errorf("pull without credentials succeeded: the registry does not check them")
		} else if !strings.Contains(r.Stderr, "kbs/enc") || !strings.Contains(r.Stderr, "authentication failed") {
			t.Errorf("failure without credentials does not say which image failed to authenticate: %s", r.Stderr)
		}
	})

	t.Run("each layer's kid names its own KEK", func(t *testing.T) {
		// Layer 0 under default/key/1, layer 1 under another resource,
		// named with a host part, which the KBS URL overrides.
		kek2 := make([]byte, 32)
		if _, err := rand.Read(kek2); err != nil {
			t.Fatal(err)
		}
		testutil.WriteResource(t, w.resources, "team-a/image-kek/2", kek2)
		t.Cleanup(func() { os.RemoveAll(filepath.Join(w.resources, "team-a")) })
		kid2 := "kbs://kbs.example.com/team-a/image-kek/2"
		half := testutil.EncryptLayout(t, w.src, "two-kids-0", w.provider, []string{"attestation-agent:keypath=" + w.kekFile + "::keyid=" + kbsKeyID}, 0)
		both := testutil.EncryptLayout(t, half, "two-kids", w.provider, []string{"attestation-agent:keypath=" + writeKEK(t, kek2) + "::keyid=" + kid2}, 1)
		ref := w.reg.Push(t, both, "kbs/two-kids:1")
		m, _ := testutil.ParseManifest(t, w.reg.RawManifest(t, "kbs/two-kids", "1"))
		checkAAPacket(t, "kbs/two-kids layer 0", kbsKeyID, m.Layers[0].MediaType, m.Layers[0].Annotations)
		checkAAPacket(t, "kbs/two-kids layer 1", kid2, m.Layers[1].MediaType, m.Layers[1].Annotations)

		proxy := testutil.StartKBSProxy(t, w.kbs.URL, testutil.KBSProxyOptions{})
		e := newEnv(t)
		args := append([]string{"--policy", e.write("policy.json", acceptAll), "--auth-file", w.authFile}, w.kbsArgs(proxy.URL, "tpm")...)
		w.checkDecrypted(t, w.pullOK(t, e, append(w.secrets(), kekSecrets(kek2)...), ref, args...), m)
		for path, want := range map[string]int{
			"POST /kbs/v0/attest":                     1,
			"GET /kbs/v0/resource/default/key/1":      1,
			"GET /kbs/v0/resource/team-a/image-kek/2": 1,
		} {
			if n := proxy.Requests(path); n != want {
				t.Errorf("%s: %d requests, want %d", path, n, want)
			}
		}

		// Without the second KEK at the KBS the image cannot be pulled,
		// though the first one is there.
		if err := os.Remove(filepath.Join(w.resources, "team-a/image-kek/2")); err != nil {
			t.Fatal(err)
		}
		e = newEnv(t)
		args = append([]string{"--policy", e.write("policy.json", acceptAll), "--auth-file", w.authFile}, w.kbsArgs(w.kbs.URL, "tpm")...)
		msg := e.pullFails(4, ref, args...)
		for _, s := range []string{"kbs/two-kids", m.Layers[1].Digest, "team-a/image-kek/2"} {
			if !strings.Contains(msg, s) {
				t.Errorf("message does not say %q: %s", s, msg)
			}
		}
		if l := e.cacheLs(); len(l.Images) != 0 || len(l.Layers) != 0 {
			t.Errorf("refused pull left %+v", l)
		}
	})

	// Each refusal pulls kbs/mixed, whose bottom layer is plain: nothing of
	// it, not even the layer that needs no key, may land in the cache.
	refuseWith := func(t *testing.T, kbsArgs []string, want ...string) string {
		t.Helper()
		e := newEnv(t)
		args := append([]string{"--policy", e.write("policy.json", acceptAll), "--auth-file", w.authFile}, kbsArgs...)
		msg := e.pullFails(4, w.mixedRef, args...)
		for _, s := range append([]string{"kbs/mixed", w.mixed.Layers[1].Digest}, want...) {
			if !strings.Contains(msg, s) {
				t.Errorf("message does not say %q: %s", s, msg)
			}
		}
		kbsNoSecrets(t, "refusal", msg, w.secrets())
		t.Logf("refused: %s", msg)
		l := e.cacheLs()
		if len(l.Images) != 0 || len(l.Bundles) != 0 {
			t.Errorf("refused pull left images %+v, bundles %+v", l.Images, l.Bundles)
		}
		for _, cl := range l.Layers {
			for _, pl := range w.plain.Layers {
				if cl.DiffID == pl.DiffID {
					t.Errorf("refused pull left layer %s in the cache", cl.DiffID)
				}
			}
		}
		return msg
	}
	refuse := func(t *testing.T, url, attester string, want ...string) string {
		t.Helper()
		return refuseWith(t, w.kbsArgs(url, attester), want...)
	}
	// accept pulls kbs/mixed through a KBS that is set up right: the
	// control for a refusal by the same kind of KBS.
	accept := func(t *testing.T, url, attester string) {
		t.Helper()
		e := newEnv(t)
		args := append([]string{"--policy", e.write("policy.json", acceptAll), "--auth-file", w.authFile}, w.kbsArgs(url, attester)...)
		w.checkDecrypted(t, w.pullOK(t, e, w.secrets(), w.mixedRef, args...), w.mixed)
		// What a refusal must not leave behind is what cache ls shows now.
		l := e.cacheLs()
		if len(l.Images) != 1 || !strings.HasSuffix(l.Images[0].Ref, "kbs/mixed:1") {
			t.Errorf("cache ls images %+v, want kbs/mixed:1", l.Images)
		}
		var diffIDs []string
		for _, cl := range l.Layers {
			diffIDs = append(diffIDs, cl.DiffID)
		}
		for _, pl := range w.plain.Layers {
			if !slices.Contains(diffIDs, pl.DiffID) {
				t.Errorf("cache ls layers %v lack %s", diffIDs, pl.DiffID)
			}
		}
	}

	t.Run("PCR value outside the reference set", func(t *testing.T) {
		zero := strings.Repeat("00", 32)
		bad := devkbstest.WriteFile(t, "pcrs.json", []byte(`{"0":["`+strings.Repeat("ab", 32)+`"],"7":["`+zero+`"]}`))
		good := devkbstest.WriteFile(t, "pcrs.json", []byte(`{"0":["`+strings.Repeat("ab", 32)+`","`+zero+`"],"7":["`+zero+`"]}`))
		refuse(t, devkbstest.StartDevKBS(t, bins["dev-kbs"], "--resources", w.resources, "--tpm-ak", w.akFile, "--pcrs", bad).URL, "tpm", "PCR 0 value "+zero+" is not in the reference set")
		accept(t, devkbstest.StartDevKBS(t, bins["dev-kbs"], "--resources", w.resources, "--tpm-ak", w.akFile, "--pcrs", good).URL, "tpm")
	})

	t.Run("unregistered attestation key", func(t *testing.T) {
		other := akPEMFile(t, devkbstest.StartSwtpm(t))
		if o, _ := os.ReadFile(other); string(o) == readFile(t, w.akFile) {
			t.Fatal("two TPMs have the same AK")
		}
		kbs := devkbstest.StartDevKBS(t, bins["dev-kbs"], "--resources", w.resources, "--tpm-ak", other)
		refuse(t, kbs.URL, "tpm", "attestation key is not registered")

		// Layers in the cache are no way around attestation: a guest that
		// pulled the image once and now fails to attest gets no bundle.
		e := newEnv(t)
		pol := e.write("policy.json", acceptAll)
		first := w.pullOK(t, e, w.secrets(), w.mixedRef, append([]string{"--policy", pol, "--auth-file", w.authFile, "--container-id", "c1"}, w.kbsArgs(w.kbs.URL, "tpm")...)...)
		msg := e.pullFails(4, w.mixedRef, append([]string{"--policy", pol, "--auth-file", w.authFile, "--container-id", "c2"}, w.kbsArgs(kbs.URL, "tpm")...)...)
		if !strings.Contains(msg, "attestation key is not registered") {
			t.Errorf("refusal with cached layers: %s", msg)
		}
		if l := e.cacheLs(); len(l.Bundles) != 1 || l.Bundles[0].Dir != first.Bundle {
			t.Errorf("bundles after the refused pull: %+v, want only %s", l.Bundles, first.Bundle)
		}

		// A kbs:/// policy is refused the same way, before any image.
		testutil.WriteResource(t, w.resources, "default/policy/2", []byte(acceptAll))
		t.Cleanup(func() { os.Remove(filepath.Join(w.resources, "default/policy/2")) })
		e = newEnv(t)
		msg = e.pullFails(4, w.mixedRef, append([]string{"--policy", "kbs:///default/policy/2", "--auth-file", w.authFile}, w.kbsArgs(kbs.URL, "tpm")...)...)
		for _, s := range []string{"kbs:///default/policy/2", "not registered"} {
			if !strings.Contains(msg, s) {
				t.Errorf("message does not say %q: %s", s, msg)
			}
		}
	})

	t.Run("sample evidence without --allow-sample", func(t *testing.T) {
		refuse(t, w.kbs.URL, "sample", "sample evidence is refused")
		accept(t, devkbstest.StartDevKBS(t, bins["dev-kbs"], "--resources", w.resources, "--allow-sample").URL, "sample")
	})

	t.Run("KBS down", func(t *testing.T) {
		url := fmt.Sprintf("http://127.0.0.1:%d", testutil.FreePort(t))
		refuse(t, url, "tpm", strings.TrimPrefix(url, "http://"), "connection refused")
	})

	t.Run("KBS answering garbage", func(t *testing.T) {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			io.WriteString(w, "<html><body>it works</body></html>")
		}))
		t.Cleanup(srv.Close)
		refuse(t, srv.URL, "tpm", "malformed challenge")
	})

	t.Run("a KBS that stalls mid-answer is retried", func(t *testing.T) {
		// Every exchange (auth, attest, resource) first gets half an
		// answer and then silence: --idle-timeout gives up on it and the
		// client asks again.
		proxy := testutil.StartKBSProxy(t, w.kbs.URL, testutil.KBSProxyOptions{StallFirst: true})
		e := newEnv(t)
		res := w.pullOK(t, e, w.secrets(), w.encRef, append(w.kbsArgs(proxy.URL, "tpm"),
			"--policy", e.write("policy.json", acceptAll), "--auth-file", w.authFile, "--idle-timeout", "500ms")...)
		w.checkDecrypted(t, res, w.enc)
		for _, req := range []string{"POST /kbs/v0/auth", "POST /kbs/v0/attest", "GET /kbs/v0/resource/default/key/1"} {
			if n := proxy.Requests(req); n < 2 {
				t.Errorf("%s: %d requests, want the stalled one and its retry", req, n)
			}
		}
		// Each stall was given up after --idle-timeout, not after the
		// 30s default.
		stalls := proxy.Stalls()
		if len(stalls) != 3 {
			t.Errorf("%d stalled answers given up on, want 3", len(stalls))
		}
		for _, d := range stalls {
			if d > 10*time.Second {
				t.Errorf("a stalled answer was waited on for %v, with --idle-timeout 500ms", d)
			}
		}
	})

	t.Run("resource encrypted to another key", func(t *testing.T) {
		proxy := testutil.StartKBSProxy(t, w.kbs.URL, testutil.KBSProxyOptions{ForeignResourceKey: true})
		refuse(t, proxy.URL, "tpm", "does not open with this session's tee key")
		if proxy.Requests("GET /kbs/v0/resource/default/key/1") < 1 {
			t.Error("the resource was never asked for: the refusal is not about its JWE")
		}
	})

	t.Run("replayed nonce", func(t *testing.T) {
		proxy := testutil.StartKBSProxy(t, w.kbs.URL, testutil.KBSProxyOptions{ReplayAttest: true})
		refuse(t, proxy.URL, "tpm", "nonce was already used")
	})

	t.Run("tee key swapped after the evidence was made", func(t *testing.T) {
		proxy := testutil.StartKBSProxy(t, w.kbs.URL, testutil.KBSProxyOptions{SwapTeeKey: true})
		refuse(t, proxy.URL, "tpm", "does not bind the runtime data")
	})

	t.Run("KBS serves another KEK at the kid", func(t *testing.T) {
		dir := t.TempDir()
		other := make([]byte, 32)
		rand.Read(other)
		testutil.WriteResource(t, dir, "default/key/1", other)
		refuse(t, devkbstest.StartDevKBS(t, bins["dev-kbs"], "--resources", dir, "--tpm-ak", w.akFile).URL, "tpm", kbsKeyID, "does not open with the KEK")
	})

	t.Run("KBS over TLS", func(t *testing.T) {
		cert, key := testutil.SelfSignedTLS(t, "dev-kbs")
		kbs := devkbstest.StartDevKBS(t, bins["dev-kbs"], "--resources", w.resources, "--tpm-ak", w.akFile, "--tls-cert", cert, "--tls-key", key)
		if !strings.HasPrefix(kbs.URL, "https://") {
			t.Fatalf("dev-kbs serves %s, want https", kbs.URL)
		}
		t.Run("--kbs-cert names its certificate", func(t *testing.T) {
			e := newEnv(t)
			args := append([]string{"--policy", e.write("policy.json", acceptAll), "--auth-file", w.authFile, "--kbs-cert", cert}, w.kbsArgs(kbs.URL, "tpm")...)
			w.checkDecrypted(t, w.pullOK(t, e, w.secrets(), w.mixedRef, args...), w.mixed)
		})
		t.Run("no --kbs-cert", func(t *testing.T) {
			refuse(t, kbs.URL, "tpm", "certificate signed by unknown authority")
		})
		t.Run("--kbs-cert of another server", func(t *testing.T) {
			other, _ := testutil.SelfSignedTLS(t, "another KBS")
			refuseWith(t, append(w.kbsArgs(kbs.URL, "tpm"), "--kbs-cert", other), "certificate signed by unknown authority")
		})
	})

	t.Run("default attester", func(t *testing.T) {
		// --attester auto (the default) takes the TPM named by --tpm when
		// there is no configfs-tsm.
		e := newEnv(t)
		args := []string{"--policy", e.write("policy.json", acceptAll), "--auth-file", w.authFile, "--insecure-registry", w.reg.Host, "--kbs", w.kbs.URL, "--tpm", w.tpm.URI}
		w.checkDecrypted(t, w.pullOK(t, e, w.secrets(), w.mixedRef, args...), w.mixed)
		// No TEE and no TPM at all: nothing to attest with.
		refuseWith(t, []string{"--insecure-registry", w.reg.Host, "--kbs", w.kbs.URL, "--tpm", filepath.Join(t.TempDir(), "tpmrm0")}, "no TEE")
		refuseWith(t, []string{"--insecure-registry", w.reg.Host, "--kbs", w.kbs.URL, "--attester", "tpm", "--tpm", filepath.Join(t.TempDir(), "tpmrm0")}, "tpmrm0")
		// The same for a kbs:/// policy: attestation is impossible, so is
		// the policy, as when the KBS refuses.
		testutil.WriteResource(t, w.resources, "default/policy/3", []byte(acceptAll))
		t.Cleanup(func() { os.Remove(filepath.Join(w.resources, "default/policy/3")) })
		e = newEnv(t)
		msg := e.pullFails(4, w.mixedRef, "--policy", "kbs:///default/policy/3", "--auth-file", w.authFile, "--insecure-registry", w.reg.Host, "--kbs", w.kbs.URL, "--tpm", filepath.Join(t.TempDir(), "tpmrm0"))
		for _, s := range []string{"kbs:///default/policy/3", "no TEE"} {
			if !strings.Contains(msg, s) {
				t.Errorf("message does not say %q: %s", s, msg)
			}
		}
	})

	t.Run("KBS has no such resource", func(t *testing.T) {
		msg := refuse(t, devkbstest.StartDevKBS(t, bins["dev-kbs"], "--resources", t.TempDir(), "--tpm-ak", w.akFile).URL, "tpm", "resource default/key/1 not found")
		// The whole line: the image, the layer and the kind once each,
		// then what each level below adds.
		want := "guest-puller: " + w.mixedRef + ": layer " + w.mixed.Layers[1].Digest +
			": cannot decrypt: no key unwraps it (recipients: provider.attestation-agent): attestation-agent: kbs resource kbs:///default/key/1" +
			": kbs get resource: 404 Not Found: ResourceNotFound: resource default/key/1 not found"
		if msg != want {
			t.Errorf("message\n%s\nwant\n%s", msg, want)
		}
	})
}

// TestKBSAttestAK: `guest-puller attest ak` prints the PEM public key of
// an AK persisted in the TPM: the same key every time, also after the TPM
// restarts, and another TPM has another one.
func TestKBSAttestAK(t *testing.T) {
	testutil.Need(t, "swtpm", "tpm2_readpublic")
	state := devkbstest.StateDir(t)
	tpm := devkbstest.StartSwtpmWithState(t, state)
	ak := func(uri string) string {
		t.Helper()
		r := testutil.Exec(t, nil, bins["guest-puller"], "attest", "ak", "--tpm", uri)
		if r.Code != 0 || r.Stderr != "" {
			t.Fatalf("attest ak: exit %d, stderr %q", r.Code, r.Stderr)
		}
		return r.Stdout
	}
	// A fresh TPM holds no AK yet.
	r := testutil.Exec(t, []string{"TPM2TOOLS_TCTI=" + tpm.TCTI}, "tpm2_getcap", "handles-persistent")
	if r.Code != 0 || strings.Contains(r.Stdout, "0x81") {
		t.Fatalf("fresh TPM: tpm2_getcap exit %d: %s%s", r.Code, r.Stdout, r.Stderr)
	}
	first := ak(tpm.URI)
	block, rest := pem.Decode([]byte(first))
	if block == nil || block.Type != "PUBLIC KEY" || strings.TrimSpace(string(rest)) != "" {
		t.Fatalf("attest ak printed %q, want one PEM PUBLIC KEY", first)
	}
	pub, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if k, ok := pub.(*rsa.PublicKey); !ok || k.N.BitLen() != 2048 {
		t.Fatalf("AK is %T, want RSA-2048", pub)
	}
	if second := ak(tpm.URI); second != first {
		t.Errorf("second run printed another key:\n%s\nfirst:\n%s", second, first)
	}

	// The key is the persistent object 0x81010002, as tpm2-tools reads it.
	out := filepath.Join(t.TempDir(), "ak.pem")
	testutil.RunEnv(t, []string{"TPM2TOOLS_TCTI=" + tpm.TCTI}, "tpm2_readpublic", "-c", "0x81010002", "-f", "pem", "-o", out)
	if got := readFile(t, out); pemDER(t, got) != pemDER(t, first) {
		t.Errorf("0x81010002 holds\n%s\nattest ak printed\n%s", got, first)
	}

	tpm.Stop()
	if again := ak(devkbstest.StartSwtpmWithState(t, state).URI); again != first {
		t.Errorf("after a TPM restart attest ak printed another key:\n%s", again)
	}
	if other := ak(devkbstest.StartSwtpm(t).URI); other == first {
		t.Error("another TPM printed the same key")
	}

	// No TPM there: a one-line error, nothing on stdout.
	r = testutil.Exec(t, nil, bins["guest-puller"], "attest", "ak", "--tpm", fmt.Sprintf("mssim://127.0.0.1:%d", testutil.FreePort(t)))
	msg := strings.TrimSpace(r.Stderr)
	if r.Code == 0 || r.Stdout != "" || strings.Contains(msg, "\n") || !strings.HasPrefix(msg, "guest-puller: ") {
		t.Errorf("attest ak without a TPM: exit %d, stdout %q, stderr %q", r.Code, r.Stdout, r.Stderr)
	}
	t.Logf("without a TPM: exit %d: %s", r.Code, msg)
}

func readFile(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func pemDER(t *testing.T, s string) string {
	t.Helper()
	b, _ := pem.Decode([]byte(s))
	if b == nil {
		t.Fatalf("not PEM: %q", s)
	}
	return hex.EncodeToString(b.Bytes)
}

// kbsTree describes every entry under root as a user would compare two
// bundles: type and mode, owner, content hash or link target, device.
func kbsTree(t *testing.T, root string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		if rel == "." {
			return nil
		}
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		st := fi.Sys().(*syscall.Stat_t)
		desc := fmt.Sprintf("%v %d:%d", fi.Mode(), st.Uid, st.Gid)
		switch {
		case fi.Mode().IsRegular():
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			desc += fmt.Sprintf(" %d sha256:%x", len(data), sha256.Sum256(data))
		case fi.Mode()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			desc += " -> " + target
		case fi.Mode()&(fs.ModeDevice|fs.ModeCharDevice) != 0:
			desc += fmt.Sprintf(" dev %d", st.Rdev)
		}
		out[rel] = desc
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func compareKBSTrees(t *testing.T, got, want map[string]string) {
	t.Helper()
	for p, w := range want {
		if g, ok := got[p]; !ok {
			t.Errorf("%s missing (want %s)", p, w)
		} else if g != w {
			t.Errorf("%s: %s, want %s", p, g, w)
		}
	}
	for p, g := range got {
		if _, ok := want[p]; !ok {
			t.Errorf("%s (%s) is not in the plain image", p, g)
		}
	}
}

func kbsRandomHex(t *testing.T) string {
	t.Helper()
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}
