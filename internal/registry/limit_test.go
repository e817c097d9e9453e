package registry

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// huge answers the requests it matches with size bytes, announced in
// Content-Length or streamed without one, and counts what it wrote before
// the client hung up.
type huge struct {
	next     http.Handler
	match    func(*http.Request) bool
	size     int64
	announce bool
	status   int

	mu       sync.Mutex
	requests int
	written  int64
}

func (h *huge) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !h.match(r) {
		h.next.ServeHTTP(w, r)
		return
	}
	h.mu.Lock()
	h.requests++
	h.mu.Unlock()
	w.Header().Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
	if h.announce {
		w.Header().Set("Content-Length", strconv.FormatInt(h.size, 10))
	}
	w.WriteHeader(h.status)
	chunk := []byte(strings.Repeat(" ", 64<<10))
	for sent := int64(0); sent < h.size; sent += int64(len(chunk)) {
		n, err := w.Write(chunk)
		h.mu.Lock()
		h.written += int64(n)
		h.mu.Unlock()
		if err != nil {
			return
		}
	}
}

func (h *huge) stats() (int, int64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.requests, h.written
}

// TestAnswersBoundedWhileRead (issue 8, hole 6): a manifest, an index of
// referrers, a token or an error body larger than the bound is refused
// while it is read, never read whole: the registry gets to write little
// more than the bound (plus what socket buffers hold), once, not retried.
func TestAnswersBoundedWhileRead(t *testing.T) {
	const size = 90 << 20
	const user, pass = "big", "B1g-Answers"
	for _, tc := range []struct {
		name     string
		match    func(*http.Request) bool
		announce bool
		status   int
		auth     bool
		call     func(c *Client, ref string) error
	}{
		{"manifest, streamed", isManifestGet, false, 200, false, resolve},
		{"manifest, announced", isManifestGet, true, 200, false, resolve},
		{"manifest error body", isManifestGet, false, 404, false, resolve},
		{"token", func(r *http.Request) bool { return r.URL.Path == "/token" }, false, 200, true, resolve},
		{"referrers", func(r *http.Request) bool { return strings.Contains(r.URL.Path, "/referrers/") }, false, 200, false, referrers},
		{"blob error body", isBlobGet, false, 404, false, func(c *Client, ref string) error {
			_, err := c.Resolve(context.Background(), parseRef(ref)) // the config blob
			return err
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := &huge{match: tc.match, size: size, announce: tc.announce, status: tc.status}
			host := testRegistry(t, func(next http.Handler) http.Handler {
				if tc.auth {
					next = bearerAuth(user, pass)(next)
				}
				h.next = next
				return h
			})
			img, _ := random.Image(100, 1)
			ref := host + "/big/app:1"
			h.match = func(*http.Request) bool { return false } // until pushed
			opts := []remote.Option{}
			if tc.auth {
				opts = append(opts, remote.WithAuth(&authn.Basic{Username: user, Password: pass}))
			}
			push(t, host, "big/app:1", img, opts...)
			h.match = tc.match
			var creds Credentials
			if tc.auth {
				creds.Creds = user + ":" + pass
			}
			c := newClient(t, Options{Insecure: []string{host}, Retry: fastRetry, Credentials: creds})
			err := tc.call(c, ref)
			if err == nil || !strings.Contains(err.Error(), "larger than 4 MiB") {
				t.Fatalf("err = %v, want the answer refused as larger than 4 MiB", err)
			}
			requests, written := h.stats()
			if requests != 1 {
				t.Errorf("%d requests, want 1: a refused answer is not asked for again", requests)
			}
			if written > 16<<20 {
				t.Errorf("the registry wrote %d MiB of a %d MiB answer before the client stopped reading", written>>20, size>>20)
			}
		})
	}
}

func resolve(c *Client, ref string) error {
	_, err := c.Resolve(context.Background(), parseRef(ref))
	return err
}

