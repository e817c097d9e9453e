package verify

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/sigstore/sigstore/pkg/cryptoutils"
	"github.com/sigstore/sigstore/pkg/signature"

	"github.com/guest-puller/guest-puller/internal/testutil"
	"github.com/guest-puller/guest-puller/policy"
)

// TestKeyless checks keyless signatures as containers/image does, each
// refusal naming the check that failed: the Rekor SET's signature and body
// (this signature, payload and certificate), the certificate's chain to the
// policy's CA at the SET's time, its OIDC issuer and subject, and the
// signature itself. Certificates come from a CA that issues as Fulcio does
// and SETs from a log that signs as Rekor does (internal/testutil).
func TestKeyless(t *testing.T) {
	ctx := context.Background()
	reg := startRegistry(t, false)
	ca, otherCA := testutil.NewCA(t, "fulcio"), testutil.NewCA(t, "other")
	rekor, otherRekor := testutil.NewRekorLog(t), testutil.NewRekorLog(t)
	rekorKey := parseECKey(t, rekor.PublicKeyPEM(t))
	d, _ := v1.NewHash("sha256:" + strings.Repeat("d", 64))
	const issuer = "https://issuer.example.com"
	now := time.Now()

	// sign makes a keyless signature of d by a fresh key under a
	// certificate from ca with o, logged in log at when (no SET if log is
	// nil), with changes applied to the signature layer.
	type layerOpts struct {
		certCA  *testutil.CA
		leaf    testutil.LeafOptions
		log     *testutil.RekorLog
		setTime time.Time
		// tamper changes what the SET logs, or the layer.
		setSig, setPayload, setCert []byte
		noChain, noCert, badSig     bool
	}
	sign := func(repo string, o layerOpts) {
		key := generateKey(t)
		payload := containersImagePayload(repo+":v1", d)
		sig := signECDSA(t, key, payload)
		if o.badSig {
			// Made with a key the certificate is not for (and logged).
			sig = signECDSA(t, generateKey(t), payload)
		}
		if o.certCA == nil {
			o.certCA = ca
		}
		cert := o.certCA.Issue(t, key.Public(), o.leaf)
		more := map[string]string{certificateAnnotation: string(cert), chainAnnotation: string(o.certCA.ChainPEM())}
		if o.noChain {
			delete(more, chainAnnotation)
		}
		if o.noCert {
			delete(more, certificateAnnotation)
		}
		if o.log != nil {
			setSig, setPayload, setCert := sig, payload, cert
			if o.setSig != nil {
				setSig = o.setSig
			}
			if o.setPayload != nil {
				setPayload = o.setPayload
			}
			if o.setCert != nil {
				setCert = o.setCert
			}
			when := o.setTime
			if when.IsZero() {
				when = now
			}
			more[bundleAnnotation] = string(o.log.SET(t, setSig, setPayload, setCert, when))
		}
		writeSigManifest(t, mustRepo(t, reg+"/"+repo).Tag("sha256-"+d.Hex+".sig"), []sigLayer{{payload: payload, sig: base64.StdEncoding.EncodeToString(sig), more: more}})
	}
	fulcio := policy.SigstoreTrust{Roots: []*x509.Certificate{ca.Root}, OIDCIssuer: issuer, SubjectEmail: "dev@example.com", RekorKeys: []*ecdsa.PublicKey{rekorKey}}
	pki := policy.SigstoreTrust{Roots: []*x509.Certificate{ca.Root}, SubjectEmail: "dev@example.com"}
	dev := testutil.LeafOptions{Email: "dev@example.com", Issuer: issuer}
	otherKey := generateKey(t)
	otherCert := ca.Issue(t, otherKey.Public(), dev)

	for _, tc := range []struct {
		name   string
		layer  layerOpts
		trust  policy.SigstoreTrust
		check  string // the check that fails; "" for accepted
		reason string
	}{
		{name: "valid", layer: layerOpts{leaf: dev, log: rekor}, trust: fulcio},
		{name: "valid at the SET's time, expired now", layer: layerOpts{leaf: testutil.LeafOptions{Email: "dev@example.com", Issuer: issuer, NotBefore: now.Add(-2 * time.Hour)}, log: rekor, setTime: now.Add(-2*time.Hour + 5*time.Minute)}, trust: fulcio},
		{name: "chain from the policy's intermediates", layer: layerOpts{leaf: dev, log: rekor, noChain: true}, trust: func() policy.SigstoreTrust {
			tr := fulcio
			tr.Intermediates = []*x509.Certificate{ca.Intermediate}
			return tr
		}()},
		{name: "wrong issuer", layer: layerOpts{leaf: testutil.LeafOptions{Email: "dev@example.com", Issuer: "https://evil.example.com"}, log: rekor}, trust: fulcio, check: "issuer", reason: `"https://evil.example.com"`},
		{name: "no issuer", layer: layerOpts{leaf: testutil.LeafOptions{Email: "dev@example.com"}, log: rekor}, trust: fulcio, check: "issuer"},
		{name: "wrong subject", layer: layerOpts{leaf: testutil.LeafOptions{Email: "mallory@example.com", Issuer: issuer}, log: rekor}, trust: fulcio, check: "subject", reason: "mallory@example.com"},
		{name: "URI subject", layer: layerOpts{leaf: testutil.LeafOptions{URI: "https://github.com/org/repo/.github/workflows/release.yml@refs/heads/main", Issuer: issuer}, log: rekor}, trust: fulcio, check: "subject"},
		{name: "another CA", layer: layerOpts{certCA: otherCA, leaf: dev, log: rekor}, trust: fulcio, check: "chain", reason: "unknown authority"},
		{name: "no chain", layer: layerOpts{leaf: dev, log: rekor, noChain: true}, trust: fulcio, check: "chain"},
		{name: "expired before the SET's time", layer: layerOpts{leaf: testutil.LeafOptions{Email: "dev@example.com", Issuer: issuer, NotBefore: now.Add(-time.Hour)}, log: rekor}, trust: fulcio, check: "validity time"},
		{name: "not yet valid at the SET's time", layer: layerOpts{leaf: dev, log: rekor, setTime: now.Add(-time.Hour)}, trust: fulcio, check: "validity time"},
		{name: "SET by another log", layer: layerOpts{leaf: dev, log: otherRekor}, trust: fulcio, check: "SET signature"},
		{name: "SET of another signature", layer: layerOpts{leaf: dev, log: rekor, setSig: signECDSA(t, otherKey, []byte("other"))}, trust: fulcio, check: "SET body", reason: "another signature"},
		{name: "SET of another payload", layer: layerOpts{leaf: dev, log: rekor, setPayload: []byte("{}")}, trust: fulcio, check: "SET body", reason: "another payload"},
		{name: "SET of another certificate", layer: layerOpts{leaf: dev, log: rekor, setCert: otherCert}, trust: fulcio, check: "SET body", reason: "another key or certificate"},
		{name: "no SET", layer: layerOpts{leaf: dev}, trust: fulcio, check: "SET"},
		{name: "no certificate", layer: layerOpts{leaf: dev, log: rekor, noCert: true}, trust: fulcio, check: "certificate"},
		{name: "signature by another key", layer: layerOpts{leaf: dev, log: rekor, badSig: true}, trust: fulcio, check: "signature"},
		{name: "pki", layer: layerOpts{leaf: testutil.LeafOptions{Email: "dev@example.com"}}, trust: pki},
		{name: "pki hostname", layer: layerOpts{leaf: testutil.LeafOptions{DNSName: "build.example.com"}}, trust: policy.SigstoreTrust{Roots: []*x509.Certificate{ca.Root}, SubjectHostname: "build.example.com"}},
		{name: "pki wrong hostname", layer: layerOpts{leaf: testutil.LeafOptions{DNSName: "build.example.com"}}, trust: policy.SigstoreTrust{Roots: []*x509.Certificate{ca.Root}, SubjectHostname: "release.example.com"}, check: "subject"},
		{name: "pki expired now", layer: layerOpts{leaf: testutil.LeafOptions{Email: "dev@example.com", NotBefore: now.Add(-time.Hour)}}, trust: pki, check: "validity time"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			repo := "keyless/" + strings.NewReplacer(" ", "-", "'", "", ",", "").Replace(strings.ToLower(tc.name))
			sign(repo, tc.layer)
			ev := New(Options{}).Evidence(Target{Repo: mustRepo(t, reg+"/"+repo), Identity: mustRef(t, reg+"/"+repo+":v1"), Digests: []v1.Hash{d}})
			claims, rejections, err := ev.Sigstore(ctx, tc.trust)
			if err != nil {
				t.Fatal(err)
			}
			if tc.check == "" {
				if len(claims) != 1 || len(rejections) != 0 {
					t.Fatalf("claims %+v, rejections %v; want one claim", claims, rejections)
				}
				c := claims[0]
				if c.Signer == nil || c.KeyID == "" || c.ManifestDigest != d || c.DockerReference != repo+":v1" {
					t.Errorf("claim %+v", c)
				}
				want := tc.layer.leaf.Email
				if want == "" {
					want = tc.layer.leaf.DNSName
				}
				if c.Signer.Subject != want || c.Signer.Serial == "" || (tc.trust.OIDCIssuer != "" && c.Signer.Issuer != issuer) {
					t.Errorf("signer %+v", c.Signer)
				}
				return
			}
			if len(claims) != 0 || len(rejections) != 1 || rejections[0].Check != tc.check || !strings.Contains(rejections[0].Reason, tc.reason) {
				t.Fatalf("claims %+v, rejections %v; want one rejection by the %q check containing %q", claims, rejections, tc.check, tc.reason)
			}
		})
	}

	t.Run("key with Rekor", func(t *testing.T) {
		key := generateKey(t)
		pemKey, err := cryptoutils.MarshalPublicKeyToPEM(key.Public())
		if err != nil {
			t.Fatal(err)
		}
		trust := policy.SigstoreTrust{PublicKey: key.Public(), RekorKeys: []*ecdsa.PublicKey{rekorKey}}
		for _, c := range []struct {
			name, check string
			set         func(sig, payload []byte) []byte
		}{
			{"logged", "", func(sig, payload []byte) []byte { return rekor.SET(t, sig, payload, pemKey, now) }},
			{"not logged", "SET", nil},
			{"logged with another key", "SET body", func(sig, payload []byte) []byte { return rekor.SET(t, sig, payload, otherCert, now) }},
			{"SET by another log", "SET signature", func(sig, payload []byte) []byte { return otherRekor.SET(t, sig, payload, pemKey, now) }},
		} {
			t.Run(c.name, func(t *testing.T) {
				repo := "rekor/" + strings.ReplaceAll(strings.ToLower(c.name), " ", "-")
				payload := containersImagePayload(repo+":v1", d)
				sig := signECDSA(t, key, payload)
				more := map[string]string{}
				if c.set != nil {
					more[bundleAnnotation] = string(c.set(sig, payload))
				}
				writeSigManifest(t, mustRepo(t, reg+"/"+repo).Tag("sha256-"+d.Hex+".sig"), []sigLayer{{payload: payload, sig: base64.StdEncoding.EncodeToString(sig), more: more}})
				ev := New(Options{}).Evidence(Target{Repo: mustRepo(t, reg+"/"+repo), Identity: mustRef(t, reg+"/"+repo+":v1"), Digests: []v1.Hash{d}})
				claims, rejections, err := ev.Sigstore(ctx, trust)
				if err != nil {
					t.Fatal(err)
				}
				if c.check == "" {
					if len(claims) != 1 || len(rejections) != 0 || claims[0].Signer != nil {
						t.Fatalf("claims %+v, rejections %v; want one claim by the key", claims, rejections)
					}
					return
				}
				if len(claims) != 0 || len(rejections) != 1 || rejections[0].Check != c.check {
					t.Fatalf("claims %+v, rejections %v; want a %q rejection", claims, rejections, c.check)
				}
				// The same signature without Rekor keys: accepted.
				if claims, _, _ := ev.Sigstore(ctx, policy.SigstoreTrust{PublicKey: key.Public()}); len(claims) != 1 {
					t.Errorf("without Rekor keys: claims %+v", claims)
				}
			})
		}
	})
}

func parseECKey(t testing.TB, pemBytes []byte) *ecdsa.PublicKey {
	t.Helper()
	pub, err := cryptoutils.UnmarshalPEMToPublicKey(pemBytes)
	if err != nil {
		t.Fatal(err)
	}
	return pub.(*ecdsa.PublicKey)
}

func signECDSA(t testing.TB, key crypto.Signer, payload []byte) []byte {
	t.Helper()
	s, err := signature.LoadSigner(key, crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	sig, err := s.SignMessage(strings.NewReader(string(payload)))
	if err != nil {
		t.Fatal(err)
	}
	return sig
}

func generateKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}
