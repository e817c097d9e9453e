package tests

import (
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/guest-puller/guest-puller/internal/testutil"
)

// TestKeyless: images signed keyless, verified offline. A CA issues
// signing certificates as Fulcio does, cosign v2.6.5 signs with them
// (--certificate, --certificate-chain, --tlog-upload=false) and a Rekor SET
// the test signs with its own log key over the canonical entry is attached
// as cosign attaches Rekor's. Every refusal is exit 3 and names the check
// that failed; an accepted signature's signer (issuer, subject, certificate
// serial) is in --json and in policy check.
func TestKeyless(t *testing.T) {
	reg := testutil.StartRegistry(t, testutil.RegistryOptions{})
	src := testutil.BuildImage(t, smallImage(t, "signed keyless"))
	ca, otherCA := testutil.NewCA(t, "fulcio"), testutil.NewCA(t, "other")
	rekor, otherRekor := testutil.NewRekorLog(t), testutil.NewRekorLog(t)
	const issuer = "https://issuer.example.com"
	now := time.Now()

	// signed pushes src to repo and signs it keyless with a fresh key
	// under a certificate issued by certCA with leaf; bundle makes the
	// Rekor SET to attach (none when nil, and then cosign sign uploads
	// the signature itself). It returns the reference and the
	// certificate's serial.
	type setFunc func(t *testing.T, c testutil.Certified, cert []byte) []byte
	// A SET records when the log took the entry: at signing, inside the
	// certificate's ten minutes. (A time taken once at the start fell
	// before the certificates issued a minute later on a loaded machine.)
	logged := func(log *testutil.RekorLog) setFunc {
		return func(t *testing.T, c testutil.Certified, cert []byte) []byte {
			return log.SET(t, c.RawSignature(t), c.PayloadBytes(t), cert, time.Now())
		}
	}
	signed := func(t *testing.T, repo string, certCA *testutil.CA, leaf testutil.LeafOptions, set setFunc) (string, string) {
		t.Helper()
		ref, d := sigPush(t, reg, src, repo+":1")
		key := testutil.NewCosignKey(t)
		cert := certCA.Issue(t, key.PublicKey(t), leaf)
		at := reg.Host + "/" + repo + "@" + d
		if set == nil {
			key.SignCertified(t, at, cert, certCA.ChainPEM(), true)
		} else {
			c := key.SignCertified(t, at, cert, certCA.ChainPEM(), false)
			c.Attach(t, at, set(t, c, cert))
		}
		return ref, certSerial(t, cert)
	}
	dev := testutil.LeafOptions{Email: "dev@example.com", Issuer: issuer}

	e := newEnv(t)
	e.write("keys/fulcio.pem", string(ca.RootPEM()))
	e.write("keys/rekor.pub", string(rekor.PublicKeyPEM(t)))
	ciKey := testutil.NewCosignKey(t)
	e.write("keys/ci.pub", sigReadFile(t, ciKey.Pub))
	fulcio := func(email string) map[string]any {
		return map[string]any{"caPath": "keys/fulcio.pem", "oidcIssuer": issuer, "subjectEmail": email}
	}
	h := reg.Host
	pol := e.write("keyless.json", sigPolicy(t, map[string][]sigReq{
		h + "/fulcio": {{"type": "sigstoreSigned", "fulcio": fulcio("dev@example.com"), "rekorPublicKeyPath": "keys/rekor.pub", "signedIdentity": sigMatchRepository}},
		h + "/pki":    {{"type": "sigstoreSigned", "pki": map[string]any{"caRootsPath": "keys/fulcio.pem", "subjectEmail": "dev@example.com"}, "signedIdentity": sigMatchRepository}},
		h + "/threshold": {{"type": "sigstoreThreshold", "threshold": 2, "signedIdentity": sigMatchRepository, "keys": []sigReq{
			{"name": "ci", "keyPath": "keys/ci.pub"},
			{"name": "release-bot", "fulcio": fulcio("bot@example.com"), "rekorPublicKeyPath": "keys/rekor.pub"},
			{"name": "qa", "fulcio": fulcio("qa@example.com"), "rekorPublicKeyPath": "keys/rekor.pub"},
		}}},
	}))
	args := []string{"--policy", pol, "--insecure-registry", h}

	t.Run("valid", func(t *testing.T) {
		e := sigEnv(e, t)
		ref, serial := signed(t, "fulcio/valid", ca, dev, logged(rekor))
		res := e.pull(ref, append(args, "--container-id", "keyless")...)
		sigCheckPolicy(t, res, h+"/fulcio", "sigstoreSigned")
		sigHello(t, res, "signed keyless")
		if len(res.Signatures) != 1 {
			t.Fatalf("signatures %+v", res.Signatures)
		}
		s := res.Signatures[0]
		if s.KeyName != "fulcio" || !s.Verified || s.Issuer != issuer || s.Subject != "dev@example.com" || s.Serial != serial || s.KeyID == "" {
			t.Errorf("signature %+v: want verified, issued by %s to dev@example.com with serial %s", s, issuer, serial)
		}
		r := e.gp(append([]string{"policy", "check", ref}, args...)...)
		if r.Code != 0 {
			t.Fatalf("policy check: exit %d: %s", r.Code, r.Stderr)
		}
		sigWant(t, r.Stdout, "signature key fulcio", "verified (issuer "+issuer+", subject dev@example.com, certificate serial "+serial+")")
	})

	for _, tc := range []struct {
		name   string
		certCA *testutil.CA
		leaf   testutil.LeafOptions
		set    setFunc
		want   []string
	}{
		{"wrong issuer", ca, testutil.LeafOptions{Email: "dev@example.com", Issuer: "https://accounts.evil.example"}, logged(rekor), []string{"issuer:", "https://accounts.evil.example"}},
		{"wrong subject", ca, testutil.LeafOptions{Email: "mallory@example.com", Issuer: issuer}, logged(rekor), []string{"subject:", "mallory@example.com"}},
		{"another CA", otherCA, dev, logged(rekor), []string{"chain:", "unknown authority"}},
		{"expired before the SET", ca, testutil.LeafOptions{Email: "dev@example.com", Issuer: issuer, NotBefore: now.Add(-time.Hour)}, logged(rekor), []string{"validity time:"}},
		{"SET by another log", ca, dev, logged(otherRekor), []string{"SET signature:"}},
		{"SET of another signature", ca, dev, func(t *testing.T, c testutil.Certified, cert []byte) []byte {
			return rekor.SET(t, []byte("another signature"), c.PayloadBytes(t), cert, time.Now())
		}, []string{"SET body:", "another signature"}},
		{"no SET", ca, dev, nil, []string{"SET:", "no Rekor SET"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := sigEnv(e, t)
			ref, _ := signed(t, "fulcio/"+strings.ToLower(strings.ReplaceAll(tc.name, " ", "-")), tc.certCA, tc.leaf, tc.set)
			msg := e.pullFails(3, ref, args...)
			sigWant(t, msg, append([]string{"sigstoreSigned", "fulcio:"}, tc.want...)...)
			r := e.gp(append([]string{"policy", "check", ref, "--json"}, args...)...)
			var out struct {
				Allowed    bool `json:"allowed"`
				Signatures []struct {
					Verified bool   `json:"verified"`
					Reason   string `json:"reason"`
					Issuer   string `json:"issuer"`
				} `json:"signatures"`
			}
			if err := json.Unmarshal([]byte(r.Stdout), &out); err != nil || r.Code != 3 {
				t.Fatalf("policy check --json: exit %d, %v: %s %s", r.Code, err, r.Stdout, r.Stderr)
			}
			if out.Allowed || len(out.Signatures) != 1 || out.Signatures[0].Verified || out.Signatures[0].Issuer != "" || !strings.Contains(out.Signatures[0].Reason, tc.want[0]) {
				t.Errorf("policy check: %+v; want refused, the reason naming %q", out, tc.want[0])
			}
		})
	}

	t.Run("pki", func(t *testing.T) {
		e := sigEnv(e, t)
		ref, serial := signed(t, "pki/app", ca, testutil.LeafOptions{Email: "dev@example.com"}, nil)
		res := e.pull(ref, append(args, "--container-id", "pki")...)
		if len(res.Signatures) != 1 || !res.Signatures[0].Verified || res.Signatures[0].Subject != "dev@example.com" || res.Signatures[0].Serial != serial {
			t.Errorf("signatures %+v", res.Signatures)
		}
		// No OIDC issuer in a private CA's certificate: the certificate's
		// issuer names the signer's authority.
		if got := res.Signatures[0].Issuer; !strings.Contains(got, "fulcio intermediate") {
			t.Errorf("issuer %q, want the intermediate's name", got)
		}
		other, _ := signed(t, "pki/other", ca, testutil.LeafOptions{Email: "intern@example.com"}, nil)
		sigWant(t, e.pullFails(3, other, args...), "pki: subject:", "intern@example.com")
	})

	t.Run("threshold of a key and two identities", func(t *testing.T) {
		e := sigEnv(e, t)
		bot := testutil.LeafOptions{Email: "bot@example.com", Issuer: issuer}
		qa := testutil.LeafOptions{Email: "qa@example.com", Issuer: issuer}
		oneRef, _ := signed(t, "threshold/one", ca, bot, logged(rekor))
		sigWant(t, e.pullFails(3, oneRef, args...), "1 of 3 keys signed (release-bot), 2 needed")

		twoRef, d := sigPush(t, reg, src, "threshold/two:1")
		at := reg.Host + "/threshold/two@" + d
		for _, leaf := range []testutil.LeafOptions{bot, qa} {
			key := testutil.NewCosignKey(t)
			cert := ca.Issue(t, key.PublicKey(t), leaf)
			c := key.SignCertified(t, at, cert, ca.ChainPEM(), false)
			c.Attach(t, at, rekor.SET(t, c.RawSignature(t), c.PayloadBytes(t), cert, time.Now()))
		}
		res := e.pull(twoRef, append(args, "--container-id", "two")...)
		sigCheckPolicy(t, res, h+"/threshold", "sigstoreThreshold")
		var verified []string
		for _, s := range res.Signatures {
			if s.Verified {
				verified = append(verified, s.KeyName+"="+s.Subject)
			}
		}
		if fmt.Sprint(verified) != "[release-bot=bot@example.com qa=qa@example.com]" {
			t.Errorf("verified signers %v", verified)
		}

		keyRef, d := sigPush(t, reg, src, "threshold/key:1")
		ciKey.Sign(t, reg.Host+"/threshold/key@"+d)
		at = reg.Host + "/threshold/key@" + d
		key := testutil.NewCosignKey(t)
		cert := ca.Issue(t, key.PublicKey(t), qa)
		c := key.SignCertified(t, at, cert, ca.ChainPEM(), false)
		c.Attach(t, at, rekor.SET(t, c.RawSignature(t), c.PayloadBytes(t), cert, time.Now()))
		res = e.pull(keyRef, append(args, "--container-id", "key")...)
		sigCheckPolicy(t, res, h+"/threshold", "sigstoreThreshold")
	})
}

// certSerial is the serial number of a PEM certificate, as guest-puller
// reports it (hex).
func certSerial(t *testing.T, certPEM []byte) string {
	t.Helper()
	c := parseCertPEM(t, certPEM)
	return new(big.Int).Set(c.SerialNumber).Text(16)
}

func parseCertPEM(t *testing.T, data []byte) *x509.Certificate {
	t.Helper()
	block, _ := pem.Decode(data)
	if block == nil {
		t.Fatal("no PEM certificate")
	}
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}
