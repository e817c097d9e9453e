package registry

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/guest-puller/guest-puller/internal/errdefs"
	"github.com/guest-puller/guest-puller/internal/untrusted"
)

// Blob opens the blob desc of repo for streaming. The reader survives
// broken connections: it reopens the blob with a Range request from the
// last byte received, so a blob is never downloaded twice. It returns
// exactly desc.Size bytes, or an error: a registry that sends more, or
// whose connections keep breaking without progress, is an error. It does
// not check the digest: the caller hashes the bytes as they stream. Its
// errors do not name the blob: the caller says what it is (a layer, a
// config, a signature payload) with its digest.
//
// Every request, the first and each resume, goes through the client's one
// retry layer (Retry); the reader itself only resumes.
func (c *Client) Blob(ctx context.Context, repo name.Repository, desc v1.Descriptor) (io.ReadCloser, error) {
	rt, err := c.transportFor(ctx, repo)
	if err != nil {
		return nil, err
	}
	u := url.URL{
		Scheme: repo.Registry.Scheme(),
		Host:   repo.RegistryStr(),
		Path:   fmt.Sprintf("/v2/%s/blobs/%s", repo.RepositoryStr(), desc.Digest),
	}
	b := &blobReader{
		ctx:    ctx,
		client: &http.Client{Transport: rt},
		url:    u.String(),
		desc:   desc,
		retry:  c.retry,
	}
	if err := b.open(); err != nil {
		return nil, err
	}
	return b, nil
}

// maxResumes bounds the resumes of one blob: a registry that cuts every
// connection after a few bytes must not turn one blob into a request per
// byte.
const maxResumes = 64

type blobReader struct {
	ctx    context.Context
	client *http.Client
	url    string
	desc   v1.Descriptor
	retry  Retry

	body    io.ReadCloser
	off     int64 // bytes handed to the caller so far
	resumes int   // connections reopened after a break
	stalled int   // consecutive connections that broke before any byte
}

func (b *blobReader) Read(p []byte) (int, error) {
	for {
		if b.off >= b.desc.Size {
			return b.finish(p)
		}
		if b.body == nil {
			if err := b.open(); err != nil {
				return 0, err
			}
		}
		if rest := b.desc.Size - b.off; int64(len(p)) > rest {
			p = p[:rest]
		}
		n, err := b.body.Read(p)
		b.off += int64(n)
		if n > 0 {
			b.stalled = 0
		}
		switch {
		case err == nil:
			return n, nil
		case errors.Is(err, io.EOF) && b.off >= b.desc.Size:
			return n, nil // finish() checks for trailing bytes on the next call
		}
		// The connection broke or the body ended early: resume from b.off.
		b.body.Close()
		b.body = nil
		if cerr := b.ctx.Err(); cerr != nil {
			return n, cerr
		}
		if b.resumes++; b.resumes > maxResumes {
			return n, fmt.Errorf("gave up after %d broken connections, at byte %d of %d: %w", b.resumes, b.off, b.desc.Size, err)
		}
		if n > 0 {
			return n, nil
		}
		// A connection that breaks before its first byte counts as a
		// failed attempt of the retry layer's budget.
		if b.stalled++; b.stalled >= b.retry.Attempts {
			return 0, fmt.Errorf("gave up after %d connections broke without progress, at byte %d of %d: %w", b.stalled+1, b.off, b.desc.Size, err)
		}
		if err := sleep(b.ctx, b.retry.wait(b.stalled)); err != nil {
			return 0, err
		}
	}
}

// finish is reached when every expected byte was read: a registry that
// has more to send is serving something other than the descriptor says.
func (b *blobReader) finish(p []byte) (int, error) {
	if b.body == nil {
		return 0, io.EOF
	}
	var one [1]byte
	n, _ := io.ReadFull(b.body, one[:])
	b.body.Close()
	b.body = nil
	if n > 0 {
		return 0, fmt.Errorf("%w: registry sent more than the %d bytes of the descriptor", errdefs.ErrIntegrity, b.desc.Size)
	}
	return 0, io.EOF
}

