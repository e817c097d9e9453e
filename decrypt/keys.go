package decrypt

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/ProtonMail/go-crypto/openpgp"
	"github.com/ProtonMail/go-crypto/openpgp/armor"
	"github.com/ProtonMail/go-crypto/openpgp/packet"
	"github.com/containers/ocicrypt/config"
	"github.com/containers/ocicrypt/utils"
	"github.com/go-jose/go-jose/v4"

	"github.com/guest-puller/guest-puller/internal/errdefs"
)

// The DecryptConfig parameter names ocicrypt's key wrappers read.
const (
	paramPrivKeys     = "privkeys"
	paramPrivKeysPwds = "privkeys-passwords"
	paramX509s        = "x509s"
	paramGPGKeys      = "gpg-privatekeys"
	paramGPGKeysPwds  = "gpg-privatekeys-passwords"
)

// kbsScheme prefixes keys and key IDs served by a Key Broker Service.
const kbsScheme = "kbs://"

// aaProvider is the key provider name confidential containers use; it is
// also the parameter name in ocicrypt's keyprovider protocol.
const aaProvider = "attestation-agent"

// keySet is the private key material of a Keyring, held as the byte strings
// ocicrypt's key wrappers parse on use. Passwords line up with their keys.
type keySet struct {
	privKeys, privKeyPwds [][]byte // JWE and PKCS7; PKCS#8 DER, so no passwords
	x509s                 [][]byte // PKCS7 recipients' certificates
	gpgKeys, gpgKeyPwds   [][]byte
	// aaEnabled records a "provider:attestation-agent" key. The provider is
	// tried whenever a KBS is configured; the key only makes its absence a
	// configuration error.
	aaEnabled bool
}

func (s *keySet) decryptConfig() *config.DecryptConfig {
	p := map[string][][]byte{}
	if len(s.privKeys) > 0 {
		p[paramPrivKeys] = s.privKeys
		p[paramPrivKeysPwds] = s.privKeyPwds
	}
	if len(s.x509s) > 0 {
		p[paramX509s] = s.x509s
	}
	if len(s.gpgKeys) > 0 {
		p[paramGPGKeys] = s.gpgKeys
		p[paramGPGKeysPwds] = s.gpgKeyPwds
	}
	return &config.DecryptConfig{Parameters: p}
}

