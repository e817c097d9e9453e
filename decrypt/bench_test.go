package decrypt

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"testing"

	"github.com/containers/ocicrypt/blockcipher"
	"github.com/opencontainers/go-digest"
)

const benchSize = 256 << 20

// patternReader yields size bytes of a repeated random block: a large
// "ciphertext" without holding it in memory.
type patternReader struct {
	block []byte
	off   int
	left  int64
}

func newPatternReader(block []byte, size int64) *patternReader {
	return &patternReader{block: block, left: size}
}

func (r *patternReader) Read(p []byte) (int, error) {
	if r.left == 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > r.left {
		p = p[:r.left]
	}
	n := 0
	for n < len(p) {
		c := copy(p[n:], r.block[r.off:])
		n += c
		r.off = (r.off + c) % len(r.block)
	}
	r.left -= int64(n)
	return n, nil
}

// benchLayerKey returns a LayerKey (through newLayerKey, as Unwrap makes
// it) for which the pattern stream is a valid ciphertext: its HMAC and
// plaintext digest are computed in one setup pass.
func benchLayerKey(b *testing.B, block []byte) *LayerKey {
	b.Helper()
	key, nonce := make([]byte, 32), make([]byte, aes.BlockSize)
	rand.Read(key)
	rand.Read(nonce)
	mac := hmac.New(sha256.New, key)
	aesBlock, err := aes.NewCipher(key)
	if err != nil {
		b.Fatal(err)
	}
	ctr := cipher.NewCTR(aesBlock, nonce)
	plain := digest.SHA256.Digester()
	buf := make([]byte, 1<<20)
	src := newPatternReader(block, benchSize)
	for {
		n, err := src.Read(buf)
		mac.Write(buf[:n])
		ctr.XORKeyStream(buf[:n], buf[:n])
		plain.Hash().Write(buf[:n])
		if err == io.EOF {
			break
		}
	}
	priv := must(json.Marshal(blockcipher.PrivateLayerBlockCipherOptions{
		SymmetricKey:  key,
		Digest:        plain.Digest(),
		CipherOptions: map[string][]byte{"nonce": nonce},
	}))
	lk, err := newLayerKey("sha256:bench", priv, blockcipher.PublicLayerBlockCipherOptions{
		CipherType: blockcipher.AES256CTR,
		Hmac:       mac.Sum(nil),
	})
	if err != nil {
		b.Fatal(err)
	}
	return lk
}

// writerOnly hides io.Discard's ReadFrom so that io.CopyBuffer reads with
// the buffer size under test.
type writerOnly struct{ io.Writer }

// BenchmarkNewReader measures decryption throughput (AES-256-CTR and the
// HMAC-SHA256 of the ciphertext, through ocicrypt's blockcipher) against
// copying the same stream undecrypted, at a decompressor's small reads
// (4 KiB, gzip's bufio) and large ones.
func BenchmarkNewReader(b *testing.B) {
	block := make([]byte, 1<<20)
	rand.Read(block)
	lk := benchLayerKey(b, block)

	for _, size := range []int{4 << 10, 128 << 10} {
		buf := make([]byte, size)
		b.Run(fmt.Sprintf("io.Copy/read=%dKiB", size>>10), func(b *testing.B) {
			b.SetBytes(benchSize)
			b.ReportAllocs()
			for b.Loop() {
				if _, err := io.CopyBuffer(writerOnly{io.Discard}, newPatternReader(block, benchSize), buf); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(fmt.Sprintf("NewReader/read=%dKiB", size>>10), func(b *testing.B) {
			b.SetBytes(benchSize)
			b.ReportAllocs()
			for b.Loop() {
				r, err := lk.NewReader(newPatternReader(block, benchSize))
				if err != nil {
					b.Fatal(err)
				}
				if _, err := io.CopyBuffer(writerOnly{io.Discard}, r, buf); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
