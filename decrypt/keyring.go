package decrypt

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/containers/ocicrypt/keywrap"
	"github.com/containers/ocicrypt/keywrap/jwe"
	"github.com/containers/ocicrypt/keywrap/pgp"
	"github.com/containers/ocicrypt/keywrap/pkcs7"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/guest-puller/guest-puller/internal/errdefs"
)

// We construct ocicrypt's key wrappers ourselves rather than importing the
// ocicrypt package: its init registers every wrapper in a package-level map
// and adds key providers named by $OCICRYPT_KEYPROVIDER_CONFIG, which would
// let the environment run commands during a pull. The attestation-agent
// provider is implemented in-process instead (aaprovider.go).

const keysAnnotationPrefix = "org.opencontainers.image.enc.keys."

// scheme is one of ocicrypt's local key wrap schemes.
type scheme struct {
	name string // ocicrypt's scheme name, as in "recipients: jwe, pkcs7"
	kw   keywrap.KeyWrapper
}

func newKeyring(ctx context.Context, opts Options) (*Keyring, error) {
	ks, err := loadKeys(ctx, opts)
	if err != nil {
		return nil, err
	}
	return &Keyring{
		keys: ks,
		dc:   ks.decryptConfig(),
		schemes: []scheme{
			{"jwe", jwe.NewKeyWrapper()},
			{"pkcs7", pkcs7.NewKeyWrapper()},
			{"pgp", pgp.NewKeyWrapper()},
		},
		resources: opts.Resources,
	}, nil
}

func (k *Keyring) unwrap(ctx context.Context, desc ocispec.Descriptor) (*LayerKey, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if !isEncrypted(desc.MediaType) {
		return nil, fmt.Errorf("layer %s: media type %s is not an encrypted layer type", desc.Digest, desc.MediaType)
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
	for _, s := range k.schemes {
		ann := desc.Annotations[s.kw.GetAnnotationID()]
		if ann == "" || s.kw.NoPossibleKeys(k.dc.Parameters) {
			continue
		}
		if s.name == "pkcs7" && len(k.keys.x509s) == 0 {
			causes = append(causes, errors.New("pkcs7: the recipient's x509 certificate must be given as a decryption key too"))
			continue
		}
		for _, b64 := range strings.Split(ann, ",") {
			packet, err := base64.StdEncoding.DecodeString(b64)
			if err != nil {
				causes = append(causes, fmt.Errorf("%s: packet is not base64", s.name))
				continue
			}
			// A failure here is a key that is not a recipient of this
			// packet: expected with several keys, and not worth reporting.
			if opts, err := s.kw.UnwrapKey(k.dc, packet); err == nil {
				return newLayerKey(desc.Digest, opts, pub)
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

	list := strings.Join(recipients, ", ")
	if len(causes) == 0 {
		return nil, fmt.Errorf("layer %s: %w: no key unwraps it (recipients: %s)", desc.Digest, errdefs.ErrDecrypt, list)
	}
	return nil, fmt.Errorf("layer %s: %w: no key unwraps it (recipients: %s): %w", desc.Digest, errdefs.ErrDecrypt, list, causes)
}

func (k *Keyring) kek(ctx context.Context, uri string) ([]byte, error) {
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