// loadKeys reads every key of opts. Errors name the key's path or URI,
// never a password or key bytes.
func loadKeys(ctx context.Context, opts Options) (*keySet, error) {
	s := &keySet{}
	for _, arg := range opts.Keys {
		if err := s.addArg(ctx, arg, opts.Resources); err != nil {
			return nil, err
		}
	}
	if opts.KeyDir != "" {
		if err := s.addDir(opts.KeyDir); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// addArg adds one --decryption-key value, in skopeo's forms:
// PATH, PATH:PASSWORD, PATH:pass=PASSWORD, PATH:file=PWFILE, PATH:fd=N,
// provider:attestation-agent[:…], and our kbs:///repo/type/tag.
func (s *keySet) addArg(ctx context.Context, arg string, rg ResourceGetter) error {
	switch {
	case arg == "":
		return fmt.Errorf("decryption key: %w: empty key", errdefs.ErrInvalidConfig)
	case strings.HasPrefix(arg, kbsScheme):
		if rg == nil {
			return fmt.Errorf("decryption key %s: %w: a kbs:// key needs a KBS (--kbs)", arg, errdefs.ErrInvalidConfig)
		}
		data, err := rg.GetResource(ctx, arg)
		if err != nil {
			return fmt.Errorf("decryption key %s: %w", arg, err)
		}
		return s.add(arg, data, nil)
	case strings.HasPrefix(arg, "provider:"):
		name, _, _ := strings.Cut(strings.TrimPrefix(arg, "provider:"), ":")
		if name != aaProvider {
			return fmt.Errorf("decryption key provider %q: %w: only the %s key provider is supported", name, errdefs.ErrInvalidConfig, aaProvider)
		}
		if rg == nil {
			return fmt.Errorf("decryption key provider %s: %w: the provider needs a KBS (--kbs)", name, errdefs.ErrInvalidConfig)
		}
		s.aaEnabled = true
		return nil
	}

	// skopeo splits at every colon and drops the password when that makes
	// more than two parts; splitting at the first lets a password hold
	// colons. A path cannot, as with skopeo.
	path, pwSpec, hasPw := strings.Cut(arg, ":")
	var pw []byte
	if hasPw {
		var err error
		if pw, err = readPassword(pwSpec); err != nil {
			return fmt.Errorf("decryption key %s: %w: password: %v", path, errdefs.ErrInvalidConfig, err)
		}
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("decryption key: %w: %v", errdefs.ErrInvalidConfig, err)
	}
	return s.add(path, data, pw)
}

// readPassword resolves skopeo's password forms. Errors never include the
// password itself.
func readPassword(spec string) ([]byte, error) {
	switch {
	case strings.HasPrefix(spec, "pass="):
		return []byte(strings.TrimPrefix(spec, "pass=")), nil
	case strings.HasPrefix(spec, "file="):
		b, err := os.ReadFile(strings.TrimPrefix(spec, "file="))
		if err != nil {
			return nil, err
		}
		// Password files conventionally end in a newline that is not part
		// of the password.
		return bytes.TrimRight(b, "\r\n"), nil
	case strings.HasPrefix(spec, "fd="):
		fd, err := strconv.Atoi(strings.TrimPrefix(spec, "fd="))
		if err != nil || fd < 0 {
			return nil, errors.New("fd= needs a file descriptor number")
		}
		f := os.NewFile(uintptr(fd), "password-fd")
		if f == nil {
			return nil, fmt.Errorf("fd %d is not open", fd)
		}
		defer f.Close()
		b, err := io.ReadAll(io.LimitReader(f, 4096))
		if err != nil {
			return nil, fmt.Errorf("fd %d: %w", fd, err)
		}
		return bytes.TrimRight(b, "\r\n"), nil
	default:
		return []byte(spec), nil
	}
}

// addDir adds every regular file of dir (symlinks followed, dot files
// skipped) as a key without password.
func (s *keySet) addDir(dir string) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("key directory: %w: %v", errdefs.ErrInvalidConfig, err)
	}
	for _, e := range entries {
		// Kubernetes secret volumes keep their machinery in ..data and
		// ..<timestamp> entries.
		if strings.HasPrefix(e.Name(), ".") {
			continue
		}
		path := filepath.Join(dir, e.Name())
		fi, err := os.Stat(path)
		if err != nil {
			return fmt.Errorf("key directory: %w: %v", errdefs.ErrInvalidConfig, err)
		}
		if !fi.Mode().IsRegular() {
			continue
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return fmt.Errorf("key directory: %w: %v", errdefs.ErrInvalidConfig, err)
		}
		if err := s.add(path, data, nil); err != nil {
			return err
		}
	}
	return nil
}

// add classifies data as ocicrypt does (private key, x509 certificate,
// OpenPGP secret keyring) but refuses what it cannot use instead of
// silently ignoring it.
func (s *keySet) add(name string, data, pw []byte) error {
	if utils.IsPkcs11PrivateKey(data) {
		return fmt.Errorf("decryption key %s: %w: PKCS#11 keys are not supported", name, errdefs.ErrInvalidConfig)
	}
	key, err := parsePrivateKey(data, pw)
	switch {
	case err == nil:
		// Held as unencrypted PKCS#8, the one form every ocicrypt key
		// wrapper parses back; the password is not kept.
		der, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			return fmt.Errorf("decryption key %s: %w: %v", name, errdefs.ErrInvalidConfig, err)
		}
		s.privKeys = append(s.privKeys, der)
		s.privKeyPwds = append(s.privKeyPwds, nil)
		return nil
	case errors.Is(err, errMissingPassword):
		return fmt.Errorf("decryption key %s: %w: the key is password-protected; give PATH:PASSWORD", name, errdefs.ErrInvalidConfig)
	case errors.Is(err, errWrongPassword):
		return fmt.Errorf("decryption key %s: %w: wrong password", name, errdefs.ErrInvalidConfig)
	case errors.Is(err, errUnusableKey):
		return fmt.Errorf("decryption key %s: %w: %v", name, errdefs.ErrInvalidConfig, err)
	}
	if utils.IsCertificate(data) {
		s.x509s = append(s.x509s, data)
		return nil
	}
	if gpg, ok := openPGPKeyRing(data); ok {
		if err := checkOpenPGPKeys(gpg, pw); err != nil {
			return fmt.Errorf("decryption key %s: %w: %v", name, errdefs.ErrInvalidConfig, err)
		}
		s.gpgKeys = append(s.gpgKeys, gpg)
		s.gpgKeyPwds = append(s.gpgKeyPwds, pw)
		return nil
	}
	if b, _ := pem.Decode(data); b != nil && b.Type == "ENCRYPTED PRIVATE KEY" {
		return fmt.Errorf("decryption key %s: %w: encrypted PKCS#8 keys are not supported (ocicrypt reads PEM-encrypted PKCS#1 and SEC1 keys); convert with openssl rsa -aes256 -traditional", name, errdefs.ErrInvalidConfig)
	}
	return fmt.Errorf("decryption key %s: %w: not a private key, x509 certificate or OpenPGP secret key", name, errdefs.ErrInvalidConfig)
}

