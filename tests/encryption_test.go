package tests

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"syscall"
	"testing"

	"github.com/opencontainers/go-digest"
	ispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/guest-puller/guest-puller/internal/testutil"
)

// Encrypted images end to end (issue 4): images encrypted by the real
// skopeo (ocicrypt: JWE with RSA and EC keys, PKCS7, several recipients,
// one layer only, zstd), pushed to a real registry and pulled by the
// guest-puller binary with --decryption-key; the bundles are compared with
// the plaintext pull of the same image, entry by entry. Without the key
// nothing is fetched (exit 4); forged ciphertext or configs fail with
// exit 5 and leave nothing in the cache.

const (
	encKeysAnnotation = "org.opencontainers.image.enc.keys."
	ociLayer          = "application/vnd.oci.image.layer.v1.tar+"
)

// encKeys are the key pairs of the encryption tests.
type encKeys struct {
	rsa       testutil.KeyPair // JWE and PKCS7 recipient
	ec        testutil.KeyPair // JWE recipient
	protected testutil.KeyPair // password-protected RSA key
	other     testutil.KeyPair // a valid key that is no recipient of anything
}

func newEncKeys(t *testing.T) encKeys {
	t.Helper()
	dir := t.TempDir()
	return encKeys{
		rsa:       testutil.RSAKey(t, dir, "rsa", ""),
		ec:        testutil.ECKey(t, dir, "ec"),
		protected: testutil.RSAKey(t, dir, "protected", "S3cret-pass:with:colons"),
		other:     testutil.RSAKey(t, dir, "other", ""),
	}
}

// secrets is what must never be printed: every private key and password.
func (k encKeys) secrets(t *testing.T) []string {
	var s []string
	for _, kp := range []testutil.KeyPair{k.rsa, k.ec, k.protected, k.other} {
		s = append(s, kp.Secrets(t)...)
	}
	return s
}

func assertNoSecrets(t *testing.T, what, out string, secrets []string) {
	t.Helper()
	for _, s := range secrets {
		if strings.Contains(out, s) {
			t.Errorf("%s contains secret material %q:\n%s", what, s, out)
		}
	}
	if strings.Contains(out, "PRIVATE KEY") {
		t.Errorf("%s mentions a PEM private key:\n%s", what, out)
	}
}

// pullSecret is env.pull without --quiet (so that progress output is
// checked too) that also asserts no secret appears in stdout or stderr.
func (e *env) pullSecret(secrets []string, image string, args ...string) pullResult {
	e.t.Helper()
	r := e.gp(append([]string{"pull", image, "--json"}, args...)...)
	assertNoSecrets(e.t, "pull output", r.Stdout+r.Stderr, secrets)
	if r.Code != 0 {
		e.t.Fatalf("pull %s: exit %d: %s", image, r.Code, r.Stderr)
	}
	var res pullResult
	if err := json.Unmarshal([]byte(r.Stdout), &res); err != nil {
		e.t.Fatalf("pull --json output: %v\n%s", err, r.Stdout)
	}
	return res
}

// pullFailsSecret is env.pullFails that also asserts the message holds no
// secret.
func (e *env) pullFailsSecret(secrets []string, code int, image string, args ...string) string {
	e.t.Helper()
	msg := e.pullFails(code, image, args...)
	assertNoSecrets(e.t, "error message", msg, secrets)
	return msg
}

// encImageSpec is richImage (whiteouts, opaque dirs, hard and symbolic
// links, a device, setuid, owners) with a fourth layer of 2 MiB of poorly
// compressible data and a fifth of 4 MiB of text, so that decryption
// streams across many chunks and a forged byte lands in the middle of a
// long ciphertext.
func encImageSpec(t *testing.T) testutil.ImageSpec {
	spec := richImage(t)
	spec.Layers = append(spec.Layers, testutil.Tar(t,
		testutil.Dir("blob/", 0o750),
		testutil.Entry{Name: "blob/big", Size: 2 << 20, Mode: 0o640, UID: 1234, GID: 2345},
	), testutil.Tar(t, testutil.File("text", compressibleText(), 0o644)))
	return spec
}

// zstdLayout recompresses the image src with zstd into a new OCI layout,
// through an uncompressed dir: copy (skopeo would otherwise keep gzip).
func zstdLayout(t *testing.T, src string) string {
	t.Helper()
	dirCopy := filepath.Join(t.TempDir(), "dir")
	testutil.Run(t, "skopeo", "copy", "--quiet", "--dest-decompress", src, "dir:"+dirCopy)
	layout := filepath.Join(t.TempDir(), "zstd")
	testutil.Run(t, "skopeo", "copy", "--quiet", "--dest-compress-format", "zstd", "dir:"+dirCopy, "oci:"+layout+":img")
	return "oci:" + layout + ":img"
}

