package testutil

import (
	"archive/tar"
	"bytes"
	"compress/flate"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io"
	"os/exec"
	"testing"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp/packet"
)

// Hostile inputs of the memory-bomb tests (issue 15): one generator of
// each, shared by unit tests, integration tests and fuzz seeds. Each is
// built in time and memory proportional to its own size, not to what it
// expands to.

// DeflateZeros returns a raw DEFLATE stream (RFC 1951) that inflates to
// prefix followed by n zero bytes. 2 GiB of zeros take about 2 MB.
func DeflateZeros(t testing.TB, prefix []byte, n int64) []byte {
	return DeflateRepeat(t, prefix, []byte{0}, n, nil)
}

// DeflateRepeat returns a raw DEFLATE stream that inflates to prefix,
// count copies of unit, then suffix. A block of about 1 MiB of copies is
// compressed once and repeated: its back-references reach at most 32 KiB
// back, always into the same periodic content.
func DeflateRepeat(t testing.TB, prefix, unit []byte, count int64, suffix []byte) []byte {
	t.Helper()
	per := int64(max(1, (1<<20)/len(unit))) // copies per block
	block := bytes.Repeat(unit, int(per))
	var buf bytes.Buffer
	w, err := flate.NewWriter(&buf, flate.BestCompression)
	if err != nil {
		t.Fatal(err)
	}
	write := func(p []byte) {
		if _, err := w.Write(p); err != nil {
			t.Fatal(err)
		}
	}
	flush := func() {
		if err := w.Flush(); err != nil {
			t.Fatal(err)
		}
	}
	write(prefix)
	if count < 2*per {
		for left := count; left > 0; left -= min(left, per) {
			write(block[:min(left, per)*int64(len(unit))])
		}
		write(suffix)
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		return buf.Bytes()
	}
	// head: prefix and the first block; one: a block as it compresses
	// after copies of unit; then the rest and the final block.
	write(block)
	flush()
	head := buf.Len()
	write(block)
	flush()
	one := append([]byte(nil), buf.Bytes()[head:]...)
	rest := count - 2*per
	repeats, tail := rest/per, rest%per
	write(block[:tail*int64(len(unit))])
	write(suffix)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	end := append([]byte(nil), buf.Bytes()[head+len(one):]...)

	out := make([]byte, 0, head+len(one)*int(repeats+1)+len(end))
	out = append(out, buf.Bytes()[:head]...)
	for i := int64(0); i <= repeats; i++ {
		out = append(out, one...)
	}
	return append(out, end...)
}

// OpenPGP packet tags (RFC 9580, section 5).
const (
	pgpTagCompressed = 8
	pgpTagLiteral    = 11
)

// pgpPacket frames body as one new-format OpenPGP packet of the given tag
// (a five-octet length: bodies up to 4 GiB).
func pgpPacket(tag byte, body []byte) []byte {
	return append(pgpHeader(tag, uint32(len(body))), body...)
}

func pgpHeader(tag byte, length uint32) []byte {
	h := []byte{0xc0 | tag, 0xff, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(h[2:], length)
	return h
}

// PGPBomb returns an OpenPGP message encrypted to pub (an encryption key:
// a primary or subkey's public half) whose literal data is n zero bytes,
// compressed (ZIP), then wrapped in nesting more compressed packets. A
// reader with no bound on what it inflates holds n bytes; with nesting,
// each level multiplies what a few KB can become.
func PGPBomb(t testing.TB, pub *packet.PublicKey, n int64, nesting int) []byte {
	t.Helper()
	// The literal packet: format 'b', no file name, no date, then n
	// zeros; its header is the prefix of the inflated stream.
	literalHeader := append(pgpHeader(pgpTagLiteral, uint32(n+6)), 'b', 0, 0, 0, 0, 0)
	inner := pgpPacket(pgpTagCompressed, append([]byte{byte(packet.CompressionZIP)}, DeflateZeros(t, literalHeader, n)...))
	for range nesting {
		var buf bytes.Buffer
		buf.WriteByte(byte(packet.CompressionZIP))
		w, err := flate.NewWriter(&buf, flate.BestCompression)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.Write(inner); err != nil {
			t.Fatal(err)
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		inner = pgpPacket(pgpTagCompressed, buf.Bytes())
	}
	return PGPEncrypt(t, pub, inner)
}

// PGPMarkerFlood returns an OpenPGP message encrypted to pub whose
// compressed content is n marker packets, which readers skip, and then a
// literal packet of data: a reader with no bound on what it inflates works
// through all of them (5n bytes) before it reaches the data.
func PGPMarkerFlood(t testing.TB, pub *packet.PublicKey, n int64, data []byte) []byte {
	t.Helper()
	marker := []byte{0xc0 | 10, 3, 'P', 'G', 'P'}
	body := append([]byte{byte(packet.CompressionZIP)}, DeflateRepeat(t, nil, marker, n, PGPLiteral(data))...)
	return PGPEncrypt(t, pub, pgpPacket(pgpTagCompressed, body))
}

// PGPEncrypt encrypts packets (a sequence of OpenPGP packets, such as a
// literal or compressed packet) to pub, as gpg and ocicrypt do: a
// public-key encrypted session key, then integrity-protected data.
func PGPEncrypt(t testing.TB, pub *packet.PublicKey, packets []byte) []byte {
	t.Helper()
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	cfg := &packet.Config{DefaultCipher: packet.CipherAES256}
	if err := packet.SerializeEncryptedKey(&buf, pub, packet.CipherAES256, key, cfg); err != nil {
		t.Fatal(err)
	}
	w, err := packet.SerializeSymmetricallyEncrypted(&buf, packet.CipherAES256, false, packet.CipherSuite{}, key, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(packets); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// PGPLiteral is a literal data packet holding data: an OpenPGP message
// that is not encrypted at all.
func PGPLiteral(data []byte) []byte {
	return pgpPacket(pgpTagLiteral, append([]byte{'b', 0, 0, 0, 0, 0}, data...))
}

// NestedBER returns depth indefinite-length SEQUENCEs nested in each
// other (30 80 … 00 00): 4*depth bytes of valid BER that a recursive
// parser descends depth levels into.
func NestedBER(depth int) []byte {
	b := make([]byte, 0, 4*depth)
	for range depth {
		b = append(b, 0x30, 0x80)
	}
	for range depth {
		b = append(b, 0, 0)
	}
	return b
}

// ZstdTar returns a layer: a tar of one file, name, of size zero bytes,
// compressed by the zstd command with args ("--long=27" asks for a 128 MiB
// window), and the tar's digest, its diff_id. The tar reaches zstd through
// a pipe, so the frame names the window args ask for whatever the size;
// the decoder fills that window as it decodes.
func ZstdTar(t testing.TB, name string, size int64, args ...string) (blob []byte, diffID string) {
	t.Helper()
	Need(t, "zstd")
	cmd := exec.Command("zstd", append([]string{"-q", "-c"}, args...)...)
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	var out, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	sum := sha256.New()
	tw := tar.NewWriter(io.MultiWriter(in, sum))
	err = tw.WriteHeader(&tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o644, Size: size, ModTime: time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC), Format: tar.FormatPAX})
	if err == nil {
		_, err = io.CopyN(tw, zeroReader{}, size)
	}
	if err == nil {
		err = tw.Close()
	}
	in.Close()
	if werr := cmd.Wait(); werr != nil || err != nil {
		t.Fatalf("zstd %v: %v %v\n%s", args, err, werr, stderr.String())
	}
	return out.Bytes(), fmt.Sprintf("sha256:%x", sum.Sum(nil))
}

type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}