var (
	errMissingPassword = errors.New("missing password")
	errWrongPassword   = errors.New("wrong password")
	errUnusableKey     = errors.New("unusable key")
)

// parsePrivateKey reads what ocicrypt's utils.ParsePrivateKey reads (DER
// PKCS#8, PKCS#1 or SEC1; PEM PKCS#8 or PKCS#1, optionally with legacy PEM
// encryption; JWK) plus PEM SEC1 "EC PRIVATE KEY", which openssl writes by
// default and ocicrypt's PEM path misses. Only keys that can unwrap (RSA
// for JWE and PKCS7, EC for JWE) are returned.
func parsePrivateKey(data, pw []byte) (crypto.PrivateKey, error) {
	key, err := utils.ParsePrivateKey(data, pw, "")
	if utils.IsPasswordError(err) {
		if pw == nil {
			return nil, errMissingPassword
		}
		return nil, errWrongPassword
	}
	if err != nil {
		block, _ := pem.Decode(data)
		// Legacy PEM encryption's padding check passes about one wrong
		// password in 256; what it then "decrypts" parses as no key.
		encrypted := block != nil && x509.IsEncryptedPEMBlock(block) //nolint:staticcheck // as below
		if block == nil || block.Type != "EC PRIVATE KEY" {
			if encrypted {
				return nil, errWrongPassword
			}
			return nil, err
		}
		der := block.Bytes
		if x509.IsEncryptedPEMBlock(block) { //nolint:staticcheck // legacy PEM encryption is what skopeo users have
			if der, err = x509.DecryptPEMBlock(block, pw); err != nil { //nolint:staticcheck // as above
				return nil, errWrongPassword
			}
		}
		if key, err = x509.ParseECPrivateKey(der); err != nil {
			if encrypted {
				return nil, errWrongPassword
			}
			return nil, err
		}
	}
	if jwk, ok := key.(*jose.JSONWebKey); ok {
		if jwk.IsPublic() {
			return nil, fmt.Errorf("%w: the JWK is a public key", errUnusableKey)
		}
		key = jwk.Key
	}
	switch key.(type) {
	case *rsa.PrivateKey, *ecdsa.PrivateKey:
		return key, nil
	case ed25519.PrivateKey:
		return nil, fmt.Errorf("%w: Ed25519 keys cannot unwrap layer keys (JWE and PKCS7 need RSA or EC)", errUnusableKey)
	default: // a PKCS#11 key object
		return nil, fmt.Errorf("%w: %T", errUnusableKey, key)
	}
}

// openPGPKeyRing returns the binary keyring ocicrypt's pgp key wrapper
// reads, de-armoring an ASCII-armored export, if data holds at least one
// secret key.
func openPGPKeyRing(data []byte) ([]byte, bool) {
	if blk, err := armor.Decode(bytes.NewReader(data)); err == nil {
		b, err := io.ReadAll(blk.Body)
		if err != nil {
			return nil, false
		}
		data = b
	}
	el, err := openpgp.ReadKeyRing(bytes.NewReader(data))
	if err != nil {
		return nil, false
	}
	for _, e := range el {
		if e.PrivateKey != nil {
			return data, true
		}
	}
	return nil, false
}

// checkOpenPGPKeys fails early, at load time, on a protected secret key
// that pw cannot open: at unwrap time it would only be "no key unwraps it".
func checkOpenPGPKeys(ring, pw []byte) error {
	el, err := openpgp.ReadKeyRing(bytes.NewReader(ring))
	if err != nil {
		return err
	}
	for _, e := range el {
		keys := []*packet.PrivateKey{e.PrivateKey}
		for _, sk := range e.Subkeys {
			keys = append(keys, sk.PrivateKey)
		}
		for _, k := range keys {
			if k == nil || !k.Encrypted {
				continue
			}
			if pw == nil {
				return errors.New("the OpenPGP key is password-protected; give PATH:PASSWORD")
			}
			if k.Decrypt(pw) != nil {
				return errors.New("wrong password for the OpenPGP key")
			}
		}
	}
	return nil
}
