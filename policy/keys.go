package policy

import (
	"bufio"
	"bytes"
	"context"
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/ProtonMail/go-crypto/openpgp"
	"github.com/ProtonMail/go-crypto/openpgp/armor"
	"github.com/sigstore/sigstore/pkg/cryptoutils"
)

// kbsScheme marks a key path that names a KBS resource; only a caller's
// ReadFunc can fetch it.
const kbsScheme = "kbs://"

// loader reads the files a policy names. Each file is read once per Load,
// however many requirements name it.
type loader struct {
	baseDir string
	read    ReadFunc
	files   map[string][]byte
}

func newLoader(opts LoadOptions) *loader {
	l := &loader{baseDir: opts.BaseDir, read: opts.Read, files: map[string][]byte{}}
	if l.read == nil {
		l.read = readLocal
	}
	return l
}

func readLocal(_ context.Context, path string) ([]byte, error) {
	if strings.HasPrefix(path, kbsScheme) {
		return nil, errors.New("kbs:// key paths need a KBS client; none is configured")
	}
	return os.ReadFile(path)
}

// file reads path, relative paths being relative to the policy's directory.
func (l *loader) file(ctx context.Context, path string) ([]byte, error) {
	if !strings.HasPrefix(path, kbsScheme) && !filepath.IsAbs(path) {
		path = filepath.Join(l.baseDir, path)
	}
	if data, ok := l.files[path]; ok {
		return data, nil
	}
	data, err := l.read(ctx, path)
	if err != nil {
		return nil, err
	}
	l.files[path] = data
	return data, nil
}

// publicKey is one sigstore public key of the policy.
type publicKey struct {
	name string // threshold name, the keyPath as written, or keyData[i]
	id   string // hex SHA-256 of the DER SubjectPublicKeyInfo, as Claim.KeyID
	pub  crypto.PublicKey
}

// parsePublicKey reads exactly one PEM public key (ECDSA, Ed25519 or RSA
// of a size sigstore accepts).
func parsePublicKey(data []byte) (crypto.PublicKey, string, error) {
	block, rest := pem.Decode(data)
	if block == nil {
		return nil, "", errors.New("no PEM public key found")
	}
	if len(bytes.TrimSpace(rest)) != 0 {
		return nil, "", errors.New("more than one PEM block: one public key per file")
	}
	pub, err := cryptoutils.UnmarshalPEMToPublicKey(data)
	if err != nil {
		return nil, "", err
	}
	if err := cryptoutils.ValidatePubKey(pub); err != nil {
		return nil, "", err
	}
	der, err := cryptoutils.MarshalPublicKeyToDER(pub)
	if err != nil {
		return nil, "", err
	}
	return pub, keyID(der), nil
}

// keyID is how Claim.KeyID names a sigstore key.
func keyID(der []byte) string {
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:])
}

// gpgKeyring is one GPG keyring of a signedBy requirement, kept as the
// bytes Evidence.SimpleSigning takes.
type gpgKeyring struct {
	name         string
	fingerprints []string // of the primary keys, upper-case hex as gpg prints them
	data         []byte
}

var errPrivateKeyring = errors.New("keyring holds a private key: only public keys belong in a policy")

// parseKeyring checks that data holds at least one OpenPGP public key,
// binary or armored (several armored blocks may follow each other), and
// returns the primary keys' fingerprints.
func parseKeyring(data []byte) ([]string, error) {
	var entities openpgp.EntityList
	if bytes.Contains(data, []byte("-----BEGIN PGP")) {
		// One bufio.Reader across calls: armor.Decode reuses it rather
		// than buffering past the block it returns.
		r := bufio.NewReaderSize(bytes.NewReader(data), 4096)
		for {
			block, err := armor.Decode(r)
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				return nil, fmt.Errorf("armored keyring: %w", err)
			}
			if block.Type == openpgp.PrivateKeyType {
				return nil, errPrivateKeyring
			}
			if block.Type != openpgp.PublicKeyType {
				return nil, fmt.Errorf("armored block %q is not a public key block", block.Type)
			}
			el, err := openpgp.ReadKeyRing(block.Body)
			if err != nil {
				return nil, fmt.Errorf("keyring: %w", err)
			}
			entities = append(entities, el...)
		}
	} else {
		el, err := openpgp.ReadKeyRing(bytes.NewReader(data))
		if err != nil {
			return nil, fmt.Errorf("keyring: %w", err)
		}
		entities = el
	}
	if len(entities) == 0 {
		return nil, errors.New("keyring holds no public key")
	}
	fprs := make([]string, len(entities))
	for i, e := range entities {
		if e.PrivateKey != nil {
			return nil, errPrivateKeyring
		}
		fprs[i] = strings.ToUpper(hex.EncodeToString(e.PrimaryKey.Fingerprint))
	}
	return fprs, nil
}

// parseCertificates reads one or more PEM certificates (fulcio and pki CAs).
func parseCertificates(data []byte) ([]*x509.Certificate, error) {
	certs, err := cryptoutils.UnmarshalCertificatesFromPEM(data)
	if err != nil {
		return nil, err
	}
	if len(certs) == 0 {
		return nil, errors.New("no PEM certificate found")
	}
	return certs, nil
}
