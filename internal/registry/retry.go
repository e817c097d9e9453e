package registry

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/guest-puller/guest-puller/internal/errdefs"
)

// Retry says how a request that failed for a passing reason is repeated.
// It is the client's one retry layer: every request to a registry (ping,
// token, manifest, blob, signature) goes through it exactly once, and
// nothing above it retries a request again. A blob whose body breaks
// mid-way is not retried but resumed (blobReader), each resume being one
// request through this layer.
type Retry struct {
	// Attempts bounds the requests sent for one request: the first and
	// its retries. Default 5.
	Attempts int
	// Backoff is the wait before the first retry; it doubles for each
	// retry after it, up to MaxBackoff, with up to 20% jitter. Default
	// 250ms, MaxBackoff 8s.
	Backoff, MaxBackoff time.Duration
	// MaxRetryAfter bounds how long a Retry-After header may make a
	// request wait. A server asking for longer gets its answer returned
	// as the request's outcome rather than a guest stalled on its word.
	// Default 60s.
	MaxRetryAfter time.Duration
}

// DefaultRetry is the Retry of a client whose Options set none.
var DefaultRetry = Retry{Attempts: 5, Backoff: 250 * time.Millisecond, MaxBackoff: 8 * time.Second, MaxRetryAfter: time.Minute}

func (r Retry) withDefaults() Retry {
	if r.Attempts <= 0 {
		r.Attempts = DefaultRetry.Attempts
	}
	if r.Backoff <= 0 {
		r.Backoff = DefaultRetry.Backoff
	}
	if r.MaxBackoff <= 0 {
		r.MaxBackoff = max(DefaultRetry.MaxBackoff, r.Backoff)
	}
	if r.MaxRetryAfter <= 0 {
		r.MaxRetryAfter = DefaultRetry.MaxRetryAfter
	}
	return r
}

// wait is the backoff before retry number n (1-based).
func (r Retry) wait(n int) time.Duration {
	d := r.Backoff << min(n-1, 16)
	if d > r.MaxBackoff || d <= 0 {
		d = r.MaxBackoff
	}
	return d + time.Duration(rand.Int64N(int64(d)/5+1))
}

// retryable are the answers that say "not now" rather than "no".
var retryable = map[int]bool{
	http.StatusRequestTimeout:      true,
	http.StatusTooManyRequests:     true,
	http.StatusInternalServerError: true,
	http.StatusBadGateway:          true,
	http.StatusServiceUnavailable:  true,
	http.StatusGatewayTimeout:      true,
}

// retryTransport is the one retry layer (see Retry).
type retryTransport struct {
	next   http.RoundTripper
	policy Retry
}

func (t *retryTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	// Only a request that can be sent again as it was is retried: a
	// puller's requests are GETs and HEADs, and token requests with a
	// body that can be re-read.
	if req.Body != nil && req.Body != http.NoBody && req.GetBody == nil {
		return t.next.RoundTrip(req)
	}
	ctx := req.Context()
	for n := 1; ; n++ {
		if n > 1 && req.GetBody != nil {
			body, err := req.GetBody()
			if err != nil {
				return nil, err
			}
			req = req.Clone(ctx)
			req.Body = body
		}
		resp, err := t.next.RoundTrip(req)
		last := n >= t.policy.Attempts
		switch {
		case err != nil:
			if last || ctx.Err() != nil || !transient(err) {
				return nil, err
			}
			if werr := sleep(ctx, t.policy.wait(n)); werr != nil {
				return nil, err
			}
		case retryable[resp.StatusCode]:
			if last {
				return resp, nil
			}
			d := t.policy.wait(n)
			if after, ok := retryAfter(resp.Header.Get("Retry-After"), time.Now()); ok {
				if after > t.policy.MaxRetryAfter {
					return resp, nil
				}
				d = after
			}
			// Reading a little of an error body lets the connection be
			// reused; a large one is not worth it.
			io.CopyN(io.Discard, resp.Body, 4<<10)
			resp.Body.Close()
			if werr := sleep(ctx, d); werr != nil {
				return nil, werr
			}
		default:
			if isBlob(req, resp) || req.Method == http.MethodHead {
				// A blob streams: blobReader resumes its body, and its
				// size is the descriptor's.
				return resp, nil
			}
			// A manifest, index, referrers list, token or ping answer is
			// read above this layer, by go-containerregistry, where
			// nothing would repeat it: read it here, so that a body that
			// breaks or stalls mid-way is retried like a connection that
			// failed, and bound it while reading, so that a registry
			// cannot make the guest hold more than maxManifestSize of it.
			body, err := readAnswer(req, resp, maxManifestSize)
			if err == nil {
				resp.Body = body
				return resp, nil
			}
			if last || ctx.Err() != nil || !transient(err) {
				return nil, err
			}
			if werr := sleep(ctx, t.policy.wait(n)); werr != nil {
				return nil, err
			}
		}
	}
}

