package testutil

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cyberphone/json-canonicalization/go/src/webpki.org/jsoncanonicalizer"
	"github.com/sigstore/sigstore/pkg/cryptoutils"
	"github.com/sigstore/sigstore/pkg/signature"
)

// Fulcio's issuer extensions: the first (the issuer as raw bytes) and the
// second (a DER UTF8String).
var (
	oidFulcioIssuerV1 = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 57264, 1, 1}
	oidFulcioIssuerV2 = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 57264, 1, 8}
)

// CA is a certificate authority that issues signing certificates the way
// Fulcio does: a root, an intermediate that signs the leaves, leaves for
// code signing with the OIDC issuer in Fulcio's extensions, the identity
// as email or URI SANs, a ten-minute validity.
type CA struct {
	Root, Intermediate *x509.Certificate
	interKey           *ecdsa.PrivateKey
	serial             atomic.Int64
}

// NewCA makes a root and an intermediate, valid for a day around now.
func NewCA(t testing.TB, name string) *CA {
	t.Helper()
	rootKey := mustECKey(t)
	interKey := mustECKey(t)
	now := time.Now()
	root := mustCert(t, &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{Organization: []string{name}, CommonName: name + " root"},
		NotBefore:             now.Add(-24 * time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}, nil, rootKey.Public(), rootKey)
	inter := mustCert(t, &x509.Certificate{
		SerialNumber:          big.NewInt(2),
		Subject:               pkix.Name{Organization: []string{name}, CommonName: name + " intermediate"},
		NotBefore:             now.Add(-24 * time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageCodeSigning},
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}, root, interKey.Public(), rootKey)
	ca := &CA{Root: root, Intermediate: inter, interKey: interKey}
	ca.serial.Store(100)
	return ca
}

// RootPEM is the root certificate, what a policy's caPath or caRootsPath
// names.
func (ca *CA) RootPEM() []byte { return certPEM(ca.Root) }

// ChainPEM is the chain above a leaf, intermediate first, root last: what
// `cosign sign --certificate-chain` takes.
func (ca *CA) ChainPEM() []byte { return append(certPEM(ca.Intermediate), certPEM(ca.Root)...) }

// LeafOptions say what a signing certificate asserts.
type LeafOptions struct {
	// Email and URI are the identity (SANs); DNSName a host name (pki).
	Email, URI, DNSName string
	// Issuer is the OIDC issuer, in both of Fulcio's extensions; "" for
	// none (a private CA).
	Issuer string
	// NotBefore defaults to a minute ago; the validity is ten minutes.
	NotBefore time.Time
}

// Issue makes a code-signing certificate for pub, signed by the
// intermediate, and returns it in PEM.
func (ca *CA) Issue(t testing.TB, pub crypto.PublicKey, o LeafOptions) []byte {
	t.Helper()
	if o.NotBefore.IsZero() {
		o.NotBefore = time.Now().Add(-time.Minute)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(ca.serial.Add(1)),
		NotBefore:    o.NotBefore,
		NotAfter:     o.NotBefore.Add(10 * time.Minute),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageCodeSigning},
	}
	if o.Email != "" {
		tmpl.EmailAddresses = []string{o.Email}
	}
	if o.URI != "" {
		u, err := url.Parse(o.URI)
		if err != nil {
			t.Fatal(err)
		}
		tmpl.URIs = []*url.URL{u}
	}
	if o.DNSName != "" {
		tmpl.DNSNames = []string{o.DNSName}
	}
	if o.Issuer != "" {
		v2, err := asn1.Marshal(o.Issuer)
		if err != nil {
			t.Fatal(err)
		}
		tmpl.ExtraExtensions = []pkix.Extension{
			{Id: oidFulcioIssuerV1, Value: []byte(o.Issuer)},
			{Id: oidFulcioIssuerV2, Value: v2},
		}
	}
	return certPEM(mustCert(t, tmpl, ca.Intermediate, pub, ca.interKey))
}

// RekorLog signs entries as a Rekor transparency log does, with its own
// key: a signed entry timestamp (SET) over the canonical JSON of the log
// entry.
type RekorLog struct {
	signer signature.SignerVerifier
	pub    crypto.PublicKey
	index  atomic.Int64
}

