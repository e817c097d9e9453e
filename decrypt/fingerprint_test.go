package decrypt

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"strings"
	"testing"

	"github.com/containers/ocicrypt/blockcipher"
	"github.com/opencontainers/go-digest"
)

// TestFingerprint: a layer key's fingerprint names the key material (the
// symmetric key and nonce), whatever wrapped it, and tells nothing of it.
func TestFingerprint(t *testing.T) {
	key := func(sym, nonce byte) *LayerKey {
		t.Helper()
		opts, err := json.Marshal(blockcipher.PrivateLayerBlockCipherOptions{
			SymmetricKey:  bytes.Repeat([]byte{sym}, 32),
			CipherOptions: map[string][]byte{"nonce": bytes.Repeat([]byte{nonce}, 16)},
		})
		if err != nil {
			t.Fatal(err)
		}
		lk, err := newLayerKey(digest.FromString("layer"), opts, blockcipher.PublicLayerBlockCipherOptions{CipherType: blockcipher.AES256CTR, Hmac: make([]byte, 32)})
		if err != nil {
			t.Fatal(err)
		}
		return lk
	}
	a, again, otherKey, otherNonce := key(1, 1), key(1, 1), key(2, 1), key(1, 2)
	if a.Fingerprint() != again.Fingerprint() {
		t.Error("the same key material has two fingerprints")
	}
	if a.Fingerprint() == otherKey.Fingerprint() || a.Fingerprint() == otherNonce.Fingerprint() {
		t.Error("different key material has one fingerprint")
	}
	if fp := a.Fingerprint(); len(fp) != 64 || strings.Contains(fp, hex.EncodeToString(bytes.Repeat([]byte{1}, 16))) {
		t.Errorf("fingerprint %q is not a digest or shows the key", fp)
	}
}
