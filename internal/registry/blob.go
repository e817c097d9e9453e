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
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/guest-puller/guest-puller/internal/errdefs"
)

// Blob opens the blob desc of repo for streaming. The reader survives
// broken connections: it reopens the blob with a Range request from the
// last byte received, so a blob is never downloaded twice. It returns
// exactly desc.Size bytes, or an error: a registry that sends more, or
// ends early after every retry, is an error. It does not check the digest:
// the caller hashes the bytes as they stream.
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
		ctx:     ctx,
		client:  &http.Client{Transport: rt},
		url:     u.String(),
		desc:    desc,
		retries: c.retries,
	}
	if err := b.open(); err != nil {
		return nil, err
	}
	return b, nil
}

type blobReader struct {
	ctx     context.Context
	client  *http.Client
	url     string
	desc    v1.Descriptor
	retries int

	body   io.ReadCloser
	off    int64 // bytes handed to the caller so far
	failed int   // consecutive attempts that made no progress
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
			b.failed = 0
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
		if n > 0 {
			return n, nil
		}
		b.failed++
		if b.failed > b.retries {
			return 0, fmt.Errorf("blob %s: gave up after %d attempts at byte %d of %d: %w", b.desc.Digest, b.failed, b.off, b.desc.Size, err)
		}
		if err := sleep(b.ctx, backoff(b.failed)); err != nil {
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
		return 0, fmt.Errorf("blob %s: %w: registry sent more than the %d bytes of the descriptor", b.desc.Digest, errdefs.ErrIntegrity, b.desc.Size)
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

// open (re)starts the download at b.off, retrying server errors and broken
// connections with backoff.
func (b *blobReader) open() error {
	for {
		body, err := b.request()
		if err == nil {
			b.body = body
			return nil
		}
		var perm permanentError
		if errors.As(err, &perm) || b.ctx.Err() != nil {
			return err
		}
		b.failed++
		if b.failed > b.retries {
			return fmt.Errorf("blob %s: gave up after %d attempts: %w", b.desc.Digest, b.failed, err)
		}
		if err := sleep(b.ctx, backoff(b.failed)); err != nil {
			return err
		}
	}
}

type permanentError struct{ error }

func (e permanentError) Unwrap() error { return e.error }

func (b *blobReader) request() (io.ReadCloser, error) {
	req, err := http.NewRequestWithContext(b.ctx, http.MethodGet, b.url, nil)
	if err != nil {
		return nil, permanentError{err}
	}
	if b.off > 0 {
		// A closed range: some registries only understand "start-end".
		req.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", b.off, b.desc.Size-1))
	}
	resp, err := b.client.Do(req)
	if err != nil {
		return nil, err
	}
	switch {
	case resp.StatusCode == http.StatusOK:
		if b.off == 0 {
			return resp.Body, nil
		}
		// The server ignored the Range header: skip what we already have.
		if _, err := io.CopyN(io.Discard, resp.Body, b.off); err != nil {
			resp.Body.Close()
			return nil, err
		}
		return resp.Body, nil
	case resp.StatusCode == http.StatusPartialContent && b.off > 0:
		start, ok := contentRangeStart(resp.Header.Get("Content-Range"))
		if !ok || start != b.off {
			resp.Body.Close()
			return nil, permanentError{fmt.Errorf("blob %s: registry answered a range request from byte %d with %q", b.desc.Digest, b.off, resp.Header.Get("Content-Range"))}
		}
		return resp.Body, nil
	}
	resp.Body.Close()
	err = fmt.Errorf("blob %s: registry answered %s", b.desc.Digest, resp.Status)
	if resp.StatusCode >= 500 || resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusRequestTimeout {
		return nil, err
	}
	if resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden {
		err = fmt.Errorf("blob %s: %w: the registry answered %s", b.desc.Digest, errdefs.ErrUnauthenticated, resp.Status)
	}
	return nil, permanentError{err}
}

func contentRangeStart(v string) (int64, bool) {
	// "bytes 100-199/200"
	v, ok := strings.CutPrefix(v, "bytes ")
	if !ok {
		return 0, false
	}
	first, _, ok := strings.Cut(v, "-")
	if !ok {
		return 0, false
	}
	n, err := strconv.ParseInt(first, 10, 64)
	return n, err == nil
}

func backoff(attempt int) time.Duration {
	return 200 * time.Millisecond << min(attempt-1, 5)
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
