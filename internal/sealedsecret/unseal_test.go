package sealedsecret

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/guest-puller/guest-puller/internal/errdefs"
)

// kbs stands in for the attested KBS client: resources by URI.
type kbs map[string][]byte

func (k kbs) GetResource(_ context.Context, uri string) ([]byte, error) {
	if v, ok := k[uri]; ok {
		return v, nil
	}
	return nil, fmt.Errorf("kbs resource %s: %w: 404 ResourceNotFound", uri, errdefs.ErrDecrypt)
}

type fixture struct {
	key, other *ecdsa.PrivateKey
	kek        []byte
	res        kbs
	credDir    string
	u          *Unsealer
}

const (
	plaintext  = "db-password: correct horse battery staple"
	signingKID = "kbs:///default/sealed-secret-key/1"
	kekURI     = "kbs:///default/envelope-kek/1"
	vaultURI   = "kbs:///default/db/password"
)

func newFixture(t testing.TB) *fixture {
	t.Helper()
	f := &fixture{res: kbs{}, credDir: t.TempDir()}
	f.key, _ = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	f.other, _ = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	f.kek = make([]byte, 32)
	rand.Read(f.kek)
	jwk, err := PublicJWK(f.key)
	if err != nil {
		t.Fatal(err)
	}
	f.res[signingKID] = jwk
	f.res[kekURI] = f.kek
	f.res[vaultURI] = []byte(plaintext)
	if err := os.WriteFile(filepath.Join(f.credDir, "local-key"), jwk, 0o600); err != nil {
		t.Fatal(err)
	}
	f.u = New(Options{Resources: f.res, CredentialDir: f.credDir})
	return f
}

