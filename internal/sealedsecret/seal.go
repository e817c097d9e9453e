package sealedsecret

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdsa"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"

	"github.com/go-jose/go-jose/v4"
	josecipher "github.com/go-jose/go-jose/v4/cipher"
)

// The sealing side, for whoever provisions secrets (and the tests): what
// guest-components' `secret seal` does for vault secrets, and the envelope
// layout Unseal reads for provider kbs.

// Vault returns the payload of a vault secret for the KBS resource uri.
func Vault(uri string) map[string]any {
	return map[string]any{
		"version": Version, "type": "vault", "provider": "kbs", "name": uri,
		"provider_settings": map[string]any{}, "annotations": map[string]any{},
	}
}

// Envelope seals plaintext for provider kbs: a fresh data key encrypts it
// with AES-256-GCM, and the data key is wrapped (A256KW) under kek, the
// 32-byte KBS resource keyID.
func Envelope(keyID string, kek, plaintext []byte) (map[string]any, error) {
	if len(kek) != 32 {
		return nil, fmt.Errorf("KEK is %d bytes, want 32", len(kek))
	}
	dek := make([]byte, 32)
	iv := make([]byte, 12)
	rand.Read(dek)
	rand.Read(iv)
	defer clear(dek)
	kb, err := aes.NewCipher(kek)
	if err != nil {
		return nil, err
	}
	wrapped, err := josecipher.KeyWrap(kb, dek)
	if err != nil {
		return nil, err
	}
	db, err := aes.NewCipher(dek)
	if err != nil {
		return nil, err
	}
	gcm, err := cipher.NewGCM(db)
	if err != nil {
		return nil, err
	}
	return map[string]any{
		"version": Version, "type": "envelope", "provider": "kbs",
		"key_id":            keyID,
		"encrypted_key":     base64.StdEncoding.EncodeToString(wrapped),
		"encrypted_data":    base64.StdEncoding.EncodeToString(gcm.Seal(nil, iv, plaintext, nil)),
		"wrap_type":         "A256GCM",
		"iv":                base64.StdEncoding.EncodeToString(iv),
		"provider_settings": map[string]any{}, "annotations": map[string]any{},
	}, nil
}

// Seal signs payload with key (ES256) under kid and returns the sealed
// secret, "sealed." + the JWS in compact form.
func Seal(payload any, key *ecdsa.PrivateKey, kid string) (string, error) {
	data, err := json.Marshal(payload)
	if err != nil {
		return "", err
	}
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: key}, (&jose.SignerOptions{}).WithHeader(jose.HeaderKey("kid"), kid))
	if err != nil {
		return "", err
	}
	jws, err := signer.Sign(data)
	if err != nil {
		return "", err
	}
	compact, err := jws.CompactSerialize()
	if err != nil {
		return "", err
	}
	return Prefix + compact, nil
}

// PublicJWK is the verification key of key as a JWK, the form a kid names.
func PublicJWK(key *ecdsa.PrivateKey) ([]byte, error) {
	return json.Marshal(jose.JSONWebKey{Key: &key.PublicKey, Algorithm: string(jose.ES256)})
}
