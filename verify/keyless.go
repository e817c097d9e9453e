package verify

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/asn1"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/cyberphone/json-canonicalization/go/src/webpki.org/jsoncanonicalizer"
	"github.com/sigstore/sigstore/pkg/cryptoutils"
	"github.com/sigstore/sigstore/pkg/signature"

	"github.com/guest-puller/guest-puller/internal/untrusted"
	"github.com/guest-puller/guest-puller/policy"
)

// Annotations of a cosign signature layer besides the signature itself: a
// keyless signature's certificate and the chain to its CA, and the Rekor
// SET (cosign calls it the bundle) that proves the signature was logged.
const (
	certificateAnnotation = "dev.sigstore.cosign/certificate"
	chainAnnotation       = "dev.sigstore.cosign/chain"
	bundleAnnotation      = "dev.sigstore.cosign/bundle"
)

// Fulcio's certificate extensions naming the OIDC issuer: the first one
// (raw string, deprecated but still issued and accepted) and the second
// (a DER UTF8String).
var (
	oidIssuerV1 = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 57264, 1, 1}
	oidIssuerV2 = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 57264, 1, 8}
)

// maxChain bounds the certificates a signature may bring for its chain:
// Fulcio's is two.
const maxChain = 8

// rejection is a check that failed for one signature.
func rejection(check, format string, args ...any) *policy.Rejection {
	return &policy.Rejection{Check: check, Reason: fmt.Sprintf(format, args...)}
}

// checkKeyless decides whether s was made under trust's certificate
// identity, in containers/image's order: the Rekor SET (when trust has
// Rekor keys) first, then the certificate's chain to trust's roots (at the
// SET's time, or now without one), its issuer and subject, and last the
// signature itself with the certificate's key. It returns the signer, and
// the key ID of the certificate's key.
func checkKeyless(s rawSigstore, trust policy.SigstoreTrust, now time.Time) (*policy.Signer, string, *policy.Rejection) {
	if len(s.certificate) == 0 {
		return nil, "", rejection("certificate", "the signature carries no certificate (%s)", certificateAnnotation)
	}
	at := now
	if len(trust.RekorKeys) > 0 {
		var rej *policy.Rejection
		if at, rej = checkSET(s, trust.RekorKeys, s.certificate); rej != nil {
			return nil, "", rej
		}
	}
	certs, err := cryptoutils.UnmarshalCertificatesFromPEM(s.certificate)
	if err != nil || len(certs) != 1 {
		return nil, "", rejection("certificate", "%s is not one PEM certificate", certificateAnnotation)
	}
	cert := certs[0]
	if err := verifyChain(cert, s.chain, trust, at); err != nil {
		return nil, "", err
	}
	issuer, rej := certIssuer(cert)
	if rej != nil {
		return nil, "", rej
	}
	if trust.OIDCIssuer != "" && issuer != trust.OIDCIssuer {
		return nil, "", rejection("issuer", "the certificate's OIDC issuer is %s, not %q", untrusted.Quote(issuer), trust.OIDCIssuer)
	}
	if trust.SubjectEmail != "" && !slices.Contains(cert.EmailAddresses, trust.SubjectEmail) {
		return nil, "", rejection("subject", "the certificate is not for %q (its email addresses: %s)", trust.SubjectEmail, untrusted.Quote(fmt.Sprint(cert.EmailAddresses)))
	}
	if trust.SubjectHostname != "" {
		if err := cert.VerifyHostname(trust.SubjectHostname); err != nil {
			return nil, "", rejection("subject", "%s", untrusted.Text(err.Error()))
		}
	}
	verifiers, err := sigstoreVerifiers(cert.PublicKey)
	if err != nil || !verifySigstore(verifiers, s.signature, s.payload) {
		return nil, "", rejection("signature", "the signature does not verify with its certificate's key")
	}
	der, err := cryptoutils.MarshalPublicKeyToDER(cert.PublicKey)
	if err != nil {
		return nil, "", rejection("certificate", "the certificate's key: %v", err)
	}
	sum := sha256.Sum256(der)
	if issuer == "" {
		issuer = cert.Issuer.String()
	}
	return &policy.Signer{Issuer: issuer, Subject: certSubject(cert), Serial: cert.SerialNumber.Text(16)}, hex.EncodeToString(sum[:]), nil
}

