package compat_test

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
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
	logged := func(log *testutil.RekorLog, when time.Time) set {
		return func(cert []byte, s testutil.Certified) []byte {
			return log.SET(t, s.RawSignature(t), s.PayloadBytes(t), cert, when)
		}
	}
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
	keyless("fulcio/valid", ca, dev, logged(rekor, now))
	keyless("fulcio/expired-now", ca, testutil.LeafOptions{Email: "dev@example.com", Issuer: issuer, NotBefore: now.Add(-2 * time.Hour)}, logged(rekor, now.Add(-2*time.Hour+5*time.Minute)))
	keyless("fulcio/wrong-issuer", ca, testutil.LeafOptions{Email: "dev@example.com", Issuer: "https://accounts.evil.example"}, logged(rekor, now))
	keyless("fulcio/wrong-subject", ca, testutil.LeafOptions{Email: "mallory@example.com", Issuer: issuer}, logged(rekor, now))
	keyless("fulcio/uri-subject", ca, testutil.LeafOptions{URI: "https://github.com/org/repo/.github/workflows/release.yml@refs/heads/main", Issuer: issuer}, logged(rekor, now))
	keyless("fulcio/another-ca", otherCA, dev, logged(rekor, now))
	keyless("fulcio/expired-before-set", ca, testutil.LeafOptions{Email: "dev@example.com", Issuer: issuer, NotBefore: now.Add(-time.Hour)}, logged(rekor, now))
	keyless("fulcio/set-by-another-log", ca, dev, logged(otherRekor, now))
	keyless("fulcio/set-of-another-signature", ca, dev, func(cert []byte, s testutil.Certified) []byte {
		return rekor.SET(t, []byte("another signature"), s.PayloadBytes(t), cert, now)
	})
	keyless("fulcio/set-of-another-payload", ca, dev, func(cert []byte, s testutil.Certified) []byte {
		return rekor.SET(t, s.RawSignature(t), []byte("{}"), cert, now)
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
		return rekor.SET(t, s.RawSignature(t), s.PayloadBytes(t), keyPEM, now)
	})
	keyLogged("key/not-logged", nil)
	keyLogged("key/logged-by-another-log", func(s testutil.Certified) []byte {
		return otherRekor.SET(t, s.RawSignature(t), s.PayloadBytes(t), keyPEM, now)
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
	for _, tc := range []struct {
		repo    string
		allowed bool
	}{
		{"fulcio/valid", true},
		{"fulcio/expired-now", true},
		{"fulcio/wrong-issuer", false},
		{"fulcio/wrong-subject", false},
		{"fulcio/uri-subject", false},
		{"fulcio/another-ca", false},
		{"fulcio/expired-before-set", false},
		{"fulcio/set-by-another-log", false},
		{"fulcio/set-of-another-signature", false},
		{"fulcio/set-of-another-payload", false},
		{"fulcio/no-set", false},
		{"pki/valid", true},
		{"pki/wrong-subject", false},
		{"pki/expired-now", false},
		{"pki/another-ca", false},
		{"key/logged", true},
		{"key/not-logged", false},
		{"key/logged-by-another-log", false},
	} {
		t.Run(tc.repo, func(t *testing.T) {
			img := h + "/" + tc.repo + ":1"
			up := c.upstreamVerdict(ctx, t, upPol, regD, img)
			ours := c.ourVerdict(ctx, p, img)
			want := "refused"
			if tc.allowed {
				want = "allowed"
			}
			if up.state != want || ours.state != want {
				t.Errorf("want %s:\n  go.podman.io/image/v5: %s\n  guest-puller:          %s", want, up, ours)
			}
			if !tc.allowed && !strings.Contains(ours.detail, ": ") {
				t.Errorf("guest-puller's refusal names no check: %s", ours)
			}
		})
	}
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