// proxied is ref with the registry's host replaced by the proxy's.
func proxied(ref string, reg *testutil.Registry, p *testutil.Proxy) string {
	return strings.Replace(ref, reg.Host, p.Host, 1)
}

// layerGets counts the GETs of the manifest's layer blobs through p.
func layerGets(p *testutil.Proxy, m testutil.Manifest) int {
	n := 0
	for _, l := range m.Layers {
		n += p.FullGets(l.Digest) + p.RangeGets(l.Digest)
	}
	return n
}

// node is what a user can see of one rootfs entry.
type node struct {
	Mode       uint32 // type and permission bits, setuid/setgid/sticky
	UID, GID   uint32
	Size       int64
	SHA256     string // regular files
	Link       string // symlink target
	Rdev       uint64 // devices
	HardlinkOf string // the first path (sorted) sharing this inode
}

// snapshotTree walks root and describes every entry below it.
func snapshotTree(t *testing.T, root string) map[string]node {
	t.Helper()
	out := map[string]node{}
	inodes := map[uint64][]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		st := fi.Sys().(*syscall.Stat_t)
		n := node{Mode: st.Mode, UID: st.Uid, GID: st.Gid}
		switch st.Mode & syscall.S_IFMT {
		case syscall.S_IFREG:
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			n.Size = int64(len(data))
			n.SHA256 = fmt.Sprintf("%x", sha256.Sum256(data))
			if st.Nlink > 1 {
				inodes[st.Ino] = append(inodes[st.Ino], rel)
			}
		case syscall.S_IFLNK:
			if n.Link, err = os.Readlink(p); err != nil {
				return err
			}
		case syscall.S_IFCHR, syscall.S_IFBLK:
			n.Rdev = st.Rdev
		}
		out[rel] = n
		return nil
	})
	if err != nil {
		t.Fatalf("walk %s: %v", root, err)
	}
	for _, paths := range inodes {
		if len(paths) < 2 {
			continue
		}
		sort.Strings(paths)
		for _, p := range paths[1:] {
			n := out[p]
			n.HardlinkOf = paths[0]
			out[p] = n
		}
	}
	return out
}

// compareTrees reports every entry that differs between got and want.
func compareTrees(t *testing.T, got, want map[string]node) {
	t.Helper()
	var diffs []string
	for p, w := range want {
		g, ok := got[p]
		switch {
		case !ok:
			diffs = append(diffs, "missing "+p)
		case g != w:
			diffs = append(diffs, fmt.Sprintf("%s: %+v, plaintext pull has %+v", p, g, w))
		}
	}
	for p := range got {
		if _, ok := want[p]; !ok {
			diffs = append(diffs, "extra "+p)
		}
	}
	sort.Strings(diffs)
	if len(diffs) > 0 {
		t.Errorf("rootfs differs from the plaintext pull in %d entries:\n  %s", len(diffs), strings.Join(diffs, "\n  "))
	}
	if len(want) < 10 {
		t.Fatalf("the plaintext rootfs has only %d entries: the comparison proves little", len(want))
	}
}

// encWorld is a registry with a proxy that counts blob GETs, and the
// plaintext pull of the test image from it.
type encWorld struct {
	reg   *testutil.Registry
	proxy *testutil.Proxy
	plain pullResult
	tree  map[string]node
}

func newEncWorld(t *testing.T, src, repoTag string) *encWorld {
	t.Helper()
	w := &encWorld{reg: testutil.StartRegistry(t, testutil.RegistryOptions{})}
	w.proxy = testutil.StartProxy(t, w.reg.Host, testutil.ProxyOptions{})
	ref := proxied(w.reg.Push(t, src, repoTag), w.reg, w.proxy)
	e := newEnv(t)
	w.plain = e.pull(ref, "--policy", e.write("policy.json", acceptAll), "--insecure-registry", w.proxy.Host)
	for _, l := range w.plain.Layers {
		if l.Encrypted {
			t.Fatalf("plaintext image layer %s reported encrypted", l.Digest)
		}
	}
	w.tree = snapshotTree(t, w.plain.Rootfs)
	return w
}

