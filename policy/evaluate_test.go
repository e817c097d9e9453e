package policy

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/guest-puller/guest-puller/internal/errdefs"
)

const (
	plainGzip = "application/vnd.oci.image.layer.v1.tar+gzip"
	encGzip   = "application/vnd.oci.image.layer.v1.tar+gzip+encrypted"
	encZstd   = "application/vnd.oci.image.layer.v1.tar+zstd+encrypted"
	encTar    = "application/vnd.oci.image.layer.v1.tar+encrypted"
	plainDock = "application/vnd.docker.image.rootfs.diff.tar.gzip"
)

func TestEncrypted(t *testing.T) {
	all := mustLoad(t, `{"default":[{"type":"encrypted"}]}`, "")
	allExplicit := mustLoad(t, `{"default":[{"type":"encrypted","layers":"all"}]}`, "")
	any := mustLoad(t, `{"default":[{"type":"encrypted","layers":"any"}]}`, "")
	for _, tc := range []struct {
		name      string
		layers    []string
		wantAll   bool
		wantAny   bool
		allReason string
	}{
		{"plain", []string{plainGzip, plainDock}, false, false, "layer 1 of 2 is not encrypted (" + plainGzip + ")"},
		{"partly, plain last", []string{encGzip, encZstd, plainGzip}, false, true, "layer 3 of 3 is not encrypted"},
		{"partly, plain first", []string{plainDock, encGzip}, false, true, "layer 1 of 2 is not encrypted (" + plainDock + ")"},
		{"fully", []string{encGzip, encZstd, encTar}, true, true, "3 of 3 layers are encrypted"},
		{"single encrypted layer", []string{encTar}, true, true, "1 of 1 layers are encrypted"},
		{"no layers", nil, false, false, "the image has no layers"},
		{"encrypted is a suffix, not a substring", []string{"application/vnd.example+encrypted+gzip"}, false, false, "is not encrypted"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			img := Image{Ref: ref(t, "example.com/app:v1"), ManifestDigest: hash('a'), LayerMediaTypes: tc.layers}
			for _, c := range []struct {
				p    *Policy
				mode string
				want bool
			}{{all, "all (default)", tc.wantAll}, {allExplicit, "all", tc.wantAll}, {any, "any", tc.wantAny}} {
				d := mustEvaluate(t, c.p, img)
				if d.Allowed != c.want {
					t.Errorf("layers=%s: allowed = %v, want %v (%s)", c.mode, d.Allowed, c.want, firstFailure(d))
				}
				if d.Requirements[0].Type != "encrypted" {
					t.Errorf("type %q", d.Requirements[0].Type)
				}
			}
			if r := mustEvaluate(t, all, img).Requirements[0].Reason; !strings.Contains(r, tc.allReason) {
				t.Errorf("all: reason %q, want it to contain %q", r, tc.allReason)
			}
		})
	}
}

// thresholdKeys are the signers of TestThreshold, one of each key type.
type thresholdKeys struct{ ci, qa, release, ops, outsider testKey }

