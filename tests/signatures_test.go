package tests

// Issue 3 end to end: signatures (cosign attachments, GPG simple signing
// through lookaside stores) and the whole policy matrix, through the real
// guest-puller binary against a real registry, with images signed by the
// real cosign, skopeo and gpg.
//
// cosign signs the repository ("host/repo", no tag) as the identity, which
// containers/image's default signedIdentity (matchRepoDigestOrExact) never
// accepts; the cosign policies here therefore say matchRepository, as
// policy.example.json does.

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/guest-puller/guest-puller/internal/errdefs"
	"github.com/guest-puller/guest-puller/internal/testutil"
)

// sigReq is one requirement of a policy written by these tests.
type sigReq = map[string]any

var sigMatchRepository = map[string]string{"type": "matchRepository"}

// sigPolicy is a policy that rejects by default and has these docker
// scopes.
func sigPolicy(t *testing.T, scopes map[string][]sigReq) string {
	t.Helper()
	b, err := json.Marshal(map[string]any{
		"default":    []sigReq{{"type": "reject"}},
		"transports": map[string]any{"docker": scopes},
	})
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// sigstoreKey requires a cosign signature by the key at keyPath.
func sigstoreKey(keyPath string) sigReq {
	return sigReq{"type": "sigstoreSigned", "keyPath": keyPath, "signedIdentity": sigMatchRepository}
}

// sigEnv is newEnv's env for a subtest: the same cache and directory,
// failures reported on the subtest.
func sigEnv(e *env, t *testing.T) *env {
	return &env{t: t, cache: e.cache, dir: e.dir}
}

// sigDigest is the manifest digest of repo:tag as the registry serves it.
func sigDigest(t *testing.T, reg *testutil.Registry, repoTag string) string {
	t.Helper()
	repo, tag, _ := strings.Cut(repoTag, ":")
	_, d := testutil.ParseManifest(t, reg.RawManifest(t, repo, tag))
	return d
}

// sigPush pushes src to repoTag and signs the pushed digest with each of
// keys (cosign); it returns the tagged reference and the digest.
func sigPush(t *testing.T, reg *testutil.Registry, src, repoTag string, keys ...testutil.CosignKey) (string, string) {
	t.Helper()
	ref := reg.Push(t, src, repoTag)
	d := sigDigest(t, reg, repoTag)
	repo, _, _ := strings.Cut(repoTag, ":")
	for _, k := range keys {
		k.Sign(t, reg.Host+"/"+repo+"@"+d)
	}
	return ref, d
}

// sigCopy copies from → to (repo:tag each) inside reg, keeping digests:
// what a registry operator, or an attacker with push rights, can do.
func sigCopy(t *testing.T, reg *testutil.Registry, from, to string) {
	t.Helper()
	testutil.Run(t, "skopeo", "copy", "--quiet", "--preserve-digests", "--src-tls-verify=false", "--dest-tls-verify=false",
		"docker://"+reg.Host+"/"+from, "docker://"+reg.Host+"/"+to)
}

// sigSigTag is cosign's attachment tag of digest.
func sigSigTag(digest string) string {
	return strings.Replace(digest, ":", "-", 1) + ".sig"
}

func sigReadFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// sigRepoFile is a file of the repository (examples/keys/...), absolute.
func sigRepoFile(t *testing.T, rel string) string {
	t.Helper()
	p, err := filepath.Abs(filepath.Join("..", rel))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(p); err != nil {
		t.Fatal(err)
	}
	return p
}

func sigB64(t *testing.T, path string) string {
	return base64.StdEncoding.EncodeToString([]byte(sigReadFile(t, path)))
}

// sigWant checks that msg contains every one of wants.
func sigWant(t *testing.T, msg string, wants ...string) {
	t.Helper()
	for _, w := range wants {
		if !strings.Contains(msg, w) {
			t.Errorf("message lacks %q: %s", w, msg)
		}
	}
}

type sigSignature struct {
	KeyName, KeyID string
	Verified       bool
}

// sigCheckSignatures compares a result's signatures, in order, with want.
func sigCheckSignatures(t *testing.T, got []sigSignature, want ...sigSignature) {
	t.Helper()
	if len(got) != len(want) {
		t.Errorf("signatures %+v, want %+v", got, want)
		return
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("signature %d: %+v, want %+v", i, got[i], want[i])
		}
	}
}

func sigOf(res pullResult) []sigSignature {
	var out []sigSignature
	for _, s := range res.Signatures {
		out = append(out, sigSignature{s.KeyName, s.KeyID, s.Verified})
	}
	return out
}

// sigCheckPolicy checks the policy part of a pull's result.
func sigCheckPolicy(t *testing.T, res pullResult, scope string, types ...string) {
	t.Helper()
	if res.Policy.Scope != scope {
		t.Errorf("policy scope %q, want %q", res.Policy.Scope, scope)
	}
	if len(res.Policy.Requirements) != len(types) {
		t.Fatalf("requirements %+v, want %q", res.Policy.Requirements, types)
	}
	for i, r := range res.Policy.Requirements {
		if r.Type != types[i] || !r.OK {
			t.Errorf("requirement %d: %+v, want %s ok", i, r, types[i])
		}
	}
}

// sigHello checks the app/hello file of a smallImage bundle.
func sigHello(t *testing.T, res pullResult, want string) {
	t.Helper()
	got, err := os.ReadFile(filepath.Join(res.Rootfs, "app/hello"))
	if err != nil || string(got) != want {
		t.Errorf("app/hello = %q (%v), want %q", got, err, want)
	}
}

// checkResult is `guest-puller policy check --json`.
type checkResult struct {
	Image          string `json:"image"`
	ManifestDigest string `json:"manifestDigest"`
	Allowed        bool   `json:"allowed"`
	Scope          string `json:"scope"`
	Requirements   []struct {
		Type   string `json:"type"`
		OK     bool   `json:"ok"`
		Reason string `json:"reason"`
	} `json:"requirements"`
	Signatures []struct {
		KeyName  string `json:"keyName"`
		KeyID    string `json:"keyID"`
		Verified bool   `json:"verified"`
		Reason   string `json:"reason"`
	} `json:"signatures"`
}

// sigCheck runs `policy check --json` and wants exit code want.
func sigCheck(e *env, want int, image string, args ...string) checkResult {
	e.t.Helper()
	r := e.gp(append([]string{"policy", "check", image, "--json"}, args...)...)
	if r.Code != want {
		e.t.Fatalf("policy check %s: exit %d, want %d; stderr: %s", image, r.Code, want, r.Stderr)
	}
	var res checkResult
	if err := json.Unmarshal([]byte(r.Stdout), &res); err != nil {
		e.t.Fatalf("policy check --json output: %v\n%s", err, r.Stdout)
	}
	return res
}