// TestEncryptedImages encrypts one image every way skopeo can and pulls
// each with its key(s), comparing the bundle with the plaintext pull; the
// same image without a key or with a wrong one fails before any layer is
// fetched.
func TestEncryptedImages(t *testing.T) {
	testutil.Need(t, "skopeo", "umoci", "openssl")
	k := newEncKeys(t)
	secrets := k.secrets(t)
	src := testutil.BuildImage(t, encImageSpec(t))
	gz := newEncWorld(t, src, "enc/plain:1")
	// zstd in a registry of its own: skopeo would otherwise reuse the gzip
	// blobs it knows the first registry holds for the same diff_ids.
	zsrc := zstdLayout(t, src)
	zs := newEncWorld(t, zsrc, "enc/plain-zstd:1")
	if len(zs.plain.Layers) != len(gz.plain.Layers) {
		t.Fatalf("the zstd image has %d layers, the gzip one %d", len(zs.plain.Layers), len(gz.plain.Layers))
	}
	for i, z := range zs.plain.Layers {
		if g := gz.plain.Layers[i]; z.DiffID != g.DiffID || z.MediaType != ociLayer+"zstd" {
			t.Fatalf("zstd layer %d is not gzip layer %d recompressed: %+v vs %+v", i, i, z, g)
		}
	}

	all := []bool{true, true, true, true, true}
	type keySet struct {
		name string
		keys []string
	}
	for _, tc := range []struct {
		name        string
		w           *encWorld
		src         string
		encrypt     []string
		schemes     []string // recipients' annotation names on encrypted layers
		compression string
		encrypted   []bool
		keys        []keySet // each set alone decrypts the image
		wrong       []string // no recipient of the image
	}{{
		name:        "jwe-rsa",
		w:           gz,
		src:         src,
		encrypt:     []string{"--encryption-key", "jwe:" + k.rsa.Public},
		schemes:     []string{"jwe"},
		compression: "gzip",
		encrypted:   all,
		keys:        []keySet{{"rsa", []string{k.rsa.Private}}},
		wrong:       []string{k.other.Private},
	}, {
		name:        "jwe-ec",
		w:           gz,
		src:         src,
		encrypt:     []string{"--encryption-key", "jwe:" + k.ec.Public},
		schemes:     []string{"jwe"},
		compression: "gzip",
		encrypted:   all,
		keys:        []keySet{{"ec", []string{k.ec.Private}}},
		wrong:       []string{k.rsa.Private},
	}, {
		name:        "pkcs7",
		w:           gz,
		src:         src,
		encrypt:     []string{"--encryption-key", "pkcs7:" + k.rsa.Cert},
		schemes:     []string{"pkcs7"},
		compression: "gzip",
		encrypted:   all,
		keys:        []keySet{{"rsa key and certificate", []string{k.rsa.Private, k.rsa.Cert}}},
		wrong:       []string{k.other.Private, k.other.Cert},
	}, {
		name:        "two-recipients",
		w:           gz,
		src:         src,
		encrypt:     []string{"--encryption-key", "jwe:" + k.rsa.Public, "--encryption-key", "jwe:" + k.ec.Public},
		schemes:     []string{"jwe"},
		compression: "gzip",
		encrypted:   all,
		keys:        []keySet{{"rsa alone", []string{k.rsa.Private}}, {"ec alone", []string{k.ec.Private}}},
		wrong:       []string{k.other.Private},
	}, {
		// A plaintext base under an encrypted top layer, in one pull.
		name:        "top-layer-only",
		w:           gz,
		src:         src,
		encrypt:     []string{"--encryption-key", "jwe:" + k.rsa.Public, "--encrypt-layer", "-1"},
		schemes:     []string{"jwe"},
		compression: "gzip",
		encrypted:   []bool{false, false, false, false, true},
		keys:        []keySet{{"rsa", []string{k.rsa.Private}}},
		wrong:       []string{k.ec.Private},
	}, {
		name:        "zstd",
		w:           zs,
		src:         zsrc,
		encrypt:     []string{"--encryption-key", "jwe:" + k.ec.Public},
		schemes:     []string{"jwe"},
		compression: "zstd",
		encrypted:   all,
		keys:        []keySet{{"ec", []string{k.ec.Private}}},
		wrong:       []string{k.other.Private},
	}, {
		name:        "password-protected-key",
		w:           gz,
		src:         src,
		encrypt:     []string{"--encryption-key", "jwe:" + k.protected.Public},
		schemes:     []string{"jwe"},
		compression: "gzip",
		encrypted:   all,
		keys: []keySet{
			{"PATH:PASSWORD", []string{k.protected.DecryptionKey()}},
			{"PATH:pass=PASSWORD", []string{k.protected.Private + ":pass=" + k.protected.Password}},
		},
		wrong: []string{k.other.Private},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			w := tc.w
			repo := "enc/" + tc.name
			ref := proxied(w.reg.Push(t, tc.src, repo+":1", tc.encrypt...), w.reg, w.proxy)
			m, mdigest := testutil.ParseManifest(t, w.reg.RawManifest(t, repo, "1"))
			if len(m.Layers) != len(tc.encrypted) {
				t.Fatalf("skopeo wrote %d layers, want %d", len(m.Layers), len(tc.encrypted))
			}
			firstEncrypted := ""
			for i, l := range m.Layers {
				want := ociLayer + tc.compression
				if tc.encrypted[i] {
					want += "+encrypted"
					if firstEncrypted == "" {
						firstEncrypted = l.Digest
					}
					for _, s := range tc.schemes {
						if l.Annotations[encKeysAnnotation+s] == "" {
							t.Fatalf("layer %d has no %s recipients: %v", i, s, l.Annotations)
						}
					}
				} else if l.Digest != w.plain.Layers[i].Digest {
					t.Fatalf("unencrypted layer %d is %s, not the plaintext image's %s", i, l.Digest, w.plain.Layers[i].Digest)
				}
				if l.MediaType != want {
					t.Fatalf("skopeo wrote layer %d as %s, want %s", i, l.MediaType, want)
				}
			}

			for _, ks := range tc.keys {
				t.Run("decrypt with "+ks.name, func(t *testing.T) {
					e := newEnv(t)
					args := []string{"--policy", e.write("policy.json", acceptAll), "--insecure-registry", w.proxy.Host}
					for _, key := range ks.keys {
						args = append(args, "--decryption-key", key)
					}
					before := layerGets(w.proxy, m)
					res := e.pullSecret(secrets, ref, args...)
					if got := layerGets(w.proxy, m) - before; got != len(m.Layers) {
						t.Errorf("%d layer blob GETs, want %d (each layer once)", got, len(m.Layers))
					}
					if res.ManifestDigest != mdigest {
						t.Errorf("manifestDigest %s, registry has %s", res.ManifestDigest, mdigest)
					}
					if len(res.Layers) != len(m.Layers) {
						t.Fatalf("--json lists %d layers, want %d", len(res.Layers), len(m.Layers))
					}
					for i, l := range res.Layers {
						if l.Digest != m.Layers[i].Digest || l.MediaType != m.Layers[i].MediaType ||
							l.Encrypted != tc.encrypted[i] || l.Cached || l.DiffID != w.plain.Layers[i].DiffID {
							t.Errorf("--json layer %d = %+v; want digest %s, media type %s, encrypted %v, not cached, diffID %s",
								i, l, m.Layers[i].Digest, m.Layers[i].MediaType, tc.encrypted[i], w.plain.Layers[i].DiffID)
						}
					}
					compareTrees(t, snapshotTree(t, res.Rootfs), w.tree)
					checkRichBundle(t, res)
				})
			}

			noKey := func(t *testing.T, keys ...string) {
				e := newEnv(t)
				args := []string{"--policy", e.write("policy.json", acceptAll), "--insecure-registry", w.proxy.Host}
				for _, key := range keys {
					args = append(args, "--decryption-key", key)
				}
				before := layerGets(w.proxy, m)
				msg := e.pullFailsSecret(secrets, 4, ref, args...)
				if !strings.Contains(msg, repo) || !strings.Contains(msg, firstEncrypted) {
					t.Errorf("error does not name the image %s and the layer %s: %s", repo, firstEncrypted, msg)
				}
				if got := layerGets(w.proxy, m) - before; got != 0 {
					t.Errorf("%d layer blobs fetched for an image that cannot be decrypted, want none", got)
				}
				if l := e.cacheLs(); len(l.Images)+len(l.Layers)+len(l.Bundles) != 0 {
					t.Errorf("the cache is not empty after the refused pull: %+v", l)
				}
			}
			t.Run("no key", func(t *testing.T) { noKey(t) })
			t.Run("wrong key", func(t *testing.T) { noKey(t, tc.wrong...) })
		})
	}
}

