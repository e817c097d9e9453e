package attest

import (
	"crypto/sha512"
	"encoding/json"
	"fmt"

	"github.com/cyberphone/json-canonicalization/go/src/webpki.org/jsoncanonicalizer"
)

// runtimeData is kbs-types' RuntimeData: what the /attest request carries
// and what the evidence is bound to.
type runtimeData struct {
	Nonce     string          `json:"nonce"`
	TEEPubKey json.RawMessage `json:"tee-pubkey"`
}

// canonicalJSON returns the RFC 8785 (JCS) form of a JSON document: object
// members sorted by their UTF-16 code units, no insignificant whitespace,
// ECMAScript number and string serialization.
func canonicalJSON(doc []byte) ([]byte, error) {
	out, err := jsoncanonicalizer.Transform(doc)
	if err != nil {
		return nil, fmt.Errorf("canonical JSON: %w", err)
	}
	return out, nil
}

// reportData is the 48-byte binding digest of DESIGN.md: SHA-384 of the
// canonical JSON of {"additional-evidence","nonce","tee-pubkey"}, as
// guest-components' kbs_protocol computes it for the primary attester.
func reportData(rd runtimeData) ([]byte, error) {
	doc, err := json.Marshal(struct {
		AdditionalEvidence string          `json:"additional-evidence"`
		Nonce              string          `json:"nonce"`
		TEEPubKey          json.RawMessage `json:"tee-pubkey"`
	}{"", rd.Nonce, rd.TEEPubKey})
	if err != nil {
		return nil, fmt.Errorf("runtime data: %w", err)
	}
	canon, err := canonicalJSON(doc)
	if err != nil {
		return nil, err
	}
	sum := sha512.Sum384(canon)
	return sum[:], nil
}