// TestSigCosign: images signed with `cosign sign` (keys made by cosign
// generate-key-pair, and one imported from examples/keys), pulled under
// sigstoreSigned policies with the right key, a wrong key, no signature,
// keyPaths/keyDatas any-of, and again from the cache under a policy the
// image fails.
func TestSigCosign(t *testing.T) {
	reg := testutil.StartRegistry(t, testutil.RegistryOptions{})
	keyA, keyB := testutil.NewCosignKey(t), testutil.NewCosignKey(t)
	signer := testutil.ImportCosignKey(t, sigRepoFile(t, "examples/keys/signer.key"))

	signedRef, signedDigest := sigPush(t, reg, testutil.BuildImage(t, smallImage(t, "cosign signed")), "cosign/app:1", keyA)
	unsignedRef, _ := sigPush(t, reg, testutil.BuildImage(t, smallImage(t, "cosign unsigned")), "cosign/unsigned:1")
	exampleRef, _ := sigPush(t, reg, testutil.BuildImage(t, smallImage(t, "cosign example key")), "cosign/example:1", signer)
	// Stored as an OCI 1.1 referrer (the referrers tag schema on this
	// registry) instead of the .sig attachment tag.
	referrerRef, referrerDigest := sigPush(t, reg, testutil.BuildImage(t, smallImage(t, "cosign referrer")), "cosign/referrer:1")
	keyA.Sign(t, reg.Host+"/cosign/referrer@"+referrerDigest, "--registry-referrers-mode=oci-1-1")
	if resp, err := http.Get("http://" + reg.Host + "/v2/cosign/referrer/manifests/" + sigSigTag(referrerDigest)); err != nil || resp.StatusCode != http.StatusNotFound {
		t.Fatalf("cosign wrote an attachment tag in referrers mode (%v %v)", resp, err)
	} else {
		resp.Body.Close()
	}
	reg.RawManifest(t, "cosign/referrer", strings.Replace(referrerDigest, ":", "-", 1)) // the referrers tag schema
	revokedRef, revokedDigest := sigPush(t, reg, testutil.BuildImage(t, smallImage(t, "cosign revoked")), "cosign/revoked:1", keyA)
	// An index whose only signature is over the index digest.
	platformRef := reg.Push(t, testutil.BuildImage(t, smallImage(t, "cosign index")), "cosign/platform:1")
	indexRef := reg.Host + "/cosign/multi:1"
	indexDigest := pushIndex(t, reg, indexRef, map[string]string{"linux/" + runtime.GOARCH: platformRef})
	keyA.Sign(t, reg.Host+"/cosign/multi@"+indexDigest)

	e := newEnv(t)
	e.write("keys/a.pub", sigReadFile(t, keyA.Pub))
	e.write("keys/b.pub", sigReadFile(t, keyB.Pub))
	idA, idB := keyA.KeyID(t), keyB.KeyID(t)
	scope := reg.Host + "/cosign"
	policy := func(name string, req sigReq) string {
		return e.write(name, sigPolicy(t, map[string][]sigReq{scope: {req}}))
	}
	base := []string{"--insecure-registry", reg.Host}
	right := policy("right.json", sigstoreKey("keys/a.pub"))
	wrong := policy("wrong.json", sigstoreKey("keys/b.pub"))

	t.Run("right key", func(t *testing.T) {
		e := sigEnv(e, t)
		res := e.pull(signedRef, append(base, "--policy", right, "--container-id", "right")...)
		if res.ManifestDigest != signedDigest {
			t.Errorf("manifestDigest %s, want the signed %s", res.ManifestDigest, signedDigest)
		}
		sigCheckPolicy(t, res, scope, "sigstoreSigned")
		sigCheckSignatures(t, sigOf(res), sigSignature{"keys/a.pub", idA, true})
		sigHello(t, res, "cosign signed")
	})
	t.Run("wrong key", func(t *testing.T) {
		e := sigEnv(e, t)
		msg := e.pullFails(3, signedRef, append(base, "--policy", wrong)...)
		sigWant(t, msg, signedRef, `scope "`+scope+`"`, "sigstoreSigned")
	})
	t.Run("unsigned", func(t *testing.T) {
		e := sigEnv(e, t)
		msg := e.pullFails(3, unsignedRef, append(base, "--policy", right)...)
		sigWant(t, msg, unsignedRef, `scope "`+scope+`"`, "sigstoreSigned", "no signature")
	})
	t.Run("keyPaths any of", func(t *testing.T) {
		e := sigEnv(e, t)
		anyOf := policy("keypaths.json", sigReq{"type": "sigstoreSigned", "keyPaths": []string{"keys/b.pub", "keys/a.pub"}, "signedIdentity": sigMatchRepository})
		res := e.pull(signedRef, append(base, "--policy", anyOf, "--container-id", "keypaths")...)
		sigCheckPolicy(t, res, scope, "sigstoreSigned")
		sigCheckSignatures(t, sigOf(res), sigSignature{"keys/b.pub", idB, false}, sigSignature{"keys/a.pub", idA, true})

		noneOf := policy("keypaths-none.json", sigReq{"type": "sigstoreSigned", "keyPaths": []string{"keys/b.pub", signer.Pub}, "signedIdentity": sigMatchRepository})
		msg := e.pullFails(3, signedRef, append(base, "--policy", noneOf)...)
		sigWant(t, msg, signedRef, `scope "`+scope+`"`, "sigstoreSigned")
	})
	t.Run("keyDatas any of", func(t *testing.T) {
		e := sigEnv(e, t)
		anyOf := policy("keydatas.json", sigReq{"type": "sigstoreSigned", "keyDatas": []string{sigB64(t, keyB.Pub), sigB64(t, keyA.Pub)}, "signedIdentity": sigMatchRepository})
		res := e.pull(signedRef, append(base, "--policy", anyOf, "--container-id", "keydatas")...)
		sigCheckPolicy(t, res, scope, "sigstoreSigned")
		sigCheckSignatures(t, sigOf(res), sigSignature{"keyData[0]", idB, false}, sigSignature{"keyData[1]", idA, true})

		one := policy("keydata.json", sigReq{"type": "sigstoreSigned", "keyData": sigB64(t, keyA.Pub), "signedIdentity": sigMatchRepository})
		res = e.pull(signedRef, append(base, "--policy", one, "--container-id", "keydata")...)
		sigCheckSignatures(t, sigOf(res), sigSignature{"keyData[0]", idA, true})

		noneOf := policy("keydatas-none.json", sigReq{"type": "sigstoreSigned", "keyDatas": []string{sigB64(t, keyB.Pub), sigB64(t, signer.Pub)}, "signedIdentity": sigMatchRepository})
		e.pullFails(3, signedRef, append(base, "--policy", noneOf)...)
	})
	t.Run("examples key", func(t *testing.T) {
		// Signed with cosign using examples/keys/signer.key (imported):
		// the stand-in for skopeo --sign-by-sigstore-private-key, which
		// Debian's skopeo 1.9.3 has compiled out.
		e := sigEnv(e, t)
		pub := sigRepoFile(t, "examples/keys/signer.pub")
		pol := policy("example.json", sigstoreKey(pub))
		res := e.pull(exampleRef, append(base, "--policy", pol, "--container-id", "example")...)
		sigCheckSignatures(t, sigOf(res), sigSignature{pub, testutil.PEMKeyID(t, pub), true})
		sigHello(t, res, "cosign example key")
		e.pullFails(3, signedRef, append(base, "--policy", pol)...)
	})
	t.Run("pinned by digest", func(t *testing.T) {
		e := sigEnv(e, t)
		pinned := reg.Host + "/cosign/app@" + signedDigest
		res := e.pull(pinned, append(base, "--policy", right, "--container-id", "pinned")...)
		sigCheckSignatures(t, sigOf(res), sigSignature{"keys/a.pub", idA, true})
		// Without signedIdentity (matchRepoDigestOrExact) cosign's
		// repository-only identity is refused, tag or digest, as in
		// containers/image (a name-only identity matches nothing there).
		deflt := policy("default-identity.json", sigReq{"type": "sigstoreSigned", "keyPath": "keys/a.pub"})
		for _, ref := range []string{pinned, signedRef} {
			msg := e.pullFails(3, ref, append(base, "--policy", deflt)...)
			sigWant(t, msg, ref, "matchRepoDigestOrExact")
		}
	})
	t.Run("OCI 1.1 referrer", func(t *testing.T) {
		e := sigEnv(e, t)
		res := e.pull(referrerRef, append(base, "--policy", right, "--container-id", "referrer")...)
		sigCheckSignatures(t, sigOf(res), sigSignature{"keys/a.pub", idA, true})
		sigHello(t, res, "cosign referrer")
		e.pullFails(3, referrerRef, append(base, "--policy", wrong)...)
	})
	t.Run("signed index", func(t *testing.T) {
		e := sigEnv(e, t)
		res := e.pull(indexRef, append(base, "--policy", right, "--container-id", "index")...)
		if res.ManifestDigest == indexDigest {
			t.Errorf("manifestDigest is the index's, want the platform manifest's")
		}
		sigCheckSignatures(t, sigOf(res), sigSignature{"keys/a.pub", idA, true})
		sigHello(t, res, "cosign index")
		// The platform manifest alone, elsewhere, carries no signature.
		e.pullFails(3, platformRef, append(base, "--policy", right)...)
	})
	t.Run("attachments turned off", func(t *testing.T) {
		e := sigEnv(e, t)
		regD := filepath.Dir(e.write("regd-off/off.yaml", "docker:\n  "+scope+":\n    use-sigstore-attachments: false\n"))
		msg := e.pullFails(3, signedRef, append(base, "--policy", right, "--registries-d", regD)...)
		sigWant(t, msg, signedRef, "sigstoreSigned")
	})
	t.Run("signature removed after caching", func(t *testing.T) {
		e := sigEnv(e, t)
		e.pull(revokedRef, append(base, "--policy", right, "--container-id", "revoked-1")...)
		_, sigManifest := testutil.ParseManifest(t, reg.RawManifest(t, "cosign/revoked", sigSigTag(revokedDigest)))
		sigDeleteManifest(t, reg, "cosign/revoked", sigManifest)
		msg := e.pullFails(3, revokedRef, append(base, "--policy", right, "--container-id", "revoked-2")...)
		sigWant(t, msg, revokedRef, `scope "`+scope+`"`, "sigstoreSigned", "no signature")
	})
	t.Run("cached image under a policy it fails", func(t *testing.T) {
		e := sigEnv(e, t)
		first := e.pull(signedRef, append(base, "--policy", right, "--container-id", "cached-1")...)
		msg := e.pullFails(3, signedRef, append(base, "--policy", wrong, "--container-id", "cached-2")...)
		sigWant(t, msg, signedRef, `scope "`+scope+`"`, "sigstoreSigned")
		for _, b := range e.cacheLs().Bundles {
			if b.ID == "cached-2" {
				t.Errorf("a bundle was made for the refused pull: %+v", b)
			}
		}
		if _, err := os.Stat(first.Rootfs); err != nil {
			t.Errorf("the earlier bundle is gone: %v", err)
		}
	})
}