// forgeManifest stores a copy of m, changed by edit, as repo:tag and
// returns the reference.
func forgeManifest(t *testing.T, reg *testutil.Registry, repo, tag string, m ispec.Manifest, edit func(*ispec.Manifest)) string {
	t.Helper()
	raw, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	var c ispec.Manifest
	if err := json.Unmarshal(raw, &c); err != nil {
		t.Fatal(err)
	}
	edit(&c)
	if raw, err = json.Marshal(c); err != nil {
		t.Fatal(err)
	}
	reg.PutManifest(t, repo, tag, ispec.MediaTypeImageManifest, raw)
	return reg.Host + "/" + repo + ":" + tag
}

func cachedDiffIDs(l cacheListing) []string {
	var ids []string
	for _, x := range l.Layers {
		ids = append(ids, x.DiffID)
	}
	return ids
}

// TestEncryptedForgeries: ciphertext altered and re-uploaded under its new
// digest (so that the digest checks pass) fails the HMAC; a config whose
// diff_id does not match the decrypted layer fails the diff_id check. Both
// are exit 5 and leave neither the image nor that layer in the cache.
func TestEncryptedForgeries(t *testing.T) {
	testutil.Need(t, "skopeo", "umoci", "openssl")
	key := testutil.RSAKey(t, t.TempDir(), "forge", "")
	secrets := key.Secrets(t)
	reg := testutil.StartRegistry(t, testutil.RegistryOptions{})
	const repo = "forge/app"
	honestRef := reg.Push(t, testutil.BuildImage(t, encImageSpec(t)), repo+":1", "--encryption-key", "jwe:"+key.Public)
	var m ispec.Manifest
	if err := json.Unmarshal(reg.RawManifest(t, repo, "1"), &m); err != nil {
		t.Fatal(err)
	}
	// The honest image pulls: what fails below fails for the forgery.
	e0 := newEnv(t)
	honest := e0.pullSecret(secrets, honestRef, "--policy", e0.write("policy.json", acceptAll), "--insecure-registry", reg.Host,
		"--decryption-key", key.Private)
	for i, l := range honest.Layers {
		if !l.Encrypted {
			t.Fatalf("honest layer %d not encrypted", i)
		}
	}

	// A small layer, the 2 MiB one of poorly compressible data, and the
	// one of text that compresses well.
	for _, i := range []int{0, 3, 4} {
		t.Run(fmt.Sprintf("ciphertext byte flipped in layer %d", i), func(t *testing.T) {
			blob := reg.GetBlob(t, repo, m.Layers[i].Digest.String())
			blob[len(blob)/2] ^= 0x01
			forged := reg.UploadBlob(t, repo, blob)
			ref := forgeManifest(t, reg, repo, fmt.Sprintf("hmac-%d", i), m, func(f *ispec.Manifest) {
				f.Layers[i].Digest = digest.Digest(forged)
			})
			e := newEnv(t)
			msg := e.pullFailsSecret(secrets, 5, ref, "--policy", e.write("policy.json", acceptAll),
				"--insecure-registry", reg.Host, "--decryption-key", key.Private)
			if !strings.Contains(msg, repo) || !strings.Contains(msg, forged) {
				t.Errorf("error does not name the image and the forged layer %s: %s", forged, msg)
			}
			l := e.cacheLs()
			if len(l.Images) != 0 {
				t.Errorf("image recorded after a forged layer: %+v", l.Images)
			}
			if slices.Contains(cachedDiffIDs(l), honest.Layers[i].DiffID) {
				t.Errorf("the forged layer (diff_id %s) was committed to the cache", honest.Layers[i].DiffID)
			}
			assertNoStaging(t, e.cache)
		})
	}

	t.Run("config diff_id does not match", func(t *testing.T) {
		const i = 3
		var cfg map[string]any
		if err := json.Unmarshal(reg.GetBlob(t, repo, m.Config.Digest.String()), &cfg); err != nil {
			t.Fatal(err)
		}
		fake := fmt.Sprintf("sha256:%x", sha256.Sum256([]byte("not the layer")))
		diffIDs := cfg["rootfs"].(map[string]any)["diff_ids"].([]any)
		if diffIDs[i] != honest.Layers[i].DiffID {
			t.Fatalf("config diff_id %d is %v, the pull reported %s", i, diffIDs[i], honest.Layers[i].DiffID)
		}
		diffIDs[i] = fake
		raw, err := json.Marshal(cfg)
		if err != nil {
			t.Fatal(err)
		}
		cfgDigest := reg.UploadBlob(t, repo, raw)
		ref := forgeManifest(t, reg, repo, "diffid", m, func(f *ispec.Manifest) {
			f.Config.Digest = digest.Digest(cfgDigest)
			f.Config.Size = int64(len(raw))
		})
		e := newEnv(t)
		msg := e.pullFailsSecret(secrets, 5, ref, "--policy", e.write("policy.json", acceptAll),
			"--insecure-registry", reg.Host, "--decryption-key", key.Private)
		if !strings.Contains(msg, repo) || !strings.Contains(msg, m.Layers[i].Digest.String()) {
			t.Errorf("error does not name the image and the layer %s: %s", m.Layers[i].Digest, msg)
		}
		l := e.cacheLs()
		if len(l.Images) != 0 {
			t.Errorf("image recorded after a diff_id mismatch: %+v", l.Images)
		}
		if ids := cachedDiffIDs(l); slices.Contains(ids, fake) || slices.Contains(ids, honest.Layers[i].DiffID) {
			t.Errorf("the mismatching layer was committed to the cache: %v", ids)
		}
		assertNoStaging(t, e.cache)
	})
}

