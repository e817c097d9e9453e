package sealedsecret

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdsa"
	"crypto/elliptic"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"sort"
	"strings"

	"github.com/go-jose/go-jose/v4"
	josecipher "github.com/go-jose/go-jose/v4/cipher"

	"github.com/guest-puller/guest-puller/internal/errdefs"
	"github.com/guest-puller/guest-puller/internal/untrusted"
)

const (
	// Prefix starts every sealed secret.
	Prefix = "sealed."
	// Version is the only payload version there is.
	Version = "0.1.0"
	// DefaultCredentialDir is where verification keys named by a kid that
	// is not a resource URI are provisioned.
	DefaultCredentialDir = "/run/confidential-containers/cdh/sealed-secret"

	// maxSecret bounds a sealed secret (ttrpc's own message limit is 4 MiB).
	maxSecret = 4 << 20
	// maxKey bounds a verification key file.
	maxKey = 64 << 10
)

// Getter fetches KBS resources by URI (kbs:///repo/type/tag).
type Getter interface {
	GetResource(ctx context.Context, uri string) ([]byte, error)
}

// Options configure an Unsealer.
type Options struct {
	// Resources fetches the KBS resources secrets name: vault secrets,
	// envelope KEKs, and verification keys whose kid is a resource URI.
	// Nil refuses every secret that needs one.
	Resources Getter
	// CredentialDir holds verification keys named by a plain kid; default
	// DefaultCredentialDir. A kid cannot name a file outside it.
	CredentialDir string
	// SkipVerification unseals without checking the signature, as the
	// confidential-data-hub's skip_sealed_secret_verification does. The
	// JWS must still be well formed.
	SkipVerification bool
}

// Unsealer unseals sealed secrets. It is safe for concurrent use.
type Unsealer struct {
	opts Options
}

// New returns an Unsealer.
func New(opts Options) *Unsealer {
	if opts.CredentialDir == "" {
		opts.CredentialDir = DefaultCredentialDir
	}
	return &Unsealer{opts: opts}
}

// Unseal checks a sealed secret's signature and returns its plaintext.
// Malformed secrets, unknown versions, types and providers wrap
// errdefs.ErrInvalidConfig; a signature that does not verify wraps
// errdefs.ErrIntegrity; a key or secret the KBS does not hand out, or that
// does not decrypt, wraps errdefs.ErrDecrypt.
func (u *Unsealer) Unseal(ctx context.Context, sealed []byte) ([]byte, error) {
	payload, err := u.verify(ctx, sealed)
	if err != nil {
		return nil, fmt.Errorf("sealed secret: %w", err)
	}
	s, err := parsePayload(payload)
	if err != nil {
		return nil, fmt.Errorf("sealed secret: %w", err)
	}
	plain, err := u.open(ctx, s)
	if err != nil {
		return nil, fmt.Errorf("sealed secret (%s): %w", s.Type, err)
	}
	return plain, nil
}

// verify returns the JWS payload once its signature holds.
func (u *Unsealer) verify(ctx context.Context, sealed []byte) ([]byte, error) {
	if len(sealed) > maxSecret {
		return nil, fmt.Errorf("%w: %d bytes, more than %d", errdefs.ErrInvalidConfig, len(sealed), maxSecret)
	}
	compact := strings.TrimPrefix(string(bytes.TrimSpace(sealed)), Prefix)
	if u.opts.SkipVerification {
		parts := strings.Split(compact, ".")
		if len(parts) != 3 {
			return nil, fmt.Errorf("%w: not \"sealed.\" + a JWS in compact form (header.payload.signature)", errdefs.ErrInvalidConfig)
		}
		payload, err := base64.RawURLEncoding.DecodeString(parts[1])
		if err != nil {
			return nil, fmt.Errorf("%w: the JWS payload is not unpadded base64url", errdefs.ErrInvalidConfig)
		}
		return payload, nil
	}
	jws, err := jose.ParseSignedCompact(compact, []jose.SignatureAlgorithm{jose.ES256})
	if err != nil {
		return nil, fmt.Errorf("%w: not \"sealed.\" + a JWS in compact form signed with ES256: %v", errdefs.ErrInvalidConfig, err)
	}
	if len(jws.Signatures) != 1 {
		return nil, fmt.Errorf("%w: %d signatures, want 1", errdefs.ErrInvalidConfig, len(jws.Signatures))
	}
	kid := jws.Signatures[0].Protected.KeyID
	if kid == "" {
		return nil, fmt.Errorf("%w: the JWS header names no kid: there is no key to verify it with", errdefs.ErrInvalidConfig)
	}
	key, err := u.verificationKey(ctx, kid)
	if err != nil {
		return nil, fmt.Errorf("verification key %s: %w", untrusted.Quote(kid), err)
	}
	payload, err := jws.Verify(key)
	if err != nil {
		return nil, fmt.Errorf("%w: the signature does not verify with the key of kid %s", errdefs.ErrIntegrity, untrusted.Quote(kid))
	}
	return payload, nil
}

