package decrypt

import (
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
)

// Bounds on key unwrap. Every recipient type reads a packet the image's
// author wrote, with the guest's private key or a KEK: a PGP message can be
// compressed (a few MB inflating to gigabytes, nested without end), a
// PKCS7 envelope can nest indefinite-length BER a million deep. What an
// unwrap yields is the layer's private options, {"symkey", "digest",
// "cipheroptions": {"nonce"}}: a few hundred bytes. So each packet is
// bounded before it is parsed, and what it unwraps to while it is read.
const (
	// maxWrappedKey bounds one recipient packet (decoded): ocicrypt writes
	// one packet per recipient type for all its recipients, about 0.5 KB
	// each for RSA-4096, so this holds a hundred recipients.
	maxWrappedKey = 64 << 10
	// maxKeyOptions bounds what any unwrap may produce.
	maxKeyOptions = 64 << 10
	// maxBERDepth bounds the nesting of a PKCS7 envelope, whose real
	// depth is about ten (ContentInfo, EnvelopedData, RecipientInfos,
	// RecipientInfo, IssuerAndSerialNumber, Name, RDN, attribute).
	maxBERDepth = 32
	// maxPackets bounds the packets of one recipient annotation
	// (comma-separated; ocicrypt adds one each time recipients are added
	// to an encrypted image), so that the private key operations a
	// manifest can ask for stay few.
	maxPackets = 32
)

// errBound marks an unwrap refused for a bound above; it is reported,
// where a packet that merely is not for our keys is not.
var errBound = errors.New("refused")

// splitPackets splits a recipient annotation into its base64 packets.
func splitPackets(annotation string) ([]string, error) {
	if n := strings.Count(annotation, ",") + 1; n > maxPackets {
		return nil, fmt.Errorf("%w: %d packets (the limit is %d)", errBound, n, maxPackets)
	}
	return strings.Split(annotation, ","), nil
}

// unwrapPacket decodes one base64 packet of a recipient annotation and
// unwraps it with unwrap, within the bounds above.
func unwrapPacket(b64 string, unwrap func(packet []byte) ([]byte, error)) ([]byte, error) {
	if len(b64) > base64.StdEncoding.EncodedLen(maxWrappedKey) {
		return nil, fmt.Errorf("%w: a wrapped key of %d bytes (the limit is %d)", errBound, base64.StdEncoding.DecodedLen(len(b64)), maxWrappedKey)
	}
	packet, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		return nil, errors.New("packet is not base64")
	}
	opts, err := unwrap(packet)
	if err != nil {
		return nil, err
	}
	if len(opts) > maxKeyOptions {
		return nil, fmt.Errorf("%w: the wrapped key unwraps to more than %d bytes", errBound, maxKeyOptions)
	}
	return opts, nil
}

// checkBER walks the BER (or DER) encoding in b without recursion and
// refuses more than maxDepth levels of nested constructed values, lengths
// that run past their enclosing value, and trailing data: what a PKCS7
// parser must not be handed, as it recurses once per level.
func checkBER(b []byte, maxDepth int) error {
	// ends holds, for each open constructed value, the offset where it
	// ends, or -1 for an indefinite length (ended by 00 00).
	ends := make([]int, 0, maxDepth)
	for off := 0; ; {
		// Close every definite-length value that ends here.
		for len(ends) > 0 && ends[len(ends)-1] == off {
			ends = ends[:len(ends)-1]
		}
		if off == len(b) {
			if len(ends) != 0 {
				return errors.New("BER: truncated")
			}
			return nil
		}
		// Nothing may run past the innermost definite-length value.
		limit := len(b)
		for i := len(ends) - 1; i >= 0; i-- {
			if ends[i] >= 0 {
				limit = ends[i]
				break
			}
		}
		if len(ends) == 0 && off > 0 {
			return errors.New("BER: trailing data")
		}
		// End-of-contents of an indefinite-length value.
		if off+2 <= limit && b[off] == 0 && b[off+1] == 0 {
			if len(ends) == 0 || ends[len(ends)-1] != -1 {
				return errors.New("BER: end-of-contents outside an indefinite-length value")
			}
			ends = ends[:len(ends)-1]
			off += 2
			continue
		}
		tag := b[off]
		constructed := tag&0x20 != 0
		off++
		if tag&0x1f == 0x1f { // high tag number: base-128, last byte < 0x80
			n := 0
			for ; off < limit && b[off]&0x80 != 0; off++ {
				if n++; n > 4 {
					return errors.New("BER: tag number too large")
				}
			}
			off++
		}
		if off >= limit {
			return errors.New("BER: truncated")
		}
		l := int(b[off])
		off++
		switch {
		case l == 0x80:
			if !constructed {
				return errors.New("BER: indefinite length of a primitive value")
			}
			if len(ends) == maxDepth {
				return fmt.Errorf("BER: nested more than %d deep", maxDepth)
			}
			ends = append(ends, -1)
			continue
		case l > 0x80:
			n := l & 0x7f
			if n > 4 || off+n > limit {
				return errors.New("BER: bad length")
			}
			l = 0
			for _, c := range b[off : off+n] {
				l = l<<8 | int(c)
			}
			off += n
		}
		if l > limit-off {
			return errors.New("BER: length runs past its container")
		}
		if !constructed || l == 0 {
			off += l
			continue
		}
		if len(ends) == maxDepth {
			return fmt.Errorf("BER: nested more than %d deep", maxDepth)
		}
		ends = append(ends, off+l)
	}
}