// isBlob reports a successful answer to a blob GET: a stream the caller
// reads and bounds by the blob's descriptor.
func isBlob(req *http.Request, resp *http.Response) bool {
	return strings.Contains(req.URL.Path, "/blobs/") && (resp.StatusCode == http.StatusOK || resp.StatusCode == http.StatusPartialContent)
}

// readAnswer reads an answer's whole body, at most limit bytes: a longer
// one (by its Content-Length, before reading, or by its bytes, as they
// come) is an error, and no more than limit+1 bytes of it are read. body
// is closed.
func readAnswer(req *http.Request, resp *http.Response, limit int64) (io.ReadCloser, error) {
	defer resp.Body.Close()
	if resp.ContentLength > limit {
		return nil, &tooLargeError{url: req.URL.Redacted(), limit: limit}
	}
	// One buffer of the announced length, not io.ReadAll's doublings:
	// eight daemon requests for 4 MiB manifests at once held 150 MiB.
	var b bytes.Buffer
	if resp.ContentLength > 0 {
		b.Grow(int(resp.ContentLength) + bytes.MinRead)
	}
	if _, err := b.ReadFrom(io.LimitReader(resp.Body, limit+1)); err != nil {
		return nil, err
	}
	if int64(b.Len()) > limit {
		return nil, &tooLargeError{url: req.URL.Redacted(), limit: limit}
	}
	// go-containerregistry decodes what it reads above this layer
	// (manifests, for their artifact type; referrers; error bodies), at
	// up to twenty times its bytes for small values: bound that here too.
	if err := checkTokens(b.Bytes(), maxManifestTokens); err != nil {
		return nil, &tooLargeError{url: req.URL.Redacted(), tokens: maxManifestTokens}
	}
	return answer{bytes.NewReader(b.Bytes()), b.Bytes()}, nil
}

// answer is an answer's body read whole; fetchManifest takes its bytes
// rather than copying them again.
type answer struct {
	*bytes.Reader
	data []byte
}

func (answer) Close() error { return nil }

// Bytes is the whole body, whatever has been read of it.
func (a answer) Bytes() []byte { return a.data }

// tooLargeError is an answer longer than the bound, in bytes or in JSON
// tokens: refused, not retried.
type tooLargeError struct {
	url    string
	limit  int64
	tokens int
}

func (e *tooLargeError) Error() string {
	if e.tokens > 0 {
		return fmt.Sprintf("the registry's answer to %s has more than %d JSON tokens (keys, values and brackets), refused before decoding", e.url, e.tokens)
	}
	return fmt.Sprintf("the registry's answer to %s is larger than %d MiB", e.url, e.limit>>20)
}

// transient reports whether a transport error may go away when the same
// request is sent again: a refused, reset or timed-out connection does; a
// certificate that does not verify, or a server that does not speak TLS,
// does not.
func transient(err error) bool {
	var (
		unknownCA   x509.UnknownAuthorityError
		hostname    x509.HostnameError
		invalid     x509.CertificateInvalidError
		verifyErr   *tls.CertificateVerificationError
		recordError tls.RecordHeaderError
	)
	var tooLarge *tooLargeError
	switch {
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded), errors.As(err, &tooLarge):
		return false
	case errors.Is(err, errdefs.ErrInvalidConfig):
		// A registry that speaks plain HTTP to a TLS client (schemeGuard)
		// will go on doing so.
		return false
	case errors.As(err, &unknownCA), errors.As(err, &hostname), errors.As(err, &invalid),
		errors.As(err, &verifyErr), errors.As(err, &recordError):
		return false
	}
	return true
}

// retryAfter parses a Retry-After value: delay-seconds or an HTTP date.
func retryAfter(v string, now time.Time) (time.Duration, bool) {
	if v == "" {
		return 0, false
	}
	if s, err := strconv.ParseInt(v, 10, 64); err == nil {
		if s < 0 {
			return 0, false
		}
		if s > int64(24*time.Hour/time.Second) {
			s = int64(24 * time.Hour / time.Second)
		}
		return time.Duration(s) * time.Second, true
	}
	t, err := http.ParseTime(v)
	if err != nil {
		return 0, false
	}
	return max(t.Sub(now), 0), true
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