func (f *fixture) seal(t *testing.T, payload any, key *ecdsa.PrivateKey, kid string) string {
	t.Helper()
	s, err := Seal(payload, key, kid)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// upstreamSeal builds a sealed secret by hand, byte for byte as
// guest-components' `secret seal` does: base64url(no padding) of the
// protected header {"alg":"ES256","kid":…} and of the payload JSON, and the
// raw 64-byte r||s signature of "header.payload".
func upstreamSeal(t testing.TB, payload map[string]any, key *ecdsa.PrivateKey, kid string) string {
	t.Helper()
	hdr, _ := json.Marshal(map[string]string{"alg": "ES256", "kid": kid})
	body, _ := json.Marshal(payload)
	input := base64.RawURLEncoding.EncodeToString(hdr) + "." + base64.RawURLEncoding.EncodeToString(body)
	digest := sha256.Sum256([]byte(input))
	r, s, err := ecdsa.Sign(rand.Reader, key, digest[:])
	if err != nil {
		t.Fatal(err)
	}
	sig := make([]byte, 64)
	r.FillBytes(sig[:32])
	s.FillBytes(sig[32:])
	return "sealed." + input + "." + base64.RawURLEncoding.EncodeToString(sig)
}

func TestUnseal(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	env, err := Envelope(kekURI, f.kek, []byte(plaintext))
	if err != nil {
		t.Fatal(err)
	}
	for name, sealed := range map[string]string{
		"vault, key from the KBS":              f.seal(t, Vault(vaultURI), f.key, signingKID),
		"envelope, key from the KBS":           f.seal(t, env, f.key, signingKID),
		"vault, provisioned key file":          f.seal(t, Vault(vaultURI), f.key, "local-key"),
		"vault as guest-components seals it":   upstreamSeal(t, Vault(vaultURI), f.key, signingKID),
		"envelope as guest-components signs":   upstreamSeal(t, env, f.key, "local-key"),
		"trailing newline of a secret file":    f.seal(t, Vault(vaultURI), f.key, signingKID) + "\n",
		"without the sealed. prefix":           strings.TrimPrefix(f.seal(t, Vault(vaultURI), f.key, signingKID), "sealed."),
		"provider spelled in capitals (KBS)":   f.seal(t, withMember(Vault(vaultURI), "provider", "KBS"), f.key, signingKID),
		"null annotations and settings":        f.seal(t, withMember(withMember(Vault(vaultURI), "annotations", nil), "provider_settings", nil), f.key, signingKID),
		"no annotations nor provider_settings": f.seal(t, without(Vault(vaultURI), "annotations", "provider_settings"), f.key, signingKID),
	} {
		t.Run(name, func(t *testing.T) {
			got, err := f.u.Unseal(ctx, []byte(sealed))
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != plaintext {
				t.Errorf("plaintext %q", got)
			}
		})
	}
}

func withMember(m map[string]any, k string, v any) map[string]any {
	out := map[string]any{}
	for kk, vv := range m {
		out[kk] = vv
	}
	out[k] = v
	return out
}

func without(m map[string]any, keys ...string) map[string]any {
	out := withMember(m, "", nil)
	delete(out, "")
	for _, k := range keys {
		delete(out, k)
	}
	return out
}

func TestUnsealRefusals(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	env, _ := Envelope(kekURI, f.kek, []byte(plaintext))
	otherKEK := make([]byte, 32)
	rand.Read(otherKEK)
	f.res["kbs:///default/envelope-kek/2"] = otherKEK
	f.res["kbs:///default/short-kek/1"] = []byte("short")
	good := f.seal(t, Vault(vaultURI), f.key, signingKID)
	hdr, body, sig := splitJWS(good)
	tamperedBody := withMember(Vault(vaultURI), "name", "kbs:///default/db/other")
	outside := filepath.Join(t.TempDir(), "outside.json")
	jwk, _ := PublicJWK(f.key)
	os.WriteFile(outside, jwk, 0o600)
	os.Symlink(outside, filepath.Join(f.credDir, "escape"))
	badData := withMember(env, "encrypted_data", base64.StdEncoding.EncodeToString([]byte("not the sealed data, 16+ bytes long")))

	for _, tc := range []struct {
		name   string
		sealed string
		kind   error
		msg    string
	}{
		{"not a JWS", "sealed.not-a-jws", errdefs.ErrInvalidConfig, "compact form"},
		{"payload changed", "sealed." + hdr + "." + b64url(t, tamperedBody) + "." + sig, errdefs.ErrIntegrity, "does not verify"},
		{"signature changed", "sealed." + hdr + "." + body + "." + flip(sig), errdefs.ErrIntegrity, "does not verify"},
		{"signed by another key", f.seal(t, Vault(vaultURI), f.other, signingKID), errdefs.ErrIntegrity, "does not verify"},
		{"no kid", f.seal(t, Vault(vaultURI), f.key, ""), errdefs.ErrInvalidConfig, "no kid"},
		{"kid of a missing resource", f.seal(t, Vault(vaultURI), f.key, "kbs:///default/nokey/1"), errdefs.ErrDecrypt, "kbs:///default/nokey/1"},
		{"kid of a missing file", f.seal(t, Vault(vaultURI), f.key, "nofile"), errdefs.ErrNotFound, "nofile"},
		{"kid escaping the credential dir", f.seal(t, Vault(vaultURI), f.key, "../outside.json"), errdefs.ErrInvalidConfig, "../outside.json"},
		{"kid symlinked out of the credential dir", f.seal(t, Vault(vaultURI), f.key, "escape"), errdefs.ErrInvalidConfig, "escape"},
		{"kid naming a KEK, not a JWK", f.seal(t, Vault(vaultURI), f.key, kekURI), errdefs.ErrInvalidConfig, "not a JWK"},
		{"HS256", hs256(t, Vault(vaultURI)), errdefs.ErrInvalidConfig, "ES256"},
		{"alg none", "sealed." + b64url(t, map[string]string{"alg": "none", "kid": signingKID}) + "." + body + ".", errdefs.ErrInvalidConfig, "ES256"},
		{"version 0.2.0", f.seal(t, withMember(Vault(vaultURI), "version", "0.2.0"), f.key, signingKID), errdefs.ErrInvalidConfig, `version "0.2.0"`},
		{"type kms", f.seal(t, withMember(Vault(vaultURI), "type", "kms"), f.key, signingKID), errdefs.ErrInvalidConfig, `type "kms"`},
		{"provider aliyun", f.seal(t, withMember(Vault(vaultURI), "provider", "aliyun"), f.key, signingKID), errdefs.ErrInvalidConfig, `provider "aliyun" is not supported`},
		{"unknown member", f.seal(t, withMember(Vault(vaultURI), "ttl", "1h"), f.key, signingKID), errdefs.ErrInvalidConfig, `unknown member "ttl"`},
		{"envelope member in a vault", f.seal(t, withMember(Vault(vaultURI), "key_id", kekURI), f.key, signingKID), errdefs.ErrInvalidConfig, `unknown member "key_id"`},
		{"vault without a name", f.seal(t, without(Vault(vaultURI), "name"), f.key, signingKID), errdefs.ErrInvalidConfig, `needs "name"`},
		{"vault name not a resource", f.seal(t, withMember(Vault(vaultURI), "name", "db-password"), f.key, signingKID), errdefs.ErrInvalidConfig, "not a KBS resource URI"},
		{"name not a string", f.seal(t, withMember(Vault(vaultURI), "name", 7), f.key, signingKID), errdefs.ErrInvalidConfig, `"name" is not a string`},
		{"annotations not an object", f.seal(t, withMember(Vault(vaultURI), "annotations", "x"), f.key, signingKID), errdefs.ErrInvalidConfig, "not an object"},
		{"payload not an object", f.seal(t, []string{"vault"}, f.key, signingKID), errdefs.ErrInvalidConfig, "not a JSON object"},
		{"missing vault resource", f.seal(t, Vault("kbs:///default/db/gone"), f.key, signingKID), errdefs.ErrDecrypt, "ResourceNotFound"},
		{"envelope under another KEK", f.seal(t, withMember(env, "key_id", "kbs:///default/envelope-kek/2"), f.key, signingKID), errdefs.ErrDecrypt, "does not unwrap"},
		{"envelope KEK of 5 bytes", f.seal(t, withMember(env, "key_id", "kbs:///default/short-kek/1"), f.key, signingKID), errdefs.ErrDecrypt, "want 32"},
		{"envelope data changed", f.seal(t, badData, f.key, signingKID), errdefs.ErrDecrypt, "does not decrypt"},
		{"envelope A256CTR", f.seal(t, withMember(env, "wrap_type", "A256CTR"), f.key, signingKID), errdefs.ErrInvalidConfig, "only A256GCM"},
		{"envelope iv of 16 bytes", f.seal(t, withMember(env, "iv", base64.StdEncoding.EncodeToString(make([]byte, 16))), f.key, signingKID), errdefs.ErrInvalidConfig, "iv"},
		{"envelope without encrypted_key", f.seal(t, without(env, "encrypted_key"), f.key, signingKID), errdefs.ErrInvalidConfig, `needs "encrypted_key"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := f.u.Unseal(ctx, []byte(tc.sealed))
			if err == nil {
				t.Fatalf("unsealed %q", got)
			}
			if !errors.Is(err, tc.kind) || !strings.Contains(err.Error(), tc.msg) {
				t.Errorf("error %q, want %v naming %q", err, tc.kind, tc.msg)
			}
			if strings.Contains(err.Error(), plaintext) || strings.Contains(err.Error(), string(f.kek)) {
				t.Errorf("the error carries a secret: %q", err)
			}
		})
	}

	t.Run("no KBS configured", func(t *testing.T) {
		u := New(Options{CredentialDir: f.credDir})
		_, err := u.Unseal(ctx, []byte(f.seal(t, Vault(vaultURI), f.key, "local-key")))
		if !errors.Is(err, errdefs.ErrDecrypt) || !strings.Contains(err.Error(), "no") {
			t.Errorf("vault without a KBS: %v", err)
		}
	})
}

func TestUnsealSkipVerification(t *testing.T) {
	f := newFixture(t)
	u := New(Options{Resources: f.res, SkipVerification: true})
	hdr, body, _ := splitJWS(f.seal(t, Vault(vaultURI), f.other, "no-such-key"))
	got, err := u.Unseal(context.Background(), []byte("sealed."+hdr+"."+body+".fakesignature"))
	if err != nil || string(got) != plaintext {
		t.Errorf("unverified secret: %q, %v", got, err)
	}
	for _, bad := range []string{"sealed.a.b", "sealed." + hdr + ".%%%.sig", "sealed." + hdr + "." + b64url(t, Vault("nope")) + ".x"} {
		if _, err := u.Unseal(context.Background(), []byte(bad)); err == nil {
			t.Errorf("%q unsealed", bad)
		}
	}
}

func FuzzUnseal(f *testing.F) {
	fx := newFixture(f)
	env, _ := Envelope(kekURI, fx.kek, []byte(plaintext))
	for _, s := range []string{
		upstreamSeal(f, Vault(vaultURI), fx.key, signingKID),
		upstreamSeal(f, env, fx.key, "local-key"),
		"sealed.eyJhbGciOiJFUzI1NiJ9.e30.AAAA",
	} {
		f.Add([]byte(s))
	}
	u := New(Options{Resources: fx.res, CredentialDir: fx.credDir})
	skip := New(Options{Resources: fx.res, CredentialDir: fx.credDir, SkipVerification: true})
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, u := range []*Unsealer{u, skip} {
			plain, err := u.Unseal(context.Background(), data)
			if err == nil && string(plain) != plaintext {
				t.Fatalf("%q unsealed to %q", data, plain)
			}
		}
	})
}

func splitJWS(sealed string) (string, string, string) {
	p := strings.Split(strings.TrimPrefix(sealed, "sealed."), ".")
	return p[0], p[1], p[2]
}

func b64url(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

func flip(s string) string {
	b, _ := base64.RawURLEncoding.DecodeString(s)
	b[len(b)/2] ^= 1
	return base64.RawURLEncoding.EncodeToString(b)
}

func hs256(t *testing.T, payload map[string]any) string {
	t.Helper()
	return "sealed." + b64url(t, map[string]string{"alg": "HS256", "kid": signingKID}) + "." + b64url(t, payload) + ".c2lnbmF0dXJl"
}