// TestSigPrivateRegistry: signatures of an image in a registry that needs
// credentials are read with the pull's credentials.
func TestSigPrivateRegistry(t *testing.T) {
	const user, pass = "signer", "S1gned-And-Sealed"
	reg := testutil.StartRegistry(t, testutil.RegistryOptions{User: user, Password: pass})
	key := testutil.NewCosignKey(t)
	ref := reg.Push(t, testutil.BuildImage(t, smallImage(t, "private signed")), "private/app:1")
	d := sigDigest(t, reg, "private/app:1")
	key.SignIn(t, reg, reg.Host+"/private/app@"+d)
	reg.RawManifest(t, "private/app", sigSigTag(d)) // the signature is there

	e := newEnv(t)
	e.write("keys/k.pub", sigReadFile(t, key.Pub))
	scope := reg.Host + "/private"
	pol := e.write("policy.json", sigPolicy(t, map[string][]sigReq{scope: {sigstoreKey("keys/k.pub")}}))
	res := e.pull(ref, "--policy", pol, "--insecure-registry", reg.Host, "--creds", user+":"+pass)
	sigCheckSignatures(t, sigOf(res), sigSignature{"keys/k.pub", key.KeyID(t), true})
	sigHello(t, res, "private signed")
	c := sigCheck(e, 0, ref, "--policy", pol, "--insecure-registry", reg.Host, "--creds", user+":"+pass)
	if !c.Allowed {
		t.Errorf("policy check: %+v", c)
	}
}

// TestSigAttachmentStoreFails: the registry serves the image but fails on
// its cosign attachment: the signature cannot be checked, so the image is
// refused (exit 3), never let through.
func TestSigAttachmentStoreFails(t *testing.T) {
	reg := testutil.StartRegistry(t, testutil.RegistryOptions{})
	key := testutil.NewCosignKey(t)
	_, d := sigPush(t, reg, testutil.BuildImage(t, smallImage(t, "attachment")), "att/app:1", key)
	target := &url.URL{Scheme: "http", Host: reg.Host}
	rp := httputil.NewSingleHostReverseProxy(target)
	var failed atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, "/manifests/"+sigSigTag(d)) {
			failed.Add(1)
			http.Error(w, "storage backend unavailable", http.StatusForbidden)
			return
		}
		rp.ServeHTTP(w, r)
	}))
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")

	e := newEnv(t)
	e.write("keys/k.pub", sigReadFile(t, key.Pub))
	pol := e.write("policy.json", sigPolicy(t, map[string][]sigReq{host + "/att": {sigstoreKey("keys/k.pub")}}))
	ref := host + "/att/app:1"
	msg := e.pullFails(3, ref, "--policy", pol, "--insecure-registry", host)
	sigWant(t, msg, ref, `scope "`+host+`/att"`, "sigstoreSigned", sigSigTag(d))
	if failed.Load() == 0 {
		t.Fatal("the attachment was never asked for")
	}
	c := sigCheck(e, 3, ref, "--policy", pol, "--insecure-registry", host)
	if len(c.Signatures) != 1 || c.Signatures[0].Verified || !strings.Contains(c.Signatures[0].Reason, "lookup failed") {
		t.Errorf("signatures %+v: want the key, not verified, lookup failed", c.Signatures)
	}
}

// TestSigPayloadBlob: a cosign signature's payload is a blob like any
// other and is read as layers are. A connection cut in the middle of it is
// resumed with a Range request, and the signed pull succeeds; a payload
// whose bytes do not match its digest (changed, or longer than its
// descriptor) is a bad signature store: a refusal (exit 3), not an
// integrity failure of the image.
func TestSigPayloadBlob(t *testing.T) {
	reg := testutil.StartRegistry(t, testutil.RegistryOptions{})
	key := testutil.NewCosignKey(t)
	// The proxy cuts the first GET of every blob half-way: the config and
	// the layers as well as the payload.
	cutting := testutil.StartProxy(t, reg.Host, testutil.ProxyOptions{DropFirst: true})
	reg.Push(t, testutil.BuildImage(t, smallImage(t, "payload")), "payload/app:1")
	d := sigDigest(t, reg, "payload/app:1")
	// Signed for the name it is pulled by, the proxy's.
	key.Sign(t, reg.Host+"/payload/app@"+d, "--sign-container-identity", cutting.Host+"/payload/app")
	sig, _ := testutil.ParseManifest(t, reg.RawManifest(t, "payload/app", sigSigTag(d)))
	if len(sig.Layers) != 1 {
		t.Fatalf("signature manifest has %d layers, want 1", len(sig.Layers))
	}
	payload := sig.Layers[0].Digest

	e := newEnv(t)
	e.write("keys/k.pub", sigReadFile(t, key.Pub))
	policy := func(host string) string {
		return e.write(host+".json", sigPolicy(t, map[string][]sigReq{host + "/payload": {sigstoreKey("keys/k.pub")}}))
	}

	t.Run("cut mid-body", func(t *testing.T) {
		e := sigEnv(e, t)
		res := e.pull(cutting.Host+"/payload/app:1", "--policy", policy(cutting.Host), "--insecure-registry", cutting.Host)
		sigCheckSignatures(t, sigOf(res), sigSignature{"keys/k.pub", key.KeyID(t), true})
		sigHello(t, res, "payload")
		if full, ranged := cutting.FullGets(payload), cutting.RangeGets(payload); full != 1 || ranged != 1 {
			t.Errorf("payload blob: %d full and %d ranged GETs, want the cut one and one resume", full, ranged)
		}
	})

	raw := reg.GetBlob(t, "payload/app", payload)
	for _, tc := range []struct {
		name, want string
		body       []byte
	}{
		{"changed", "content digest is", append(append([]byte{}, raw[:len(raw)-1]...), raw[len(raw)-1]^1)},
		{"longer", "more than the", append(append([]byte{}, raw...), '\n')},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rp := httputil.NewSingleHostReverseProxy(&url.URL{Scheme: "http", Host: reg.Host})
			var served atomic.Int32
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.Method == http.MethodGet && strings.HasSuffix(r.URL.Path, "/blobs/"+payload) {
					served.Add(1)
					w.Header().Set("Content-Length", fmt.Sprint(len(tc.body)))
					w.Write(tc.body)
					return
				}
				rp.ServeHTTP(w, r)
			}))
			defer srv.Close()
			host := strings.TrimPrefix(srv.URL, "http://")
			ref := host + "/payload/app:1"
			e := sigEnv(e, t)
			msg := e.pullFails(3, ref, "--policy", policy(host), "--insecure-registry", host)
			sigWant(t, msg, ref, "sigstoreSigned", "signature lookup failed", "blob "+payload, tc.want)
			if n := strings.Count(msg, "blob "+payload); n != 1 {
				t.Errorf("the payload blob is named %d times, want once: %s", n, msg)
			}
			if served.Load() == 0 {
				t.Fatal("the payload was never asked for")
			}
		})
	}
}

// TestSigMirror: an image pulled through a registries.conf mirror is
// decided on the name the user asked for, with the signatures stored next
// to the image at the mirror. A signature claiming the mirror's own name
// does not stand for the user's name.
func TestSigMirror(t *testing.T) {
	mirror := testutil.StartRegistry(t, testutil.RegistryOptions{})
	key := testutil.NewCosignKey(t)
	src := testutil.BuildImage(t, smallImage(t, "mirrored"))
	const asked = "registry.example.com/team/app"
	_, d := sigPush(t, mirror, src, "cache/app:1")
	key.Sign(t, mirror.Host+"/cache/app@"+d, "--sign-container-identity", asked)
	// Another image at the mirror, signed under the mirror's name.
	_, d2 := sigPush(t, mirror, testutil.BuildImage(t, smallImage(t, "mirror-named")), "cache/other:1")
	key.Sign(t, mirror.Host+"/cache/other@"+d2)

	e := newEnv(t)
	e.write("keys/k.pub", sigReadFile(t, key.Pub))
	conf := e.write("registries.conf", fmt.Sprintf(`
[[registry]]
prefix = "registry.example.com/team"
location = "%[1]s/team"
insecure = true

[[registry.mirror]]
location = "%[1]s/cache"
insecure = true
`, mirror.Host))
	scope := "registry.example.com/team"
	pol := e.write("policy.json", sigPolicy(t, map[string][]sigReq{scope: {sigstoreKey("keys/k.pub")}}))
	args := []string{"--policy", pol, "--registries-conf", conf}

	res := e.pull(asked+":1", append(args, "--container-id", "mirrored")...)
	if res.Image != asked+":1" || res.ManifestDigest != d {
		t.Errorf("image %s digest %s, want %s:1 %s", res.Image, res.ManifestDigest, asked, d)
	}
	sigCheckPolicy(t, res, scope, "sigstoreSigned")
	sigCheckSignatures(t, sigOf(res), sigSignature{"keys/k.pub", key.KeyID(t), true})
	sigHello(t, res, "mirrored")

	other := "registry.example.com/team/other:1"
	msg := e.pullFails(3, other, args...)
	sigWant(t, msg, other, `scope "`+scope+`"`, "sigstoreSigned", mirror.Host+"/cache/other")
}