// verificationKey returns the P-256 public key a kid names: a KBS resource
// when the kid is a resource URI, else a file under the credential
// directory.
func (u *Unsealer) verificationKey(ctx context.Context, kid string) (*ecdsa.PublicKey, error) {
	var data []byte
	var err error
	if strings.HasPrefix(kid, "kbs://") {
		data, err = u.resource(ctx, kid)
	} else {
		data, err = u.credential(kid)
	}
	if err != nil {
		return nil, err
	}
	var jwk jose.JSONWebKey
	if err := jwk.UnmarshalJSON(data); err != nil {
		return nil, fmt.Errorf("%w: not a JWK: %v", errdefs.ErrInvalidConfig, err)
	}
	switch k := jwk.Key.(type) {
	case *ecdsa.PublicKey:
		if k.Curve == elliptic.P256() {
			return k, nil
		}
	case *ecdsa.PrivateKey:
		if k.Curve == elliptic.P256() {
			return &k.PublicKey, nil
		}
	}
	return nil, fmt.Errorf("%w: the JWK is not an EC P-256 key", errdefs.ErrInvalidConfig)
}

// credential reads a provisioned verification key. os.Root keeps the kid
// from naming anything outside the directory, by ".." or by symlink.
func (u *Unsealer) credential(kid string) ([]byte, error) {
	root, err := os.OpenRoot(u.opts.CredentialDir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w: not a KBS resource URI, and no credential directory %s", errdefs.ErrNotFound, u.opts.CredentialDir)
	}
	if err != nil {
		return nil, err
	}
	defer root.Close()
	f, err := root.Open(kid)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w: not a KBS resource URI, and no such file in %s", errdefs.ErrNotFound, u.opts.CredentialDir)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: not a KBS resource URI, nor a file in %s: %v", errdefs.ErrInvalidConfig, u.opts.CredentialDir, err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxKey+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxKey {
		return nil, fmt.Errorf("%w: larger than %d bytes", errdefs.ErrInvalidConfig, maxKey)
	}
	return data, nil
}

func (u *Unsealer) resource(ctx context.Context, uri string) ([]byte, error) {
	if u.opts.Resources == nil {
		return nil, fmt.Errorf("%w: %s needs a Key Broker Service, and none is configured", errdefs.ErrDecrypt, uri)
	}
	return u.opts.Resources.GetResource(ctx, uri)
}

// secret is a sealed secret's payload.
type secret struct {
	Type     string
	Provider string
	// vault
	Name string
	// envelope
	KeyID, EncryptedKey, EncryptedData, WrapType, IV string
}

// members lists, per type, the payload members and whether each is
// required; anything else is refused, as a member this package does not
// understand could change what the secret means.
var members = map[string]map[string]bool{
	"vault": {
		"name": true,
	},
	"envelope": {
		"key_id": true, "encrypted_key": true, "encrypted_data": true, "wrap_type": true, "iv": true,
	},
}

var common = map[string]bool{"version": true, "type": true, "provider": true, "provider_settings": false, "annotations": false}

