package registry

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// fault is what a faulty registry does with one request it matches.
type fault struct {
	status     int    // answer with this status (and Retry-After, if set)
	retryAfter string //
	cut        bool   // close the connection before answering
	cutAfter   int    // -1: no cut; else answer, send this many bytes, cut
	stall      bool   // instead of cutting, send nothing more until the client gives up
}

func status(code int) fault { return fault{status: code, cutAfter: -1} }
func tooMany(retryAfter string) fault {
	return fault{status: http.StatusTooManyRequests, retryAfter: retryAfter, cutAfter: -1}
}
func cutBeforeAnswer() fault     { return fault{cut: true, cutAfter: -1} }
func cutBodyAfter(n int) fault   { return fault{cutAfter: n} }
func stallBeforeAnswer() fault   { return fault{stall: true, cutAfter: -1} }
func stallBodyAfter(n int) fault { return fault{stall: true, cutAfter: n} }

// stall holds a request open, sending nothing, until its client gives up
// (or, as a bound on a test that went wrong, for 20 seconds).
func stall(r *http.Request) {
	select {
	case <-r.Context().Done():
	case <-time.After(20 * time.Second):
	}
}

func repeat(f fault, n int) []fault {
	out := make([]fault, n)
	for i := range out {
		out[i] = f
	}
	return out
}

// faulty is a registry front that plays a script of faults, one per
// request it matches, then lets requests through; it counts the requests
// it matches and notes when each came.
type faulty struct {
	next  http.Handler
	match func(*http.Request) bool

	mu     sync.Mutex
	script []fault
	times  []time.Time
	ranged int
}

func (f *faulty) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !f.match(r) {
		f.next.ServeHTTP(w, r)
		return
	}
	f.mu.Lock()
	f.times = append(f.times, time.Now())
	if r.Header.Get("Range") != "" {
		f.ranged++
	}
	var ft *fault
	if len(f.script) > 0 {
		ft = &f.script[0]
		f.script = f.script[1:]
	}
	f.mu.Unlock()
	switch {
	case ft == nil:
		f.next.ServeHTTP(w, r)
	case ft.cut:
		hijackClose(w)
	case ft.stall && ft.cutAfter < 0:
		stall(r)
	case ft.status != 0:
		if ra := ft.retryAfter; ra == "date+3s" {
			// An HTTP date has whole seconds: 3s from now is at least 2s.
			w.Header().Set("Retry-After", time.Now().Add(3*time.Second).UTC().Format(http.TimeFormat))
		} else if ra != "" {
			w.Header().Set("Retry-After", ra)
		}
		http.Error(w, `{"errors":[{"code":"UNAVAILABLE"}]}`, ft.status)
	default:
		rec := httptest.NewRecorder()
		f.next.ServeHTTP(rec, r)
		for k, v := range rec.Header() {
			w.Header()[k] = v
		}
		w.WriteHeader(rec.Code)
		w.Write(rec.Body.Bytes()[:min(ft.cutAfter, rec.Body.Len())])
		w.(http.Flusher).Flush()
		if ft.stall {
			stall(r)
			return
		}
		hijackClose(w)
	}
}

func hijackClose(w http.ResponseWriter) {
	if conn, _, err := w.(http.Hijacker).Hijack(); err == nil {
		conn.Close()
	}
}

func (f *faulty) requests() (n, ranged int, times []time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.times), f.ranged, append([]time.Time(nil), f.times...)
}

func isBlobGet(r *http.Request) bool {
	return r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/")
}

func isManifestGet(r *http.Request) bool {
	return strings.Contains(r.URL.Path, "/manifests/")
}

// testIdle is the idle timeout of the tests with stalling registries.
const testIdle = 300 * time.Millisecond

// fastRetry keeps the default number of attempts with short waits.
var fastRetry = Retry{Backoff: time.Millisecond, MaxBackoff: 5 * time.Millisecond, MaxRetryAfter: 5 * time.Second}