// TestSigScopes: one policy with an exact-tag, a repository, a namespace
// and a host scope and a rejecting default; images in different repos and
// tags are each decided by their most specific scope.
func TestSigScopes(t *testing.T) {
	reg := testutil.StartRegistry(t, testutil.RegistryOptions{})
	other := testutil.StartRegistry(t, testutil.RegistryOptions{})
	keyA, keyB, keyC := testutil.NewCosignKey(t), testutil.NewCosignKey(t), testutil.NewCosignKey(t)

	v1 := testutil.BuildImage(t, smallImage(t, "scopes v1"))
	v1Ref, v1Digest := sigPush(t, reg, v1, "ns/app:v1", keyA)
	// The same manifest under another tag: signed by A too, since the
	// signature is per digest, but the exact-tag scope is not its own.
	againRef, againDigest := sigPush(t, reg, v1, "ns/app:v1-again")
	if againDigest != v1Digest {
		t.Fatalf("re-pushing the same layout changed its digest: %s vs %s", againDigest, v1Digest)
	}
	v2Ref, _ := sigPush(t, reg, testutil.BuildImage(t, smallImage(t, "scopes v2")), "ns/app:v2", keyB)
	nsRef, _ := sigPush(t, reg, testutil.BuildImage(t, smallImage(t, "scopes ns")), "ns/other:1", keyC)
	hostRef, _ := sigPush(t, reg, testutil.BuildImage(t, smallImage(t, "scopes host")), "elsewhere/x:1")
	defRef, _ := sigPush(t, other, v1, "ns/app:v1")

	e := newEnv(t)
	for name, k := range map[string]testutil.CosignKey{"a": keyA, "b": keyB, "c": keyC} {
		e.write("keys/"+name+".pub", sigReadFile(t, k.Pub))
	}
	h := reg.Host
	scopes := map[string][]sigReq{
		h + "/ns/app:v1": {sigstoreKey("keys/a.pub")},
		h + "/ns/app":    {sigstoreKey("keys/b.pub")},
		h + "/ns":        {sigstoreKey("keys/c.pub")},
		h:                {{"type": "insecureAcceptAnything"}},
	}
	pol := e.write("scopes.json", sigPolicy(t, scopes))
	args := []string{"--policy", pol, "--insecure-registry", reg.Host, "--insecure-registry", other.Host}

	for _, tc := range []struct {
		name, ref, scope, hello string
		req                     string
	}{
		{"exact tag", v1Ref, h + "/ns/app:v1", "scopes v1", "sigstoreSigned"},
		{"repository", v2Ref, h + "/ns/app", "scopes v2", "sigstoreSigned"},
		{"namespace", nsRef, h + "/ns", "scopes ns", "sigstoreSigned"},
		{"host", hostRef, h, "scopes host", "insecureAcceptAnything"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := sigEnv(e, t)
			res := e.pull(tc.ref, append(args, "--container-id", strings.ReplaceAll(tc.name, " ", "-"))...)
			sigCheckPolicy(t, res, tc.scope, tc.req)
			sigHello(t, res, tc.hello)
		})
	}
	t.Run("no signature requirement", func(t *testing.T) {
		// "signatures" is a list in both JSON outputs (DESIGN.md), empty
		// when the scope asks for none, never null.
		e := sigEnv(e, t)
		for _, cmd := range [][]string{
			{"pull", hostRef, "--json", "--quiet", "--container-id", "host-json"},
			{"policy", "check", hostRef, "--json"},
		} {
			r := e.gp(append(cmd, args...)...)
			if r.Code != 0 {
				t.Fatalf("%s: exit %d: %s", cmd[0], r.Code, r.Stderr)
			}
			var out map[string]json.RawMessage
			if err := json.Unmarshal([]byte(r.Stdout), &out); err != nil {
				t.Fatalf("%s --json: %v", cmd[0], err)
			}
			if got := string(out["signatures"]); got != "[]" {
				t.Errorf("%s --json: \"signatures\": %s, want []", cmd[0], got)
			}
		}
	})
	t.Run("same digest other tag", func(t *testing.T) {
		// Decided by the repository scope (key B), which A's signature
		// does not satisfy.
		e := sigEnv(e, t)
		msg := e.pullFails(3, againRef, args...)
		sigWant(t, msg, againRef, `scope "`+h+`/ns/app"`, "sigstoreSigned")
	})
	t.Run("default", func(t *testing.T) {
		e := sigEnv(e, t)
		msg := e.pullFails(3, defRef, args...)
		sigWant(t, msg, defRef, "global default", "reject")
	})
	t.Run("transport default", func(t *testing.T) {
		e := sigEnv(e, t)
		withEmpty := map[string][]sigReq{"": {{"type": "insecureAcceptAnything"}}}
		for k, v := range scopes {
			withEmpty[k] = v
		}
		pol := e.write("scopes-transport-default.json", sigPolicy(t, withEmpty))
		res := e.pull(defRef, "--policy", pol, "--insecure-registry", other.Host, "--container-id", "transport-default")
		sigCheckPolicy(t, res, "", "insecureAcceptAnything")
		// The more specific scopes still win over "".
		e.pullFails(3, againRef, "--policy", pol, "--insecure-registry", reg.Host)
	})
}

// TestSigThreshold: sigstoreThreshold over the three examples/keys release
// keys (imported into cosign) and one generated key, met and unmet, 3-of-3,
// and two threshold groups ANDed in one scope. The same image is pushed to
// one repository per set of signers; each repository's tags select scopes
// of different requirements.
func TestSigThreshold(t *testing.T) {
	reg := testutil.StartRegistry(t, testutil.RegistryOptions{})
	keys := map[string]testutil.CosignKey{}
	for _, n := range []string{"ci", "qa", "release"} {
		keys[n] = testutil.ImportCosignKey(t, sigRepoFile(t, "examples/keys/"+n+".key"))
	}
	keys["other"] = testutil.NewCosignKey(t)

	e := newEnv(t)
	src := testutil.BuildImage(t, smallImage(t, "threshold"))
	signers := map[string][]string{
		"ci-qa":   {"ci", "qa"},
		"ci":      {"ci"},
		"all":     {"ci", "qa", "release"},
		"release": {"release"},
		// One key signing twice counts once.
		"ci-twice": {"ci", "ci"},
	}
	tkey := func(n string) sigReq {
		if n == "other" { // inline, to cover keyData in threshold keys
			return sigReq{"name": n, "keyData": sigB64(t, keys[n].Pub)}
		}
		return sigReq{"name": n, "keyPath": sigRepoFile(t, "examples/keys/"+n+".pub")}
	}
	threshold := func(n int, names ...string) sigReq {
		var ks []sigReq
		for _, name := range names {
			ks = append(ks, tkey(name))
		}
		return sigReq{"type": "sigstoreThreshold", "threshold": n, "keys": ks, "signedIdentity": sigMatchRepository}
	}
	scopes := map[string][]sigReq{}
	for repo, names := range signers {
		var ks []testutil.CosignKey
		for _, n := range names {
			ks = append(ks, keys[n])
		}
		_, d := sigPush(t, reg, src, "thr/"+repo+":2of3")
		for i, k := range ks {
			// A distinct annotation each time, so that cosign keeps a
			// second signature by the same key instead of deduplicating.
			k.Sign(t, reg.Host+"/thr/"+repo+"@"+d, "-a", fmt.Sprintf("n=%d", i))
		}
		if m, _ := testutil.ParseManifest(t, reg.RawManifest(t, "thr/"+repo, sigSigTag(d))); len(m.Layers) != len(ks) {
			t.Fatalf("thr/%s has %d signatures, want %d", repo, len(m.Layers), len(ks))
		}
		for _, tag := range []string{"3of3", "and"} {
			reg.Push(t, src, "thr/"+repo+":"+tag)
		}
		p := reg.Host + "/thr/" + repo
		scopes[p+":2of3"] = []sigReq{threshold(2, "ci", "qa", "release")}
		scopes[p+":3of3"] = []sigReq{threshold(3, "ci", "qa", "release")}
		scopes[p+":and"] = []sigReq{threshold(2, "ci", "qa"), threshold(1, "release", "other")}
	}
	pol := e.write("threshold.json", sigPolicy(t, scopes))
	args := []string{"--policy", pol, "--insecure-registry", reg.Host}
	ids := map[string]string{}
	for n, k := range keys {
		ids[n] = k.KeyID(t)
	}

	for _, tc := range []struct {
		repo, tag string
		ok        bool
		// verdicts of each requirement, and the reason of the first
		verdicts []bool
		reason   string
	}{
		{"ci-qa", "2of3", true, []bool{true}, "2 of 3 keys signed (ci, qa), 2 needed"},
		{"ci", "2of3", false, []bool{false}, "1 of 3 keys signed (ci), 2 needed"},
		{"release", "2of3", false, []bool{false}, "1 of 3 keys signed (release), 2 needed"},
		{"all", "2of3", true, []bool{true}, "3 of 3 keys signed (ci, qa, release), 2 needed"},
		{"all", "3of3", true, []bool{true}, "3 of 3 keys signed (ci, qa, release), 3 needed"},
		{"ci-qa", "3of3", false, []bool{false}, "2 of 3 keys signed (ci, qa), 3 needed"},
		{"all", "and", true, []bool{true, true}, "2 of 2 keys signed (ci, qa), 2 needed"},
		{"ci-qa", "and", false, []bool{true, false}, "2 of 2 keys signed (ci, qa), 2 needed"},
		{"release", "and", false, []bool{false, true}, "0 of 2 keys signed, 2 needed"},
		{"ci", "and", false, []bool{false, false}, "1 of 2 keys signed (ci), 2 needed"},
		{"ci-twice", "2of3", false, []bool{false}, "1 of 3 keys signed (ci), 2 needed"},
	} {
		t.Run(tc.repo+":"+tc.tag, func(t *testing.T) {
			e := sigEnv(e, t)
			ref := reg.Host + "/thr/" + tc.repo + ":" + tc.tag
			want := 0
			if !tc.ok {
				want = 3
			}
			c := sigCheck(e, want, ref, args...)
			if c.Allowed != tc.ok || c.Scope != ref {
				t.Errorf("allowed %v scope %q, want %v %q", c.Allowed, c.Scope, tc.ok, ref)
			}
			if len(c.Requirements) != len(tc.verdicts) {
				t.Fatalf("requirements %+v, want %d", c.Requirements, len(tc.verdicts))
			}
			for i, r := range c.Requirements {
				if r.Type != "sigstoreThreshold" || r.OK != tc.verdicts[i] {
					t.Errorf("requirement %d: %+v, want sigstoreThreshold ok=%v", i, r, tc.verdicts[i])
				}
			}
			sigWant(t, c.Requirements[0].Reason, tc.reason)
			// Every listed key is reported, verified exactly when it signed.
			signed := map[string]bool{}
			for _, n := range signers[tc.repo] {
				signed[n] = true
			}
			for _, s := range c.Signatures {
				if s.Verified != signed[s.KeyName] || s.KeyID != ids[s.KeyName] {
					t.Errorf("signature %+v: want verified=%v keyID %s", s, signed[s.KeyName], ids[s.KeyName])
				}
			}
			if tc.ok {
				res := e.pull(ref, append(args, "--container-id", tc.repo+"-"+tc.tag)...)
				sigHello(t, res, "threshold")
				if len(res.Policy.Requirements) != len(tc.verdicts) {
					t.Errorf("pull reports requirements %+v", res.Policy.Requirements)
				}
			} else {
				msg := e.pullFails(3, ref, args...)
				sigWant(t, msg, ref, `scope "`+ref+`"`, "sigstoreThreshold")
			}
		})
	}
}

