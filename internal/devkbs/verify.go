package devkbs

import (
	"bytes"
	"crypto"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/subtle"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/cyberphone/json-canonicalization/go/src/webpki.org/jsoncanonicalizer"
	"github.com/google/go-tpm/tpm2"
)

// bindingDigest recomputes, from the runtime data the KBS received, the
// report data the evidence must carry: SHA-384 of the RFC 8785 form of
// {"additional-evidence","nonce","tee-pubkey"}. The tee-pubkey is taken as
// sent, so whatever key the guest named is the key it bound.
func bindingDigest(nonce string, teePubKey json.RawMessage, additional string) ([]byte, error) {
	doc, err := json.Marshal(map[string]any{
		"additional-evidence": additional,
		"nonce":               nonce,
		"tee-pubkey":          teePubKey,
	})
	if err != nil {
		return nil, err
	}
	canon, err := jsoncanonicalizer.Transform(doc)
	if err != nil {
		return nil, err
	}
	sum := sha512.Sum384(canon)
	return sum[:], nil
}

func decodeEvidence(raw json.RawMessage, v any) error {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("malformed evidence: %v", err)
	}
	return nil
}

// verifySample checks that sample evidence at least carries the binding:
// it proves nothing about the guest.
func verifySample(raw json.RawMessage, expected []byte) error {
	var ev struct {
		SVN        string `json:"svn"`
		ReportData string `json:"report_data"`
	}
	if err := decodeEvidence(raw, &ev); err != nil {
		return err
	}
	rd, err := base64.StdEncoding.DecodeString(ev.ReportData)
	if err != nil {
		return errors.New("report_data is not base64")
	}
	if subtle.ConstantTimeCompare(rd, expected) != 1 {
		return errors.New("report_data does not bind the runtime data (nonce and tee-pubkey)")
	}
	return nil
}

// tpmClaims is what verified TPM evidence says: the quoted PCR values,
// and the event log the guest sent with them (not yet replayed).
type tpmClaims struct {
	pcrs     [][]byte
	quoted   []bool
	eventLog []byte
}

// verifyTPM checks TPM evidence as Trustee's tpm verifier does, plus PCR
// reference values: the AK is registered, it signed the quote, the quote
// is a TPM-generated quote whose extraData is the first 32 bytes of the
// binding digest, the reported PCRs hash to the quote's pcrDigest, and
// every constrained PCR is quoted and holds an allowed value.
func verifyTPM(raw json.RawMessage, expected []byte, trusted map[[sha256.Size]byte]bool, ref PCRReference) (*tpmClaims, error) {
	var ev struct {
		TPMQuote struct {
			Signature string   `json:"signature"`
			Message   string   `json:"message"`
			PCRs      []string `json:"pcrs"`
		} `json:"tpm_quote"`
		AKPublic   string  `json:"ak_public"`
		AAEventLog *string `json:"aa_eventlog"`
	}
	if err := decodeEvidence(raw, &ev); err != nil {
		return nil, err
	}
	claims, err := verifyQuote(ev.AKPublic, ev.TPMQuote.Message, ev.TPMQuote.Signature, ev.TPMQuote.PCRs, expected, trusted, ref)
	if err != nil {
		return nil, err
	}
	if ev.AAEventLog != nil {
		if claims.eventLog, err = base64.StdEncoding.DecodeString(*ev.AAEventLog); err != nil || len(claims.eventLog) == 0 {
			return nil, errors.New("aa_eventlog is not a non-empty std-base64 string")
		}
	}
	return claims, nil
}

