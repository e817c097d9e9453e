package decrypt

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/containers/ocicrypt/keywrap/jwe"
	"github.com/containers/ocicrypt/keywrap/pkcs7"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/guest-puller/guest-puller/internal/errdefs"
	"github.com/guest-puller/guest-puller/internal/untrusted"
)

// We construct ocicrypt's key wrappers ourselves rather than importing the
// ocicrypt package: its init registers every wrapper in a package-level map
// and adds key providers named by $OCICRYPT_KEYPROVIDER_CONFIG, which would
// let the environment run commands during a pull. The attestation-agent
// provider is implemented in-process instead (aaprovider.go).

const (
	keysAnnotationPrefix = "org.opencontainers.image.enc.keys."
	pgpAnnotation        = keysAnnotationPrefix + "pgp"
)

// recipient is one of ocicrypt's recipient types (jwe, pkcs7, pgp) with
// this keyring's keys. Its unwrap returns the layer options one packet
// holds for one of the keys; errNotRecipient (or, from ocicrypt's
// wrappers, any error) when the packet is not for them.
type recipient struct {
	name       string // ocicrypt's name, as in "recipients: jwe, pkcs7"
	annotation string
	unwrap     func(packet []byte) ([]byte, error)
}

func newKeyring(ctx context.Context, opts Options) (*Keyring, error) {
	ks, err := loadKeys(ctx, opts)
	if err != nil {
		return nil, err
	}
	kids, err := newKidTypes(opts.KidResourceTypes)
	if err != nil {
		return nil, err
	}
	k := &Keyring{keys: ks, dc: ks.decryptConfig(), resources: opts.Resources, kids: kids}
	if len(ks.privKeys) > 0 {
		jweKW, pkcs7KW := jwe.NewKeyWrapper(), pkcs7.NewKeyWrapper()
		k.recipients = append(k.recipients,
			recipient{"jwe", jweKW.GetAnnotationID(), func(p []byte) ([]byte, error) {
				// go-jose bounds what a compressed ("zip") JWE inflates to.
				return opaque(jweKW.UnwrapKey(k.dc, p))
			}},
			recipient{"pkcs7", pkcs7KW.GetAnnotationID(), func(p []byte) ([]byte, error) {
				if len(ks.x509s) == 0 {
					return nil, errors.New("the recipient's x509 certificate must be given as a decryption key too")
				}
				// The parser recurses once per level of nesting.
				if err := checkBER(p, maxBERDepth); err != nil {
					return nil, fmt.Errorf("%w: %v", errBound, err)
				}
				return opaque(pkcs7KW.UnwrapKey(k.dc, p))
			}})
	}
	if len(ks.gpgKeys) > 0 {
		keys, err := pgpKeys(ks.gpgKeys, ks.gpgKeyPwds)
		if err != nil {
			return nil, fmt.Errorf("decryption key: %w: %v", errdefs.ErrInvalidConfig, err)
		}
		k.recipients = append(k.recipients, recipient{"pgp", pgpAnnotation, func(p []byte) ([]byte, error) {
			return unwrapPGP(keys, p)
		}})
	}
	return k, nil
}

func (k *Keyring) unwrap(ctx context.Context, desc ocispec.Descriptor) (*LayerKey, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if !isEncrypted(desc.MediaType) {
		return nil, fmt.Errorf("layer %s: media type %s is not an encrypted layer type", desc.Digest, untrusted.Quote(desc.MediaType))
	}
	pub, err := publicOptions(desc.Annotations)
	if err != nil {
		return nil, fmt.Errorf("layer %s: %w: %v", desc.Digest, errdefs.ErrDecrypt, err)
	}
	recipients := recipientsOf(desc.Annotations)
	if len(recipients) == 0 {
		return nil, fmt.Errorf("layer %s: %w: no wrapped keys (no %s* annotation)", desc.Digest, errdefs.ErrDecrypt, keysAnnotationPrefix)
	}

	var causes multiError
	for _, r := range k.recipients {
		ann := desc.Annotations[r.annotation]
		if ann == "" {
			continue
		}
		packets, err := splitPackets(ann)
		if err != nil {
			causes = append(causes, fmt.Errorf("%s: %w", r.name, err))
			continue
		}
		for _, b64 := range packets {
			opts, err := unwrapPacket(b64, r.unwrap)
			if err == nil {
				return newLayerKey(desc.Digest, opts, pub)
			}
			// A key that is not a recipient of this packet is expected
			// with several keys; anything else is worth saying.
			if !errors.Is(err, errNotRecipient) {
				causes = append(causes, fmt.Errorf("%s: %w", r.name, err))
			}
		}
	}

	if ann := desc.Annotations[aaAnnotation]; ann != "" {
		if k.resources == nil {
			causes = append(causes, fmt.Errorf("%s: no KBS configured", aaProvider))
		} else {
			opts, err := unwrapAA(ctx, ann, k.kek)
			if err == nil {
				return newLayerKey(desc.Digest, opts, pub)
			}
			if ctxErr := ctx.Err(); ctxErr != nil {
				return nil, fmt.Errorf("layer %s: %w", desc.Digest, ctxErr)
			}
			causes = append(causes, fmt.Errorf("%s: %w", aaProvider, err))
		}
	} else if k.keys.aaEnabled {
		causes = append(causes, fmt.Errorf("%s: the layer has no %s packet", aaProvider, aaProvider))
	}

	list := untrusted.Text(strings.Join(recipients, ", "))
	if len(causes) == 0 {
		return nil, fmt.Errorf("layer %s: %w: no key unwraps it (recipients: %s)", desc.Digest, errdefs.ErrDecrypt, list)
	}
	return nil, fmt.Errorf("layer %s: %w: no key unwraps it (recipients: %s): %w", desc.Digest, errdefs.ErrDecrypt, list, causes)
}

// opaque turns the failure of one of ocicrypt's key wrappers into
// errNotRecipient: its errors do not tell a wrong key from a bad packet.
func opaque(opts []byte, err error) ([]byte, error) {
	if err != nil {
		return nil, errNotRecipient
	}
	return opts, nil
}

func (k *Keyring) kek(ctx context.Context, uri string) ([]byte, error) {
	if err := k.kids.check(uri); err != nil {
		return nil, err
	}
	return k.keks.get(ctx, k.resources, uri)
}

// recipientsOf names the wrap schemes present on a layer the way ocicrypt
// does ("jwe", "pkcs7", "pgp", "provider.attestation-agent", …), sorted.
func recipientsOf(annotations map[string]string) []string {
	var names []string
	for a, v := range annotations {
		if name, ok := strings.CutPrefix(a, keysAnnotationPrefix); ok && name != "" && v != "" {
			names = append(names, name)
		}
	}
	sort.Strings(names)
	return names
}