func (b *blobReader) Close() error {
	if b.body != nil {
		err := b.body.Close()
		b.body = nil
		return err
	}
	return nil
}

// open (re)starts the download at b.off: one request, which the retry
// layer repeats when the registry is busy or the connection fails.
func (b *blobReader) open() error {
	req, err := http.NewRequestWithContext(b.ctx, http.MethodGet, b.url, nil)
	if err != nil {
		return err
	}
	if b.off > 0 {
		// A closed range: some registries only understand "start-end".
		req.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", b.off, b.desc.Size-1))
	}
	resp, err := b.client.Do(req)
	if err != nil {
		return err
	}
	switch {
	case resp.StatusCode == http.StatusOK:
		if b.off > 0 {
			// The server ignored the Range header: skip what we already
			// have.
			if _, err := io.CopyN(io.Discard, resp.Body, b.off); err != nil {
				resp.Body.Close()
				return err
			}
		}
		b.body = resp.Body
		return nil
	case resp.StatusCode == http.StatusPartialContent && b.off > 0:
		cr, err := ParseContentRange(resp.Header.Get("Content-Range"))
		if err == nil && (cr.First != b.off || cr.Last >= b.desc.Size || cr.Size >= 0 && cr.Size != b.desc.Size) {
			err = fmt.Errorf("not the range asked for (bytes %d-%d/%d)", b.off, b.desc.Size-1, b.desc.Size)
		}
		if err != nil {
			resp.Body.Close()
			return fmt.Errorf("registry answered a range request from byte %d with Content-Range %s: %w", b.off, untrusted.Quote(resp.Header.Get("Content-Range")), err)
		}
		b.body = resp.Body
		return nil
	}
	resp.Body.Close()
	// The status code, not resp.Status: the reason phrase is the
	// registry's own text.
	status := fmt.Sprintf("%d %s", resp.StatusCode, http.StatusText(resp.StatusCode))
	switch resp.StatusCode {
	case http.StatusUnauthorized, http.StatusForbidden:
		return fmt.Errorf("%w: the registry answered %s", errdefs.ErrUnauthenticated, status)
	case http.StatusNotFound:
		return fmt.Errorf("%w in the registry", errdefs.ErrNotFound)
	}
	return fmt.Errorf("registry answered %s", status)
}

// ContentRange is a parsed Content-Range header of a 206 answer.
type ContentRange struct {
	// First and Last are the positions of the first and last byte sent.
	First, Last int64
	// Size is the whole resource's length, -1 when the server wrote "*".
	Size int64
}

// ParseContentRange parses "bytes FIRST-LAST/SIZE" (SIZE may be "*"), as
// RFC 9110 section 14.4 writes it for a single range. Anything else,
// including a range that ends before it starts or past the size, is an
// error: the header comes from the registry.
func ParseContentRange(v string) (ContentRange, error) {
	bad := func() (ContentRange, error) {
		return ContentRange{}, errors.New("malformed Content-Range")
	}
	rest, ok := strings.CutPrefix(v, "bytes ")
	if !ok {
		return bad()
	}
	span, size, ok := strings.Cut(rest, "/")
	if !ok {
		return bad()
	}
	first, last, ok := strings.Cut(span, "-")
	if !ok {
		return bad()
	}
	var cr ContentRange
	var err error
	if cr.First, err = parseDecimal(first); err != nil {
		return bad()
	}
	if cr.Last, err = parseDecimal(last); err != nil || cr.Last < cr.First {
		return bad()
	}
	cr.Size = -1
	if size != "*" {
		if cr.Size, err = parseDecimal(size); err != nil || cr.Last >= cr.Size {
			return bad()
		}
	}
	return cr, nil
}

// parseDecimal is strconv.ParseInt for the digits-only numbers of HTTP
// headers: no sign, no spaces, no leading "+".
func parseDecimal(s string) (int64, error) {
	if s == "" || len(s) > 18 || strings.TrimLeft(s, "0123456789") != "" {
		return 0, errors.New("not a decimal number")
	}
	return strconv.ParseInt(s, 10, 64)
}
