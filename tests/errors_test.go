package tests

import (
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/guest-puller/guest-puller/internal/testutil"
)

// TestErrorMessages: the whole one-line message of failed pulls, through
// the binary. Each level adds only what its caller does not know: the
// image once, the layer or config by its digest once, the kind of failure
// once, then what went wrong.
func TestErrorMessages(t *testing.T) {
	reg := testutil.StartRegistry(t, testutil.RegistryOptions{})
	src := testutil.BuildImage(t, smallImage(t, "messages"))
	reg.Push(t, src, "msg/app:1")
	noLayerRef := reg.Push(t, testutil.BuildImage(t, smallImage(t, "no layer")), "msg/nolayer:1")
	noLayer, _ := testutil.ParseManifest(t, reg.RawManifest(t, "msg/nolayer", "1"))
	if len(noLayer.Layers) != 2 {
		t.Fatalf("image has %d layers, want 2", len(noLayer.Layers))
	}
	noConfigRef := reg.Push(t, testutil.BuildImage(t, smallImage(t, "no config")), "msg/noconfig:1")
	noConfig, _ := testutil.ParseManifest(t, reg.RawManifest(t, "msg/noconfig", "1"))
	for _, d := range []string{noLayer.Layers[1].Digest, noConfig.Config.Digest} {
		if err := os.Remove(reg.BlobPath(d)); err != nil {
			t.Fatal(err)
		}
	}
	pub, priv := sigJWEKeys(t)
	_, otherPriv := sigJWEKeys(t)
	encRef := reg.Push(t, sigEncrypt(t, src, pub), "msg/enc:1")
	enc, _ := testutil.ParseManifest(t, reg.RawManifest(t, "msg/enc", "1"))
	key, otherKey := testutil.NewCosignKey(t), testutil.NewCosignKey(t)
	signedRef, _ := sigPush(t, reg, src, "msg/signed:1", otherKey)

	e := newEnv(t)
	e.write("keys/k.pub", sigReadFile(t, key.Pub))
	acceptAllPolicy := e.write("policy.json", acceptAll)
	signedPolicy := e.write("signed.json", sigPolicy(t, map[string][]sigReq{reg.Host + "/msg/signed": {sigstoreKey("keys/k.pub")}}))
	for _, tc := range []struct {
		name, image string
		code        int
		args        []string
		want        string
	}{
		{"no such tag", reg.Host + "/msg/app:2", 1, nil,
			reg.Host + "/msg/app:2: not found in the registry"},
		{"no such repository", reg.Host + "/msg/none:1", 1, nil,
			reg.Host + "/msg/none:1: not found in the registry"},
		{"layer blob missing", noLayerRef, 1, nil,
			noLayerRef + ": layer " + noLayer.Layers[1].Digest + ": not found in the registry"},
		{"config blob missing", noConfigRef, 1, nil,
			noConfigRef + ": config " + noConfig.Config.Digest + ": not found in the registry"},
		{"no decryption key", encRef, 4, nil,
			encRef + ": layer " + enc.Layers[0].Digest + ": cannot decrypt: the layer is encrypted and no decryption key or KBS is configured; give --decryption-key, or --kbs for a key a KBS releases after attestation"},
		{"wrong decryption key", encRef, 4, []string{"--decryption-key", otherPriv},
			encRef + ": layer " + enc.Layers[0].Digest + ": cannot decrypt: no key unwraps it (recipients: jwe)"},
		{"signed by another key", signedRef, 3, []string{"--policy", signedPolicy},
			"image " + signedRef + `: refused by policy: scope "` + reg.Host + `/msg/signed": sigstoreSigned: a signature was required, but no signature by the policy's signers exists`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := sigEnv(e, t)
			args := append([]string{"--insecure-registry", reg.Host}, tc.args...)
			if !slices.Contains(args, "--policy") {
				args = append(args, "--policy", acceptAllPolicy)
			}
			if got := e.pullFails(tc.code, tc.image, args...); got != "guest-puller: "+tc.want {
				t.Errorf("message\n%s\nwant\nguest-puller: %s", got, tc.want)
			}
		})
	}
	// The right key still works: the failures above were the keys'.
	e.pull(encRef, "--policy", acceptAllPolicy, "--insecure-registry", reg.Host, "--decryption-key", priv)
}

// repeatedContext finds what an error message says twice: a "layer
// sha256:…"-like segment (a noun and a digest), or the text of an error
// kind ("cannot decrypt", "integrity failure", …): two levels that each
// wrapped with the same context.
func repeatedContext(msg string) []string {
	var out []string
	seen := map[string]bool{}
	for _, s := range digestSegment.FindAllString(msg, -1) {
		if seen[s] && !slices.Contains(out, s) {
			out = append(out, s)
		}
		seen[s] = true
	}
	for _, kind := range []string{"invalid configuration", "refused by policy", "cannot decrypt", "integrity failure", "authentication failed"} {
		if strings.Count(msg, kind) > 1 {
			out = append(out, kind)
		}
	}
	return out
}

// digestSegment is a wrapping context that names something by digest:
// "layer sha256:…:", "blob sha256:…:", "config sha256:…:".
var digestSegment = regexp.MustCompile(`[a-z_]+ sha256:[0-9a-f]{64}: `)
