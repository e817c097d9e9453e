package policy

import (
	"context"
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// exampleKey reads one of the demo key pairs of examples/keys.
func exampleKey(t *testing.T, name string) testKey {
	t.Helper()
	priv := readPEM(t, filepath.Join("..", "examples", "keys", name+".key"), "PRIVATE KEY")
	key, err := x509.ParsePKCS8PrivateKey(priv)
	if err != nil {
		t.Fatalf("%s.key: %v", name, err)
	}
	signer := key.(crypto.Signer)
	pubDER := readPEM(t, filepath.Join("..", "examples", "keys", name+".pub"), "PUBLIC KEY")
	if der, _ := x509.MarshalPKIXPublicKey(signer.Public()); string(der) != string(pubDER) {
		t.Fatalf("%s.pub is not the public half of %s.key", name, name)
	}
	sum := sha256.Sum256(pubDER)
	return testKey{signer: signer, pem: pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER}), id: hex.EncodeToString(sum[:])}
}

func readPEM(t *testing.T, path, typ string) []byte {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(data)
	if block == nil || block.Type != typ {
		t.Fatalf("%s: want one %q PEM block", path, typ)
	}
	return block.Bytes
}

// TestExamplePolicy loads policy.example.json as the team ships it, from
// another working directory's point of view (keys resolve against the
// policy's directory), and evaluates each cell of the matrix with
// signatures made by the demo keys.
func TestExamplePolicy(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("..", "policy.example.json"))
	if err != nil {
		t.Fatal(err)
	}
	base, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	p, err := Load(context.Background(), data, LoadOptions{BaseDir: base})
	if err != nil {
		t.Fatalf("policy.example.json: %v", err)
	}
	signer, ci, qa, release := exampleKey(t, "signer"), exampleKey(t, "ci"), exampleKey(t, "qa"), exampleKey(t, "release")

	d := hash('d')
	encrypted := []string{encGzip, encZstd}
	plain := []string{plainGzip, plainGzip}
	for _, tc := range []struct {
		name, image string
		layers      []string
		signers     []testKey
		want        bool
		scope       string
		reason      string // of the first unmet requirement
	}{
		{"confidential: signed and encrypted", "registry.example.com/confidential/app:v1", encrypted, []testKey{signer}, true, "registry.example.com/confidential", ""},
		{"confidential: signed, plain", "registry.example.com/confidential/app:v1", plain, []testKey{signer}, false, "registry.example.com/confidential", "encrypted: layer 1 of 2 is not encrypted"},
		{"confidential: encrypted, unsigned", "registry.example.com/confidential/app:v1", encrypted, nil, false, "registry.example.com/confidential", "sigstoreSigned: a signature was required"},
		{"confidential: encrypted, signed by another key", "registry.example.com/confidential/app:v1", encrypted, []testKey{ci}, false, "registry.example.com/confidential", "sigstoreSigned"},
		{"confidential: partly encrypted", "registry.example.com/confidential/app:v1", []string{encGzip, plainGzip}, []testKey{signer}, false, "registry.example.com/confidential", "encrypted: layer 2 of 2 is not encrypted"},
		{"encrypted: encrypted", "registry.example.com/encrypted/app:v1", encrypted, nil, true, "registry.example.com/encrypted", ""},
		{"encrypted: plain", "registry.example.com/encrypted/app:v1", plain, nil, false, "registry.example.com/encrypted", "encrypted: layer 1 of 2"},
		{"signed: signed", "registry.example.com/signed/app:v1", plain, []testKey{signer}, true, "registry.example.com/signed", ""},
		{"signed: signed, by digest", "registry.example.com/signed/app@" + d.String(), plain, []testKey{signer}, true, "registry.example.com/signed", ""},
		{"signed: unsigned", "registry.example.com/signed/app:v1", encrypted, nil, false, "registry.example.com/signed", "sigstoreSigned: a signature was required"},
		{"signed: signed by the release key", "registry.example.com/signed/app:v1", plain, []testKey{release}, false, "registry.example.com/signed", "sigstoreSigned"},
		{"public: plain, unsigned", "registry.example.com/public/app:v1", plain, nil, true, "registry.example.com/public", ""},
		{"release: ci and qa", "registry.example.com/release/app:v1", plain, []testKey{ci, qa}, true, "registry.example.com/release", ""},
		{"release: qa and release", "registry.example.com/release/app:v1", plain, []testKey{qa, release}, true, "registry.example.com/release", ""},
		{"release: release only", "registry.example.com/release/app:v1", plain, []testKey{release}, false, "registry.example.com/release", "sigstoreThreshold: 1 of 3 keys signed (release), 2 needed"},
		{"release: image signer does not count", "registry.example.com/release/app:v1", plain, []testKey{signer, ci}, false, "registry.example.com/release", "sigstoreThreshold: 1 of 3 keys signed (ci), 2 needed"},
		{"other repository of the host", "registry.example.com/other/app:v1", encrypted, []testKey{signer}, false, "default", "reject"},
		{"docker hub", "busybox", encrypted, []testKey{signer}, false, "default", "reject"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ev := &memEvidence{}
			for _, k := range tc.signers {
				// cosign's claim: the repository, without tag
				ev.sign(t, k, ref(t, tc.image).Context().Name(), d)
			}
			dec := mustEvaluate(t, p, Image{Ref: ref(t, tc.image), ManifestDigest: d, LayerMediaTypes: tc.layers, Evidence: ev})
			if dec.Allowed != tc.want {
				t.Fatalf("allowed = %v, want %v (%s)", dec.Allowed, tc.want, firstFailure(dec))
			}
			if dec.Scope != tc.scope {
				t.Errorf("scope %q, want %q", dec.Scope, tc.scope)
			}
			if got := firstFailure(dec); !strings.HasPrefix(got, tc.reason) {
				t.Errorf("first failure %q, want %q", got, tc.reason)
			}
		})
	}
}

// BenchmarkLoadExample measures loading policy.example.json, key files
// read and parsed.
func BenchmarkLoadExample(b *testing.B) {
	data, err := os.ReadFile(filepath.Join("..", "policy.example.json"))
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if _, err := Load(context.Background(), data, LoadOptions{BaseDir: ".."}); err != nil {
			b.Fatal(err)
		}
	}
}
