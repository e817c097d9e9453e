package decrypt

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"
	"syscall"

	"github.com/containers/ocicrypt/keywrap/keyprovider"

	"github.com/guest-puller/guest-puller/internal/errdefs"
	"github.com/guest-puller/guest-puller/internal/untrusted"
)

// maxKeyProviderInput bounds what ServeKeyProvider reads: a request holds
// one layer's options or one packet, a few hundred bytes.
const maxKeyProviderInput = 1 << 20

// KeyProviderOptions configure ServeKeyProvider.
type KeyProviderOptions struct {
	// Resources, if set, serves the KEK of a keyunwrap request that names
	// no keypath (the KEK is then fetched by the packet's kid). Nil means
	// keyunwrap needs a keypath.
	Resources ResourceGetter
	// KidResourceTypes are the resource types a packet's kid may name to
	// be fetched from Resources; nil means DefaultKidResourceTypes.
	KidResourceTypes []string
}

// ServeKeyProvider answers one request of ocicrypt's keyprovider protocol
// (the "cmd" form: JSON on in, JSON on out) as the attestation-agent key
// provider: what `guest-puller keyprovider` runs for skopeo and buildah.
//
// keywrap seals the layer options for
// `--encryption-key provider:attestation-agent:keypath=KEK::keyid=kbs:///repo/type/tag`
// into the packet coco_keyprovider writes, so that guest-puller, image-rs
// and the confidential-data-hub decrypt the image with the KEK the KBS
// serves at keyid. KEK is a file of 32 raw bytes. Unlike coco_keyprovider it
// never generates or registers a KEK: keypath and keyid are required.
//
// keyunwrap opens a packet with the KEK at keypath (or, without keypath,
// from opts.Resources by the packet's kid).
//
// Bad parameters wrap errdefs.ErrInvalidConfig; a packet that does not
// open wraps errdefs.ErrDecrypt.
func ServeKeyProvider(ctx context.Context, in io.Reader, out io.Writer, opts KeyProviderOptions) error {
	data, err := io.ReadAll(io.LimitReader(in, maxKeyProviderInput+1))
	if err != nil {
		return fmt.Errorf("keyprovider: reading request: %w", err)
	}
	if len(data) > maxKeyProviderInput {
		return fmt.Errorf("keyprovider: %w: request larger than %d bytes", errdefs.ErrInvalidConfig, maxKeyProviderInput)
	}
	var req keyprovider.KeyProviderKeyWrapProtocolInput
	if err := decodeStrict(data, &req); err != nil {
		return fmt.Errorf("keyprovider: %w: request: %v", errdefs.ErrInvalidConfig, err)
	}

	var resp any
	switch req.Operation {
	case keyprovider.OpKeyWrap:
		annotation, err := keyWrap(req.KeyWrapParams)
		if err != nil {
			return fmt.Errorf("keyprovider: keywrap: %w", err)
		}
		resp = struct {
			Results keyprovider.KeyWrapResults `json:"keywrapresults"`
		}{keyprovider.KeyWrapResults{Annotation: annotation}}
	case keyprovider.OpKeyUnwrap:
		optsData, err := keyUnwrap(ctx, req.KeyUnwrapParams, opts.Resources, opts.KidResourceTypes)
		if err != nil {
			return fmt.Errorf("keyprovider: keyunwrap: %w", err)
		}
		resp = struct {
			Results keyprovider.KeyUnwrapResults `json:"keyunwrapresults"`
		}{keyprovider.KeyUnwrapResults{OptsData: optsData}}
	default:
		return fmt.Errorf("keyprovider: %w: unknown op %s", errdefs.ErrInvalidConfig, untrusted.Quote(string(req.Operation)))
	}
	if err := json.NewEncoder(out).Encode(resp); err != nil {
		return fmt.Errorf("keyprovider: writing response: %w", err)
	}
	return nil
}

func keyWrap(p keyprovider.KeyWrapParams) ([]byte, error) {
	if p.Ec == nil || len(p.OptsData) == 0 {
		return nil, fmt.Errorf("%w: request has no ec or optsdata", errdefs.ErrInvalidConfig)
	}
	params := p.Ec.Parameters[aaProvider]
	if len(params) != 1 {
		// ocicrypt makes one WrapKeys call for all of a provider's
		// recipients, and a layer annotation holds one packet per call:
		// a second KEK could only be dropped silently.
		return nil, fmt.Errorf("%w: want one %s recipient, got %d", errdefs.ErrInvalidConfig, aaProvider, len(params))
	}
	pp, err := parseProviderParams(string(params[0]))
	if err != nil {
		return nil, err
	}
	if pp.keypath == "" || pp.keyid == "" {
		return nil, fmt.Errorf("%w: %s needs keypath=KEKFILE::keyid=kbs:///repo/type/tag", errdefs.ErrInvalidConfig, aaProvider)
	}
	kek, err := readKEK(pp.keypath)
	if err != nil {
		return nil, err
	}
	iv := make([]byte, gcmIVSize)
	if _, err := rand.Read(iv); err != nil {
		return nil, err
	}
	return sealAAPacket(pp.keyid, kek, iv, p.OptsData)
}