func TestThreshold(t *testing.T) {
	k := thresholdKeys{newKey(t, "p256"), newKey(t, "p384"), newKey(t, "ed25519"), newKey(t, "rsa2048"), newKey(t, "p256")}
	dir := t.TempDir()
	writeFile(t, dir, "ci.pub", k.ci.pem)
	writeFile(t, dir, "release.pub", k.release.pem)
	group := func(n int, keys string) string {
		return fmt.Sprintf(`{"type":"sigstoreThreshold","threshold":%d,"keys":[%s],"signedIdentity":{"type":"matchRepository"}}`, n, keys)
	}
	ciQaRelease := `{"name":"ci","keyPath":"ci.pub"},{"name":"qa","keyData":"` + k.qa.b64() + `"},{"name":"release","keyPath":"release.pub"}`
	twoOfThree := mustLoad(t, `{"default":[`+group(2, ciQaRelease)+`]}`, dir)
	threeOfThree := mustLoad(t, `{"default":[`+group(3, ciQaRelease)+`]}`, dir)
	twoGroups := mustLoad(t, `{"default":[`+
		group(1, `{"name":"ci","keyPath":"ci.pub"},{"name":"qa","keyData":"`+k.qa.b64()+`"}`)+`,`+
		group(1, `{"name":"release","keyPath":"release.pub"},{"name":"ops","keyData":"`+k.ops.b64()+`"}`)+`]}`, dir)

	d, other := hash('d'), hash('e')
	const repo = "example.com/app"
	type sig struct {
		key testKey
		d   v1.Hash
	}
	for _, tc := range []struct {
		name   string
		p      *Policy
		sigs   []sig
		want   bool
		reason string
		signed []bool // per key in policy order, when checked
	}{
		{"2 of 3: none", twoOfThree, nil, false, "0 of 3 keys signed, 2 needed", []bool{false, false, false}},
		{"2 of 3: one", twoOfThree, []sig{{k.ci, d}}, false, "1 of 3 keys signed (ci), 2 needed", []bool{true, false, false}},
		{"2 of 3: two", twoOfThree, []sig{{k.ci, d}, {k.release, d}}, true, "2 of 3 keys signed (ci, release), 2 needed", []bool{true, false, true}},
		{"2 of 3: three", twoOfThree, []sig{{k.ci, d}, {k.qa, d}, {k.release, d}}, true, "3 of 3 keys signed", []bool{true, true, true}},
		{"2 of 3: same key twice counts once", twoOfThree, []sig{{k.qa, d}, {k.qa, d}}, false, "1 of 3 keys signed (qa), 2 needed", []bool{false, true, false}},
		{"2 of 3: second signature over another digest", twoOfThree, []sig{{k.ci, d}, {k.qa, other}}, false, "1 of 3 keys signed (ci), 2 needed; refused: qa: signature is for digest " + other.String(), []bool{true, false, false}},
		{"2 of 3: unlisted key does not count", twoOfThree, []sig{{k.ci, d}, {k.outsider, d}}, false, "1 of 3 keys signed (ci)", nil},
		{"3 of 3: two", threeOfThree, []sig{{k.ci, d}, {k.qa, d}}, false, "2 of 3 keys signed (ci, qa), 3 needed", nil},
		{"3 of 3: three", threeOfThree, []sig{{k.ci, d}, {k.qa, d}, {k.release, d}}, true, "3 of 3 keys signed (ci, qa, release), 3 needed", nil},
		{"two groups: first only", twoGroups, []sig{{k.ci, d}, {k.qa, d}}, false, "0 of 2 keys signed, 1 needed", nil},
		{"two groups: second only", twoGroups, []sig{{k.ops, d}}, false, "0 of 2 keys signed, 1 needed", nil},
		{"two groups: both", twoGroups, []sig{{k.qa, d}, {k.ops, d}}, true, "", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ev := &memEvidence{}
			for _, s := range tc.sigs {
				ev.sign(t, s.key, repo, s.d)
			}
			dec := mustEvaluate(t, tc.p, Image{Ref: ref(t, repo+":v1"), ManifestDigest: d, Evidence: ev})
			if dec.Allowed != tc.want {
				t.Fatalf("allowed = %v, want %v (%s)", dec.Allowed, tc.want, firstFailure(dec))
			}
			var reasons []string
			for _, r := range dec.Requirements {
				reasons = append(reasons, r.Reason)
			}
			if all := strings.Join(reasons, " | "); !strings.Contains(all, tc.reason) {
				t.Errorf("reasons %q, want %q", all, tc.reason)
			}
			if tc.signed != nil {
				names := []string{"ci", "qa", "release"}
				ids := []string{k.ci.id, k.qa.id, k.release.id}
				if len(dec.Signatures) != 3 {
					t.Fatalf("signatures %+v, want one per key", dec.Signatures)
				}
				for i, s := range dec.Signatures {
					if s.KeyName != names[i] || s.KeyID != ids[i] || s.Verified != tc.signed[i] {
						t.Errorf("signature %d = %+v, want name %s, key %s, verified %v", i, s, names[i], ids[i], tc.signed[i])
					}
					if !s.Verified && s.Reason == "" {
						t.Errorf("signature %d: unverified without a reason", i)
					}
				}
			}
		})
	}
}