// TestSigIdentity: a signed image and its signature copied to another
// repository is refused under matchRepository and accepted under
// exactRepository naming the signed repository; a valid signature of
// another digest, put at this image's attachment tag, is refused.
func TestSigIdentity(t *testing.T) {
	reg := testutil.StartRegistry(t, testutil.RegistryOptions{})
	key := testutil.NewCosignKey(t)
	signedRef, d := sigPush(t, reg, testutil.BuildImage(t, smallImage(t, "identity")), "id/signed:1", key)
	sigCopy(t, reg, "id/signed:1", "id/copied:1")
	sigCopy(t, reg, "id/signed:"+sigSigTag(d), "id/copied:"+sigSigTag(d))
	copiedRef := reg.Host + "/id/copied:1"
	if got := sigDigest(t, reg, "id/copied:1"); got != d {
		t.Fatalf("the copy has digest %s, want %s", got, d)
	}

	// Two images of one repository: x is signed, y is not; x's signature
	// manifest is then copied to y's attachment tag.
	xRef, _ := sigPush(t, reg, testutil.BuildImage(t, smallImage(t, "x")), "id/same:x", key)
	yRef, yDigest := sigPush(t, reg, testutil.BuildImage(t, smallImage(t, "y")), "id/same:y")
	xDigest := sigDigest(t, reg, "id/same:x")
	sigCopy(t, reg, "id/same:"+sigSigTag(xDigest), "id/same:"+sigSigTag(yDigest))
	reg.RawManifest(t, "id/same", sigSigTag(yDigest)) // it is there

	e := newEnv(t)
	e.write("keys/k.pub", sigReadFile(t, key.Pub))
	scope := reg.Host + "/id"
	match := e.write("match.json", sigPolicy(t, map[string][]sigReq{scope: {sigstoreKey("keys/k.pub")}}))
	exact := func(name, repo string) string {
		return e.write(name, sigPolicy(t, map[string][]sigReq{scope: {{
			"type": "sigstoreSigned", "keyPath": "keys/k.pub",
			"signedIdentity": map[string]string{"type": "exactRepository", "dockerRepository": repo},
		}}}))
	}
	base := []string{"--insecure-registry", reg.Host}

	t.Run("matchRepository in the signed repository", func(t *testing.T) {
		e := sigEnv(e, t)
		e.pull(signedRef, append(base, "--policy", match, "--container-id", "signed")...)
	})
	t.Run("matchRepository in another repository", func(t *testing.T) {
		e := sigEnv(e, t)
		msg := e.pullFails(3, copiedRef, append(base, "--policy", match)...)
		sigWant(t, msg, copiedRef, `scope "`+scope+`"`, "sigstoreSigned", reg.Host+"/id/signed", "matchRepository")
	})
	t.Run("exactRepository naming the signed repository", func(t *testing.T) {
		e := sigEnv(e, t)
		res := e.pull(copiedRef, append(base, "--policy", exact("exact.json", reg.Host+"/id/signed"), "--container-id", "copied")...)
		sigCheckSignatures(t, sigOf(res), sigSignature{"keys/k.pub", key.KeyID(t), true})
		sigHello(t, res, "identity")
	})
	t.Run("exactRepository naming another repository", func(t *testing.T) {
		e := sigEnv(e, t)
		e.pullFails(3, copiedRef, append(base, "--policy", exact("exact-other.json", reg.Host+"/id/copied"))...)
	})
	t.Run("signature of another digest", func(t *testing.T) {
		e := sigEnv(e, t)
		e.pull(xRef, append(base, "--policy", match, "--container-id", "x")...)
		msg := e.pullFails(3, yRef, append(base, "--policy", match)...)
		sigWant(t, msg, yRef, `scope "`+scope+`"`, "sigstoreSigned")
		c := sigCheck(e, 3, yRef, append(base, "--policy", match)...)
		if len(c.Signatures) != 1 || c.Signatures[0].Verified {
			t.Errorf("signatures %+v: want the one key, not verified", c.Signatures)
		}
	})
}

// sigJWEKeys makes an RSA key pair for ocicrypt's jwe protocol.
func sigJWEKeys(t *testing.T) (pub, priv string) {
	t.Helper()
	testutil.Need(t, "openssl")
	dir := t.TempDir()
	priv, pub = filepath.Join(dir, "jwe.key"), filepath.Join(dir, "jwe.pub")
	testutil.Run(t, "openssl", "genrsa", "-out", priv, "2048")
	testutil.Run(t, "openssl", "rsa", "-in", priv, "-pubout", "-out", pub)
	return pub, priv
}

// sigEncrypt copies the layout src into a new layout with skopeo's jwe
// encryption (extra: --encrypt-layer ...) and returns it.
func sigEncrypt(t *testing.T, src, pub string, extra ...string) string {
	t.Helper()
	dst := "oci:" + filepath.Join(t.TempDir(), "enc") + ":img"
	args := append([]string{"copy", "--quiet", "--encryption-key", "jwe:" + pub}, extra...)
	testutil.Run(t, "skopeo", append(args, src, dst)...)
	return dst
}