// verifyChain checks that cert chains to trust's roots at time at, through
// trust's intermediates and those the signature carries (all of its chain
// but the last, its root, which only the policy can name), and allows code
// signing. An expired (or not yet valid) certificate fails the "validity
// time" check, everything else the "chain" check.
func verifyChain(cert *x509.Certificate, chainPEM []byte, trust policy.SigstoreTrust, at time.Time) *policy.Rejection {
	roots := x509.NewCertPool()
	for _, c := range trust.Roots {
		roots.AddCert(c)
	}
	inter := x509.NewCertPool()
	for _, c := range trust.Intermediates {
		inter.AddCert(c)
	}
	if len(chainPEM) > 0 {
		chain, err := cryptoutils.UnmarshalCertificatesFromPEM(chainPEM)
		if err != nil {
			return rejection("chain", "%s: %s", chainAnnotation, untrusted.Text(err.Error()))
		}
		if len(chain) > maxChain {
			return rejection("chain", "%s holds %d certificates, more than %d", chainAnnotation, len(chain), maxChain)
		}
		for _, c := range chain[:max(len(chain)-1, 0)] {
			inter.AddCert(c)
		}
	}
	// Fulcio marks its subject alternative names critical; Go leaves the
	// extension unhandled when a name is of a kind it does not parse
	// (otherName), which would fail the verification for no reason.
	cert.UnhandledCriticalExtensions = slices.DeleteFunc(slices.Clone(cert.UnhandledCriticalExtensions), func(oid asn1.ObjectIdentifier) bool {
		return oid.Equal(cryptoutils.SANOID)
	})
	_, err := cert.Verify(x509.VerifyOptions{
		Roots:         roots,
		Intermediates: inter,
		CurrentTime:   at,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageCodeSigning},
	})
	var invalid x509.CertificateInvalidError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &invalid) && invalid.Reason == x509.Expired:
		return rejection("validity time", "the certificate is valid from %s to %s, not at %s", cert.NotBefore.UTC().Format(time.RFC3339), cert.NotAfter.UTC().Format(time.RFC3339), at.UTC().Format(time.RFC3339))
	default:
		return rejection("chain", "%s", untrusted.Text(err.Error()))
	}
}

// certIssuer reads Fulcio's OIDC issuer extension ("" when the
// certificate has none: a private CA's); two that disagree, or one named
// twice, are refused.
func certIssuer(cert *x509.Certificate) (string, *policy.Rejection) {
	var v1, v2 *string
	for _, ext := range cert.Extensions {
		switch {
		case ext.Id.Equal(oidIssuerV1):
			if v1 != nil {
				return "", rejection("issuer", "the certificate has two issuer extensions")
			}
			s := string(ext.Value)
			v1 = &s
		case ext.Id.Equal(oidIssuerV2):
			if v2 != nil {
				return "", rejection("issuer", "the certificate has two issuer extensions")
			}
			var s string
			if rest, err := asn1.Unmarshal(ext.Value, &s); err != nil || len(rest) != 0 {
				return "", rejection("issuer", "the certificate's issuer extension is not a DER string")
			}
			v2 = &s
		}
	}
	switch {
	case v1 != nil && v2 != nil && *v1 != *v2:
		return "", rejection("issuer", "the certificate's issuer extensions disagree: %s and %s", untrusted.Quote(*v1), untrusted.Quote(*v2))
	case v2 != nil:
		return *v2, nil
	case v1 != nil:
		return *v1, nil
	}
	return "", nil
}

// certSubject names whom the certificate is for: its email address, else
// its URI (a workload identity), else its DNS name.
func certSubject(cert *x509.Certificate) string {
	switch {
	case len(cert.EmailAddresses) > 0:
		return cert.EmailAddresses[0]
	case len(cert.URIs) > 0:
		return cert.URIs[0].String()
	case len(cert.DNSNames) > 0:
		return cert.DNSNames[0]
	}
	return cert.Subject.String()
}

// rekorSET is cosign's bundle annotation: Rekor's signed entry timestamp
// over its log entry.
type rekorSET struct {
	signature []byte
	payload   json.RawMessage // the log entry, as Rekor signed its canonical JSON
}

