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
	"sync"

	"github.com/ProtonMail/go-crypto/openpgp"
	"github.com/ProtonMail/go-crypto/openpgp/armor"
	"github.com/sigstore/sigstore/pkg/cryptoutils"
)

// kbsScheme marks a key path that names a KBS resource; only a caller's
// ReadFunc can fetch it.
const kbsScheme = "kbs://"

// keySource is one key, keyring or CA bundle that a policy field names: a
// file (local or kbs://) or inline data. Nothing is read at Load: as in
// containers/image, a key is read when a requirement that needs it is
// evaluated, so a missing or bad key fails only the decisions of the scopes
// that name it.
type keySource struct {
	name string // as reported: the path as written in the policy, or keyData[i]
	at   string // where the policy names it: transports.docker["x"][0].keyPath
	path string // the path as written, "" for inline data
	data []byte // inline data
}

// keyError is why a key could not be used. Its message names the key (its
// path as written, or its keyData entry) and where the policy names it.
type keyError struct {
	src keySource
	err error
}

func (e *keyError) Error() string {
	switch {
	case e.src.path == "":
		return fmt.Sprintf("key %s (%s): %v", e.src.name, e.src.at, e.err)
	case e.src.path == e.src.name:
		return fmt.Sprintf("key file %q (%s): %v", e.src.path, e.src.at, e.err)
	default:
		return fmt.Sprintf("key %q, file %q (%s): %v", e.src.name, e.src.path, e.src.at, e.err)
	}
}

func (e *keyError) Unwrap() error { return e.err }

// keyReader reads the key files of one policy. Local files are read on
// every evaluation that needs them, as containers/image does, so a key
// replaced on disk takes effect without reloading the policy; kbs://
// resources are remembered once read, since each read is a round trip to
// the KBS (after attestation).
type keyReader struct {
	baseDir string
	read    ReadFunc

	mu  sync.Mutex
	kbs map[string][]byte
}

func newKeyReader(opts LoadOptions) *keyReader {
	r := &keyReader{baseDir: opts.BaseDir, read: opts.Read, kbs: map[string][]byte{}}
	if r.read == nil {
		r.read = readLocal
	}
	return r
}

func readLocal(_ context.Context, path string) ([]byte, error) {
	if strings.HasPrefix(path, kbsScheme) {
		return nil, errors.New("kbs:// key paths need a KBS client; none is configured")
	}
	return os.ReadFile(path)
}

// bytes returns the content of src: its inline data, or its file, relative
// paths being relative to the policy's directory.
func (r *keyReader) bytes(ctx context.Context, src keySource) ([]byte, error) {
	if src.path == "" {
		return src.data, nil
	}
	path := src.path
	isKBS := strings.HasPrefix(path, kbsScheme)
	if !isKBS && !filepath.IsAbs(path) {
		path = filepath.Join(r.baseDir, path)
	}
	if isKBS {
		r.mu.Lock()
		data, ok := r.kbs[path]
		r.mu.Unlock()
		if ok {
			return data, nil
		}
	}
	data, err := r.read(ctx, path)
	if err != nil {
		return nil, &keyError{src, err}
	}
	if isKBS {
		r.mu.Lock()
		r.kbs[path] = data
		r.mu.Unlock()
	}
	return data, nil
}

// publicKeys reads and parses sigstore public keys. Any key that cannot be
// read or parsed is an error: a requirement is not decided on part of its
// keys.
func (r *keyReader) publicKeys(ctx context.Context, srcs []keySource) ([]publicKey, error) {
	keys := make([]publicKey, 0, len(srcs))
	for _, src := range srcs {
		data, err := r.bytes(ctx, src)
		if err != nil {
			return nil, err
		}
		pub, id, err := parsePublicKey(data)
		if err != nil {
			return nil, &keyError{src, err}
		}
		keys = append(keys, publicKey{name: src.name, id: id, pub: pub})
	}
	return keys, nil
}

// keyrings reads and parses GPG keyrings.
func (r *keyReader) keyrings(ctx context.Context, srcs []keySource) ([]gpgKeyring, error) {
	if len(srcs) == 0 {
		return nil, errors.New("the requirement lists no keyring")
	}
	krs := make([]gpgKeyring, 0, len(srcs))
	for _, src := range srcs {
		data, err := r.bytes(ctx, src)
		if err != nil {
			return nil, err
		}
		fprs, err := parseKeyring(data)
		if err != nil {
			return nil, &keyError{src, err}
		}
		krs = append(krs, gpgKeyring{name: src.name, fingerprints: fprs, data: data})
	}
	return krs, nil
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