// TestDigestMismatch: a valid signature by the right key over another
// digest is no signature of this image; one over the index it came through
// is.
func TestDigestMismatch(t *testing.T) {
	key := newKey(t, "p256")
	p := mustLoad(t, `{"default":[{"type":"sigstoreSigned","keyData":"`+key.b64()+`","signedIdentity":{"type":"matchRepository"}}]}`, "")
	manifest, index, other := hash('a'), hash('b'), hash('c')
	for _, tc := range []struct {
		name        string
		signed      v1.Hash
		index       v1.Hash
		imageDigest v1.Hash
		want        bool
	}{
		{"manifest digest", manifest, v1.Hash{}, manifest, true},
		{"index digest", index, index, manifest, true},
		{"other digest", other, index, manifest, false},
		{"index digest, image without index", index, v1.Hash{}, manifest, false},
		{"zero digest claim, image without index", v1.Hash{}, v1.Hash{}, manifest, false},
		{"zero digest claim and zero image digest", v1.Hash{}, v1.Hash{}, v1.Hash{}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ev := (&memEvidence{}).sign(t, key, "example.com/app", tc.signed)
			d := mustEvaluate(t, p, Image{Ref: ref(t, "example.com/app:v1"), ManifestDigest: tc.imageDigest, IndexDigest: tc.index, Evidence: ev})
			if d.Allowed != tc.want {
				t.Fatalf("allowed = %v, want %v (%s)", d.Allowed, tc.want, firstFailure(d))
			}
			if !tc.want {
				if r := d.Signatures[0].Reason; !strings.Contains(r, "signature is for digest") {
					t.Errorf("reason %q does not name the digest mismatch", r)
				}
				if err := d.Err(); !errors.Is(err, errdefs.ErrRefused) || errdefs.ExitCode(err) != 3 {
					t.Errorf("Err() = %v, want exit 3", err)
				}
			}
		})
	}
}

