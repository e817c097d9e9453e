package tests

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containers/ocicrypt"
	"github.com/containers/ocicrypt/config"
	"github.com/opencontainers/go-digest"
	ispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/guest-puller/guest-puller/internal/devkbs/devkbstest"
	"github.com/guest-puller/guest-puller/internal/testutil"
)

// TestEncryptCommand: `guest-puller encrypt` takes an image built by umoci
// (an OCI layout) or pushed by skopeo (a registry, Docker schema 2), writes
// it to the registry with its layers encrypted for a JWE key and a KBS KEK,
// and what it wrote
//   - decrypts with ocicrypt's own Go code (what skopeo, containerd's
//     imgcrypt and CRI-O use) to the very blobs that went in;
//   - pulls with guest-puller, with the private key and through dev-kbs
//     (sample attestation) with the KEK, to the same rootfs as the plain
//     image;
//   - keeps the config (diff_ids) and the plain layers it was told to skip.
func TestEncryptCommand(t *testing.T) {
	reg := testutil.StartRegistry(t, testutil.RegistryOptions{})
	src := testutil.BuildImage(t, smallImage(t, "to encrypt"))
	plainRef := reg.Push(t, src, "enc/plain:1")
	v2s2Ref := reg.Push(t, src, "enc/v2s2:1", "--format", "v2s2")
	plainRaw := reg.RawManifest(t, "enc/plain", "1")
	plain, _ := testutil.ParseManifest(t, plainRaw)

	e := newEnv(t)
	key := testutil.RSAKey(t, e.dir, "recipient", "")
	kek := make([]byte, 32)
	if _, err := rand.Read(kek); err != nil {
		t.Fatal(err)
	}
	kekFile := e.write("kek.bin", string(kek))
	resources := t.TempDir()
	testutil.WriteResource(t, resources, "default/key/1", kek)
	kbs := devkbstest.StartDevKBS(t, bins["dev-kbs"], "--resources", resources, "--allow-sample")
	recipients := []string{"--encryption-key", "jwe:" + key.Public,
		"--encryption-key", "provider:attestation-agent:keypath=" + kekFile + "::keyid=kbs:///default/key/1"}
	pol := e.write("policy.json", `{"default":[{"type":"reject"}],"transports":{"docker":{"`+reg.Host+`/enc":[{"type":"encrypted"}],"`+reg.Host+`/enc/plain":[{"type":"insecureAcceptAnything"}]}}}`)
	plainPull := e.pull(plainRef, "--policy", pol, "--insecure-registry", reg.Host, "--container-id", "plain")

	var outputs []string
	for _, tc := range []struct {
		name, src, repo string
	}{
		{"from an OCI layout", src, "enc/oci-layout"},
		{"from a registry, Docker schema 2", "docker://" + v2s2Ref, "enc/from-v2s2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			repo := tc.repo
			dst := reg.Host + "/" + repo + ":1"
			r := e.gp(append([]string{"encrypt", tc.src, "docker://" + dst, "--insecure-registry", reg.Host}, recipients...)...)
			if r.Code != 0 {
				t.Fatalf("encrypt: exit %d: %s", r.Code, r.Stderr)
			}
			outputs = append(outputs, r.Stdout+r.Stderr)
			raw := reg.RawManifest(t, repo, "1")
			if got := strings.TrimSpace(r.Stdout); got != digest.FromBytes(raw).String() {
				t.Errorf("encrypt printed %q, want the manifest digest %s", got, digest.FromBytes(raw))
			}
			var m ispec.Manifest
			if err := json.Unmarshal(raw, &m); err != nil {
				t.Fatal(err)
			}
			if m.MediaType != ispec.MediaTypeImageManifest || m.Config.Digest.String() != plain.Config.Digest || len(m.Layers) != len(plain.Layers) {
				t.Fatalf("manifest %s: want an OCI manifest with the plain image's config %s and %d layers", raw, plain.Config.Digest, len(plain.Layers))
			}
			for i, l := range m.Layers {
				if l.MediaType != ispec.MediaTypeImageLayerGzip+"+encrypted" {
					t.Errorf("layer %d: media type %s", i, l.MediaType)
				}
				// ocicrypt, the reference reader, with the JWE private key.
				priv, err := os.ReadFile(key.Private)
				if err != nil {
					t.Fatal(err)
				}
				dc := &config.DecryptConfig{Parameters: map[string][][]byte{"privkeys": {priv}, "privkeys-passwords": {nil}}}
				pr, _, err := ocicrypt.DecryptLayer(dc, bytes.NewReader(reg.GetBlob(t, repo, l.Digest.String())), l, false)
				if err != nil {
					t.Fatalf("layer %d: ocicrypt.DecryptLayer: %v", i, err)
				}
				got, err := io.ReadAll(pr)
				if err != nil {
					t.Fatalf("layer %d: ocicrypt: %v", i, err)
				}
				if d := digest.FromBytes(got).String(); d != plain.Layers[i].Digest {
					t.Errorf("layer %d decrypts to %s, want the plain blob %s", i, d, plain.Layers[i].Digest)
				}
			}

			withKey := e.pull(dst, "--policy", pol, "--insecure-registry", reg.Host, "--decryption-key", key.Private, "--container-id", "key-"+filepath.Base(repo))
			withKBS := e.pull(dst, "--policy", pol, "--insecure-registry", reg.Host, "--kbs", kbs.URL, "--attester", "sample", "--container-id", "kbs-"+filepath.Base(repo))
			for _, res := range []pullResult{withKey, withKBS} {
				if len(res.Layers) != len(plainPull.Layers) {
					t.Fatalf("%d layers, want %d", len(res.Layers), len(plainPull.Layers))
				}
				for i, l := range res.Layers {
					if !l.Encrypted || l.DiffID != plainPull.Layers[i].DiffID {
						t.Errorf("layer %d: encrypted %v, diff_id %s; want decrypted to %s", i, l.Encrypted, l.DiffID, plainPull.Layers[i].DiffID)
					}
				}
				for _, f := range []string{"app/hello", "app/second"} {
					got, err := os.ReadFile(filepath.Join(res.Rootfs, f))
					want, _ := os.ReadFile(filepath.Join(plainPull.Rootfs, f))
					if err != nil || !bytes.Equal(got, want) {
						t.Errorf("%s: %q (%v), want %q", f, got, err, want)
					}
				}
			}
		})
	}

	t.Run("one layer, into the same layout", func(t *testing.T) {
		dir := strings.TrimPrefix(src[:strings.LastIndex(src, ":")], "oci:")
		r := e.gp(append([]string{"encrypt", src, "oci:" + dir + ":top-encrypted", "--encrypt-layer", "-1"}, recipients...)...)
		if r.Code != 0 {
			t.Fatalf("encrypt: exit %d: %s", r.Code, r.Stderr)
		}
		ref := reg.Push(t, "oci:"+dir+":top-encrypted", "enc/top:1")
		res := e.pull(ref, "--policy", e.write("any.json", `{"default":[{"type":"encrypted","layers":"any"}]}`), "--insecure-registry", reg.Host, "--decryption-key", key.Private)
		if len(res.Layers) != 2 || res.Layers[0].Encrypted || res.Layers[0].Digest != plain.Layers[0].Digest || !res.Layers[1].Encrypted {
			t.Errorf("layers %+v: want the bottom one as it was and the top one encrypted", res.Layers)
		}
	})

	t.Run("to a registry that wants credentials", func(t *testing.T) {
		const user, pass = "pusher", "Pu5h-Pa55word"
		priv := testutil.StartRegistry(t, testutil.RegistryOptions{User: user, Password: pass})
		dst := "docker://" + priv.Host + "/enc/private:1"
		args := append([]string{"encrypt", src, dst, "--insecure-registry", priv.Host}, recipients...)
		r := e.gp(append(args, "--dest-creds", user+":wrong")...)
		if r.Code != 1 || !strings.Contains(r.Stderr, "authentication failed") || !strings.Contains(r.Stderr, "check --src-creds, --dest-creds or --auth-file") {
			t.Errorf("wrong --dest-creds: exit %d, stderr %q; want 1 and the flags to check", r.Code, r.Stderr)
		}
		auth := e.write("auth.json", `{"auths":{"`+priv.Host+`":{"auth":"`+base64.StdEncoding.EncodeToString([]byte(user+":"+pass))+`"}}}`)
		for _, creds := range [][]string{{"--dest-creds", user + ":" + pass}, {"--auth-file", auth}} {
			if r := e.gp(append(args, creds...)...); r.Code != 0 {
				t.Fatalf("encrypt with %s: exit %d: %s", creds[0], r.Code, r.Stderr)
			}
			m, _ := testutil.ParseManifest(t, priv.RawManifest(t, "enc/private", "1"))
			if len(m.Layers) != 2 || !strings.HasSuffix(m.Layers[0].MediaType, "+encrypted") {
				t.Errorf("with %s: layers %+v", creds[0], m.Layers)
			}
		}
	})

	t.Run("refusals", func(t *testing.T) {
		encRef := reg.Host + "/enc/oci-layout:1"
		for _, tc := range []struct {
			args []string
			want string
		}{
			{[]string{"encrypt", src, "docker://" + reg.Host + "/enc/x:1", "--insecure-registry", reg.Host}, "no --encryption-key"},
			{append([]string{"encrypt", src, "docker://" + reg.Host + "/enc/x:1", "--insecure-registry", reg.Host, "--encrypt-layer", "2"}, recipients...), "--encrypt-layer 2: the image has 2 layers"},
			{append([]string{"encrypt", "docker://" + encRef, "docker://" + reg.Host + "/enc/x:1", "--insecure-registry", reg.Host}, recipients...), "already encrypted"},
			{append([]string{"encrypt", src, "docker://" + reg.Host + "/enc/x:1"}, recipients...), "--insecure-registry " + reg.Host},
			{append([]string{"encrypt", "oci:" + t.TempDir() + ":x", "oci:" + t.TempDir()}, recipients...), "not an OCI layout"},
			{[]string{"encrypt", src, "oci:" + t.TempDir(), "--encryption-key", "pgp:alice@example.com"}, "not supported here"},
			{[]string{"encrypt", src}, "encrypt needs SRC DST"},
		} {
			r := e.gp(tc.args...)
			if r.Code != 2 || !strings.Contains(r.Stderr, tc.want) || strings.Count(r.Stderr, "\n") != 1 {
				t.Errorf("guest-puller %q: exit %d, stderr %q; want 2 and one line saying %q", tc.args[1:], r.Code, r.Stderr, tc.want)
			}
		}
		if r := e.gp("cache", "ls", "--json"); r.Code != 0 {
			t.Fatal(r.Stderr)
		}
		// A refused encryption pushed nothing.
		if r := e.gp("policy", "check", reg.Host+"/enc/x:1", "--policy", pol, "--insecure-registry", reg.Host); r.Code != 1 || !strings.Contains(r.Stderr, "not found") {
			t.Errorf("enc/x:1 exists after refused encryptions: exit %d %s", r.Code, r.Stderr)
		}
	})
	assertNoSecrets(t, "encrypt output", strings.Join(outputs, "\n"), append(key.Secrets(t), hex.EncodeToString(kek), base64.StdEncoding.EncodeToString(kek)))
}