// TestEncryptedCachedLayerNeedsKey: a layer decrypted once stays in the
// cache, but a later pull of the same image without the key (or with a
// wrong one) still fails with exit 4 and makes no bundle; with the key it
// comes from the cache.
func TestEncryptedCachedLayerNeedsKey(t *testing.T) {
	testutil.Need(t, "skopeo", "umoci", "openssl")
	dir := t.TempDir()
	ec, other := testutil.ECKey(t, dir, "ec"), testutil.RSAKey(t, dir, "other", "")
	secrets := append(ec.Secrets(t), other.Secrets(t)...)
	reg := testutil.StartRegistry(t, testutil.RegistryOptions{})
	proxy := testutil.StartProxy(t, reg.Host, testutil.ProxyOptions{})
	const repo = "cached/enc"
	ref := proxied(reg.Push(t, testutil.BuildImage(t, richImage(t)), repo+":1", "--encryption-key", "jwe:"+ec.Public), reg, proxy)
	m, _ := testutil.ParseManifest(t, reg.RawManifest(t, repo, "1"))
	e := newEnv(t)
	base := []string{"--policy", e.write("policy.json", acceptAll), "--insecure-registry", proxy.Host}

	first := e.pullSecret(secrets, ref, append(base, "--decryption-key", ec.Private, "--container-id", "c1")...)
	for _, l := range first.Layers {
		if !l.Encrypted || l.Cached {
			t.Fatalf("first pull: layer %+v, want encrypted and not cached", l)
		}
	}
	fetched := layerGets(proxy, m)
	for _, tc := range []struct {
		name, id string
		keys     []string
	}{
		{"no key", "c2", nil},
		{"wrong key", "c3", []string{"--decryption-key", other.Private}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append(slices.Clone(base), "--container-id", tc.id)
			msg := e.pullFailsSecret(secrets, 4, ref, append(args, tc.keys...)...)
			if !strings.Contains(msg, repo) || !strings.Contains(msg, m.Layers[0].Digest) {
				t.Errorf("error does not name the image and the layer %s: %s", m.Layers[0].Digest, msg)
			}
			for _, b := range e.cacheLs().Bundles {
				if b.ID == tc.id {
					t.Errorf("bundle %s made without the key: %+v", tc.id, b)
				}
			}
			if _, err := os.Stat(filepath.Join(e.cache, "bundles", tc.id)); !os.IsNotExist(err) {
				t.Errorf("bundle directory for %s exists (%v)", tc.id, err)
			}
		})
	}
	if got := layerGets(proxy, m) - fetched; got != 0 {
		t.Errorf("the refused pulls fetched %d layer blobs", got)
	}
	again := e.pullSecret(secrets, ref, append(base, "--decryption-key", ec.Private, "--container-id", "c4")...)
	for _, l := range again.Layers {
		if !l.Encrypted || !l.Cached {
			t.Errorf("pull with the key after the cached one: layer %+v, want encrypted and cached", l)
		}
	}
	if got := layerGets(proxy, m) - fetched; got != 0 {
		t.Errorf("the pull from the cache fetched %d layer blobs", got)
	}
	compareTrees(t, snapshotTree(t, again.Rootfs), snapshotTree(t, first.Rootfs))
}

