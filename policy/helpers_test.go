package policy

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/ProtonMail/go-crypto/openpgp"
	"github.com/ProtonMail/go-crypto/openpgp/armor"
	"github.com/ProtonMail/go-crypto/openpgp/packet"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/guest-puller/guest-puller/internal/testutil"
)

// testKey is a real sigstore key pair the tests sign claims with.
type testKey struct {
	signer crypto.Signer
	pem    []byte // PKIX "PUBLIC KEY"
	id     string // hex SHA-256 of the DER public key, as Claim.KeyID
}

func newKey(t testing.TB, kind string) testKey {
	t.Helper()
	signer := testutil.NewSigner(t, kind)
	der, err := x509.MarshalPKIXPublicKey(signer.Public())
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(der)
	return testKey{
		signer: signer,
		pem:    pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}),
		id:     hex.EncodeToString(sum[:]),
	}
}

func (k testKey) b64() string { return base64.StdEncoding.EncodeToString(k.pem) }

// payload is what memEvidence signs for a claim.
func payload(c Claim) []byte {
	return []byte(c.DockerReference + "\n" + c.ManifestDigest.String())
}

func sign(t testing.TB, s crypto.Signer, msg []byte) []byte {
	t.Helper()
	var (
		sig []byte
		err error
	)
	if _, ok := s.(ed25519.PrivateKey); ok {
		sig, err = s.Sign(rand.Reader, msg, crypto.Hash(0))
	} else {
		sum := sha256.Sum256(msg)
		sig, err = s.Sign(rand.Reader, sum[:], crypto.SHA256)
	}
	if err != nil {
		t.Fatal(err)
	}
	return sig
}

func verifySig(pub crypto.PublicKey, msg, sig []byte) bool {
	sum := sha256.Sum256(msg)
	switch pub := pub.(type) {
	case *ecdsa.PublicKey:
		return ecdsa.VerifyASN1(pub, sum[:], sig)
	case ed25519.PublicKey:
		return ed25519.Verify(pub, msg, sig)
	case *rsa.PublicKey:
		return rsa.VerifyPKCS1v15(pub, crypto.SHA256, sum[:], sig) == nil
	}
	return false
}

// memEvidence is an in-memory Evidence. Its sigstore signatures are real
// signatures over a claim: Sigstore returns the claims whose signature
// verifies with the key it is handed, so a policy that passed the wrong
// key, or no real key, finds nothing. GPG claims are filed by primary key
// fingerprint and returned for the keys of the keyring handed over.
type memEvidence struct {
	mu      sync.Mutex
	sigs    []memSig
	keyless []memKeyless
	gpg     map[string][]Claim
	err     error
	calls   int
	gpgRead int
}

type memSig struct {
	claim Claim
	sig   []byte
}

func (e *memEvidence) sign(t testing.TB, k testKey, ref string, d v1.Hash) *memEvidence {
	t.Helper()
	c := Claim{DockerReference: ref, ManifestDigest: d}
	e.sigs = append(e.sigs, memSig{claim: c, sig: sign(t, k.signer, payload(c))})
	return e
}

func (e *memEvidence) Sigstore(ctx context.Context, trust SigstoreTrust) ([]Claim, []Rejection, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.calls++
	if e.err != nil {
		return nil, nil, e.err
	}
	if trust.PublicKey == nil {
		return e.keylessClaims(trust)
	}
	pub := trust.PublicKey
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, nil, fmt.Errorf("Sigstore called with %T, not a public key: %w", pub, err)
	}
	sum := sha256.Sum256(der)
	var out []Claim
	for _, s := range e.sigs {
		if verifySig(pub, payload(s.claim), s.sig) {
			c := s.claim
			c.KeyID = hex.EncodeToString(sum[:])
			out = append(out, c)
		}
	}
	return out, nil, nil
}

// memKeyless is a keyless signature as memEvidence holds it: who the
// certificate names, and the root it chains to. (The certificate checks
// themselves are verify's, tested there.)
type memKeyless struct {
	claim Claim // with Signer and KeyID (the certificate's key)
	root  *x509.Certificate
}

