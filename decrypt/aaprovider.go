package decrypt

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"sort"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/singleflight"

	"github.com/guest-puller/guest-puller/internal/errdefs"
	"github.com/guest-puller/guest-puller/internal/untrusted"
)

// This file is the attestation-agent key provider as confidential
// containers define it (guest-components: coco_keyprovider writes the
// packet, the confidential-data-hub reads it): the layer's private options
// are sealed with AES-256-GCM under a KEK that a KBS serves at the packet's
// kid.

const (
	aaAnnotation = "org.opencontainers.image.enc.keys.provider." + aaProvider

	// wrapA256GCM is the only wrap type accepted. The CDH also reads
	// A256CTR, which coco_keyprovider never writes (its algorithm parameter
	// is not honoured) and which is unauthenticated: the host could flip
	// bits of the wrapped options unnoticed. We refuse it.
	wrapA256GCM = "A256GCM"

	// aaPacketVersion is the only version of the v2 packet; a v1 packet
	// has no version field.
	aaPacketVersion = "0.1.0"
	// aaProviderKBS is the only v2 provider that keeps the KEK in a KBS;
	// the others (cloud KMSes) are not reachable from here.
	aaProviderKBS = "kbs"

	kekSize   = 32
	gcmIVSize = 12
)

// aaPacket is the union of the v1 and v2 annotation packets.
type aaPacket struct {
	Version          string          `json:"version,omitempty"`
	Kid              string          `json:"kid"`
	WrappedData      string          `json:"wrapped_data"`
	Provider         string          `json:"provider,omitempty"`
	IV               string          `json:"iv,omitempty"`
	WrapType         string          `json:"wrap_type,omitempty"`
	ProviderSettings json.RawMessage `json:"provider_settings,omitempty"`
	Annotations      json.RawMessage `json:"annotations,omitempty"`
}

// parseAAPacket decodes and checks one packet. An unknown field is refused:
// it may carry meaning this reader would ignore.
func parseAAPacket(raw []byte) (*aaPacket, error) {
	// The bound on what wrapped_data unwraps to follows from this one.
	if len(raw) > maxWrappedKey {
		return nil, fmt.Errorf("%w: a packet of %d bytes (the limit is %d)", errBound, len(raw), maxWrappedKey)
	}
	var p aaPacket
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&p); err != nil {
		return nil, errors.New("malformed packet")
	}
	if dec.More() {
		return nil, errors.New("malformed packet: trailing data")
	}
	if p.Version != "" && p.Version != aaPacketVersion {
		return nil, fmt.Errorf("unsupported packet version %s", untrusted.Quote(p.Version))
	}
	if p.Provider != "" && p.Provider != aaProviderKBS {
		return nil, fmt.Errorf("unsupported KEK provider %s", untrusted.Quote(p.Provider))
	}
	if p.WrapType != wrapA256GCM {
		return nil, fmt.Errorf("kid %s: unsupported wrap_type %s", untrusted.Quote(p.Kid), untrusted.Quote(p.WrapType))
	}
	if _, err := resourceURI(p.Kid); err != nil {
		return nil, err
	}
	return &p, nil
}

// open returns the private layer options sealed in p.
func (p *aaPacket) open(kek []byte) ([]byte, error) {
	iv, err := base64.StdEncoding.DecodeString(p.IV)
	if err != nil || len(iv) != gcmIVSize {
		return nil, fmt.Errorf("kid %s: iv is not %d bytes of base64", untrusted.Quote(p.Kid), gcmIVSize)
	}
	sealed, err := base64.StdEncoding.DecodeString(p.WrappedData)
	if err != nil {
		return nil, fmt.Errorf("kid %s: wrapped_data is not base64", untrusted.Quote(p.Kid))
	}
	aead, err := newGCM(kek)
	if err != nil {
		return nil, fmt.Errorf("kid %s: %w", untrusted.Quote(p.Kid), err)
	}
	opts, err := aead.Open(nil, iv, sealed, nil)
	if err != nil {
		return nil, fmt.Errorf("kid %s: wrapped_data does not open with the KEK (wrong KEK or tampered packet)", untrusted.Quote(p.Kid))
	}
	return opts, nil
}

// sealAAPacket wraps optsData under kek for kid, as coco_keyprovider does:
// a v1 packet, which every CDH and image-rs version reads.
func sealAAPacket(kid string, kek, iv, optsData []byte) ([]byte, error) {
	aead, err := newGCM(kek)
	if err != nil {
		return nil, err
	}
	if len(iv) != aead.NonceSize() {
		return nil, fmt.Errorf("iv is %d bytes, want %d", len(iv), aead.NonceSize())
	}
	return json.Marshal(aaPacket{
		Kid:         kid,
		WrappedData: base64.StdEncoding.EncodeToString(aead.Seal(nil, iv, optsData, nil)),
		IV:          base64.StdEncoding.EncodeToString(iv),
		WrapType:    wrapA256GCM,
	})
}

func newGCM(kek []byte) (cipher.AEAD, error) {
	if len(kek) != kekSize {
		return nil, fmt.Errorf("KEK is %d bytes, want %d", len(kek), kekSize)
	}
	block, err := aes.NewCipher(kek)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}