// TestEncryptedLayerCacheIsNoKeyBypass: an image anyone may push (the
// policy accepts it unsigned and unencrypted) whose config claims the
// diff_id of a cached, decrypted layer must not get that layer's content:
// the cache holds decrypted layers by diff_id, and a diff_id is public
// (it is in the encrypted image's config).
func TestEncryptedLayerCacheIsNoKeyBypass(t *testing.T) {
	testutil.Need(t, "skopeo", "umoci", "openssl")
	ec := testutil.ECKey(t, t.TempDir(), "ec")
	reg := testutil.StartRegistry(t, testutil.RegistryOptions{})
	secret := "top secret " + randomHex(t)
	victim := reg.Push(t, testutil.BuildImage(t, testutil.ImageSpec{Layers: [][]byte{
		testutil.Tar(t, testutil.Dir("secret/", 0o755), testutil.File("secret/data", secret, 0o644)),
	}}), "victim/app:1", "--encryption-key", "jwe:"+ec.Public)
	e := newEnv(t)
	base := []string{"--policy", e.write("policy.json", acceptAll), "--insecure-registry", reg.Host}
	res := e.pull(victim, append(base, "--decryption-key", ec.Private, "--container-id", "victim")...)
	if got, _ := os.ReadFile(filepath.Join(res.Rootfs, "secret/data")); string(got) != secret || !res.Layers[0].Encrypted {
		t.Fatalf("victim pull: secret/data %q, layers %+v", got, res.Layers)
	}

	// The attacker's image: an honest plaintext layer of its own, and a
	// config that claims the victim's diff_id for it.
	reg.Push(t, testutil.BuildImage(t, testutil.ImageSpec{Layers: [][]byte{
		testutil.Tar(t, testutil.File("decoy", "nothing to see", 0o644)),
	}}), "attacker/app:1")
	var am ispec.Manifest
	if err := json.Unmarshal(reg.RawManifest(t, "attacker/app", "1"), &am); err != nil {
		t.Fatal(err)
	}
	var cfg map[string]any
	if err := json.Unmarshal(reg.GetBlob(t, "attacker/app", am.Config.Digest.String()), &cfg); err != nil {
		t.Fatal(err)
	}
	cfg["rootfs"].(map[string]any)["diff_ids"] = []any{res.Layers[0].DiffID}
	raw, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	cfgDigest := reg.UploadBlob(t, "attacker/app", raw)
	spoof := forgeManifest(t, reg, "attacker/app", "spoof", am, func(f *ispec.Manifest) {
		f.Config.Digest = digest.Digest(cfgDigest)
		f.Config.Size = int64(len(raw))
	})

	r := e.gp("pull", spoof, "--json", "--quiet", "--container-id", "attacker", base[0], base[1], base[2], base[3])
	if r.Code == 0 {
		var got pullResult
		json.Unmarshal([]byte(r.Stdout), &got)
		data, _ := os.ReadFile(filepath.Join(got.Rootfs, "secret/data"))
		t.Fatalf("an unencrypted image claiming the encrypted layer's diff_id pulled without any key (layers %+v); its rootfs has secret/data = %q",
			got.Layers, data)
	}
	if r.Code != 5 {
		t.Errorf("spoofing pull: exit %d, want 5 (the layer blob does not match its diff_id): %s", r.Code, r.Stderr)
	}
	if !strings.Contains(r.Stderr, am.Layers[0].Digest.String()) {
		t.Errorf("error does not name the attacker's layer %s: %s", am.Layers[0].Digest, r.Stderr)
	}
}

