package devkbs

import (
	"bytes"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"os"
	"path"
	"strconv"
)

// LoadAK reads a registered TPM attestation key: a PEM "PUBLIC KEY" as
// `guest-puller attest ak` prints it. It returns the DER
// SubjectPublicKeyInfo.
func LoadAK(file string) ([]byte, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	blk, rest := pem.Decode(b)
	if blk == nil || blk.Type != "PUBLIC KEY" || len(bytes.TrimSpace(rest)) != 0 {
		return nil, fmt.Errorf("attestation key %s: want one PEM PUBLIC KEY block", file)
	}
	if _, err := x509.ParsePKIXPublicKey(blk.Bytes); err != nil {
		return nil, fmt.Errorf("attestation key %s: %w", file, err)
	}
	return blk.Bytes, nil
}

// PCRReference lists, per PCR index, the SHA-256 values allowed there. A
// PCR it does not mention may hold anything.
type PCRReference map[int][][]byte

// LoadPCRReference reads a JSON object {"<index>": ["<hex>", …], …}.
func LoadPCRReference(file string) (PCRReference, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	var raw map[string][]string
	if err := json.Unmarshal(b, &raw); err != nil {
		return nil, fmt.Errorf("PCR reference %s: %w", file, err)
	}
	ref := PCRReference{}
	for k, vals := range raw {
		idx, err := strconv.Atoi(k)
		if err != nil || idx < 0 || idx > 23 || strconv.Itoa(idx) != k {
			return nil, fmt.Errorf("PCR reference %s: %q is not a PCR index 0-23", file, k)
		}
		if len(vals) == 0 {
			return nil, fmt.Errorf("PCR reference %s: PCR %d allows no value", file, idx)
		}
		for _, v := range vals {
			d, err := hex.DecodeString(v)
			if err != nil || len(d) != 32 {
				return nil, fmt.Errorf("PCR reference %s: PCR %d: %q is not a hex SHA-256 digest", file, idx, v)
			}
			ref[idx] = append(ref[idx], d)
		}
	}
	return ref, nil
}

// Rules say which TEE types may read which resources. A resource is
// readable by a TEE when some rule lists that TEE (or "*") and a pattern
// (path.Match syntax over "repo/type/tag") matching the resource.
type Rules struct {
	Rules []Rule `json:"rules"`
}

// Rule is one grant.
type Rule struct {
	TEE       []string `json:"tee"`
	Resources []string `json:"resources"`
}

// LoadRules reads a rules file:
//
//	{"rules": [{"tee": ["tpm"], "resources": ["default/key/*"]}]}
//
// Unknown members and malformed patterns are errors.
func LoadRules(file string) (*Rules, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	var r Rules
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&r); err != nil {
		return nil, fmt.Errorf("rules %s: %w", file, err)
	}
	if r.Rules == nil {
		return nil, fmt.Errorf("rules %s: no \"rules\" list", file)
	}
	for i, rule := range r.Rules {
		if len(rule.TEE) == 0 || len(rule.Resources) == 0 {
			return nil, fmt.Errorf("rules %s: rule %d needs tee and resources", file, i)
		}
		for _, p := range rule.Resources {
			if _, err := path.Match(p, ""); err != nil {
				return nil, fmt.Errorf("rules %s: rule %d: pattern %q: %w", file, i, p, err)
			}
		}
	}
	return &r, nil
}

// Allows reports whether tee may read resource ("repo/type/tag").
func (r *Rules) Allows(tee, resource string) bool {
	for _, rule := range r.Rules {
		teeOK := false
		for _, t := range rule.TEE {
			if t == "*" || t == tee {
				teeOK = true
			}
		}
		if !teeOK {
			continue
		}
		for _, p := range rule.Resources {
			if ok, _ := path.Match(p, resource); ok {
				return true
			}
		}
	}
	return false
}