func referrers(c *Client, ref string) error {
	img, err := c.Resolve(context.Background(), parseRef(ref))
	if err != nil {
		return err
	}
	opts, err := c.RemoteOptions(context.Background(), img.Repo())
	if err != nil {
		return err
	}
	_, err = remote.Referrers(img.Repo().Digest(img.Digest.String()), opts...)
	return err
}

func parseRef(s string) name.Reference {
	ref, err := name.ParseReference(s)
	if err != nil {
		panic(err)
	}
	return ref
}

// TestCheckTokens: a manifest or index is refused at its first JSON token
// past the bound, before anything decodes it; what is under the bound, or
// malformed (for the decoder to report), passes.
func TestCheckTokens(t *testing.T) {
	annotations := func(n int) string {
		var b strings.Builder
		for i := range n {
			if i > 0 {
				b.WriteByte(',')
			}
			fmt.Fprintf(&b, `"%x":""`, i)
		}
		return `{"schemaVersion":2,"annotations":{` + b.String() + `}}`
	}
	// {"schemaVersion":2,"annotations":{...}} is 7 tokens and 2 per
	// annotation: 17 for 5.
	for _, tc := range []struct {
		name string
		json string
		max  int
		ok   bool
	}{
		{"a manifest", `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","layers":[]}`, 16, true},
		{"at the bound", annotations(5), 17, true},
		{"one past it", annotations(5), 16, false},
		{"4 MiB of annotations", annotations(400_000), maxManifestTokens, false},
		{"malformed", `{"schemaVersion":`, 16, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := checkTokens([]byte(tc.json), tc.max)
			if tc.ok != (err == nil) {
				t.Fatalf("checkTokens: %v, want ok %v", err, tc.ok)
			}
			if err != nil && !strings.Contains(err.Error(), fmt.Sprintf("more than %d JSON tokens", tc.max)) {
				t.Errorf("error does not name the bound: %v", err)
			}
		})
	}
}

// TestAnswersTokensBounded: an answer within 4 MiB but of more JSON tokens
// than maxManifestTokens (a referrers index, a manifest, an error body of
// tiny values, which go-containerregistry would decode at twenty times
// their bytes) is refused by the retry layer as soon as it is read, once,
// not retried.
func TestAnswersTokensBounded(t *testing.T) {
	var b strings.Builder
	b.WriteString(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[],"annotations":{`)
	for i := range maxManifestTokens {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `"%x":""`, i)
	}
	b.WriteString("}}")
	body := b.String()
	for _, tc := range []struct {
		name   string
		match  func(*http.Request) bool
		status int
		call   func(c *Client, ref string) error
	}{
		{"manifest", isManifestGet, 200, resolve},
		{"manifest error body", isManifestGet, 404, resolve},
		{"referrers", func(r *http.Request) bool { return strings.Contains(r.URL.Path, "/referrers/") }, 200, referrers},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var mu sync.Mutex
			requests, armed := 0, false
			host := testRegistry(t, func(next http.Handler) http.Handler {
				return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					mu.Lock()
					hit := armed && tc.match(r)
					if hit {
						requests++
					}
					mu.Unlock()
					if !hit {
						next.ServeHTTP(w, r)
						return
					}
					w.Header().Set("Content-Type", "application/vnd.oci.image.index.v1+json")
					w.WriteHeader(tc.status)
					io.WriteString(w, body)
				})
			})
			img, _ := random.Image(100, 1)
			push(t, host, "tokens/app:1", img)
			mu.Lock()
			armed = true
			mu.Unlock()
			c := newClient(t, Options{Insecure: []string{host}, Retry: fastRetry})
			err := tc.call(c, host+"/tokens/app:1")
			if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("more than %d JSON tokens", maxManifestTokens)) {
				t.Fatalf("err = %v, want the answer refused for its tokens", err)
			}
			mu.Lock()
			defer mu.Unlock()
			if requests != 1 {
				t.Errorf("%d requests, want 1: a refused answer is not asked for again", requests)
			}
		})
	}
}