// resourceURI normalizes a kid to the "kbs:///repo/type/tag" a
// ResourceGetter takes. The host part names a KBS chosen by whoever built
// the image; the guest only trusts its own configured KBS, so it is
// dropped.
func resourceURI(kid string) (string, error) {
	u, err := url.Parse(kid)
	if err != nil || u.Scheme != "kbs" || u.Opaque != "" || u.RawQuery != "" || u.Fragment != "" {
		return "", fmt.Errorf("kid %s is not a kbs://<host>/<repo>/<type>/<tag> resource URI", untrusted.Quote(kid))
	}
	parts := strings.Split(strings.TrimPrefix(u.Path, "/"), "/")
	if len(parts) != 3 || parts[0] == "" || parts[1] == "" || parts[2] == "" || strings.Contains(u.Path, "..") {
		return "", fmt.Errorf("kid %s is not a kbs://<host>/<repo>/<type>/<tag> resource URI", untrusted.Quote(kid))
	}
	return "kbs:///" + strings.Join(parts, "/"), nil
}

// kidTypes are the resource types a kid may name. The image chooses its
// kid: without this, kbs:///default/credential/db-password in a layer's
// packet would make the guest fetch that secret from its KBS (after its
// own attestation, with its own token) and try it as a KEK.
type kidTypes map[string]bool

func newKidTypes(types []string) (kidTypes, error) {
	if types == nil {
		types = DefaultKidResourceTypes
	}
	k := kidTypes{}
	for _, t := range types {
		if t == "" || strings.ContainsAny(t, "/.") {
			return nil, fmt.Errorf("kid resource type %s: %w: want a resource type name such as key", untrusted.Quote(t), errdefs.ErrInvalidConfig)
		}
		k[t] = true
	}
	if len(k) == 0 {
		return nil, fmt.Errorf("kid resource types: %w: the list is empty", errdefs.ErrInvalidConfig)
	}
	return k, nil
}

// check refuses, before any request, a kid ("kbs:///repo/type/tag", as
// resourceURI makes it) whose type is not allowed.
func (k kidTypes) check(uri string) error {
	parts := strings.Split(strings.TrimPrefix(uri, "kbs:///"), "/")
	if len(parts) != 3 {
		return fmt.Errorf("kid %s is not a kbs:///repo/type/tag resource", untrusted.Quote(uri))
	}
	if !k[parts[1]] {
		allowed := make([]string, 0, len(k))
		for t := range k {
			allowed = append(allowed, t)
		}
		sort.Strings(allowed)
		return fmt.Errorf("kid %s names a resource of type %s, and a layer's kid may only name a key (resource types %s; kid-resource-types configures them): the KBS was not asked", untrusted.Quote(uri), untrusted.Quote(parts[1]), strings.Join(allowed, ", "))
	}
	return nil
}

// kekCache holds the KEKs fetched by one Keyring, so that the layers of a
// pull that share a kid cost one KBS request; concurrent first requests for
// a kid share one fetch. Failures are not cached.
type kekCache struct {
	mu     sync.Mutex
	keks   map[string][]byte
	flight singleflight.Group
}

func (c *kekCache) get(ctx context.Context, rg ResourceGetter, uri string) ([]byte, error) {
	c.mu.Lock()
	kek, ok := c.keks[uri]
	c.mu.Unlock()
	if ok {
		return kek, nil
	}
	ch := c.flight.DoChan(uri, func() (any, error) {
		// Layers of several pulls may wait on this fetch: it runs on
		// none of their contexts, so one that gives up fails alone.
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), kekFetchTimeout)
		defer cancel()
		kek, err := rg.GetResource(fctx, uri)
		if err != nil {
			return nil, err
		}
		if len(kek) != kekSize {
			// Not a word on its size: the resource may be a secret.
			return nil, fmt.Errorf("resource %s is not an AES-256 key", uri)
		}
		c.mu.Lock()
		if c.keks == nil {
			c.keks = map[string][]byte{}
		}
		c.keks[uri] = kek
		c.mu.Unlock()
		return kek, nil
	})
	select {
	case <-ctx.Done():
		return nil, ctx.Err()
	case r := <-ch:
		if r.Err != nil {
			return nil, r.Err
		}
		return r.Val.([]byte), nil
	}
}

// kekFetchTimeout bounds a shared KEK fetch, attestation included (a TPM
// quote and the KBS's verification take seconds; attest bounds the
// handshake to two minutes).
const kekFetchTimeout = 3 * time.Minute

// unwrapAA tries every packet of an attestation-agent annotation (std-base64
// packets, comma-separated) with KEKs from kek and returns the first private
// options that open.
func unwrapAA(ctx context.Context, annotation string, kek func(ctx context.Context, uri string) ([]byte, error)) ([]byte, error) {
	packets, err := splitPackets(annotation)
	if err != nil {
		return nil, err
	}
	var errs multiError
	for _, b64 := range packets {
		opts, err := unwrapPacket(b64, func(raw []byte) ([]byte, error) {
			p, err := parseAAPacket(raw)
			if err != nil {
				return nil, err
			}
			uri, _ := resourceURI(p.Kid) // checked by parseAAPacket
			k, err := kek(ctx, uri)
			if err != nil {
				return nil, err
			}
			return p.open(k)
		})
		if err == nil {
			return opts, nil
		}
		if ctx.Err() != nil {
			return nil, err
		}
		errs = append(errs, err)
	}
	return nil, errs
}

// multiError is errors.Join on one line: error messages here end up on the
// command line's single stderr line. An annotation may hold thousands of
// bad packets; the message names the first few.
type multiError []error

const maxErrorsShown = 4

func (m multiError) Error() string {
	var s []string
	for i, err := range m {
		if i == maxErrorsShown {
			s = append(s, fmt.Sprintf("and %d more", len(m)-i))
			break
		}
		s = append(s, err.Error())
	}
	return strings.Join(s, "; ")
}

func (m multiError) Unwrap() []error { return m }
