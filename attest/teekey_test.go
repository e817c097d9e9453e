package attest

import (
	"crypto/ecdsa"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"strings"
	"testing"

	"github.com/go-jose/go-jose/v4"
)

func TestTEEKeyJWK(t *testing.T) {
	tests := []struct {
		kind    string
		members []string
		sizes   map[string]int // base64url member -> decoded length
	}{
		{"EC", []string{"kty", "crv", "alg", "x", "y"}, map[string]int{"x": 32, "y": 32}},
		{"RSA", []string{"kty", "alg", "n", "e"}, map[string]int{"n": 256, "e": 3}},
	}
	for _, tt := range tests {
		t.Run(tt.kind, func(t *testing.T) {
			k, err := newTEEKey(tt.kind)
			if err != nil {
				t.Fatal(err)
			}
			// Member order matters to nobody who canonicalizes, but it is
			// what kbs-types serializes; keep it recognizable.
			var order []string
			dec := json.NewDecoder(strings.NewReader(string(k.jwk)))
			dec.Token()
			for dec.More() {
				tok, _ := dec.Token()
				order = append(order, tok.(string))
				var v any
				dec.Decode(&v)
			}
			if strings.Join(order, ",") != strings.Join(tt.members, ",") {
				t.Fatalf("members %v, want %v", order, tt.members)
			}
			var m map[string]string
			json.Unmarshal(k.jwk, &m)
			for name, n := range tt.sizes {
				if strings.ContainsAny(m[name], "=+/") {
					t.Errorf("%s = %q is not unpadded base64url", name, m[name])
				}
				b, err := base64.RawURLEncoding.DecodeString(m[name])
				if err != nil || len(b) != n {
					t.Errorf("%s decodes to %d bytes (%v), want %d", name, len(b), err, n)
				}
			}
			wantAlg := map[string]string{"EC": "ECDH-ES+A256KW", "RSA": "RSA-OAEP-256"}[tt.kind]
			if m["kty"] != tt.kind || m["alg"] != wantAlg {
				t.Errorf("kty/alg = %s/%s", m["kty"], m["alg"])
			}
			// The JWK is a valid public key for go-jose (what a KBS parses).
			var jwk jose.JSONWebKey
			if err := jwk.UnmarshalJSON(k.jwk); err != nil || !jwk.IsPublic() {
				t.Fatalf("JWK does not parse as a public key: %v", err)
			}
		})
	}
	if _, err := newTEEKey("DSA"); err == nil {
		t.Error("newTEEKey(DSA) succeeded")
	}
}

func encryptTo(t *testing.T, alg jose.KeyAlgorithm, enc jose.ContentEncryption, pub any, plain []byte) []byte {
	t.Helper()
	e, err := jose.NewEncrypter(enc, jose.Recipient{Algorithm: alg, Key: pub}, nil)
	if err != nil {
		t.Fatal(err)
	}
	obj, err := e.Encrypt(plain)
	if err != nil {
		t.Fatal(err)
	}
	return []byte(obj.FullSerialize())
}

func TestTEEKeyDecrypt(t *testing.T) {
	ec, _ := newTEEKey("EC")
	ec2, _ := newTEEKey("EC")
	rk, _ := newTEEKey("RSA")
	ecPub := &ec.priv.(*ecdsa.PrivateKey).PublicKey
	rsaPub := &rk.priv.(*rsa.PrivateKey).PublicKey
	kek := []byte("0123456789abcdef0123456789abcdef")

	tests := []struct {
		name string
		key  *teeKey
		body []byte
		ok   bool
	}{
		{"EC ECDH-ES+A256KW", ec, encryptTo(t, jose.ECDH_ES_A256KW, jose.A256GCM, ecPub, kek), true},
		{"RSA RSA-OAEP-256", rk, encryptTo(t, jose.RSA_OAEP_256, jose.A256GCM, rsaPub, kek), true},
		{"other EC key", ec2, encryptTo(t, jose.ECDH_ES_A256KW, jose.A256GCM, ecPub, kek), false},
		{"alg not the announced one", rk, encryptTo(t, jose.RSA_OAEP, jose.A256GCM, rsaPub, kek), false},
		{"content encryption not A256GCM", ec, encryptTo(t, jose.ECDH_ES_A256KW, jose.A128CBC_HS256, ecPub, kek), false},
		{"compact serialization", ec, []byte("eyJhbGciOiJFQ0RILUVTK0EyNTZLVyJ9.a.b.c.d"), false},
		{"garbage", ec, []byte("<html>oops</html>"), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.key.decrypt(tt.body)
			if tt.ok != (err == nil) {
				t.Fatalf("decrypt err = %v, want ok=%v", err, tt.ok)
			}
			if tt.ok && string(got) != string(kek) {
				t.Fatalf("plaintext %q", got)
			}
		})
	}
	// A tampered ciphertext fails authentication.
	body := encryptTo(t, jose.ECDH_ES_A256KW, jose.A256GCM, ecPub, kek)
	var m map[string]string
	json.Unmarshal(body, &m)
	ct, _ := base64.RawURLEncoding.DecodeString(m["ciphertext"])
	ct[0] ^= 1
	m["ciphertext"] = base64.RawURLEncoding.EncodeToString(ct)
	tampered, _ := json.Marshal(m)
	if _, err := ec.decrypt(tampered); err == nil {
		t.Fatal("a tampered ciphertext decrypted")
	}
	// Flattened JWE members, as Trustee and DESIGN.md send them.
	for _, member := range []string{"protected", "encrypted_key", "iv", "ciphertext", "tag"} {
		if m[member] == "" {
			t.Errorf("go-jose's flattened JWE lacks %q", member)
		}
	}
}