// countingTransport is a client transport for exact request counts:
// without keep-alive, net/http never repeats a request by itself (it
// does, once, when a reused idle connection turns out closed before any
// answer), so every request the registry sees was sent by the retry
// layer.
func countingTransport() http.RoundTripper {
	return &http.Transport{DisableKeepAlives: true}
}

// TestRetryBlob: registry answers that say "not now" (5xx, 429 with
// Retry-After) and broken connections are retried by the one retry layer,
// each request exactly once per attempt; answers that say "no" are not.
func TestRetryBlob(t *testing.T) {
	for _, tc := range []struct {
		name     string
		script   []fault
		requests int    // blob GETs, exactly
		ranged   int    // of which with a Range header
		err      string // "" for success
		wait     time.Duration
	}{
		{name: "503 twice", script: repeat(status(503), 2), requests: 3},
		{name: "500 502 504 408", script: []fault{status(500), status(502), status(504), status(408)}, requests: 5},
		{name: "500 always", script: repeat(status(500), 20), requests: 5, err: "500 Internal Server Error"},
		{name: "429 with Retry-After seconds", script: []fault{tooMany("1")}, requests: 2, wait: time.Second},
		{name: "429 with Retry-After date", script: []fault{tooMany("date+3s")}, requests: 2, wait: time.Second},
		{name: "429 with Retry-After beyond the bound", script: []fault{tooMany("3600")}, requests: 1, err: "429 Too Many Requests"},
		{name: "connection cut before the answer, twice", script: repeat(cutBeforeAnswer(), 2), requests: 3},
		{name: "connection cut before the answer, always", script: repeat(cutBeforeAnswer(), 20), requests: 5, err: "EOF"},
		{name: "connection cut mid-body", script: []fault{cutBodyAfter(3000)}, requests: 2, ranged: 1},
		{name: "cut mid-body, then the resume is refused once", script: []fault{cutBodyAfter(3000), status(503)}, requests: 3, ranged: 2},
		{name: "connections cut before the first byte, always", script: repeat(cutBodyAfter(0), 20), requests: 5, err: "without progress"},
		{name: "no answer, once", script: []fault{stallBeforeAnswer()}, requests: 2},
		{name: "no answer, always", script: repeat(stallBeforeAnswer(), 20), requests: 5, err: "idle timeout"},
		{name: "stalls mid-body", script: []fault{stallBodyAfter(3000)}, requests: 2, ranged: 1},
		{name: "stalls mid-body, then the resume gets no answer", script: []fault{stallBodyAfter(3000), stallBeforeAnswer()}, requests: 3, ranged: 2},
		{name: "stalls before the first byte, always", script: repeat(stallBodyAfter(0), 20), requests: 5, err: "idle timeout"},
		{name: "404", script: []fault{status(404)}, requests: 1, err: "not found"},
		{name: "403", script: []fault{status(403)}, requests: 1, err: "authentication failed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := &faulty{match: isBlobGet}
			host := testRegistry(t, func(h http.Handler) http.Handler { f.next = h; return f })
			img, _ := random.Image(8000, 1)
			ref := push(t, host, "retry/blob:1", img)
			c := newClient(t, Options{Insecure: []string{host}, Retry: fastRetry, Transport: countingTransport(), IdleTimeout: testIdle})
			got, err := c.Resolve(context.Background(), ref)
			if err != nil {
				t.Fatal(err)
			}
			before, _, _ := f.requests() // the config blob
			f.mu.Lock()
			f.script = tc.script
			f.mu.Unlock()
			layer := got.Manifest.Layers[0]
			sum, err := readBlob(c, got, layer)
			n, ranged, times := f.requests()
			if n -= before; n != tc.requests || ranged != tc.ranged {
				t.Errorf("%d blob requests (%d with Range), want exactly %d (%d)", n, ranged, tc.requests, tc.ranged)
			}
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("read = %v, want an error with %q", err, tc.err)
				}
				return
			}
			if err != nil || sum != layer.Digest.String() {
				t.Fatalf("read %s, %v; want %s", sum, err, layer.Digest)
			}
			if tc.wait > 0 {
				if gap := times[len(times)-1].Sub(times[len(times)-2]); gap < tc.wait {
					t.Errorf("retried after %v, before the %v Retry-After asked for", gap, tc.wait)
				}
			}
		})
	}
}