// TestSigEncryptedMatrix: encrypted (all, explicit all, any), sigstoreSigned,
// both, and insecureAcceptAnything against plain, partly encrypted and
// fully encrypted images, signed and not. Allowed encrypted images are
// pulled with the decryption key and complete.
func TestSigEncryptedMatrix(t *testing.T) {
	reg := testutil.StartRegistry(t, testutil.RegistryOptions{})
	key := testutil.NewCosignKey(t)
	pub, priv := sigJWEKeys(t)
	src := testutil.BuildImage(t, smallImage(t, "matrix"))
	part := sigEncrypt(t, src, pub, "--encrypt-layer", "-1")
	full := sigEncrypt(t, src, pub)

	images := map[string]string{}
	for _, im := range []struct {
		repo, src string
		signed    bool
	}{
		{"plain", src, true},
		{"part", part, false},
		{"full", full, true},
		{"full-unsigned", full, false},
	} {
		var ks []testutil.CosignKey
		if im.signed {
			ks = append(ks, key)
		}
		images[im.repo], _ = sigPush(t, reg, im.src, "m/"+im.repo+":1", ks...)
	}
	for repo, want := range map[string][]string{
		"plain": {"", ""},
		"part":  {"", "+encrypted"},
		"full":  {"+encrypted", "+encrypted"},
	} {
		m, _ := testutil.ParseManifest(t, reg.RawManifest(t, "m/"+repo, "1"))
		for i, l := range m.Layers {
			if strings.HasSuffix(l.MediaType, "+encrypted") != (want[i] != "") {
				t.Fatalf("m/%s layer %d has media type %s", repo, i, l.MediaType)
			}
		}
	}

	e := newEnv(t)
	e.write("keys/k.pub", sigReadFile(t, key.Pub))
	scope := reg.Host + "/m"
	policies := map[string][]sigReq{
		"encrypted":     {{"type": "encrypted"}},
		"encrypted-all": {{"type": "encrypted", "layers": "all"}},
		"encrypted-any": {{"type": "encrypted", "layers": "any"}},
		"signed":        {sigstoreKey("keys/k.pub")},
		"signed+enc":    {sigstoreKey("keys/k.pub"), {"type": "encrypted"}},
		"accept":        {{"type": "insecureAcceptAnything"}},
	}
	polFiles := map[string]string{}
	for name, reqs := range policies {
		polFiles[name] = e.write(name+".json", sigPolicy(t, map[string][]sigReq{scope: reqs}))
	}
	// allowed[image][policy]; a refusal names the requirement that failed.
	type verdict struct {
		ok     bool
		failed string // requirement type and reason fragment of a refusal
	}
	notAll := verdict{false, "encrypted: layer 1 of 2 is not encrypted"}
	ok := verdict{ok: true}
	matrix := map[string]map[string]verdict{
		"plain": {
			"encrypted": notAll, "encrypted-all": notAll,
			"encrypted-any": {false, "encrypted: none of the 2 layers is encrypted"},
			"signed":        ok, "signed+enc": notAll, "accept": ok,
		},
		"part": {
			"encrypted": notAll, "encrypted-all": notAll, "encrypted-any": ok,
			"signed": {false, "sigstoreSigned"}, "signed+enc": {false, "sigstoreSigned"}, "accept": ok,
		},
		"full": {
			"encrypted": ok, "encrypted-all": ok, "encrypted-any": ok,
			"signed": ok, "signed+enc": ok, "accept": ok,
		},
		"full-unsigned": {
			"encrypted": ok, "encrypted-all": ok, "encrypted-any": ok,
			"signed": {false, "sigstoreSigned"}, "signed+enc": {false, "sigstoreSigned"}, "accept": ok,
		},
	}
	encrypted := map[string][]bool{"plain": {false, false}, "part": {false, true}, "full": {true, true}, "full-unsigned": {true, true}}
	for _, img := range []string{"plain", "part", "full", "full-unsigned"} {
		for _, pol := range []string{"encrypted", "encrypted-all", "encrypted-any", "signed", "signed+enc", "accept"} {
			v := matrix[img][pol]
			t.Run(img+"/"+pol, func(t *testing.T) {
				e := sigEnv(e, t)
				ref := images[img]
				args := []string{"--policy", polFiles[pol], "--insecure-registry", reg.Host, "--decryption-key", priv}
				if !v.ok {
					msg := e.pullFails(3, ref, args...)
					sigWant(t, msg, ref, `scope "`+scope+`"`, v.failed)
					return
				}
				res := e.pull(ref, append(args, "--container-id", img+"-"+strings.ReplaceAll(pol, "+", "-"))...)
				var types []string
				for _, r := range policies[pol] {
					types = append(types, r["type"].(string))
				}
				sigCheckPolicy(t, res, scope, types...)
				sigHello(t, res, "matrix")
				if got, _ := os.ReadFile(filepath.Join(res.Rootfs, "app/second")); string(got) != "layer two of matrix" {
					t.Errorf("app/second = %q", got)
				}
				for i, l := range res.Layers {
					if l.Encrypted != encrypted[img][i] {
						t.Errorf("layer %d reported encrypted=%v, want %v", i, l.Encrypted, encrypted[img][i])
					}
				}
			})
		}
	}
}

// TestSigEncryptedSwap: the policy requires encryption; the registry then
// serves a manifest whose layers are the plaintext twins of the encrypted
// ones (the plain image pushed under the same tag, then a rewritten
// manifest that keeps the encryption annotations). The pull is refused
// before any layer blob is fetched.
func TestSigEncryptedSwap(t *testing.T) {
	reg := testutil.StartRegistry(t, testutil.RegistryOptions{})
	proxy := testutil.StartProxy(t, reg.Host, testutil.ProxyOptions{})
	pub, priv := sigJWEKeys(t)
	src := testutil.BuildImage(t, smallImage(t, "swap"))
	full := sigEncrypt(t, src, pub)
	reg.Push(t, full, "swap/app:1")
	encRaw := reg.RawManifest(t, "swap/app", "1")
	enc, _ := testutil.ParseManifest(t, encRaw)
	// The plaintext twin, under another tag of the same repository so
	// that a manifest there may name its blobs.
	reg.Push(t, src, "swap/app:plain-twin")
	plain, _ := testutil.ParseManifest(t, reg.RawManifest(t, "swap/app", "plain-twin"))

	e := newEnv(t)
	ref := proxy.Host + "/swap/app:1"
	scope := proxy.Host + "/swap"
	pol := e.write("policy.json", sigPolicy(t, map[string][]sigReq{scope: {{"type": "encrypted"}}}))
	args := []string{"--policy", pol, "--insecure-registry", proxy.Host, "--decryption-key", priv}
	layerGets := func() int {
		n := 0
		for _, m := range []testutil.Manifest{enc, plain} {
			for _, l := range m.Layers {
				n += proxy.FullGets(l.Digest) + proxy.RangeGets(l.Digest)
			}
		}
		return n
	}

	// While the registry is honest the policy lets the image through;
	// deciding needs no decryption key.
	sigCheck(e, 0, ref, "--policy", pol, "--insecure-registry", proxy.Host)
	if n := layerGets(); n != 0 {
		t.Fatalf("policy check fetched %d layer blobs", n)
	}

	t.Run("plain image under the same tag", func(t *testing.T) {
		e := sigEnv(e, t)
		reg.Push(t, src, "swap/app:1")
		msg := e.pullFails(3, ref, args...)
		sigWant(t, msg, ref, `scope "`+scope+`"`, "encrypted", "not encrypted")
		if n := layerGets(); n != 0 {
			t.Errorf("%d layer blobs fetched before the refusal", n)
		}
	})
	t.Run("rewritten manifest", func(t *testing.T) {
		e := sigEnv(e, t)
		var m map[string]any
		if err := json.Unmarshal(encRaw, &m); err != nil {
			t.Fatal(err)
		}
		layers := m["layers"].([]any)
		for i, l := range layers {
			d := l.(map[string]any)
			// The encryption annotations stay: only the media type, digest
			// and size say what the blob is.
			d["mediaType"], d["digest"], d["size"] = plain.Layers[i].MediaType, plain.Layers[i].Digest, plain.Layers[i].Size
			if _, ok := d["annotations"]; !ok {
				t.Fatalf("encrypted layer %d has no annotations", i)
			}
		}
		raw, err := json.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		sigPutManifest(t, reg, "swap/app", "1", raw)
		msg := e.pullFails(3, ref, args...)
		sigWant(t, msg, ref, `scope "`+scope+`"`, "encrypted", "not encrypted")
		if n := layerGets(); n != 0 {
			t.Errorf("%d layer blobs fetched before the refusal", n)
		}
		if l := e.cacheLs(); len(l.Images) != 0 || len(l.Layers) != 0 {
			t.Errorf("the refused image left something in the cache: %+v", l)
		}
	})
}

// sigPutManifest stores raw (an OCI image manifest) as repo:tag.
func sigPutManifest(t *testing.T, reg *testutil.Registry, repo, tag string, raw []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPut, "http://"+reg.Host+"/v2/"+repo+"/manifests/"+tag, strings.NewReader(string(raw)))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("PUT manifest %s:%s: %s", repo, tag, resp.Status)
	}
}

// sigDeleteManifest deletes the manifest digest of repo (and so its tags).
func sigDeleteManifest(t *testing.T, reg *testutil.Registry, repo, digest string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodDelete, "http://"+reg.Host+"/v2/"+repo+"/manifests/"+digest, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("DELETE manifest %s@%s: %s", repo, digest, resp.Status)
	}
}

