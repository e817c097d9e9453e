package attest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math/big"

	"github.com/go-jose/go-jose/v4"
)

// teeKey is the ephemeral key pair a KBS encrypts resources to. The private
// half lives only in memory, for the lifetime of one KBS session.
type teeKey struct {
	priv any // *ecdsa.PrivateKey or *rsa.PrivateKey
	alg  jose.KeyAlgorithm
	jwk  json.RawMessage
}

// ecJWK and rsaJWK are kbs-types' TeePubKey, members in its order.
type ecJWK struct {
	Kty string `json:"kty"`
	Crv string `json:"crv"`
	Alg string `json:"alg"`
	X   string `json:"x"`
	Y   string `json:"y"`
}

type rsaJWK struct {
	Kty string `json:"kty"`
	Alg string `json:"alg"`
	N   string `json:"n"`
	E   string `json:"e"`
}

func newTEEKey(kind string) (*teeKey, error) {
	b64 := base64.RawURLEncoding
	switch kind {
	case "", "EC":
		priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, fmt.Errorf("tee key: %w", err)
		}
		pt, err := priv.PublicKey.Bytes() // 0x04 || X || Y, fixed width
		if err != nil {
			return nil, fmt.Errorf("tee key: %w", err)
		}
		jwk, err := json.Marshal(ecJWK{
			Kty: "EC", Crv: "P-256", Alg: string(jose.ECDH_ES_A256KW),
			X: b64.EncodeToString(pt[1:33]), Y: b64.EncodeToString(pt[33:65]),
		})
		if err != nil {
			return nil, fmt.Errorf("tee key: %w", err)
		}
		return &teeKey{priv: priv, alg: jose.ECDH_ES_A256KW, jwk: jwk}, nil
	case "RSA":
		priv, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			return nil, fmt.Errorf("tee key: %w", err)
		}
		jwk, err := json.Marshal(rsaJWK{
			Kty: "RSA", Alg: string(jose.RSA_OAEP_256),
			N: b64.EncodeToString(priv.N.Bytes()),
			E: b64.EncodeToString(big.NewInt(int64(priv.E)).Bytes()),
		})
		if err != nil {
			return nil, fmt.Errorf("tee key: %w", err)
		}
		return &teeKey{priv: priv, alg: jose.RSA_OAEP_256, jwk: jwk}, nil
	default:
		return nil, fmt.Errorf("tee key type %q: want EC or RSA", kind)
	}
}

// decrypt opens a KBS resource response: a flattened JWE JSON object whose
// key management algorithm must be the one this key was announced with and
// whose content encryption is A256GCM.
func (k *teeKey) decrypt(body []byte) ([]byte, error) {
	obj, err := jose.ParseEncryptedJSON(string(body), []jose.KeyAlgorithm{k.alg}, []jose.ContentEncryption{jose.A256GCM})
	if err != nil {
		return nil, fmt.Errorf("resource response is not a %s/A256GCM JWE: %w", k.alg, err)
	}
	plain, err := obj.Decrypt(k.priv)
	if err != nil {
		return nil, fmt.Errorf("resource JWE does not open with this session's tee key: %w", err)
	}
	return plain, nil
}
