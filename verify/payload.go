package verify

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// Payload types of containers-signature(5). The cosign type is what both
// cosign and containers/image's sigstore signing (skopeo
// --sign-by-sigstore-private-key) write; the atomic type is GPG simple
// signing's.
const (
	cosignPayloadType = "cosign container image signature"
	atomicPayloadType = "atomic container signature"
)

// payload is what a signature asserts.
type payload struct {
	dockerReference string
	manifestDigest  v1.Hash
}

// parsePayload parses a signed payload of type wantType strictly: the
// critical section must have exactly the fields containers-signature(5)
// defines, each once; optional may hold anything (cosign annotations,
// creator, timestamp) and is not interpreted.
func parsePayload(data []byte, wantType string) (payload, error) {
	var critical, optional json.RawMessage
	if err := exactObject(data, map[string]any{"critical": &critical, "optional": &optional}); err != nil {
		return payload{}, fmt.Errorf("payload: %w", err)
	}
	if !bytes.Equal(optional, []byte("null")) {
		var obj map[string]json.RawMessage
		if err := json.Unmarshal(optional, &obj); err != nil || obj == nil {
			return payload{}, errors.New("payload: optional is not an object")
		}
	}
	var typ string
	var image, identity json.RawMessage
	if err := exactObject(critical, map[string]any{"type": &typ, "image": &image, "identity": &identity}); err != nil {
		return payload{}, fmt.Errorf("payload critical: %w", err)
	}
	if typ != wantType {
		return payload{}, fmt.Errorf("payload type %q, want %q", typ, wantType)
	}
	var digest string
	if err := exactObject(image, map[string]any{"docker-manifest-digest": &digest}); err != nil {
		return payload{}, fmt.Errorf("payload critical.image: %w", err)
	}
	h, err := v1.NewHash(digest)
	if err != nil {
		return payload{}, fmt.Errorf("payload docker-manifest-digest: %w", err)
	}
	var ref string
	if err := exactObject(identity, map[string]any{"docker-reference": &ref}); err != nil {
		return payload{}, fmt.Errorf("payload critical.identity: %w", err)
	}
	if ref == "" {
		return payload{}, errors.New("payload docker-reference is empty")
	}
	return payload{dockerReference: ref, manifestDigest: h}, nil
}

// exactObject decodes the JSON object data whose keys must be exactly those
// of fields, each once, into the values fields points to. Duplicate keys are
// refused because JSON parsers disagree on which one wins, and a signature
// must mean one thing.
func exactObject(data []byte, fields map[string]any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return errors.New("not a JSON object")
	}
	seen := make(map[string]bool, len(fields))
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return err
		}
		key, ok := tok.(string)
		if !ok {
			return errors.New("malformed JSON object")
		}
		if seen[key] {
			return fmt.Errorf("duplicate field %q", key)
		}
		seen[key] = true
		dst, ok := fields[key]
		if !ok {
			return fmt.Errorf("unknown field %q", key)
		}
		if err := dec.Decode(dst); err != nil {
			return fmt.Errorf("field %q: %w", key, err)
		}
	}
	if _, err := dec.Token(); err != nil {
		return err
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return errors.New("data after the JSON object")
	}
	for key := range fields {
		if !seen[key] {
			return fmt.Errorf("missing field %q", key)
		}
	}
	return nil
}
