package testutil

import (
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"
)

// Proxy is a reverse proxy in front of a registry that counts blob
// downloads and can break connections in the middle of a blob.
type Proxy struct {
	// Host is 127.0.0.1:PORT of the proxy.
	Host string

	mu        sync.Mutex
	opts      ProxyOptions
	fullGets  map[string]int // blob digest → GETs without Range
	rangeGets map[string]int // blob digest → GETs with Range
	blobGets  int            // blob GETs so far, for DropEvery
	inFlight  int            // blob GETs being served now
	maxFlight int            // the most ever served at once
	stalled   int            // answers that stalled mid-blob so far
	stop      chan struct{}  // closed when the test ends: stalled answers return
}

// ProxyOptions say how a Proxy misbehaves.
type ProxyOptions struct {
	// DropFirst cuts the first full GET of every blob after half of its
	// bytes.
	DropFirst bool
	// DropEvery, if set, cuts every DropEvery-th blob GET (of any blob,
	// resumes included) after half of its bytes.
	DropEvery int
	// BytesPerSecond, if set, slows every blob download down to it.
	BytesPerSecond int
	// BlobFaults are played, in order, on the first GETs of every blob;
	// later GETs pass. With faults, every answer closes its connection,
	// so that the client never reuses one: net/http resends a request by
	// itself when a reused connection closes before answering, which
	// would blur request counts.
	BlobFaults []Fault
	// StallBlob, if set, is a blob digest every GET of which (resumes
	// included) is answered as Fault.StallMidBlob: the first half, then
	// nothing, for as long as the client waits. Other blobs pass.
	StallBlob string
}

// Fault is one misbehaving answer to a blob GET.
type Fault struct {
	// Status answers with this status code (and RetryAfter, if set).
	Status     int
	RetryAfter string
	// Cut closes the connection without answering.
	Cut bool
	// StallMidBlob answers, sends the first half of the blob, then sends
	// nothing more, keeping the connection open until the client gives up
	// on it (or the test ends).
	StallMidBlob bool
}

// StartProxy proxies to the registry at host (plain http).
func StartProxy(t testing.TB, host string, opts ProxyOptions) *Proxy {
	t.Helper()
	target, _ := url.Parse("http://" + host)
	rp := httputil.NewSingleHostReverseProxy(target)
	p := &Proxy{opts: opts, fullGets: map[string]int{}, rangeGets: map[string]int{}, stop: make(chan struct{})}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if len(p.opts.BlobFaults) > 0 {
			w.Header().Set("Connection", "close")
		}
		i := strings.Index(r.URL.Path, "/blobs/")
		if r.Method != http.MethodGet || i < 0 {
			rp.ServeHTTP(w, r)
			return
		}
		dgst := r.URL.Path[i+len("/blobs/"):]
		p.mu.Lock()
		ranged := r.Header.Get("Range") != ""
		if ranged {
			p.rangeGets[dgst]++
		} else {
			p.fullGets[dgst]++
		}
		p.blobGets++
		drop := p.opts.DropFirst && !ranged && p.fullGets[dgst] == 1 ||
			p.opts.DropEvery > 0 && p.blobGets%p.opts.DropEvery == 0
		var fault *Fault
		if n := p.fullGets[dgst] + p.rangeGets[dgst]; n <= len(p.opts.BlobFaults) {
			fault = &p.opts.BlobFaults[n-1]
		}
		p.inFlight++
		p.maxFlight = max(p.maxFlight, p.inFlight)
		p.mu.Unlock()
		defer func() {
			p.mu.Lock()
			p.inFlight--
			p.mu.Unlock()
		}()
		switch {
		case fault != nil && fault.Cut:
			if conn, _, err := w.(http.Hijacker).Hijack(); err == nil {
				conn.Close()
			}
			return
		case fault != nil && fault.StallMidBlob, p.opts.StallBlob == dgst:
			p.serveBlob(w, r, target, stallHalf)
			return
		case fault != nil:
			if fault.RetryAfter != "" {
				w.Header().Set("Retry-After", fault.RetryAfter)
			}
			http.Error(w, `{"errors":[{"code":"UNAVAILABLE","message":"injected fault"}]}`, fault.Status)
			return
		}
		if !drop && p.opts.BytesPerSecond == 0 {
			rp.ServeHTTP(w, r)
			return
		}
		how := whole
		if drop {
			how = dropHalf
		}
		p.serveBlob(w, r, target, how)
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(p.stop) })
	p.Host = strings.TrimPrefix(srv.URL, "http://")
	return p
}

// How serveBlob ends a blob's answer.
const (
	whole     = iota
	dropHalf  // the first half, then the connection is closed
	stallHalf // the first half, then nothing until the client gives up
)

// serveBlob relays a blob, slowly if asked to, whole or its first half
// only.
func (p *Proxy) serveBlob(w http.ResponseWriter, r *http.Request, target *url.URL, how int) {
	out := r.Clone(r.Context())
	out.RequestURI = ""
	out.URL.Scheme, out.URL.Host, out.Host = target.Scheme, target.Host, target.Host
	resp, err := http.DefaultTransport.RoundTrip(out)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	defer resp.Body.Close()
	for k, v := range resp.Header {
		w.Header()[k] = v
	}
	w.WriteHeader(resp.StatusCode)
	n := resp.ContentLength
	if how != whole {
		n /= 2
	}
	var body io.Reader = io.LimitReader(resp.Body, n)
	if n < 0 {
		body = resp.Body
	}
	if bps := p.opts.BytesPerSecond; bps > 0 {
		chunk := max(bps/20, 1)
		buf := make([]byte, chunk)
		for {
			m, err := io.ReadFull(body, buf)
			if m > 0 {
				if _, werr := w.Write(buf[:m]); werr != nil {
					return
				}
				w.(http.Flusher).Flush()
				time.Sleep(50 * time.Millisecond)
			}
			if err != nil {
				break
			}
		}
	} else {
		io.Copy(w, body)
	}
	w.(http.Flusher).Flush()
	switch how {
	case dropHalf:
		if conn, _, err := w.(http.Hijacker).Hijack(); err == nil {
			conn.Close()
		}
	case stallHalf:
		p.mu.Lock()
		p.stalled++
		p.mu.Unlock()
		select {
		case <-r.Context().Done():
		case <-p.stop:
		}
	}
}

// FullGets is how many times the blob was requested from its first byte.
func (p *Proxy) FullGets(digest string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.fullGets[digest]
}

// RangeGets is how many times the blob was requested with a Range.
func (p *Proxy) RangeGets(digest string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.rangeGets[digest]
}

// MaxConcurrentBlobGets is the most blob downloads ever in flight at once.
func (p *Proxy) MaxConcurrentBlobGets() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.maxFlight
}

// Stalled is how many blob answers have stalled mid-blob so far (their
// first half sent and flushed to the client).
func (p *Proxy) Stalled() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stalled
}

// BlobGetsInFlight is how many blob downloads are being served now: a
// stalled answer counts until its client closes the connection.
func (p *Proxy) BlobGetsInFlight() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.inFlight
}

// BlobGets is the total number of GETs of any blob.
func (p *Proxy) BlobGets() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, c := range p.fullGets {
		n += c
	}
	for _, c := range p.rangeGets {
		n += c
	}
	return n
}
