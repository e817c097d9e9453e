package verify

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/url"
	"os"

	"github.com/ProtonMail/go-crypto/openpgp"
	"github.com/ProtonMail/go-crypto/openpgp/armor"

	"github.com/guest-puller/guest-puller/internal/errdefs"
)

// errNoSignature ends the walk over signature-1, signature-2, ...
var errNoSignature = errors.New("no such signature")

// fetchSimple collects the lookaside signatures of every target digest.
func (e *evidence) fetchSimple(ctx context.Context) ([]rawSimple, error) {
	if e.t.Identity == nil {
		return nil, errors.New("no image identity to derive lookaside paths from")
	}
	base, err := e.v.opts.RegistriesD.lookaside(e.t.fetched())
	if err != nil || base == nil {
		return nil, err
	}
	var out []rawSimple
	for _, d := range e.t.Digests {
		for i := 1; ; i++ {
			if i > maxSignatures {
				return nil, fmt.Errorf("lookaside %s: more than %d signatures", lookasideURL(base, d, i).Redacted(), maxSignatures)
			}
			u := lookasideURL(base, d, i)
			blob, err := e.v.readLookaside(ctx, u)
			if errors.Is(err, errNoSignature) {
				break
			}
			if err != nil {
				return nil, fmt.Errorf("lookaside %s: %w", u.Redacted(), err)
			}
			out = append(out, rawSimple{digest: d.String(), blob: blob})
		}
	}
	return out, nil
}

// readLookaside reads one signature, or returns errNoSignature when the
// store says there is none (a missing file, an HTTP 404).
func (v *Verifier) readLookaside(ctx context.Context, u *url.URL) ([]byte, error) {
	var r io.Reader
	switch u.Scheme {
	case "file":
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		f, err := os.Open(u.Path)
		if errors.Is(err, fs.ErrNotExist) {
			return nil, errNoSignature
		}
		if err != nil {
			return nil, err
		}
		defer f.Close()
		r = f
	case "http", "https":
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
		if err != nil {
			return nil, err
		}
		resp, err := v.opts.HTTPClient.Do(req)
		if err != nil {
			return nil, err
		}
		defer resp.Body.Close()
		switch resp.StatusCode {
		case http.StatusOK:
		case http.StatusNotFound:
			return nil, errNoSignature
		default:
			// The code, not resp.Status: the reason phrase is the
			// server's own text.
			return nil, fmt.Errorf("HTTP status %d %s", resp.StatusCode, http.StatusText(resp.StatusCode))
		}
		r = resp.Body
	default:
		return nil, fmt.Errorf("%w: unsupported lookaside scheme %q", errdefs.ErrInvalidConfig, u.Scheme)
	}
	b, err := io.ReadAll(io.LimitReader(r, maxSignatureSize+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxSignatureSize {
		return nil, fmt.Errorf("signature exceeds %d bytes", maxSignatureSize)
	}
	return b, nil
}

// parseKeyring reads OpenPGP public keys: binary, or one or more ASCII
// armored blocks.
func parseKeyring(data []byte) (openpgp.EntityList, error) {
	const begin, end = "-----BEGIN PGP PUBLIC KEY BLOCK-----", "-----END PGP PUBLIC KEY BLOCK-----"
	var keys openpgp.EntityList
	if !bytes.Contains(data, []byte(begin)) {
		el, err := openpgp.ReadKeyRing(bytes.NewReader(data))
		if err != nil {
			return nil, fmt.Errorf("GPG keyring: %w: %v", errdefs.ErrInvalidConfig, err)
		}
		keys = el
	}
	for rest := data; ; {
		i := bytes.Index(rest, []byte(begin))
		if i < 0 {
			break
		}
		rest = rest[i:]
		j := bytes.Index(rest, []byte(end))
		if j < 0 {
			return nil, fmt.Errorf("GPG keyring: %w: unterminated armored block", errdefs.ErrInvalidConfig)
		}
		block := append(rest[:j+len(end):j+len(end)], '\n')
		rest = rest[j+len(end):]
		b, err := armor.Decode(bytes.NewReader(block))
		if err != nil {
			return nil, fmt.Errorf("GPG keyring: %w: %v", errdefs.ErrInvalidConfig, err)
		}
		el, err := openpgp.ReadKeyRing(b.Body)
		if err != nil {
			return nil, fmt.Errorf("GPG keyring: %w: %v", errdefs.ErrInvalidConfig, err)
		}
		keys = append(keys, el...)
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("GPG keyring: %w: no keys", errdefs.ErrInvalidConfig)
	}
	return keys, nil
}

// verifyOpenPGP checks a signed OpenPGP message made by a key of keyring
// and returns its content and the signer. The content is bounded: a small
// compressed message must not expand into gigabytes.
func verifyOpenPGP(keyring openpgp.EntityList, blob []byte) ([]byte, *openpgp.Entity, error) {
	md, err := openpgp.ReadMessage(bytes.NewReader(blob), keyring, nil, nil)
	if err != nil {
		return nil, nil, err
	}
	if !md.IsSigned || md.IsEncrypted {
		return nil, nil, errors.New("not a signed message")
	}
	if md.SignedBy == nil {
		return nil, nil, errors.New("not signed by a key of the keyring")
	}
	content, err := io.ReadAll(io.LimitReader(md.UnverifiedBody, maxPayloadSize+1))
	if err != nil {
		return nil, nil, err
	}
	if len(content) > maxPayloadSize {
		return nil, nil, fmt.Errorf("signed content exceeds %d bytes", maxPayloadSize)
	}
	// The signature is checked when the body has been read to its end.
	if md.SignatureError != nil {
		return nil, nil, md.SignatureError
	}
	if md.Signature == nil {
		return nil, nil, errors.New("no signature packet")
	}
	return content, md.SignedBy.Entity, nil
}
