package compat_test

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/guest-puller/guest-puller/internal/testutil"
)

// TestKeylessVerdicts: keyless signatures (certificates from a CA that
// issues as Fulcio does, Rekor SETs signed by the test's own log key, made
// and attached by cosign) and key signatures with Rekor SETs, evaluated by
// guest-puller and by go.podman.io/image/v5 under the same fulcio, pki and
// rekorPublicKey policies: the verdicts are the same.
func TestKeylessVerdicts(t *testing.T) {
	c := newBareCorpus(t)
	ctx := t.Context()
	src := testutil.BuildImage(t, testutil.ImageSpec{Layers: [][]byte{
		testutil.Tar(t, testutil.File("hello", "keyless", 0o644)),
	}})
	ca, otherCA := testutil.NewCA(t, "fulcio"), testutil.NewCA(t, "other")
	rekor, otherRekor := testutil.NewRekorLog(t), testutil.NewRekorLog(t)
	writeFile(t, filepath.Join(c.keys, "ca.pem"), string(ca.RootPEM()))
	writeFile(t, filepath.Join(c.keys, "rekor.pub"), string(rekor.PublicKeyPEM(t)))
	const issuer = "https://issuer.example.com"
	now := time.Now()
	h := c.reg.Host

	push := func(repo string) string {
		c.reg.Push(t, src, repo+":1")
		return h + "/" + repo + "@" + manifestDigest(t, c, repo)
	}
	type set func(cert []byte, s testutil.Certified) []byte
	// A SET records when the log took the entry: at signing, inside the
	// certificate's ten minutes, unless a case says otherwise. (A time
	// taken once at the start fell before certificates issued a minute
	// later on a loaded machine.)
	logged := func(log *testutil.RekorLog, when time.Time) set {
		return func(cert []byte, s testutil.Certified) []byte {
			at := when
			if at.IsZero() {
				at = time.Now()
			}
			return log.SET(t, s.RawSignature(t), s.PayloadBytes(t), cert, at)
		}
	}
	var atSigning time.Time
	keyless := func(repo string, certCA *testutil.CA, leaf testutil.LeafOptions, bundle set) {
		at := push(repo)
		key := testutil.NewCosignKey(t)
		cert := certCA.Issue(t, key.PublicKey(t), leaf)
		if bundle == nil {
			key.SignCertified(t, at, cert, certCA.ChainPEM(), true)
			return
		}
		s := key.SignCertified(t, at, cert, certCA.ChainPEM(), false)
		s.Attach(t, at, bundle(cert, s))
	}
	dev := testutil.LeafOptions{Email: "dev@example.com", Issuer: issuer}
	keyless("fulcio/valid", ca, dev, logged(rekor, atSigning))
	keyless("fulcio/expired-now", ca, testutil.LeafOptions{Email: "dev@example.com", Issuer: issuer, NotBefore: now.Add(-2 * time.Hour)}, logged(rekor, now.Add(-2*time.Hour+5*time.Minute)))
	keyless("fulcio/wrong-issuer", ca, testutil.LeafOptions{Email: "dev@example.com", Issuer: "https://accounts.evil.example"}, logged(rekor, atSigning))
	keyless("fulcio/wrong-subject", ca, testutil.LeafOptions{Email: "mallory@example.com", Issuer: issuer}, logged(rekor, atSigning))
	keyless("fulcio/uri-subject", ca, testutil.LeafOptions{URI: "https://github.com/org/repo/.github/workflows/release.yml@refs/heads/main", Issuer: issuer}, logged(rekor, atSigning))
	keyless("fulcio/another-ca", otherCA, dev, logged(rekor, atSigning))
	keyless("fulcio/expired-before-set", ca, testutil.LeafOptions{Email: "dev@example.com", Issuer: issuer, NotBefore: now.Add(-time.Hour)}, logged(rekor, atSigning))
	keyless("fulcio/set-by-another-log", ca, dev, logged(otherRekor, atSigning))
	keyless("fulcio/set-of-another-signature", ca, dev, func(cert []byte, s testutil.Certified) []byte {
		return rekor.SET(t, []byte("another signature"), s.PayloadBytes(t), cert, time.Now())
	})
	keyless("fulcio/set-of-another-payload", ca, dev, func(cert []byte, s testutil.Certified) []byte {
		return rekor.SET(t, s.RawSignature(t), []byte("{}"), cert, time.Now())
	})
	keyless("fulcio/no-set", ca, dev, nil)
	keyless("pki/valid", ca, testutil.LeafOptions{Email: "dev@example.com"}, nil)
	keyless("pki/wrong-subject", ca, testutil.LeafOptions{Email: "intern@example.com"}, nil)
	keyless("pki/expired-now", ca, testutil.LeafOptions{Email: "dev@example.com", NotBefore: now.Add(-time.Hour)}, nil)
	keyless("pki/another-ca", otherCA, testutil.LeafOptions{Email: "dev@example.com"}, nil)

	// Key signatures with a Rekor SET over the key.
	rekorKey := testutil.NewCosignKey(t)
	writeFile(t, filepath.Join(c.keys, "key.pub"), string(must(t, rekorKey.Pub)))
	keyLogged := func(repo string, bundle func(s testutil.Certified) []byte) {
		at := push(repo)
		if bundle == nil {
			rekorKey.Sign(t, at)
			return
		}
		s := rekorKey.SignCertified(t, at, nil, nil, false)
		s.Attach(t, at, bundle(s))
	}
	keyPEM := must(t, rekorKey.Pub)
	keyLogged("key/logged", func(s testutil.Certified) []byte {
		return rekor.SET(t, s.RawSignature(t), s.PayloadBytes(t), keyPEM, time.Now())
	})
	keyLogged("key/not-logged", nil)
	keyLogged("key/logged-by-another-log", func(s testutil.Certified) []byte {
		return otherRekor.SET(t, s.RawSignature(t), s.PayloadBytes(t), keyPEM, time.Now())
	})

	regD := filepath.Join(c.scratch, "registries.d")
	writeFile(t, filepath.Join(regD, "attachments.yaml"), "default-docker:\n  use-sigstore-attachments: true\n")
	identity := `"signedIdentity": {"type": "matchRepository"}`
	policy := c.expand(t, fmt.Sprintf(`{
  "default": [{"type": "reject"}],
  "transports": {"docker": {
    "%[1]s/fulcio": [{"type": "sigstoreSigned", "fulcio": {"caPath": "${KEYS}/ca.pem", "oidcIssuer": %[2]q, "subjectEmail": "dev@example.com"}, "rekorPublicKeyPath": "${KEYS}/rekor.pub", %[3]s}],
    "%[1]s/pki": [{"type": "sigstoreSigned", "pki": {"caRootsData": "${DATA:ca.pem}", "subjectEmail": "dev@example.com"}, %[3]s}],
    "%[1]s/key": [{"type": "sigstoreSigned", "keyPath": "${KEYS}/key.pub", "rekorPublicKeyData": "${DATA:rekor.pub}", %[3]s}]
  }}
}`, h, issuer, identity))
	path := filepath.Join(c.keys, "keyless.json")
	writeFile(t, path, policy)
	upPol, err := upstreamLoad([]byte(policy))
	if err != nil {
		t.Fatal(err)
	}
	p, err := c.checker(ctx, path, regD)
	if err != nil {
		t.Fatal(err)
	}
	// cosign itself, offline, with the same trust roots as the policy
	// (SIGSTORE_ROOT_FILE the CA's root alone, as caPath names it;
	// SIGSTORE_REKOR_PUBLIC_KEY the log's key) asked for the same
	// identity: a third verdict on the very same signatures. No SCT is
	// embedded (none of the policies asks for one); pki has no log.
	fulcioID := []string{"--certificate-identity", "dev@example.com", "--certificate-oidc-issuer", issuer, "--insecure-ignore-sct"}
	pkiID := []string{"--certificate-identity", "dev@example.com", "--certificate-oidc-issuer-regexp", ".*", "--insecure-ignore-sct", "--insecure-ignore-tlog"}
	keyID := []string{"--key", filepath.Join(c.keys, "key.pub")}
	cosign := newCosignVerifier(t, filepath.Join(c.keys, "ca.pem"), filepath.Join(c.keys, "rekor.pub"))
	for _, tc := range []struct {
		repo    string
		allowed bool
		cosign  []string
	}{
		{"fulcio/valid", true, fulcioID},
		{"fulcio/expired-now", true, fulcioID},
		{"fulcio/wrong-issuer", false, fulcioID},
		{"fulcio/wrong-subject", false, fulcioID},
		{"fulcio/uri-subject", false, fulcioID},
		{"fulcio/another-ca", false, fulcioID},
		{"fulcio/expired-before-set", false, fulcioID},
		{"fulcio/set-by-another-log", false, fulcioID},
		{"fulcio/set-of-another-signature", false, fulcioID},
		{"fulcio/set-of-another-payload", false, fulcioID},
		{"fulcio/no-set", false, fulcioID},
		{"pki/valid", true, pkiID},
		{"pki/wrong-subject", false, pkiID},
		{"pki/expired-now", false, pkiID},
		{"pki/another-ca", false, pkiID},
		{"key/logged", true, keyID},
		{"key/not-logged", false, keyID},
		{"key/logged-by-another-log", false, keyID},
	} {
		t.Run(tc.repo, func(t *testing.T) {
			img := h + "/" + tc.repo + ":1"
			up := c.upstreamVerdict(ctx, t, upPol, regD, img)
			ours := c.ourVerdict(ctx, p, img)
			cs := cosign.verdict(t, manifestRef(t, c, tc.repo), tc.cosign...)
			want := "refused"
			if tc.allowed {
				want = "allowed"
			}
			t.Logf("go.podman.io/image/v5: %s; cosign verify: %s; guest-puller: %s", up, cs, ours)
			if up.state != want || ours.state != want || cs.state != want {
				t.Errorf("want %s:\n  go.podman.io/image/v5: %s\n  cosign verify:         %s\n  guest-puller:          %s", want, up, cs, ours)
			}
			if !tc.allowed && !strings.Contains(ours.detail, ": ") {
				t.Errorf("guest-puller's refusal names no check: %s", ours)
			}
		})
	}
}