// TestEvidenceError: a failing signature store fails every requirement
// that needs it, even when another key would have verified, and never
// turns into an allow.
func TestEvidenceError(t *testing.T) {
	good, gpg := newKey(t, "p256"), newGPGKey(t, "alice")
	dir := t.TempDir()
	writeFile(t, dir, "alice.asc", gpg.armored)
	for _, tc := range []struct {
		name, req string
	}{
		{"sigstoreSigned", `{"type":"sigstoreSigned","keyData":"` + good.b64() + `"}`},
		{"sigstoreSigned, several keys", `{"type":"sigstoreSigned","keyDatas":["` + good.b64() + `","` + newKey(t, "ed25519").b64() + `"]}`},
		{"sigstoreThreshold", `{"type":"sigstoreThreshold","threshold":1,"keys":[{"name":"a","keyData":"` + good.b64() + `"}]}`},
		{"signedBy", `{"type":"signedBy","keyType":"GPGKeys","keyPath":"alice.asc"}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := mustLoad(t, `{"default":[`+tc.req+`]}`, dir)
			ev := (&memEvidence{err: fmt.Errorf("GET https://registry/v2/…: %w\nretry later", errStoreDown)}).sign(t, good, "example.com/app:v1", hash('a'))
			d := mustEvaluate(t, p, Image{Ref: ref(t, "example.com/app:v1"), ManifestDigest: hash('a'), Evidence: ev})
			if d.Allowed {
				t.Fatal("allowed with a failing signature store")
			}
			if r := d.Requirements[0].Reason; !strings.Contains(r, "signature lookup failed") || !strings.Contains(r, errStoreDown.Error()) {
				t.Errorf("reason %q does not carry the store's error", r)
			}
			for _, s := range d.Signatures {
				if s.Verified || !strings.Contains(s.Reason, errStoreDown.Error()) || strings.Contains(s.Reason, "\n") {
					t.Errorf("signature %+v: want unverified, the store's error on one line", s)
				}
			}
			err := d.Err()
			if errdefs.ExitCode(err) != 3 || !strings.Contains(err.Error(), errStoreDown.Error()) {
				t.Errorf("Err() = %v, want exit 3 naming the store error", err)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("Err() is not one line: %q", err)
			}
		})
	}
}

// TestNilEvidence: without an Evidence no signature exists, as for an
// image without signatures in containers/image.
func TestNilEvidence(t *testing.T) {
	key, gpg := newKey(t, "p256"), newGPGKey(t, "alice")
	dir := t.TempDir()
	writeFile(t, dir, "alice.asc", gpg.armored)
	for _, tc := range []struct {
		name, req, reason string
		want              bool
	}{
		{"insecureAcceptAnything", `{"type":"insecureAcceptAnything"}`, "", true},
		{"reject", `{"type":"reject"}`, "rejects every image", false},
		{"encrypted", `{"type":"encrypted"}`, "", true},
		{"sigstoreSigned", `{"type":"sigstoreSigned","keyData":"` + key.b64() + `"}`, "a signature was required, but no signature", false},
		{"sigstoreThreshold", `{"type":"sigstoreThreshold","threshold":1,"keys":[{"name":"a","keyData":"` + key.b64() + `"}]}`, "0 of 1 keys signed, 1 needed", false},
		{"signedBy", `{"type":"signedBy","keyType":"GPGKeys","keyPath":"alice.asc"}`, "a signature was required, but no signature", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := mustLoad(t, `{"default":[`+tc.req+`]}`, dir)
			d := mustEvaluate(t, p, Image{Ref: ref(t, "example.com/app:v1"), ManifestDigest: hash('a'), LayerMediaTypes: []string{encGzip}})
			if d.Allowed != tc.want {
				t.Fatalf("allowed = %v, want %v (%s)", d.Allowed, tc.want, firstFailure(d))
			}
			if !strings.Contains(d.Requirements[0].Reason, tc.reason) {
				t.Errorf("reason %q, want %q", d.Requirements[0].Reason, tc.reason)
			}
		})
	}
}

func TestSignedBy(t *testing.T) {
	alice, bob := newGPGKey(t, "alice"), newGPGKey(t, "bob")
	dir := t.TempDir()
	writeFile(t, dir, "alice.asc", alice.armored)
	writeFile(t, dir, "bob.gpg", bob.binary)
	d := hash('a')
	img := func(ev Evidence) Image {
		return Image{Ref: ref(t, "example.com/app:v1"), ManifestDigest: d, Evidence: ev}
	}
	signedBy := func(ring string) *Policy {
		return mustLoad(t, `{"default":[{"type":"signedBy","keyType":"GPGKeys",`+ring+`}]}`, dir)
	}
	claims := func(fpr string, cs ...Claim) *memEvidence {
		return &memEvidence{gpg: map[string][]Claim{fpr: cs}}
	}
	good := Claim{DockerReference: "example.com/app:v1", ManifestDigest: d}

	t.Run("signed by the keyring's key", func(t *testing.T) {
		dec := mustEvaluate(t, signedBy(`"keyPath":"alice.asc"`), img(claims(alice.fingerprint, good)))
		if !dec.Allowed {
			t.Fatal(firstFailure(dec))
		}
		want := SignatureResult{KeyName: "alice.asc", KeyID: alice.fingerprint, Verified: true}
		if len(dec.Signatures) != 1 || dec.Signatures[0] != want {
			t.Errorf("signatures %+v, want [%+v]", dec.Signatures, want)
		}
	})
	t.Run("signed by another key", func(t *testing.T) {
		dec := mustEvaluate(t, signedBy(`"keyPath":"alice.asc"`), img(claims(bob.fingerprint, good)))
		if dec.Allowed {
			t.Fatal("allowed an image signed by a key outside the keyring")
		}
	})
	t.Run("keyPaths, second keyring signs", func(t *testing.T) {
		dec := mustEvaluate(t, signedBy(`"keyPaths":["alice.asc","bob.gpg"]`), img(claims(bob.fingerprint, good)))
		if !dec.Allowed {
			t.Fatal(firstFailure(dec))
		}
		if len(dec.Signatures) != 2 || dec.Signatures[0].Verified || !dec.Signatures[1].Verified || dec.Signatures[1].KeyName != "bob.gpg" {
			t.Errorf("signatures %+v", dec.Signatures)
		}
	})
	t.Run("keyData", func(t *testing.T) {
		dec := mustEvaluate(t, mustLoad(t, `{"default":[{"type":"signedBy","keyType":"GPGKeys","keyData":"`+base64.StdEncoding.EncodeToString(alice.binary)+`"}]}`, ""), img(claims(alice.fingerprint, good)))
		if !dec.Allowed || dec.Signatures[0].KeyName != "keyData[0]" {
			t.Fatalf("allowed=%v signatures %+v", dec.Allowed, dec.Signatures)
		}
	})
	t.Run("identity mismatch", func(t *testing.T) {
		dec := mustEvaluate(t, signedBy(`"keyPath":"alice.asc"`), img(claims(alice.fingerprint, Claim{DockerReference: "example.com/app:v2", ManifestDigest: d})))
		if dec.Allowed {
			t.Fatal("allowed a signature for another tag")
		}
	})
	t.Run("claim naming another key", func(t *testing.T) {
		ev := &memEvidence{gpg: map[string][]Claim{alice.fingerprint: {good}}}
		bad := &keyIDOverride{Evidence: ev, keyID: bob.fingerprint}
		if dec := mustEvaluate(t, signedBy(`"keyPath":"alice.asc"`), img(bad)); dec.Allowed {
			t.Fatal("allowed a claim whose KeyID is not in the keyring")
		}
	})
	t.Run("unimplemented keyType", func(t *testing.T) {
		p := mustLoad(t, `{"default":[{"type":"signedBy","keyType":"signedByGPGKeys","keyPath":"alice.asc"}]}`, dir)
		dec := mustEvaluate(t, p, img(claims(alice.fingerprint, good)))
		if dec.Allowed || !strings.Contains(firstFailure(dec), `keyType "signedByGPGKeys" is not implemented`) {
			t.Fatalf("allowed=%v: %s", dec.Allowed, firstFailure(dec))
		}
	})
}

// keyIDOverride stamps every claim with another key's ID, as a buggy
// Evidence might.
type keyIDOverride struct {
	Evidence
	keyID string
}

func (k *keyIDOverride) SimpleSigning(ctx context.Context, keyring []byte) ([]Claim, error) {
	cs, err := k.Evidence.SimpleSigning(ctx, keyring)
	for i := range cs {
		cs[i].KeyID = k.keyID
	}
	return cs, err
}

func TestSigstoreSigned(t *testing.T) {
	a, b, c := newKey(t, "p256"), newKey(t, "ed25519"), newKey(t, "rsa2048")
	dir := t.TempDir()
	writeFile(t, dir, "a.pub", a.pem)
	writeFile(t, dir, "b.pub", b.pem)
	p := mustLoad(t, `{"default":[{"type":"sigstoreSigned","keyPaths":["a.pub","b.pub"]}]}`, dir)
	d := hash('a')
	img := func(ev Evidence) Image {
		return Image{Ref: ref(t, "example.com/app:v1"), ManifestDigest: d, Evidence: ev}
	}

	for _, tc := range []struct {
		name     string
		signers  []testKey
		want     bool
		verified []bool
	}{
		{"first key", []testKey{a}, true, []bool{true, false}},
		{"second key", []testKey{b}, true, []bool{false, true}},
		{"both", []testKey{a, b}, true, []bool{true, true}},
		{"unlisted key", []testKey{c}, false, []bool{false, false}},
		{"none", nil, false, []bool{false, false}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ev := &memEvidence{}
			for _, k := range tc.signers {
				ev.sign(t, k, "example.com/app:v1", d)
			}
			dec := mustEvaluate(t, p, img(ev))
			if dec.Allowed != tc.want {
				t.Fatalf("allowed = %v, want %v (%s)", dec.Allowed, tc.want, firstFailure(dec))
			}
			for i, s := range dec.Signatures {
				if s.KeyName != []string{"a.pub", "b.pub"}[i] || s.KeyID != []string{a.id, b.id}[i] || s.Verified != tc.verified[i] {
					t.Errorf("signature %d = %+v", i, s)
				}
			}
		})
	}

}

// TestEvaluateAll: requirements after a failing one are still evaluated
// and reported; a key named by several requirements is looked up once.
func TestEvaluateAll(t *testing.T) {
	k := newKey(t, "p256")
	p := mustLoad(t, `{"default":[
		{"type":"reject"},
		{"type":"sigstoreSigned","keyData":"`+k.b64()+`"},
		{"type":"sigstoreThreshold","threshold":1,"keys":[{"name":"k","keyData":"`+k.b64()+`"}]},
		{"type":"encrypted"}]}`, "")
	ev := (&memEvidence{}).sign(t, k, "example.com/app:v1", hash('a'))
	d := mustEvaluate(t, p, Image{Ref: ref(t, "example.com/app:v1"), ManifestDigest: hash('a'), LayerMediaTypes: []string{encGzip}, Evidence: ev})
	if d.Allowed {
		t.Fatal("reject did not refuse")
	}
	got := []RequirementResult{}
	for _, r := range d.Requirements {
		got = append(got, RequirementResult{Type: r.Type, OK: r.OK})
	}
	want := []RequirementResult{{"reject", false, ""}, {"sigstoreSigned", true, ""}, {"sigstoreThreshold", true, ""}, {"encrypted", true, ""}}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("requirements %+v, want %+v", got, want)
	}
	if len(d.Signatures) != 2 {
		t.Errorf("signatures %+v, want one per key and requirement", d.Signatures)
	}
	if ev.calls != 1 {
		t.Errorf("Evidence.Sigstore called %d times for one key, want 1", ev.calls)
	}
	if err := d.Err(); !strings.Contains(err.Error(), "reject: the policy rejects every image") {
		t.Errorf("Err() = %v, want the first unmet requirement", err)
	}
}

func TestDecisionErr(t *testing.T) {
	p := mustLoad(t, `{"default":[{"type":"reject"}],"transports":{"docker":{
		"":[{"type":"encrypted"}],
		"example.com/public":[{"type":"insecureAcceptAnything"}],
		"example.com/enc":[{"type":"insecureAcceptAnything"},{"type":"encrypted"}]}}}`, "")
	noTransportDefault := mustLoad(t, `{"default":[{"type":"reject"}]}`, "")
	for _, tc := range []struct {
		name, image string
		p           *Policy
		want        string
	}{
		{"allowed", "example.com/public/app:v1", p, ""},
		{"scope", "example.com/enc/app:v1", p, `image example.com/enc/app:v1: refused by policy: scope "example.com/enc": encrypted: layer 1 of 1 is not encrypted (` + plainGzip + `)`},
		{"transport default", "quay.io/app:v1", p, `image quay.io/app:v1: refused by policy: docker transport default scope "": encrypted: layer 1 of 1 is not encrypted`},
		{"global default", "busybox", noTransportDefault, `image busybox: refused by policy: global default: reject: the policy rejects every image in this scope`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := mustEvaluate(t, tc.p, Image{Ref: ref(t, tc.image), ManifestDigest: hash('a'), LayerMediaTypes: []string{plainGzip}})
			err := d.Err()
			if tc.want == "" {
				if err != nil || !d.Allowed {
					t.Fatalf("allowed=%v Err()=%v", d.Allowed, err)
				}
				return
			}
			if !errors.Is(err, errdefs.ErrRefused) || errdefs.ExitCode(err) != 3 {
				t.Fatalf("Err() = %v, want ErrRefused", err)
			}
			if !strings.HasPrefix(err.Error(), tc.want) {
				t.Errorf("Err()\n got %q\nwant %q", err, tc.want)
			}
		})
	}
	if err := (&Decision{}).Err(); !errors.Is(err, errdefs.ErrRefused) {
		t.Errorf("zero Decision: Err() = %v, want a refusal", err)
	}
}

// TestReasonsAreOneLine: a registry controls the identities signatures
// claim; they must not break the one-line error.
func TestReasonsAreOneLine(t *testing.T) {
	k := newKey(t, "p256")
	p := mustLoad(t, `{"default":[{"type":"sigstoreSigned","keyData":"`+k.b64()+`"}]}`, "")
	ev := (&memEvidence{}).sign(t, k, "example.com/app:v1\nallowed: true", hash('a'))
	d := mustEvaluate(t, p, Image{Ref: ref(t, "example.com/app:v1"), ManifestDigest: hash('a'), Evidence: ev})
	if d.Allowed {
		t.Fatal("allowed")
	}
	err := d.Err()
	if strings.ContainsAny(err.Error(), "\n\r") {
		t.Errorf("Err() spans lines: %q", err)
	}
	if want := `sigstoreSigned: no signature is accepted: keyData[0]: signed identity "example.com/app:v1\nallowed: true" is not accepted`; !strings.Contains(err.Error(), want) {
		t.Errorf("Err() = %q\nwant it to contain %q", err, want)
	}
}

func TestEvaluateErrors(t *testing.T) {
	p := mustLoad(t, `{"default":[{"type":"insecureAcceptAnything"}]}`, "")
	if _, err := p.Evaluate(context.Background(), Image{}); !errors.Is(err, errdefs.ErrInvalidConfig) {
		t.Errorf("no reference: got %v, want ErrInvalidConfig", err)
	}
	invalid := ref(t, "example.com/a..b:v1") // go-containerregistry accepts it, docker's grammar does not
	if _, err := p.Evaluate(context.Background(), Image{Ref: invalid}); !errors.Is(err, errdefs.ErrInvalidConfig) {
		t.Errorf("invalid reference: got %v, want ErrInvalidConfig", err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if d, err := p.Evaluate(ctx, Image{Ref: ref(t, "example.com/app:v1")}); !errors.Is(err, context.Canceled) || d != nil {
		t.Errorf("canceled: got %v, %v", d, err)
	}

	// Canceled while a signature lookup runs: no decision, not a refusal.
	k := newKey(t, "p256")
	ps := mustLoad(t, `{"default":[{"type":"sigstoreSigned","keyData":"`+k.b64()+`"}]}`, "")
	ctx, cancel = context.WithCancel(context.Background())
	ev := &cancelingEvidence{cancel: cancel}
	if d, err := ps.Evaluate(ctx, Image{Ref: ref(t, "example.com/app:v1"), Evidence: ev}); !errors.Is(err, context.Canceled) || d != nil {
		t.Errorf("canceled during lookup: got %v, %v", d, err)
	}
}

type cancelingEvidence struct{ cancel context.CancelFunc }

func (e *cancelingEvidence) Sigstore(ctx context.Context, _ SigstoreTrust) ([]Claim, []Rejection, error) {
	e.cancel()
	return nil, nil, ctx.Err()
}

func (e *cancelingEvidence) SimpleSigning(ctx context.Context, _ []byte) ([]Claim, error) {
	e.cancel()
	return nil, ctx.Err()
}

// TestEvaluateConcurrent: a Policy is shared by concurrent pulls (run with
// -race).
func TestEvaluateConcurrent(t *testing.T) {
	k := newKey(t, "p256")
	p := mustLoad(t, `{"default":[{"type":"sigstoreSigned","keyData":"`+k.b64()+`"},{"type":"encrypted"}]}`, "")
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tag := fmt.Sprintf("example.com/app:v%d", i)
			ev := (&memEvidence{}).sign(t, k, tag, hash('a'))
			d, err := p.Evaluate(context.Background(), Image{Ref: ref(t, tag), ManifestDigest: hash('a'), LayerMediaTypes: []string{encZstd}, Evidence: ev})
			if err != nil || !d.Allowed {
				t.Errorf("%s: %v %v", tag, err, d)
			}
		}()
	}
	wg.Wait()
}

// BenchmarkEvaluate measures one decision over a 2-of-3 threshold and an
// encryption check, the in-memory Evidence verifying real ECDSA
// signatures.
func BenchmarkEvaluate(b *testing.B) {
	ci, qa, release := newKey(b, "p256"), newKey(b, "p256"), newKey(b, "p256")
	p := mustLoad(b, `{"default":[{"type":"sigstoreThreshold","threshold":2,"keys":[
		{"name":"ci","keyData":"`+ci.b64()+`"},{"name":"qa","keyData":"`+qa.b64()+`"},{"name":"release","keyData":"`+release.b64()+`"}],
		"signedIdentity":{"type":"matchRepository"}},{"type":"encrypted"}]}`, "")
	ev := (&memEvidence{}).sign(b, ci, "example.com/app", hash('a')).sign(b, qa, "example.com/app", hash('a'))
	img := Image{Ref: ref(b, "example.com/app:v1"), ManifestDigest: hash('a'), LayerMediaTypes: []string{encGzip, encZstd}, Evidence: ev}
	for b.Loop() {
		if d, err := p.Evaluate(context.Background(), img); err != nil || !d.Allowed {
			b.Fatal(err, d)
		}
	}
}