// TestEncryptionSecretsStayPrivate: the cache is private (0700), decrypted
// content exists only in it and in the bundle's rootfs mount (not in
// TMPDIR, not next to the bundle), and no key material or password appears
// in any output, failed pulls included. A missing key file is exit 2, and
// so are a password-protected key without its password and a wrong password.
func TestEncryptionSecretsStayPrivate(t *testing.T) {
	testutil.Need(t, "skopeo", "umoci", "openssl")
	dir := t.TempDir()
	key := testutil.RSAKey(t, dir, "protected", "Pr0tected:pass word")
	const wrongPassword = "Wr0ng-pa55word"
	secrets := append(key.Secrets(t), wrongPassword)
	marker := "decrypted-marker-" + randomHex(t)
	reg := testutil.StartRegistry(t, testutil.RegistryOptions{})
	const repo = "private/enc"
	ref := reg.Push(t, testutil.BuildImage(t, testutil.ImageSpec{Layers: [][]byte{
		testutil.Tar(t, testutil.Dir("etc/", 0o755), testutil.File("etc/hostname", "base\n", 0o644)),
		testutil.Tar(t, testutil.Dir("secret/", 0o700), testutil.File("secret/marker", marker+"\n", 0o600)),
	}}), repo+":1", "--encryption-key", "jwe:"+key.Public)

	e := newEnv(t)
	tmp := filepath.Join(e.dir, "tmp")
	if err := os.Mkdir(tmp, 0o700); err != nil {
		t.Fatal(err)
	}
	bundle := filepath.Join(e.dir, "bundles", "b1")
	pol := e.write("policy.json", acceptAll)
	base := []string{"--policy", pol, "--insecure-registry", reg.Host}
	r := testutil.Exec(t, []string{"TMPDIR=" + tmp}, bins["guest-puller"], append([]string{"pull", ref, "--json",
		"--cache", e.cache, "--bundle", bundle, "--container-id", "b1", "--decryption-key", key.DecryptionKey()}, base...)...)
	assertNoSecrets(t, "pull output", r.Stdout+r.Stderr, secrets)
	if r.Code != 0 {
		t.Fatalf("pull: exit %d: %s", r.Code, r.Stderr)
	}
	if strings.Contains(r.Stdout+r.Stderr, marker) {
		t.Errorf("the pull printed decrypted content")
	}
	var res pullResult
	if err := json.Unmarshal([]byte(r.Stdout), &res); err != nil {
		t.Fatal(err)
	}
	if res.Bundle != bundle || !res.Layers[1].Encrypted {
		t.Fatalf("bundle %s, layers %+v", res.Bundle, res.Layers)
	}
	if got, err := os.ReadFile(filepath.Join(res.Rootfs, "secret/marker")); err != nil || string(got) != marker+"\n" {
		t.Fatalf("secret/marker in the bundle: %q %v", got, err)
	}

	fi, err := os.Stat(e.cache)
	if err != nil || !fi.IsDir() || fi.Mode().Perm() != 0o700 {
		t.Errorf("cache directory: %v %v, want a directory of mode 0700", fi.Mode(), err)
	}

	// Every file that holds the decrypted marker, outside mounts.
	mounts := testutil.Mounts(t, e.dir)
	var inCache, outside []string
	for _, root := range []string{e.dir, "/dev/shm"} {
		filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return nil
			}
			if d.IsDir() && slices.Contains(mounts, p) {
				return filepath.SkipDir
			}
			if !d.Type().IsRegular() {
				return nil
			}
			data, err := os.ReadFile(p)
			if err != nil || !bytes.Contains(data, []byte(marker)) {
				return nil
			}
			if strings.HasPrefix(p, e.cache+"/") {
				inCache = append(inCache, p)
			} else {
				outside = append(outside, p)
			}
			return nil
		})
	}
	if len(inCache) == 0 {
		t.Errorf("the decrypted layer is not in the cache: the search for it proves nothing")
	}
	if len(outside) != 0 {
		t.Errorf("decrypted content outside the cache and the rootfs mount: %v", outside)
	}
	if !slices.Contains(mounts, res.Rootfs) && res.RootfsType == "overlay" {
		t.Errorf("rootfs %s is not a mount point (mounts %v)", res.Rootfs, mounts)
	}

	ls := e.gp("cache", "ls", "--json")
	assertNoSecrets(t, "cache ls", ls.Stdout+ls.Stderr, secrets)

	// `openssl genpkey -aes256` writes this form; ocicrypt (and so skopeo)
	// cannot read it: a clear configuration error, not "no key".
	pkcs8 := key.EncryptedPKCS8(t, filepath.Join(dir, "protected.p8.pem"))
	for _, tc := range []struct {
		name, key, want string
	}{
		{"wrong password", key.Private + ":" + wrongPassword, key.Private},
		{"no password", key.Private, "password"},
		{"encrypted PKCS#8 key", pkcs8 + ":" + key.Password, pkcs8},
		{"missing key file", filepath.Join(dir, "missing.pem"), filepath.Join(dir, "missing.pem")},
		{"missing key file with password", filepath.Join(dir, "missing.pem") + ":" + key.Password, filepath.Join(dir, "missing.pem")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			msg := e.pullFailsSecret(secrets, 2, ref, append(slices.Clone(base), "--decryption-key", tc.key)...)
			if !strings.Contains(msg, tc.want) {
				t.Errorf("error does not say %q: %s", tc.want, msg)
			}
			if l := e.cacheLs(); len(l.Images)+len(l.Layers) != 0 {
				t.Errorf("cache not empty after a configuration error: %+v", l)
			}
		})
	}
}

func compressibleText() string {
	var b strings.Builder
	for i := 0; b.Len() < 4<<20; i++ {
		fmt.Fprintf(&b, "line %d of a text that compresses well, %x\n", i, i*i)
	}
	return b.String()
}

func randomHex(t *testing.T) string {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}