func readBlob(c *Client, img *Image, desc v1.Descriptor) (string, error) {
	rc, err := c.Blob(context.Background(), img.Repo(), desc)
	if err != nil {
		return "", err
	}
	defer rc.Close()
	h := sha256.New()
	if _, err := io.Copy(h, rc); err != nil {
		return "", err
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil)), nil
}

// TestRetryIsOneLayer: manifests, the ping and the token endpoint go
// through the same single retry layer: a registry that keeps failing gets
// exactly Attempts requests, not a product of nested retries.
func TestRetryIsOneLayer(t *testing.T) {
	const user, pass = "retry", "Retry-Pa55"
	for _, tc := range []struct {
		name     string
		match    func(*http.Request) bool
		script   []fault
		requests int
		err      bool
	}{
		{"manifest 503 once", isManifestGet, []fault{status(503)}, 2, false},
		{"manifest 502 always", isManifestGet, repeat(status(502), 20), 5, true},
		{"manifest connection cut, then 429", isManifestGet, []fault{cutBeforeAnswer(), tooMany("0")}, 3, false},
		{"token 503 once", func(r *http.Request) bool { return r.URL.Path == "/token" }, []fault{status(503)}, 2, false},
		{"token 500 always", func(r *http.Request) bool { return r.URL.Path == "/token" }, repeat(status(500), 20), 5, true},
		{"ping 503 twice", func(r *http.Request) bool { return r.URL.Path == "/v2/" }, repeat(status(503), 2), 3, false},
		{"manifest no answer once", isManifestGet, []fault{stallBeforeAnswer()}, 2, false},
		{"manifest cut mid-body", isManifestGet, []fault{cutBodyAfter(10)}, 2, false},
		{"manifest stalls mid-body", isManifestGet, []fault{stallBodyAfter(10)}, 2, false},
		{"manifest no answer always", isManifestGet, repeat(stallBeforeAnswer(), 20), 5, true},
		{"token no answer once", func(r *http.Request) bool { return r.URL.Path == "/token" }, []fault{stallBeforeAnswer()}, 2, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := &faulty{match: tc.match}
			host := testRegistry(t, func(h http.Handler) http.Handler { f.next = bearerAuth(user, pass)(h); return f })
			img, _ := random.Image(1000, 1)
			ref := push(t, host, "retry/manifest:1", img, remote.WithAuth(&authn.Basic{Username: user, Password: pass}))
			before, _, _ := f.requests()
			f.mu.Lock()
			f.script = tc.script
			f.mu.Unlock()
			c := newClient(t, Options{Insecure: []string{host}, Retry: fastRetry, Transport: countingTransport(), IdleTimeout: testIdle, Credentials: Credentials{Creds: user + ":" + pass}})
			_, err := c.Resolve(context.Background(), ref)
			if n, _, _ := f.requests(); n-before != tc.requests {
				t.Errorf("%d requests, want exactly %d", n-before, tc.requests)
			}
			if tc.err != (err != nil) {
				t.Fatalf("Resolve = %v, want error %v", err, tc.err)
			}
		})
	}
}