// TestSigGPGLookaside: images signed with `skopeo copy --sign-by` (a gpg key
// made here) whose signatures live in a lookaside store, read from a
// directory (file://) and over http on loopback, configured with
// --registries-d; wrong key, no signature, keyPaths any-of, signedBy and
// sigstoreSigned together, and a lookaside server that is down.
func TestSigGPGLookaside(t *testing.T) {
	reg := testutil.StartRegistry(t, testutil.RegistryOptions{})
	one := testutil.NewGPGKey(t, "Signer One <one@example.com>")
	two := testutil.NewGPGKey(t, "Signer Two <two@example.com>")
	cosignKey := testutil.NewCosignKey(t)
	sigs := t.TempDir()
	src := testutil.BuildImage(t, smallImage(t, "gpg signed"))
	one.SignCopy(t, src, "docker://"+reg.Host+"/gpg/app:1", sigs)
	ref := reg.Host + "/gpg/app:1"
	d := sigDigest(t, reg, "gpg/app:1")
	cosignKey.Sign(t, reg.Host+"/gpg/app@"+d)
	sigFile := filepath.Join(sigs, "gpg/app@"+strings.Replace(d, ":", "=", 1), "signature-1")
	if _, err := os.Stat(sigFile); err != nil {
		t.Fatalf("skopeo did not write the signature where expected: %v", err)
	}
	unsignedRef := reg.Push(t, testutil.BuildImage(t, smallImage(t, "gpg unsigned")), "gpg/unsigned:1")

	var httpGets atomic.Int32
	// Served below a path prefix, as a web server's lookaside usually is.
	files := http.StripPrefix("/sigstore", http.FileServer(http.Dir(sigs)))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		httpGets.Add(1)
		files.ServeHTTP(w, r)
	}))
	defer srv.Close()

	e := newEnv(t)
	e.write("keys/one.asc", sigReadFile(t, one.Pub))
	e.write("keys/two.asc", sigReadFile(t, two.Pub))
	e.write("keys/cosign.pub", sigReadFile(t, cosignKey.Pub))
	fileD := filepath.Dir(e.write("regd-file/lookaside.yaml", "default-docker:\n  lookaside: file://"+sigs+"\n"))
	// Scoped to the namespace, to go through registries.d's scope lookup.
	httpD := filepath.Dir(e.write("regd-http/lookaside.yaml", "docker:\n  "+reg.Host+"/gpg:\n    lookaside: "+srv.URL+"/sigstore\n"))
	scope := reg.Host + "/gpg"
	signedBy := func(field string, v any) sigReq {
		return sigReq{"type": "signedBy", "keyType": "GPGKeys", field: v}
	}
	policy := func(name string, reqs ...sigReq) string {
		return e.write(name, sigPolicy(t, map[string][]sigReq{scope: reqs}))
	}
	right := policy("one.json", signedBy("keyPath", "keys/one.asc"))
	wrong := policy("two.json", signedBy("keyPath", "keys/two.asc"))

	for _, tc := range []struct{ name, regD string }{{"file lookaside", fileD}, {"http lookaside", httpD}} {
		t.Run(tc.name, func(t *testing.T) {
			e := sigEnv(e, t)
			before := httpGets.Load()
			res := e.pull(ref, "--policy", right, "--insecure-registry", reg.Host, "--registries-d", tc.regD, "--container-id", strings.ReplaceAll(tc.name, " ", "-"))
			sigCheckPolicy(t, res, scope, "signedBy")
			sigCheckSignatures(t, sigOf(res), sigSignature{"keys/one.asc", one.Fingerprint, true})
			sigHello(t, res, "gpg signed")
			if read := httpGets.Load() > before; read != (tc.regD == httpD) {
				t.Errorf("lookaside server read: %v", read)
			}
		})
	}
	base := []string{"--insecure-registry", reg.Host, "--registries-d", httpD}
	t.Run("wrong key", func(t *testing.T) {
		e := sigEnv(e, t)
		msg := e.pullFails(3, ref, append(base, "--policy", wrong)...)
		sigWant(t, msg, ref, `scope "`+scope+`"`, "signedBy")
	})
	t.Run("unsigned", func(t *testing.T) {
		e := sigEnv(e, t)
		msg := e.pullFails(3, unsignedRef, append(base, "--policy", right)...)
		sigWant(t, msg, unsignedRef, `scope "`+scope+`"`, "signedBy", "no signature")
	})
	t.Run("keyPaths any of", func(t *testing.T) {
		e := sigEnv(e, t)
		pol := policy("any.json", signedBy("keyPaths", []string{"keys/two.asc", "keys/one.asc"}))
		res := e.pull(ref, append(base, "--policy", pol, "--container-id", "gpg-any")...)
		sigCheckSignatures(t, sigOf(res), sigSignature{"keys/two.asc", two.Fingerprint, false}, sigSignature{"keys/one.asc", one.Fingerprint, true})
	})
	t.Run("signedBy and sigstoreSigned", func(t *testing.T) {
		e := sigEnv(e, t)
		both := policy("both.json", signedBy("keyPath", "keys/one.asc"), sigstoreKey("keys/cosign.pub"))
		res := e.pull(ref, append(base, "--policy", both, "--container-id", "gpg-both")...)
		sigCheckPolicy(t, res, scope, "signedBy", "sigstoreSigned")
		sigCheckSignatures(t, sigOf(res), sigSignature{"keys/one.asc", one.Fingerprint, true}, sigSignature{"keys/cosign.pub", cosignKey.KeyID(t), true})
		wrongGPG := policy("both-wrong.json", signedBy("keyPath", "keys/two.asc"), sigstoreKey("keys/cosign.pub"))
		msg := e.pullFails(3, ref, append(base, "--policy", wrongGPG)...)
		sigWant(t, msg, "signedBy")
	})
	t.Run("keyring of two keys", func(t *testing.T) {
		// The keyID reported is the fingerprint of the key that signed.
		e := sigEnv(e, t)
		e.write("keys/both.asc", sigReadFile(t, two.Pub)+sigReadFile(t, one.Pub))
		pol := policy("keyring.json", signedBy("keyPath", "keys/both.asc"))
		res := e.pull(ref, append(base, "--policy", pol, "--container-id", "gpg-keyring")...)
		sigCheckSignatures(t, sigOf(res), sigSignature{"keys/both.asc", one.Fingerprint, true})
	})
	t.Run("identity", func(t *testing.T) {
		// skopeo signs host/gpg/app:1. By digest the repository must
		// match; by tag the tag must (matchRepoDigestOrExact).
		e := sigEnv(e, t)
		sigCheck(e, 0, reg.Host+"/gpg/app@"+d, append(base, "--policy", right)...)
		sigCopy(t, reg, "gpg/app:1", "gpg/app:2")
		c := sigCheck(e, 3, reg.Host+"/gpg/app:2", append(base, "--policy", right)...)
		if len(c.Requirements) != 1 || !strings.Contains(c.Requirements[0].Reason, reg.Host+"/gpg/app:1") {
			t.Errorf("requirements %+v: want the signed identity named", c.Requirements)
		}
	})
	t.Run("lookaside server down", func(t *testing.T) {
		e := sigEnv(e, t)
		srv.Close()
		msg := e.pullFails(3, ref, append(base, "--policy", right)...)
		sigWant(t, msg, ref, `scope "`+scope+`"`, "signedBy", "lookaside")
	})
}

// TestSigMalformedPolicies: a policy that cannot be read as written is a
// configuration error (exit 2, one clear line), never a laxer policy; and
// there is no policy by default.
func TestSigMalformedPolicies(t *testing.T) {
	e := newEnv(t)
	ci, qa := sigRepoFile(t, "examples/keys/ci.pub"), sigRepoFile(t, "examples/keys/qa.pub")
	threshold := func(n any) string {
		return fmt.Sprintf(`{"default":[{"type":"sigstoreThreshold","threshold":%s,"keys":[{"name":"ci","keyPath":%q},{"name":"qa","keyPath":%q}]}]}`, n, ci, qa)
	}
	// The image is never contacted: the policy is read first.
	const image = "127.0.0.1:9/never/contacted:1"
	for _, tc := range []struct {
		name, policy string
		want         []string
	}{
		{"broken JSON", `{"default":[{"type":"insecureAcceptAnything"}]`, []string{"JSON"}},
		{"unknown top-level field", `{"default":[{"type":"reject"}],"transport":{}}`, []string{`"transport"`}},
		{"unknown requirement field", `{"default":[{"type":"sigstoreSigned","keyPath":` + fmt.Sprintf("%q", ci) + `,"signedIdentty":{"type":"matchRepository"}}]}`, []string{`"signedIdentty"`}},
		{"unknown type", `{"default":[{"type":"signedByAnyone"}]}`, []string{`"signedByAnyone"`}},
		{"unknown identity type", `{"default":[{"type":"sigstoreSigned","keyPath":` + fmt.Sprintf("%q", ci) + `,"signedIdentity":{"type":"matchAnything"}}]}`, []string{`"matchAnything"`}},
		{"unknown encrypted layers", `{"default":[{"type":"encrypted","layers":"most"}]}`, []string{`"most"`}},
		{"threshold 0", threshold("0"), []string{"threshold"}},
		{"threshold above the keys", threshold("3"), []string{"threshold"}},
		{"threshold a string", threshold(`"2"`), []string{"threshold"}},
		{"no default", `{"transports":{"docker":{}}}`, []string{`"default"`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := sigEnv(e, t)
			pol := e.write(strings.ReplaceAll(tc.name, " ", "-")+".json", tc.policy)
			msg := e.pullFails(2, image, "--policy", pol)
			sigWant(t, msg, append([]string{pol}, tc.want...)...)
			r := e.gp("policy", "check", image, "--policy", pol)
			if r.Code != 2 || strings.TrimSpace(r.Stderr) != msg {
				t.Errorf("policy check: exit %d, stderr %q; want 2 and the pull's message", r.Code, r.Stderr)
			}
		})
	}
	t.Run("policy file missing", func(t *testing.T) {
		e := sigEnv(e, t)
		missing := filepath.Join(e.dir, "nonexistent.json")
		msg := e.pullFails(2, image, "--policy", missing)
		sigWant(t, msg, missing)
	})
	t.Run("no policy", func(t *testing.T) {
		e := sigEnv(e, t)
		// No config file either: --config names an empty one, so that a
		// machine's /etc/guest-puller/config.json cannot supply a policy.
		cfg := e.write("config.json", `{}`)
		msg := e.pullFails(2, image, "--config", cfg)
		sigWant(t, msg, "--policy")
		r := e.gp("policy", "check", image, "--config", cfg)
		if r.Code != 2 {
			t.Errorf("policy check without a policy: exit %d, want 2: %s", r.Code, r.Stderr)
		}
	})
}