// rekorEntry is the log entry a SET signs.
type rekorEntry struct {
	body           []byte
	integratedTime int64
}

// hashedRekord is Rekor's hashedrekord v0.0.1 entry body: the signature,
// the key or certificate that verifies it, and the SHA-256 of what was
// signed.
type hashedRekord struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Spec       struct {
		Data struct {
			Hash struct {
				Algorithm string `json:"algorithm"`
				Value     string `json:"value"`
			} `json:"hash"`
		} `json:"data"`
		Signature struct {
			Content   []byte `json:"content"`
			PublicKey struct {
				Content []byte `json:"content"`
			} `json:"publicKey"`
		} `json:"signature"`
	} `json:"spec"`
}

// checkSET verifies s's Rekor SET with one of keys and checks that the
// entry it signs logs this very signature, made over this payload, with
// keyOrCert (PEM: the signing key, or the certificate). It returns the
// entry's integrated time.
func checkSET(s rawSigstore, keys []*ecdsa.PublicKey, keyOrCert []byte) (time.Time, *policy.Rejection) {
	if len(s.bundle) == 0 {
		return time.Time{}, rejection("SET", "the signature has no Rekor SET (%s), and the policy requires one", bundleAnnotation)
	}
	var set rekorSET
	if err := exactObject(s.bundle, map[string]any{"SignedEntryTimestamp": &set.signature, "Payload": &set.payload}); err != nil {
		return time.Time{}, rejection("SET", "%s: %s", bundleAnnotation, untrusted.Text(err.Error()))
	}
	canonical, err := jsoncanonicalizer.Transform(set.payload)
	if err != nil {
		return time.Time{}, rejection("SET", "%s: %s", bundleAnnotation, untrusted.Text(err.Error()))
	}
	verified := false
	for _, k := range keys {
		v, err := signature.LoadECDSAVerifier(k, crypto.SHA256)
		if err == nil && v.VerifySignature(bytes.NewReader(set.signature), bytes.NewReader(canonical)) == nil {
			verified = true
			break
		}
	}
	if !verified {
		return time.Time{}, rejection("SET signature", "the Rekor SET does not verify with the policy's Rekor keys")
	}

	var entry rekorEntry
	var logIndex int64
	var logID string
	if err := exactObject(canonical, map[string]any{"body": &entry.body, "integratedTime": &entry.integratedTime, "logIndex": &logIndex, "logID": &logID}); err != nil {
		return time.Time{}, rejection("SET body", "log entry: %s", untrusted.Text(err.Error()))
	}
	var body hashedRekord
	if err := json.Unmarshal(entry.body, &body); err != nil {
		return time.Time{}, rejection("SET body", "log entry body: %s", untrusted.Text(err.Error()))
	}
	// containers/image checks the version, which fixes the fields read
	// below; the entry's other fields are Rekor's business.
	if body.APIVersion != "0.0.1" {
		return time.Time{}, rejection("SET body", "the log entry is version %s, not hashedrekord 0.0.1", untrusted.Quote(body.APIVersion))
	}
	logged, rest := pem.Decode(body.Spec.Signature.PublicKey.Content)
	want, _ := pem.Decode(keyOrCert)
	if logged == nil || len(bytes.TrimSpace(rest)) != 0 || want == nil || !bytes.Equal(logged.Bytes, want.Bytes) {
		return time.Time{}, rejection("SET body", "the log entry is for another key or certificate")
	}
	if !bytes.Equal(body.Spec.Signature.Content, s.signature) {
		return time.Time{}, rejection("SET body", "the log entry is for another signature")
	}
	sum := sha256.Sum256(s.payload)
	if body.Spec.Data.Hash.Algorithm != "sha256" || body.Spec.Data.Hash.Value != hex.EncodeToString(sum[:]) {
		return time.Time{}, rejection("SET body", "the log entry is for another payload")
	}
	return time.Unix(entry.integratedTime, 0), nil
}

// keyPEM is pub as the PEM a Rekor entry logs for a signature by a key.
func keyPEM(pub crypto.PublicKey) ([]byte, error) {
	return cryptoutils.MarshalPublicKeyToPEM(pub)
}