func TestRetryAfter(t *testing.T) {
	now := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"", 0, false},
		{"0", 0, true},
		{"7", 7 * time.Second, true},
		{"-1", 0, false},
		{"1.5", 0, false},
		{"99999999999999999999", 0, false},
		{"999999999", 24 * time.Hour, true},
		{now.Add(90 * time.Second).Format(http.TimeFormat), 90 * time.Second, true},
		{now.Add(-time.Hour).Format(http.TimeFormat), 0, true},
		{"tomorrow", 0, false},
	} {
		got, ok := retryAfter(tc.in, now)
		if got != tc.want || ok != tc.ok {
			t.Errorf("retryAfter(%q) = %v, %v; want %v, %v", tc.in, got, ok, tc.want, tc.ok)
		}
	}
}

// TestHandshakeShared: concurrent first requests to a repository share
// one token handshake, and a caller that gives up while it runs (a
// cancelled daemon request) fails alone: the others get the token.
func TestHandshakeShared(t *testing.T) {
	const user, pass = "shared", "Sh4red-Pass"
	release := make(chan struct{})
	arrived := make(chan struct{}, 16)
	var tokens sync.WaitGroup
	var mu sync.Mutex
	count := 0
	host := testRegistry(t, func(h http.Handler) http.Handler {
		auth := bearerAuth(user, pass)(h)
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/token" {
				mu.Lock()
				count++
				mu.Unlock()
				tokens.Add(1)
				defer tokens.Done()
				arrived <- struct{}{}
				<-release
			}
			auth.ServeHTTP(w, r)
		})
	})
	img, _ := random.Image(1000, 1)
	close(release) // pushing needs a token too
	ref := push(t, host, "shared/app:1", img, remote.WithAuth(&authn.Basic{Username: user, Password: pass}))
	tokens.Wait()
	<-arrived
	mu.Lock()
	count = 0
	mu.Unlock()
	release = make(chan struct{})

	c := newClient(t, Options{Insecure: []string{host}, Credentials: Credentials{Creds: user + ":" + pass}})
	first, cancel := context.WithCancel(context.Background())
	firstErr := make(chan error, 1)
	go func() {
		_, err := c.Resolve(first, ref)
		firstErr <- err
	}()
	<-arrived // the first caller's handshake is waiting for its token
	secondErr := make(chan error, 1)
	go func() {
		_, err := c.Resolve(context.Background(), ref)
		secondErr <- err
	}()
	cancel()
	if err := <-firstErr; !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled caller: %v, want context.Canceled", err)
	}
	close(release)
	if err := <-secondErr; err != nil {
		t.Errorf("the other caller failed with the first one's cancellation: %v", err)
	}
	tokens.Wait()
	mu.Lock()
	defer mu.Unlock()
	if count != 1 {
		t.Errorf("%d token requests, want one handshake shared by both callers", count)
	}
}

// TestWithCredentialsSharesConnections: per-request credentials swap the
// keychain, not the transport: a client made for one request's
// credentials reaches the registry over its parent's connections.
func TestWithCredentialsSharesConnections(t *testing.T) {
	const user, pass = "conn", "C0nn-Pass"
	var mu sync.Mutex
	conns := map[string]bool{} // client address of every connection that carried a request
	host := testRegistry(t, func(h http.Handler) http.Handler {
		h = basicAuth(user, pass)(h)
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			mu.Lock()
			conns[r.RemoteAddr] = true
			mu.Unlock()
			h.ServeHTTP(w, r)
		})
	})
	img, _ := random.Image(1000, 1)
	ref := push(t, host, "conn/app:1", img, remote.WithAuth(&authn.Basic{Username: user, Password: pass}))
	parent := newClient(t, Options{Insecure: []string{host}})
	mu.Lock()
	clear(conns)
	mu.Unlock()
	for range 5 {
		c, err := parent.WithCredentials(Credentials{Creds: user + ":" + pass})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Resolve(context.Background(), ref); err != nil {
			t.Fatal(err)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(conns) != 1 {
		t.Errorf("5 requests with their own credentials used %d connections, want 1 (the parent's, reused)", len(conns))
	}
}