// TestSigBrokenKeys: as in containers/image, a policy's keys are read when a
// scope that needs them decides. A key that is missing or is not a key
// refuses the images of its scope (exit 3, naming the key file and where the
// policy names it); every other scope pulls as usual.
func TestSigBrokenKeys(t *testing.T) {
	reg := testutil.StartRegistry(t, testutil.RegistryOptions{})
	key := testutil.NewCosignKey(t)
	src := testutil.BuildImage(t, smallImage(t, "broken keys"))
	signed := map[string]string{}
	for _, repo := range []string{"missing", "junk", "gpg", "fine"} {
		signed[repo], _ = sigPush(t, reg, src, repo+"/app:1", key)
	}
	e := newEnv(t)
	e.write("keys/junk.pub", "not a key\n")
	e.write("keys/ci.pub", sigReadFile(t, key.Pub))
	h := reg.Host
	pol := e.write("broken-keys.json", sigPolicy(t, map[string][]sigReq{
		h + "/missing": {sigstoreKey("keys/missing.pub")},
		h + "/junk":    {sigstoreKey("keys/junk.pub")},
		h + "/gpg":     {{"type": "signedBy", "keyType": "GPGKeys", "keyPath": "keys/missing.gpg"}},
		h + "/fine":    {sigstoreKey("keys/ci.pub")},
		// Accepted, as containers/image accepts it, but no image can
		// match it: policy check warns.
		"busybox": {{"type": "insecureAcceptAnything"}},
	}))
	args := []string{"--policy", pol, "--insecure-registry", h}
	for _, tc := range []struct {
		repo string
		want []string
	}{
		{"missing", []string{`key file "keys/missing.pub"`, `transports.docker["` + h + `/missing"][0].keyPath`, filepath.Join(e.dir, "keys/missing.pub"), "no such file"}},
		{"junk", []string{`key file "keys/junk.pub"`, "no PEM public key"}},
		{"gpg", []string{`key file "keys/missing.gpg"`, "no such file"}},
	} {
		t.Run(tc.repo, func(t *testing.T) {
			e := sigEnv(e, t)
			msg := e.pullFails(3, signed[tc.repo], args...)
			sigWant(t, msg, tc.want...)
			if strings.Contains(msg, errdefs.ErrInvalidConfig.Error()) {
				t.Errorf("a refusal (exit 3) that calls itself %q: %s", errdefs.ErrInvalidConfig, msg)
			}
			r := e.gp(append([]string{"policy", "check", signed[tc.repo]}, args...)...)
			if r.Code != 3 {
				t.Errorf("policy check: exit %d, want 3: %s", r.Code, r.Stderr)
			}
			sigWant(t, r.Stdout+r.Stderr, tc.want[0])
		})
	}
	t.Run("other scopes pull", func(t *testing.T) {
		e := sigEnv(e, t)
		res := e.pull(signed["fine"], append(args, "--container-id", "fine")...)
		sigCheckPolicy(t, res, h+"/fine", "sigstoreSigned")
		sigHello(t, res, "broken keys")
		r := e.gp(append([]string{"policy", "check", signed["fine"]}, args...)...)
		if r.Code != 0 {
			t.Fatalf("policy check: exit %d: %s", r.Code, r.Stderr)
		}
		sigWant(t, r.Stderr, `warning: policy `+pol+`: transports.docker["busybox"]: no image can match this scope`)
	})
}

// TestSigPolicyCheck: `guest-puller policy check` explains the chosen
// scope, each requirement's verdict and each signature found, in text and
// JSON, exits 0 when allowed and 3 when refused, and fetches no layer.
func TestSigPolicyCheck(t *testing.T) {
	reg := testutil.StartRegistry(t, testutil.RegistryOptions{})
	proxy := testutil.StartProxy(t, reg.Host, testutil.ProxyOptions{})
	keyA, keyB := testutil.NewCosignKey(t), testutil.NewCosignKey(t)
	// Signed through the proxy: the signed identity is the name users pull.
	_, d := sigPush(t, reg, testutil.BuildImage(t, smallImage(t, "check")), "pc/app:1")
	keyA.Sign(t, proxy.Host+"/pc/app@"+d)
	m, _ := testutil.ParseManifest(t, reg.RawManifest(t, "pc/app", "1"))
	ref := proxy.Host + "/pc/app:1"
	unsignedRef := proxy.Host + "/pc/unsigned:1"
	reg.Push(t, testutil.BuildImage(t, smallImage(t, "check unsigned")), "pc/unsigned:1")
	unsigned, _ := testutil.ParseManifest(t, reg.RawManifest(t, "pc/unsigned", "1"))

	e := newEnv(t)
	e.write("keys/a.pub", sigReadFile(t, keyA.Pub))
	e.write("keys/b.pub", sigReadFile(t, keyB.Pub))
	idA, idB := keyA.KeyID(t), keyB.KeyID(t)
	scope := proxy.Host + "/pc"
	anyOf := sigReq{"type": "sigstoreSigned", "keyPaths": []string{"keys/b.pub", "keys/a.pub"}, "signedIdentity": sigMatchRepository}
	allowed := e.write("allowed.json", sigPolicy(t, map[string][]sigReq{scope: {anyOf}}))
	refused := e.write("refused.json", sigPolicy(t, map[string][]sigReq{scope: {anyOf, {"type": "encrypted"}}}))
	args := func(pol string) []string { return []string{"--policy", pol, "--insecure-registry", proxy.Host} }

	t.Run("text allowed", func(t *testing.T) {
		e := sigEnv(e, t)
		r := e.gp(append([]string{"policy", "check", ref}, args(allowed)...)...)
		if r.Code != 0 {
			t.Fatalf("exit %d: %s", r.Code, r.Stderr)
		}
		sigWant(t, r.Stdout, ref, d, "scope:     "+scope+"\n", "decision:  allowed",
			"[ok  ] sigstoreSigned: signed by keys/a.pub",
			"signature key keys/a.pub ("+idA[:16]+"): verified",
			"signature key keys/b.pub ("+idB[:16]+"): not verified: no signature verifies with this key")
	})
	t.Run("text refused", func(t *testing.T) {
		e := sigEnv(e, t)
		r := e.gp(append([]string{"policy", "check", ref}, args(refused)...)...)
		if r.Code != 3 {
			t.Fatalf("exit %d, want 3: %s", r.Code, r.Stderr)
		}
		sigWant(t, r.Stdout, "scope:     "+scope+"\n", "decision:  refused",
			"[ok  ] sigstoreSigned", "[FAIL] encrypted: layer 1 of 2 is not encrypted",
			"signature key keys/a.pub ("+idA[:16]+"): verified")
		// The report is the answer; the refusal is not said again on
		// stderr.
		if r.Stderr != "" {
			t.Errorf("policy check repeats its refusal on stderr: %q", r.Stderr)
		}
	})
	t.Run("json allowed", func(t *testing.T) {
		e := sigEnv(e, t)
		c := sigCheck(e, 0, ref, args(allowed)...)
		if !c.Allowed || c.Scope != scope || c.ManifestDigest != d || c.Image != ref {
			t.Errorf("allowed %v scope %q digest %s image %s", c.Allowed, c.Scope, c.ManifestDigest, c.Image)
		}
		if len(c.Requirements) != 1 || !c.Requirements[0].OK || c.Requirements[0].Type != "sigstoreSigned" {
			t.Errorf("requirements %+v", c.Requirements)
		}
		if len(c.Signatures) != 2 {
			t.Fatalf("signatures %+v, want two keys", c.Signatures)
		}
		if s := c.Signatures[0]; s.KeyName != "keys/b.pub" || s.KeyID != idB || s.Verified || s.Reason == "" {
			t.Errorf("key b: %+v, want not verified with a reason", s)
		}
		if s := c.Signatures[1]; s.KeyName != "keys/a.pub" || s.KeyID != idA || !s.Verified {
			t.Errorf("key a: %+v, want verified", s)
		}
	})
	t.Run("json refused", func(t *testing.T) {
		e := sigEnv(e, t)
		c := sigCheck(e, 3, ref, args(refused)...)
		if c.Allowed || len(c.Requirements) != 2 || !c.Requirements[0].OK || c.Requirements[1].OK || c.Requirements[1].Type != "encrypted" {
			t.Errorf("allowed %v requirements %+v", c.Allowed, c.Requirements)
		}
		c = sigCheck(e, 3, unsignedRef, args(allowed)...)
		if c.Allowed || len(c.Signatures) != 2 || c.Signatures[0].Verified || c.Signatures[1].Verified {
			t.Errorf("unsigned image: allowed %v signatures %+v", c.Allowed, c.Signatures)
		}
	})
	for _, l := range append(m.Layers, unsigned.Layers...) {
		if n := proxy.FullGets(l.Digest) + proxy.RangeGets(l.Digest); n != 0 {
			t.Errorf("policy check fetched layer %s %d times", l.Digest, n)
		}
	}
	if _, err := os.Stat(e.cache); !os.IsNotExist(err) {
		t.Errorf("policy check made the cache directory (%v)", err)
	}
}
