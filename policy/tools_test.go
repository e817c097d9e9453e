package policy

import (
	"encoding/base64"
	"go/build"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// These tests feed Load keys made by the real tools users make them with,
// so that a format detail (armor headers, several keys in one export,
// cosign's PEM) cannot slip past tests that only use Go-generated keys.

// tool finds a command on PATH, or where `go install` puts it; a missing
// tool fails the test (scripts/setup installs them).
func tool(t *testing.T, name string) string {
	t.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	p := filepath.Join(build.Default.GOPATH, "bin", name)
	if _, err := os.Stat(p); err == nil {
		return p
	}
	t.Fatalf("%s is not installed (run scripts/setup)", name)
	return ""
}

func run(t *testing.T, env []string, dir, cmd string, args ...string) []byte {
	t.Helper()
	c := exec.Command(cmd, args...)
	c.Dir = dir
	c.Env = append(os.Environ(), env...)
	out, err := c.Output()
	if err != nil {
		stderr := ""
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = string(ee.Stderr)
		}
		t.Fatalf("%s %s: %v\n%s", filepath.Base(cmd), strings.Join(args, " "), err, stderr)
	}
	return out
}

// TestGPGKeyrings loads keyrings exported by gpg (armored, binary, two keys
// in one export) and checks that a signature claim by one of them is
// reported under gpg's own fingerprint.
func TestGPGKeyrings(t *testing.T) {
	gpg := tool(t, "gpg")
	home := t.TempDir()
	env := []string{"GNUPGHOME=" + home}
	t.Cleanup(func() {
		// gpg starts an agent for the temporary home; stop it.
		if gpgconf, err := exec.LookPath("gpgconf"); err == nil {
			_ = exec.Command(gpgconf, "--homedir", home, "--kill", "all").Run()
		}
	})
	for _, uid := range []string{"Alice <alice@example.com>", "Bob <bob@example.com>"} {
		run(t, env, home, gpg, "--batch", "--pinentry-mode", "loopback", "--passphrase", "", "--quick-gen-key", uid, "ed25519", "sign", "never")
	}
	var fprs []string
	for _, line := range strings.Split(string(run(t, env, home, gpg, "--batch", "--with-colons", "--list-keys", "alice@example.com")), "\n") {
		if f := strings.Split(line, ":"); f[0] == "fpr" {
			fprs = append(fprs, f[9])
		}
	}
	if len(fprs) == 0 {
		t.Fatal("gpg listed no fingerprint for alice")
	}
	alice := fprs[0]

	dir := t.TempDir()
	writeFile(t, dir, "alice.asc", run(t, env, home, gpg, "--batch", "--armor", "--export", "alice@example.com"))
	writeFile(t, dir, "alice.gpg", run(t, env, home, gpg, "--batch", "--export", "alice@example.com"))
	writeFile(t, dir, "both.asc", run(t, env, home, gpg, "--batch", "--armor", "--export", "alice@example.com", "bob@example.com"))
	writeFile(t, dir, "both.gpg", run(t, env, home, gpg, "--batch", "--export", "alice@example.com", "bob@example.com"))
	secret := run(t, env, home, gpg, "--batch", "--pinentry-mode", "loopback", "--passphrase", "", "--armor", "--export-secret-keys", "alice@example.com")
	writeFile(t, dir, "secret.asc", secret)
	writeFile(t, dir, "secret.gpg", run(t, env, home, gpg, "--batch", "--pinentry-mode", "loopback", "--passphrase", "", "--export-secret-keys", "alice@example.com"))

	d := hash('a')
	claim := Claim{DockerReference: "example.com/app:v1", ManifestDigest: d}
	for _, file := range []string{"alice.asc", "alice.gpg", "both.asc", "both.gpg"} {
		t.Run(file, func(t *testing.T) {
			for _, src := range []string{
				`"keyPath":"` + file + `"`,
				`"keyData":"` + base64.StdEncoding.EncodeToString(mustRead(t, filepath.Join(dir, file))) + `"`,
			} {
				p := mustLoad(t, `{"default":[{"type":"signedBy","keyType":"GPGKeys",`+src+`}]}`, dir)
				ev := &memEvidence{gpg: map[string][]Claim{alice: {claim}}}
				dec := mustEvaluate(t, p, Image{Ref: ref(t, "example.com/app:v1"), ManifestDigest: d, Evidence: ev})
				if !dec.Allowed {
					t.Fatalf("%s: %s", src[:9], firstFailure(dec))
				}
				if got := dec.Signatures[0].KeyID; got != alice {
					t.Errorf("%s: KeyID %s, want gpg's fingerprint %s", src[:9], got, alice)
				}
			}
		})
	}
	for _, file := range []string{"secret.asc", "secret.gpg"} {
		t.Run(file, func(t *testing.T) {
			p := mustLoad(t, `{"default":[{"type":"signedBy","keyType":"GPGKeys","keyPath":"`+file+`"}]}`, dir)
			ev := &memEvidence{gpg: map[string][]Claim{alice: {claim}}}
			dec := mustEvaluate(t, p, Image{Ref: ref(t, "example.com/app:v1"), ManifestDigest: d, Evidence: ev})
			if dec.Allowed {
				t.Fatal("allowed under a keyring that is a secret key export")
			}
			if !strings.Contains(firstFailure(dec), "private key") {
				t.Errorf("reason %q does not say why", firstFailure(dec))
			}
		})
	}
}

// TestCosignKey loads a key pair made by cosign generate-key-pair and
// accepts an image whose claim cosign signed with it (sign-blob: the same
// ECDSA signature cosign puts on images).
func TestCosignKey(t *testing.T) {
	cosign := tool(t, "cosign")
	dir := t.TempDir()
	env := []string{"COSIGN_PASSWORD="}
	run(t, env, dir, cosign, "generate-key-pair")

	d := hash('c')
	claim := Claim{DockerReference: "registry.example.com/app", ManifestDigest: d}
	writeFile(t, dir, "payload", payload(claim))
	run(t, env, dir, cosign, "sign-blob", "--key", "cosign.key", "--tlog-upload=false", "--output-signature", "payload.sig", "payload")
	sig, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(mustRead(t, filepath.Join(dir, "payload.sig")))))
	if err != nil {
		t.Fatal(err)
	}

	p := mustLoad(t, `{"default":[{"type":"sigstoreSigned","keyPath":"cosign.pub","signedIdentity":{"type":"matchRepository"}}]}`, dir)
	for _, tc := range []struct {
		name string
		sigs []memSig
		want bool
	}{
		{"signed by cosign", []memSig{{claim: claim, sig: sig}}, true},
		{"signature over another claim", []memSig{{claim: Claim{DockerReference: claim.DockerReference, ManifestDigest: hash('e')}, sig: sig}}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ev := &memEvidence{sigs: tc.sigs}
			dec := mustEvaluate(t, p, Image{Ref: ref(t, "registry.example.com/app:v1"), ManifestDigest: d, Evidence: ev})
			if dec.Allowed != tc.want {
				t.Fatalf("allowed = %v, want %v (%s)", dec.Allowed, tc.want, firstFailure(dec))
			}
		})
	}
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return data
}
