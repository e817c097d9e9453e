package registry

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"time"

	"github.com/guest-puller/guest-puller/internal/errdefs"
)

// schemeGuard sends every request over TLS unless its host was named
// insecure. go-containerregistry picks plain http by itself for loopback,
// RFC 1918 and .local registries; in a confidential guest that would put
// credentials on the wire in clear, so such requests are upgraded to https
// and only --insecure-registry (or registries.conf insecure=true) hosts may
// speak http or present certificates that do not verify.
type schemeGuard struct {
	secure   http.RoundTripper
	insecure http.RoundTripper
	allowed  func(host string) bool
}

func (g *schemeGuard) RoundTrip(req *http.Request) (*http.Response, error) {
	if g.allowed(req.URL.Host) {
		return g.insecure.RoundTrip(req)
	}
	if req.URL.Scheme == "http" {
		r := req.Clone(req.Context())
		r.URL.Scheme = "https"
		req = r
	}
	resp, err := g.secure.RoundTrip(req)
	if err != nil && speaksPlainHTTP(err) {
		return nil, &plainHTTPError{host: req.URL.Host}
	}
	return resp, err
}

// speaksPlainHTTP reports whether err is a TLS handshake answered in plain
// HTTP: the transport's record header error that http.Client turns into
// ErrSchemeMismatch.
func speaksPlainHTTP(err error) bool {
	var rh tls.RecordHeaderError
	return errors.Is(err, http.ErrSchemeMismatch) || errors.As(err, &rh) && string(rh.RecordHeader[:]) == "HTTP/"
}

// plainHTTPError is a registry that answered a TLS handshake in plain
// HTTP: a registry set up without TLS, which must be named insecure to be
// used. It is a configuration error (exit 2).
type plainHTTPError struct{ host string }

func (e *plainHTTPError) Error() string {
	return fmt.Sprintf("registry %s speaks plain HTTP, and guest-puller uses TLS unless told otherwise: if plain HTTP is what you mean, give --insecure-registry %s (or insecure = true in registries.conf)",
		e.host, e.host)
}

func (e *plainHTTPError) Unwrap() error { return errdefs.ErrInvalidConfig }

// newBaseTransport is an http.Transport with the timeouts a puller needs:
// bounded connection set-up, no bound on a body's transfer (a layer may
// take minutes), and enough idle connections for parallel layer fetches.
// How long a server may keep a request waiting for data, for its answer or
// mid-body, is the idle timeout's (idleread, one layer up).
func newBaseTransport(skipVerify bool, proxy func(*http.Request) (*url.URL, error), roots *x509.CertPool) *http.Transport {
	if proxy == nil {
		proxy = http.ProxyFromEnvironment
	}
	return &http.Transport{
		Proxy: proxy,
		DialContext: (&net.Dialer{
			Timeout:   30 * time.Second,
			KeepAlive: 30 * time.Second,
		}).DialContext,
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          64,
		MaxIdleConnsPerHost:   16,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   15 * time.Second,
		ExpectContinueTimeout: time.Second,
		TLSClientConfig:       &tls.Config{InsecureSkipVerify: skipVerify, RootCAs: roots, MinVersion: tls.VersionTLS12}, //nolint:gosec // only for hosts named insecure
	}
}