func keyUnwrap(ctx context.Context, p keyprovider.KeyUnwrapParams, rg ResourceGetter, kidTypeNames []string) ([]byte, error) {
	kids, err := newKidTypes(kidTypeNames)
	if err != nil {
		return nil, err
	}
	pkt, err := parseAAPacket(p.Annotation)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errdefs.ErrDecrypt, err)
	}
	uri, _ := resourceURI(pkt.Kid) // checked by parseAAPacket

	var sources []providerParams
	if p.Dc != nil {
		for _, raw := range p.Dc.Parameters[aaProvider] {
			pp, err := parseProviderParams(string(raw))
			if err != nil {
				return nil, err
			}
			sources = append(sources, pp)
		}
	}
	if len(sources) == 0 {
		sources = []providerParams{{}}
	}

	var errs multiError
	for _, pp := range sources {
		if pp.keyid != "" {
			if want, err := resourceURI(pp.keyid); err != nil || want != uri {
				errs = append(errs, fmt.Errorf("keyid %s does not name kid %s", untrusted.Quote(pp.keyid), untrusted.Quote(pkt.Kid)))
				continue
			}
		}
		var kek []byte
		switch {
		case pp.keypath != "":
			kek, err = readKEK(pp.keypath)
		case rg != nil:
			if err = kids.check(uri); err == nil {
				kek, err = rg.GetResource(ctx, uri)
			}
		default:
			err = fmt.Errorf("%w: no KEK for kid %s: give keypath=KEKFILE", errdefs.ErrInvalidConfig, untrusted.Quote(pkt.Kid))
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		opts, err := pkt.open(kek)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		return opts, nil
	}
	return nil, fmt.Errorf("%w: %w", errdefs.ErrDecrypt, errs)
}

// providerParams are coco_keyprovider's "k=v::k=v" parameters.
type providerParams struct {
	keypath, keyid string
}

// parseProviderParams reads the parameter of
// provider:attestation-agent:PARAMS. ocicrypt passes "Enabled" for a bare
// provider:attestation-agent. Unlike coco_keyprovider, unknown keys are
// refused rather than ignored, and so are the sample key and any algorithm
// but A256GCM.
func parseProviderParams(s string) (providerParams, error) {
	var pp providerParams
	if s == "Enabled" {
		return pp, nil
	}
	for _, field := range strings.Split(s, "::") {
		k, v, ok := strings.Cut(field, "=")
		if !ok {
			return pp, fmt.Errorf("%w: %s parameter %s is not key=value", errdefs.ErrInvalidConfig, aaProvider, untrusted.Quote(field))
		}
		switch k {
		case "keypath":
			pp.keypath = v
		case "keyid":
			if _, err := resourceURI(v); err != nil {
				return pp, fmt.Errorf("%w: %v", errdefs.ErrInvalidConfig, err)
			}
			pp.keyid = v
		case "algorithm":
			if v != wrapA256GCM {
				return pp, fmt.Errorf("%w: %s algorithm %s is not supported (only %s)", errdefs.ErrInvalidConfig, aaProvider, untrusted.Quote(v), wrapA256GCM)
			}
		case "sample":
			if v != "false" {
				return pp, fmt.Errorf("%w: the sample key provider's hard-coded key is not supported", errdefs.ErrInvalidConfig)
			}
		default:
			return pp, fmt.Errorf("%w: unknown %s parameter %s", errdefs.ErrInvalidConfig, aaProvider, untrusted.Quote(k))
		}
	}
	return pp, nil
}

// readKEK reads the KEK file at path: a regular file of exactly kekSize
// bytes. The path comes from whoever runs the key provider, so nothing else
// is read, or even opened: not a device (keypath=/dev/zero would read
// forever, and opening some devices acts), not a FIFO (opening it would
// block), and no more than kekSize+1 bytes. Errors never say what the file
// holds or how big it is (keypath=/etc/shadow must not learn its size).
func readKEK(path string) ([]byte, error) {
	refuse := fmt.Errorf("%w: KEK %s: want a regular file of exactly %d bytes", errdefs.ErrInvalidConfig, untrusted.Quote(path), kekSize)
	before, err := os.Stat(path)
	if err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe.Err // the path is named once, quoted
		}
		return nil, fmt.Errorf("%w: KEK %s: %v", errdefs.ErrInvalidConfig, untrusted.Quote(path), err)
	}
	if !before.Mode().IsRegular() || before.Size() != kekSize {
		return nil, refuse
	}
	// Non-blocking, in case the path became a FIFO since the stat; the
	// open file must be the one stat saw.
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK|syscall.O_NOCTTY, 0)
	if err != nil {
		return nil, refuse
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil || !os.SameFile(before, fi) || !fi.Mode().IsRegular() || fi.Size() != kekSize {
		return nil, refuse
	}
	kek := make([]byte, kekSize+1)
	n, err := io.ReadFull(f, kek)
	if n != kekSize || err != io.ErrUnexpectedEOF {
		// The file changed size since the stat, or could not be read.
		return nil, refuse
	}
	return kek[:kekSize], nil
}
