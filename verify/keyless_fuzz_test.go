package verify

import (
	"crypto/ecdsa"
	"crypto/x509"
	"strings"
	"testing"
	"time"

	"github.com/guest-puller/guest-puller/internal/testutil"
	"github.com/guest-puller/guest-puller/policy"
)

// FuzzKeyless feeds checkKeyless what a registry controls in a signature
// layer: the certificate, the chain and the Rekor bundle annotations, and
// the signature. It must refuse, never panic, and never accept a signature
// the seeds' log and CA did not make for this payload.
func FuzzKeyless(f *testing.F) {
	ca := testutil.NewCA(f, "fuzz")
	log := testutil.NewRekorLog(f)
	key := generateKey(f)
	payload := []byte(`{"critical":{"identity":{"docker-reference":"example.com/app"},"image":{"docker-manifest-digest":"sha256:` + strings.Repeat("0", 64) + `"},"type":"cosign container image signature"},"optional":null}`)
	sig := signECDSA(f, key, payload)
	cert := ca.Issue(f, key.Public(), testutil.LeafOptions{Email: "dev@example.com", Issuer: "https://issuer.example.com"})
	now := time.Now()
	f.Add(cert, ca.ChainPEM(), log.SET(f, sig, payload, cert, now), sig)
	f.Add([]byte("-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n"), []byte{}, []byte(`{"SignedEntryTimestamp":"AA==","Payload":{"body":"e30=","integratedTime":0,"logIndex":0,"logID":""}}`), []byte{1})
	f.Add([]byte{}, []byte{}, []byte(`{"Payload":1}`), []byte{})

	rekorKey := log.PublicKeyPEM(f)
	trust := policy.SigstoreTrust{
		Roots: []*x509.Certificate{ca.Root}, OIDCIssuer: "https://issuer.example.com", SubjectEmail: "dev@example.com",
		RekorKeys: []*ecdsa.PublicKey{parseECKey(f, rekorKey)},
	}
	f.Fuzz(func(t *testing.T, certificate, chain, bundle, signature []byte) {
		s := rawSigstore{payload: payload, signature: signature, certificate: certificate, chain: chain, bundle: bundle}
		signer, _, rej := checkKeyless(s, trust, now)
		if rej == nil && signer == nil {
			t.Fatal("neither accepted nor rejected")
		}
		if rej == nil && (string(signature) != string(sig) || signer.Subject != "dev@example.com") {
			t.Fatalf("accepted a signature the seeds did not make: %+v", signer)
		}
	})
}
