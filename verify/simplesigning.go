package verify

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/url"
	"os"
	"strings"

	"github.com/ProtonMail/go-crypto/openpgp"
	"github.com/ProtonMail/go-crypto/openpgp/armor"
	"github.com/ProtonMail/go-crypto/openpgp/packet"

	"github.com/guest-puller/guest-puller/internal/errdefs"
	"github.com/guest-puller/guest-puller/internal/refname"
	"github.com/guest-puller/guest-puller/internal/untrusted"
	"github.com/guest-puller/guest-puller/policy"
)

// errNoSignature ends the walk over signature-1, signature-2, ...
var errNoSignature = errors.New("no such signature")

// walkSimple reads the lookaside signatures of every target digest, one at
// a time, verifying each with kr as it arrives; only the claims it makes
// are kept. A signature that does not verify, or makes no claim about its
// digest, is skipped; a store that fails, or sends more than the bounds
// allow, fails the walk (and so the requirement).
func (e *evidence) walkSimple(ctx context.Context, kr openpgp.EntityList) ([]policy.Claim, error) {
	if e.t.Identity == nil {
		return nil, errors.New("no image identity to derive lookaside paths from")
	}
	base, err := e.v.opts.RegistriesD.lookaside(e.t.fetched())
	if err != nil || base == nil {
		return nil, err
	}
	var claims []policy.Claim
	for _, d := range e.t.Digests {
		for i := 1; ; i++ {
			if i > maxSignatures {
				return nil, fmt.Errorf("lookaside %s: more than %d signatures", lookasideURL(base, d, i).Redacted(), maxSignatures)
			}
			u := lookasideURL(base, d, i)
			var claim *policy.Claim
			err := e.v.readLookaside(ctx, u, e.budget, func(sig io.Reader) {
				content, signer, err := verifyOpenPGP(kr, sig)
				if err != nil {
					return
				}
				p, err := parsePayload(content, atomicPayloadType)
				if err != nil || p.manifestDigest.String() != d.String() {
					return
				}
				claim = &policy.Claim{
					DockerReference: p.dockerReference,
					ManifestDigest:  p.manifestDigest,
					KeyID:           strings.ToUpper(hex.EncodeToString(signer.PrimaryKey.Fingerprint)),
				}
			})
			if errors.Is(err, errNoSignature) {
				break
			}
			if err != nil {
				return nil, fmt.Errorf("lookaside %s: %w", u.Redacted(), err)
			}
			if claim != nil {
				claims = appendClaim(claims, *claim)
			}
		}
	}
	return claims, nil
}

// readLookaside hands the signature at u to verify as a stream, at most
// maxSignatureSize bytes and what is left of budget; it returns
// errNoSignature when the store says there is none (a missing file, an
// HTTP 404).
func (v *Verifier) readLookaside(ctx context.Context, u *url.URL, budget *byteBudget, verify func(io.Reader)) error {
	var body io.Reader
	switch u.Scheme {
	case "file":
		if err := ctx.Err(); err != nil {
			return err
		}
		f, err := os.Open(u.Path)
		if errors.Is(err, fs.ErrNotExist) {
			return errNoSignature
		}
		if err != nil {
			return err
		}
		defer f.Close()
		body = f
	case "http", "https":
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
		if err != nil {
			return err
		}
		resp, err := v.opts.HTTPClient.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		switch resp.StatusCode {
		case http.StatusOK:
		case http.StatusNotFound:
			return errNoSignature
		default:
			// The code, not resp.Status: the reason phrase is the
			// server's own text.
			return fmt.Errorf("HTTP status %d %s", resp.StatusCode, http.StatusText(resp.StatusCode))
		}
		body = resp.Body
	default:
		return fmt.Errorf("%w: unsupported lookaside scheme %s", errdefs.ErrInvalidConfig, untrusted.Quote(u.Scheme))
	}
	left := budget.remaining()
	r := &boundedReader{r: body, n: min(maxSignatureSize, left)}
	verify(r)
	if err := budget.take(r.read); err != nil {
		return err
	}
	if r.over {
		if left < maxSignatureSize {
			return errBudget
		}
		return fmt.Errorf("signature exceeds %d bytes", maxSignatureSize)
	}
	return r.err
}

// errTooLarge is what a boundedReader returns past its bound.
var errTooLarge = errors.New("too large")

// boundedReader reads at most n bytes of r, then fails, remembering that
// it did (over), how much it read, and the first error of r other than EOF.
type boundedReader struct {
	r    io.Reader
	n    int64
	read int64
	over bool
	err  error
}

func (b *boundedReader) Read(p []byte) (int, error) {
	if b.read >= b.n {
		// One more byte tells a body of exactly n bytes from a longer one.
		var one [1]byte
		if k, _ := b.r.Read(one[:]); k > 0 {
			b.over = true
			return 0, errTooLarge
		}
		return 0, io.EOF
	}
	if int64(len(p)) > b.n-b.read {
		p = p[:b.n-b.read]
	}
	n, err := b.r.Read(p)
	b.read += int64(n)
	if err != nil && err != io.EOF && b.err == nil {
		b.err = err
	}
	return n, err
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
// and returns its content and the signer. The content is bounded, and so
// is every compressed packet: a small message must not expand into
// gigabytes, nor into gigabytes of packets skipped before the content.
func verifyOpenPGP(keyring openpgp.EntityList, msg io.Reader) ([]byte, *openpgp.Entity, error) {
	limit := int64(2 * maxPayloadSize)
	md, err := openpgp.ReadMessage(msg, keyring, nil, &packet.Config{MaxDecompressedMessageSize: &limit})
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

// maxRedirects bounds the redirects of one lookaside request.
const maxRedirects = 5

// sameStore refuses a redirect that leaves the lookaside store's host, or
// goes from https to plain http: the registries.d configuration names
// where signatures come from, and a store must not hand that choice to
// another server, or drop TLS on the way.
func sameStore(req *http.Request, via []*http.Request) error {
	first := via[0].URL
	if refname.Host(req.URL.Host) != refname.Host(first.Host) {
		return fmt.Errorf("redirect to another host, %s, refused", untrusted.Quote(req.URL.Host))
	}
	if first.Scheme == "https" && req.URL.Scheme != "https" {
		return errors.New("redirect from https to http refused")
	}
	return nil
}