// cosignVerifier runs `cosign verify` offline: trust roots from files,
// no network, the registry on plain http.
type cosignVerifier struct {
	bin string
	env []string
}

func newCosignVerifier(t *testing.T, root, rekorKey string) *cosignVerifier {
	home := t.TempDir()
	return &cosignVerifier{
		bin: testutil.Cosign(t),
		env: append(os.Environ(), "HOME="+home, "TUF_ROOT="+filepath.Join(home, "tuf"),
			"SIGSTORE_ROOT_FILE="+root, "SIGSTORE_REKOR_PUBLIC_KEY="+rekorKey),
	}
}

// verdict is what cosign says of ref (host/repo@digest) with args.
func (v *cosignVerifier) verdict(t *testing.T, ref string, args ...string) verdict {
	t.Helper()
	cmd := exec.CommandContext(t.Context(), v.bin, append(append([]string{"verify", "--offline", "--allow-http-registry", "--allow-insecure-registry"}, args...), ref)...)
	cmd.Env = v.env
	var stderr strings.Builder
	cmd.Stderr = &stderr
	err := cmd.Run()
	var exit *exec.ExitError
	switch {
	case err == nil:
		return verdict{state: "allowed"}
	case errors.As(err, &exit):
		lines := strings.Split(strings.TrimSpace(stderr.String()), "\n")
		return verdict{state: "refused", detail: lines[len(lines)-1]}
	default:
		t.Fatalf("cosign verify: %v", err)
		return verdict{}
	}
}

// manifestRef is repo:1 by digest, as cosign verifies it.
func manifestRef(t *testing.T, c *corpus, repo string) string {
	return c.reg.Host + "/" + repo + "@" + manifestDigest(t, c, repo)
}

func must(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// manifestDigest is the digest of repo:1 as the registry serves it.
func manifestDigest(t *testing.T, c *corpus, repo string) string {
	t.Helper()
	sum := sha256.Sum256(c.reg.RawManifest(t, repo, "1"))
	return "sha256:" + hex.EncodeToString(sum[:])
}