func parsePayload(payload []byte) (*secret, error) {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(payload, &raw); err != nil || raw == nil {
		return nil, fmt.Errorf("%w: the payload is not a JSON object", errdefs.ErrInvalidConfig)
	}
	str := func(name string) (string, error) {
		v, ok := raw[name]
		if !ok {
			return "", nil
		}
		var s string
		if err := json.Unmarshal(v, &s); err != nil {
			return "", fmt.Errorf("%w: %q is not a string", errdefs.ErrInvalidConfig, name)
		}
		return s, nil
	}
	version, err := str("version")
	if err != nil {
		return nil, err
	}
	if version != Version {
		return nil, fmt.Errorf("%w: version %s is not supported (only %s)", errdefs.ErrInvalidConfig, untrusted.Quote(version), Version)
	}
	typ, err := str("type")
	if err != nil {
		return nil, err
	}
	allowed, ok := members[typ]
	if !ok {
		return nil, fmt.Errorf("%w: type %s: want vault or envelope", errdefs.ErrInvalidConfig, untrusted.Quote(typ))
	}
	names := make([]string, 0, len(raw))
	for name := range raw {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		if _, ok := common[name]; !ok {
			if _, ok := allowed[name]; !ok {
				return nil, fmt.Errorf("%w: unknown member %s in a %s secret", errdefs.ErrInvalidConfig, untrusted.Quote(name), typ)
			}
		}
	}
	for _, set := range []map[string]bool{common, allowed} {
		for name, required := range set {
			if _, ok := raw[name]; required && !ok {
				return nil, fmt.Errorf("%w: a %s secret needs %q", errdefs.ErrInvalidConfig, typ, name)
			}
		}
	}
	for _, name := range []string{"provider_settings", "annotations"} {
		if v, ok := raw[name]; ok {
			var obj map[string]json.RawMessage
			if err := json.Unmarshal(v, &obj); err != nil || (obj == nil && string(bytes.TrimSpace(v)) != "null") {
				return nil, fmt.Errorf("%w: %q is not an object", errdefs.ErrInvalidConfig, name)
			}
		}
	}
	s := &secret{Type: typ}
	for _, f := range []struct {
		name string
		dst  *string
	}{{"provider", &s.Provider}, {"name", &s.Name}, {"key_id", &s.KeyID}, {"encrypted_key", &s.EncryptedKey},
		{"encrypted_data", &s.EncryptedData}, {"wrap_type", &s.WrapType}, {"iv", &s.IV}} {
		if *f.dst, err = str(f.name); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// open fetches or decrypts the plaintext.
func (u *Unsealer) open(ctx context.Context, s *secret) ([]byte, error) {
	if !strings.EqualFold(s.Provider, "kbs") {
		return nil, fmt.Errorf("%w: provider %s is not supported: guest-puller unseals secrets whose provider is kbs", errdefs.ErrInvalidConfig, untrusted.Quote(s.Provider))
	}
	if s.Type == "vault" {
		if !strings.HasPrefix(s.Name, "kbs://") {
			return nil, fmt.Errorf("%w: name %s is not a KBS resource URI (kbs:///repo/type/tag)", errdefs.ErrInvalidConfig, untrusted.Quote(s.Name))
		}
		return u.resource(ctx, s.Name)
	}
	if s.WrapType != "A256GCM" {
		return nil, fmt.Errorf("%w: wrap_type %s: only A256GCM (AES-256-GCM) is accepted", errdefs.ErrInvalidConfig, untrusted.Quote(s.WrapType))
	}
	if !strings.HasPrefix(s.KeyID, "kbs://") {
		return nil, fmt.Errorf("%w: key_id %s is not a KBS resource URI (kbs:///repo/type/tag)", errdefs.ErrInvalidConfig, untrusted.Quote(s.KeyID))
	}
	wrapped, err := base64.StdEncoding.DecodeString(s.EncryptedKey)
	if err != nil {
		return nil, fmt.Errorf("%w: encrypted_key is not base64", errdefs.ErrInvalidConfig)
	}
	iv, err := base64.StdEncoding.DecodeString(s.IV)
	if err != nil || len(iv) != 12 {
		return nil, fmt.Errorf("%w: iv is not 12 bytes of base64", errdefs.ErrInvalidConfig)
	}
	sealedData, err := base64.StdEncoding.DecodeString(s.EncryptedData)
	if err != nil {
		return nil, fmt.Errorf("%w: encrypted_data is not base64", errdefs.ErrInvalidConfig)
	}
	kek, err := u.resource(ctx, s.KeyID)
	if err != nil {
		return nil, err
	}
	if len(kek) != 32 {
		return nil, fmt.Errorf("%w: the KEK %s is %d bytes, want 32 (AES-256)", errdefs.ErrDecrypt, s.KeyID, len(kek))
	}
	block, err := aes.NewCipher(kek)
	if err != nil {
		return nil, err
	}
	dek, err := josecipher.KeyUnwrap(block, wrapped)
	if err != nil {
		return nil, fmt.Errorf("%w: encrypted_key does not unwrap with the KEK %s (A256KW)", errdefs.ErrDecrypt, s.KeyID)
	}
	defer clear(dek)
	if len(dek) != 32 {
		return nil, fmt.Errorf("%w: the data key is %d bytes, want 32", errdefs.ErrDecrypt, len(dek))
	}
	dblock, err := aes.NewCipher(dek)
	if err != nil {
		return nil, err
	}
	gcm, err := cipher.NewGCM(dblock)
	if err != nil {
		return nil, err
	}
	plain, err := gcm.Open(nil, iv, sealedData, nil)
	if err != nil {
		return nil, fmt.Errorf("%w: encrypted_data does not decrypt with its data key (AES-256-GCM)", errdefs.ErrDecrypt)
	}
	return plain, nil
}