// verifyQuote checks a quote and the PCR values reported with it.
func verifyQuote(akPublic, message, signature string, pcrHex []string, expected []byte, trusted map[[sha256.Size]byte]bool, ref PCRReference) (*tpmClaims, error) {

	der, err := base64.StdEncoding.DecodeString(akPublic)
	if err != nil {
		return nil, errors.New("ak_public is not base64")
	}
	if !trusted[sha256.Sum256(der)] {
		return nil, errors.New("the attestation key is not registered with this KBS (--tpm-ak)")
	}
	key, err := x509.ParsePKIXPublicKey(der)
	if err != nil {
		return nil, fmt.Errorf("ak_public: %v", err)
	}
	ak, ok := key.(*rsa.PublicKey)
	if !ok {
		return nil, errors.New("the attestation key is not RSA")
	}

	msg, err := base64.StdEncoding.DecodeString(message)
	if err != nil {
		return nil, errors.New("quote message is not base64")
	}
	sigBytes, err := base64.StdEncoding.DecodeString(signature)
	if err != nil {
		return nil, errors.New("quote signature is not base64")
	}
	sig, err := tpm2.Unmarshal[tpm2.TPMTSignature](sigBytes)
	if err != nil {
		return nil, fmt.Errorf("quote signature: %v", err)
	}
	if sig.SigAlg != tpm2.TPMAlgRSASSA {
		return nil, fmt.Errorf("quote signature algorithm %v, want RSASSA", sig.SigAlg)
	}
	rs, err := sig.Signature.RSASSA()
	if err != nil {
		return nil, fmt.Errorf("quote signature: %v", err)
	}
	if rs.Hash != tpm2.TPMAlgSHA256 {
		return nil, fmt.Errorf("quote signature hash %v, want SHA-256", rs.Hash)
	}
	digest := sha256.Sum256(msg)
	if err := rsa.VerifyPKCS1v15(ak, crypto.SHA256, digest[:], rs.Sig.Buffer); err != nil {
		return nil, errors.New("quote signature does not verify with the attestation key")
	}

	// Signed by a registered AK from here on; what it says still has to be
	// what we asked for.
	att, err := tpm2.Unmarshal[tpm2.TPMSAttest](msg)
	if err != nil {
		return nil, fmt.Errorf("quote message: %v", err)
	}
	if att.Magic != tpm2.TPMGeneratedValue {
		return nil, errors.New("quote message is not TPM-generated")
	}
	if att.Type != tpm2.TPMSTAttestQuote {
		return nil, fmt.Errorf("attestation type %#x is not a quote", uint16(att.Type))
	}
	if subtle.ConstantTimeCompare(att.ExtraData.Buffer, expected[:32]) != 1 {
		return nil, errors.New("quote extraData does not bind the runtime data (nonce and tee-pubkey)")
	}
	info, err := att.Attested.Quote()
	if err != nil {
		return nil, fmt.Errorf("quote info: %v", err)
	}

	if len(pcrHex) != 24 {
		return nil, fmt.Errorf("%d PCR values, want 24", len(pcrHex))
	}
	pcrs := make([][]byte, 24)
	for i, h := range pcrHex {
		v, err := hex.DecodeString(h)
		if err != nil || len(v) != sha256.Size {
			return nil, fmt.Errorf("PCR %d is not a hex SHA-256 value", i)
		}
		pcrs[i] = v
	}
	quoted := make([]bool, 24)
	h := sha256.New()
	if len(info.PCRSelect.PCRSelections) != 1 || info.PCRSelect.PCRSelections[0].Hash != tpm2.TPMAlgSHA256 {
		return nil, errors.New("quote does not select exactly the SHA-256 PCR bank")
	}
	sel := info.PCRSelect.PCRSelections[0].PCRSelect
	for i := 0; i < len(sel)*8; i++ {
		if sel[i/8]&(1<<(i%8)) == 0 {
			continue
		}
		if i >= 24 {
			return nil, fmt.Errorf("quote selects PCR %d, beyond the 24 reported", i)
		}
		quoted[i] = true
		h.Write(pcrs[i])
	}
	if !bytes.Equal(h.Sum(nil), info.PCRDigest.Buffer) {
		return nil, errors.New("reported PCR values do not match the quote's PCR digest")
	}
	for i := 0; i < 24; i++ {
		allowed, constrained := ref[i]
		if !constrained {
			continue
		}
		if !quoted[i] {
			return nil, fmt.Errorf("PCR %d is constrained but not covered by the quote", i)
		}
		ok := false
		for _, a := range allowed {
			ok = ok || bytes.Equal(a, pcrs[i])
		}
		if !ok {
			return nil, fmt.Errorf("PCR %d value %x is not in the reference set", i, pcrs[i])
		}
	}
	return &tpmClaims{pcrs: pcrs, quoted: quoted}, nil
}