// NewRekorLog makes a log with a fresh ECDSA P-256 key.
func NewRekorLog(t testing.TB) *RekorLog {
	t.Helper()
	k := mustECKey(t)
	sv, err := signature.LoadECDSASignerVerifier(k, crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	return &RekorLog{signer: sv, pub: k.Public()}
}

// PublicKeyPEM is the log's key, what a policy's rekorPublicKeyPath names.
func (r *RekorLog) PublicKeyPEM(t testing.TB) []byte {
	t.Helper()
	p, err := cryptoutils.MarshalPublicKeyToPEM(r.pub)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// SET logs a hashedrekord entry for sig (raw signature bytes) over payload,
// made with the key or certificate in keyOrCertPEM, integrated at when, and
// returns cosign's bundle: {"SignedEntryTimestamp", "Payload": {"body",
// "integratedTime", "logIndex", "logID"}}.
func (r *RekorLog) SET(t testing.TB, sig, payload, keyOrCertPEM []byte, when time.Time) []byte {
	t.Helper()
	sum := sha256.Sum256(payload)
	body := map[string]any{
		"apiVersion": "0.0.1",
		"kind":       "hashedrekord",
		"spec": map[string]any{
			"data": map[string]any{"hash": map[string]any{"algorithm": "sha256", "value": hex.EncodeToString(sum[:])}},
			"signature": map[string]any{
				"content":   base64.StdEncoding.EncodeToString(sig),
				"publicKey": map[string]any{"content": base64.StdEncoding.EncodeToString(keyOrCertPEM)},
			},
		},
	}
	der, err := cryptoutils.MarshalPublicKeyToDER(r.pub)
	if err != nil {
		t.Fatal(err)
	}
	logID := sha256.Sum256(der)
	entry := map[string]any{
		"body":           base64.StdEncoding.EncodeToString(canonicalJSON(t, body)),
		"integratedTime": when.Unix(),
		"logIndex":       r.index.Add(1),
		"logID":          hex.EncodeToString(logID[:]),
	}
	canonical := canonicalJSON(t, entry)
	set, err := r.signer.SignMessage(bytes.NewReader(canonical))
	if err != nil {
		t.Fatal(err)
	}
	out, err := json.Marshal(map[string]any{"SignedEntryTimestamp": set, "Payload": json.RawMessage(canonical)})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// Certified is a cosign signature (made with a certificate, or by a key
// alone): what `cosign sign --output-signature --output-payload` wrote.
type Certified struct {
	Payload, Signature string // files: the payload, the base64 signature
	Cert, Chain        string // files: the certificate and its chain (PEM); "" for a key signature
}

// SignCertified signs ref (host/repo@sha256:…) with k under the
// certificate certPEM and the chain chainPEM: `cosign sign --certificate
// --certificate-chain --tlog-upload=false` (nil certPEM: a key signature,
// without them). With upload, cosign pushes the signature (annotated with
// the certificate and chain, without a Rekor SET); without, it only writes
// the payload and signature for Attach.
func (k CosignKey) SignCertified(t testing.TB, ref string, certPEM, chainPEM []byte, upload bool, extra ...string) Certified {
	t.Helper()
	dir := t.TempDir()
	c := Certified{
		Payload:   filepath.Join(dir, "payload.json"),
		Signature: filepath.Join(dir, "signature.b64"),
	}
	args := []string{"sign", "--key", k.Key, "--tlog-upload=false", "--yes", "--output-payload", c.Payload, "--output-signature", c.Signature}
	if certPEM != nil {
		c.Cert, c.Chain = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "chain.pem")
		for p, data := range map[string][]byte{c.Cert: certPEM, c.Chain: chainPEM} {
			if err := os.WriteFile(p, data, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		args = append(args, "--certificate", c.Cert, "--certificate-chain", c.Chain)
	}
	if !upload {
		args = append(args, "--upload=false")
	}
	RunEnv(t, cosignEnv(t), Cosign(t), append(append(args, extra...), ref)...)
	return c
}

// RawSignature is the signature c holds, decoded from cosign's base64.
func (c Certified) RawSignature(t testing.TB) []byte {
	t.Helper()
	b64, err := os.ReadFile(c.Signature)
	if err != nil {
		t.Fatal(err)
	}
	sig, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(b64)))
	if err != nil {
		t.Fatal(err)
	}
	return sig
}

// PayloadBytes is the payload c signed.
func (c Certified) PayloadBytes(t testing.TB) []byte {
	t.Helper()
	b, err := os.ReadFile(c.Payload)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Attach attaches c to ref with `cosign attach signature`, with bundle
// (cosign's Rekor bundle JSON) as its Rekor SET when it is not nil.
func (c Certified) Attach(t testing.TB, ref string, bundle []byte) {
	t.Helper()
	args := []string{"attach", "signature", "--payload", c.Payload, "--signature", c.Signature}
	if c.Cert != "" {
		args = append(args, "--certificate", c.Cert, "--certificate-chain", c.Chain)
	}
	if bundle != nil {
		// cosign reads the Rekor bundle from the file `cosign sign-blob
		// --bundle` writes (its LocalSignedPayload).
		wrapped, err := json.Marshal(map[string]json.RawMessage{"rekorBundle": bundle})
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(t.TempDir(), "bundle.json")
		if err := os.WriteFile(p, wrapped, 0o644); err != nil {
			t.Fatal(err)
		}
		args = append(args, "--rekor-response", p)
	}
	RunEnv(t, cosignEnv(t), Cosign(t), append(args, ref)...)
}

func canonicalJSON(t testing.TB, v any) []byte {
	t.Helper()
	raw, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	c, err := jsoncanonicalizer.Transform(raw)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func mustECKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func mustCert(t testing.TB, tmpl, parent *x509.Certificate, pub crypto.PublicKey, signer crypto.Signer) *x509.Certificate {
	t.Helper()
	if parent == nil {
		parent = tmpl
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, signer)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func certPEM(c *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
}

// PublicKey is k's public key, parsed.
func (k CosignKey) PublicKey(t testing.TB) crypto.PublicKey {
	t.Helper()
	data, err := os.ReadFile(k.Pub)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := cryptoutils.UnmarshalPEMToPublicKey(data)
	if err != nil {
		t.Fatal(err)
	}
	return pub
}