// keylessClaims accepts the keyless signatures whose root, issuer and
// subject trust names, and says why the others are refused.
func (e *memEvidence) keylessClaims(trust SigstoreTrust) ([]Claim, []Rejection, error) {
	var out []Claim
	var rej []Rejection
	for _, k := range e.keyless {
		switch {
		case !slices.ContainsFunc(trust.Roots, k.root.Equal):
			rej = append(rej, Rejection{"chain", "x509: certificate signed by unknown authority"})
		case trust.OIDCIssuer != "" && k.claim.Signer.Issuer != trust.OIDCIssuer:
			rej = append(rej, Rejection{"issuer", fmt.Sprintf("the certificate's issuer is %q", k.claim.Signer.Issuer)})
		case trust.SubjectEmail != "" && k.claim.Signer.Subject != trust.SubjectEmail:
			rej = append(rej, Rejection{"subject", fmt.Sprintf("the certificate names %q", k.claim.Signer.Subject)})
		default:
			out = append(out, k.claim)
		}
	}
	return out, rej, nil
}

func (e *memEvidence) SimpleSigning(ctx context.Context, keyring []byte) ([]Claim, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.gpgRead++
	if e.err != nil {
		return nil, e.err
	}
	fprs, err := parseKeyring(keyring)
	if err != nil {
		return nil, err
	}
	var out []Claim
	for _, f := range fprs {
		for _, c := range e.gpg[f] {
			c.KeyID = f
			out = append(out, c)
		}
	}
	return out, nil
}

// gpgKey is a real OpenPGP key, exported as the tests need it.
type gpgKey struct {
	fingerprint string
	armored     []byte
	binary      []byte
	private     []byte // armored private key block
}

func newGPGKey(t testing.TB, name string) gpgKey {
	t.Helper()
	e, err := openpgp.NewEntity(name, "", name+"@example.com", &packet.Config{Algorithm: packet.PubKeyAlgoEdDSA})
	if err != nil {
		t.Fatal(err)
	}
	var bin, arm, priv bytes.Buffer
	if err := e.Serialize(&bin); err != nil {
		t.Fatal(err)
	}
	w, err := armor.Encode(&arm, openpgp.PublicKeyType, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Serialize(w); err != nil {
		t.Fatal(err)
	}
	w.Close()
	w, err = armor.Encode(&priv, openpgp.PrivateKeyType, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.SerializePrivate(w, nil); err != nil {
		t.Fatal(err)
	}
	w.Close()
	return gpgKey{
		fingerprint: strings.ToUpper(hex.EncodeToString(e.PrimaryKey.Fingerprint)),
		armored:     arm.Bytes(),
		binary:      bin.Bytes(),
		private:     priv.Bytes(),
	}
}

// newCACert returns a CA certificate in PEM.
func newCACert(t testing.TB) []byte { return testutil.NewCA(t, "test CA").RootPEM() }

func writeFile(t testing.TB, dir, name string, data []byte) {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

func mustLoad(t testing.TB, policy, baseDir string) *Policy {
	t.Helper()
	p, err := Load(context.Background(), []byte(policy), LoadOptions{BaseDir: baseDir})
	if err != nil {
		t.Fatalf("Load: %v\npolicy: %s", err, policy)
	}
	return p
}

func hash(c byte) v1.Hash {
	return v1.Hash{Algorithm: "sha256", Hex: strings.Repeat(string(c), 64)}
}

func ref(t testing.TB, s string) name.Reference {
	t.Helper()
	r, err := name.ParseReference(s)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func mustEvaluate(t testing.TB, p *Policy, img Image) *Decision {
	t.Helper()
	d, err := p.Evaluate(context.Background(), img)
	if err != nil {
		t.Fatalf("Evaluate(%s): %v", img.Ref, err)
	}
	return d
}

// firstFailure is the reason of the first unmet requirement, or "".
func firstFailure(d *Decision) string {
	for _, r := range d.Requirements {
		if !r.OK {
			return r.Type + ": " + r.Reason
		}
	}
	return ""
}

var errStoreDown = errors.New("signature store unreachable")
