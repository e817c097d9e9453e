package policy

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"slices"
	"strings"
	"testing"
)

func parseCA(t *testing.T, pemBytes []byte) *x509.Certificate {
	t.Helper()
	block, _ := pem.Decode(pemBytes)
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestKeyless: fulcio and pki signers, and identities in thresholds, are
// handed to Evidence with what the policy trusts, and what Evidence
// accepts or rejects becomes the decision and its report. (The certificate
// and SET checks themselves are verify's.)
func TestKeyless(t *testing.T) {
	dir := t.TempDir()
	caPEM, otherPEM := newCACert(t), newCACert(t)
	writeFile(t, dir, "ca.pem", caPEM)
	writeFile(t, dir, "other.pem", otherPEM)
	rekor := newKey(t, "p256")
	writeFile(t, dir, "rekor.pub", rekor.pem)
	key := newKey(t, "p384")
	writeFile(t, dir, "key.pub", key.pem)
	ca := parseCA(t, caPEM)
	d := hash('a')
	const issuer = "https://issuer.example.com"
	keyless := func(subject, keyID string) memKeyless {
		return memKeyless{root: ca, claim: Claim{
			DockerReference: "example.com/app:v1", ManifestDigest: d, KeyID: keyID,
			Signer: &Signer{Issuer: issuer, Subject: subject, Serial: "1f"},
		}}
	}
	img := func(ev Evidence) Image {
		return Image{Ref: ref(t, "example.com/app:v1"), ManifestDigest: d, Evidence: ev}
	}
	fulcio := func(caPath, iss, email string) string {
		return fmt.Sprintf(`"fulcio":{"caPath":%q,"oidcIssuer":%q,"subjectEmail":%q},"rekorPublicKeyPath":"rekor.pub"`, caPath, iss, email)
	}
	repo := `"signedIdentity":{"type":"matchRepository"}`

	for _, tc := range []struct {
		name, req string
		want      bool
		reason    string // in the first failure, or the verified result's reason
	}{
		{"fulcio", `{"type":"sigstoreSigned",` + fulcio("ca.pem", issuer, "dev@example.com") + `,` + repo + `}`, true, ""},
		{"fulcio wrong issuer", `{"type":"sigstoreSigned",` + fulcio("ca.pem", "https://other", "dev@example.com") + `,` + repo + `}`, false, `no signature is accepted: fulcio: issuer: the certificate's issuer is "https://issuer.example.com"`},
		{"fulcio wrong subject", `{"type":"sigstoreSigned",` + fulcio("ca.pem", issuer, "ops@example.com") + `,` + repo + `}`, false, "fulcio: subject:"},
		{"fulcio another CA", `{"type":"sigstoreSigned",` + fulcio("other.pem", issuer, "dev@example.com") + `,` + repo + `}`, false, "fulcio: chain: x509: certificate signed by unknown authority"},
		{"pki", `{"type":"sigstoreSigned","pki":{"caRootsPath":"ca.pem","subjectEmail":"dev@example.com"},` + repo + `}`, true, ""},
		{"identity still checked", `{"type":"sigstoreSigned",` + fulcio("ca.pem", issuer, "dev@example.com") + `,"signedIdentity":{"type":"exactRepository","dockerRepository":"example.com/other"}}`, false, "fulcio: signed identity"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := mustLoad(t, `{"default":[`+tc.req+`]}`, dir)
			ev := &memEvidence{keyless: []memKeyless{keyless("dev@example.com", "k1")}}
			dec := mustEvaluate(t, p, img(ev))
			if dec.Allowed != tc.want {
				t.Fatalf("allowed = %v, want %v (%s)", dec.Allowed, tc.want, firstFailure(dec))
			}
			if len(dec.Signatures) != 1 {
				t.Fatalf("signatures %+v, want one", dec.Signatures)
			}
			sig := dec.Signatures[0]
			if !tc.want {
				if !strings.Contains(firstFailure(dec), tc.reason) {
					t.Errorf("reason %q, want it to contain %q", firstFailure(dec), tc.reason)
				}
				if sig.Verified || sig.Signer != nil {
					t.Errorf("signature %+v: not verified, no signer", sig)
				}
				return
			}
			if !sig.Verified || sig.KeyID != "k1" || sig.Signer == nil || *sig.Signer != (Signer{Issuer: issuer, Subject: "dev@example.com", Serial: "1f"}) {
				t.Errorf("signature %+v, signer %+v: want verified by k1 with the certificate's identity", sig, sig.Signer)
			}
		})
	}

	t.Run("Rekor keys are required of key signatures", func(t *testing.T) {
		p := mustLoad(t, `{"default":[{"type":"sigstoreSigned","keyPath":"key.pub","rekorPublicKeyPath":"rekor.pub"}]}`, dir)
		ev := &trustRecorder{}
		mustEvaluate(t, p, img(ev))
		if len(ev.trusts) != 1 || ev.trusts[0].PublicKey == nil || len(ev.trusts[0].RekorKeys) != 1 || !ev.trusts[0].RekorKeys[0].Equal(rekor.signer.Public()) {
			t.Fatalf("trusts handed to Evidence: %+v", ev.trusts)
		}
	})

	// In a guest the trust roots come with the policy from the KBS: the
	// CA and the Rekor key are kbs:/// resources read through
	// LoadOptions.Read, as key files are.
	t.Run("trust roots from the KBS", func(t *testing.T) {
		resources := map[string][]byte{"kbs:///default/sigstore/fulcio-ca": caPEM, "kbs:///default/sigstore/rekor": rekor.pem}
		var asked []string
		read := func(_ context.Context, path string) ([]byte, error) {
			asked = append(asked, path)
			if data, ok := resources[path]; ok {
				return data, nil
			}
			return nil, fmt.Errorf("resource %s not found", path)
		}
		policy := `{"default":[{"type":"sigstoreSigned","fulcio":{"caPath":"kbs:///default/sigstore/fulcio-ca","oidcIssuer":"` + issuer + `","subjectEmail":"dev@example.com"},"rekorPublicKeyPath":"kbs:///default/sigstore/rekor",` + repo + `}]}`
		p, err := Load(context.Background(), []byte(policy), LoadOptions{Read: read})
		if err != nil {
			t.Fatal(err)
		}
		rec := &trustRecorder{}
		mustEvaluate(t, p, img(rec))
		if len(rec.trusts) != 1 || len(rec.trusts[0].Roots) != 1 || !rec.trusts[0].Roots[0].Equal(ca) || len(rec.trusts[0].RekorKeys) != 1 || !rec.trusts[0].RekorKeys[0].Equal(rekor.signer.Public()) {
			t.Fatalf("trusts handed to Evidence: %+v; want the KBS's CA and Rekor key", rec.trusts)
		}
		dec := mustEvaluate(t, p, img(&memEvidence{keyless: []memKeyless{keyless("dev@example.com", "k1")}}))
		if !dec.Allowed {
			t.Fatalf("refused: %s", firstFailure(dec))
		}
		if !slices.Contains(asked, "kbs:///default/sigstore/fulcio-ca") || !slices.Contains(asked, "kbs:///default/sigstore/rekor") {
			t.Errorf("read %q, want both KBS resources", asked)
		}
		delete(resources, "kbs:///default/sigstore/fulcio-ca")
		p, _ = Load(context.Background(), []byte(policy), LoadOptions{Read: read})
		if dec := mustEvaluate(t, p, img(&memEvidence{keyless: []memKeyless{keyless("dev@example.com", "k1")}})); dec.Allowed || !strings.Contains(firstFailure(dec), "kbs:///default/sigstore/fulcio-ca") {
			t.Fatalf("without the CA: allowed=%v, %s; want refused naming the resource", dec.Allowed, firstFailure(dec))
		}
	})

	t.Run("threshold over a key and two identities", func(t *testing.T) {
		p := mustLoad(t, `{"default":[{"type":"sigstoreThreshold","threshold":2,"keys":[
			{"name":"ci","keyPath":"key.pub"},
			{"name":"release-bot",`+fulcio("ca.pem", issuer, "bot@example.com")+`},
			{"name":"qa","pki":{"caRootsPath":"ca.pem","subjectEmail":"qa@example.com"}}],`+repo+`}]}`, dir)
		for _, c := range []struct {
			name   string
			ev     *memEvidence
			want   bool
			reason string
		}{
			{"one identity", &memEvidence{keyless: []memKeyless{keyless("bot@example.com", "k-bot")}}, false, "1 of 3 keys signed (release-bot), 2 needed"},
			{"two identities", &memEvidence{keyless: []memKeyless{keyless("bot@example.com", "k-bot"), keyless("qa@example.com", "k-qa")}}, true, "2 of 3 keys signed (release-bot, qa)"},
			{"key and identity", (&memEvidence{keyless: []memKeyless{keyless("qa@example.com", "k-qa")}}).sign(t, key, "example.com/app:v1", d), true, "2 of 3 keys signed (ci, qa)"},
			// Two identities met by certificates of one key are one signer.
			{"one key behind two identities", &memEvidence{keyless: []memKeyless{keyless("bot@example.com", "k-same"), keyless("qa@example.com", "k-same")}}, false, "1 of 3 keys signed (release-bot), 2 needed"},
		} {
			t.Run(c.name, func(t *testing.T) {
				dec := mustEvaluate(t, p, img(c.ev))
				if dec.Allowed != c.want || !strings.Contains(dec.Requirements[0].Reason, c.reason) {
					t.Fatalf("allowed = %v, reason %q; want %v, %q", dec.Allowed, dec.Requirements[0].Reason, c.want, c.reason)
				}
				if len(dec.Signatures) != 3 {
					t.Fatalf("signatures %+v, want one per key", dec.Signatures)
				}
			})
		}
	})
}

// trustRecorder is an Evidence that finds nothing and remembers what it was
// asked.
type trustRecorder struct{ trusts []SigstoreTrust }

func (r *trustRecorder) Sigstore(_ context.Context, t SigstoreTrust) ([]Claim, []Rejection, error) {
	r.trusts = append(r.trusts, t)
	return nil, nil, nil
}

func (r *trustRecorder) SimpleSigning(context.Context, []byte) ([]Claim, error) { return nil, nil }
