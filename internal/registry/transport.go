package registry

import (
	"crypto/tls"
	"crypto/x509"
	"net"
	"net/http"
	"net/url"
	"time"
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
	return g.secure.RoundTrip(req)
}

// newBaseTransport is an http.Transport with the timeouts a puller needs:
// bounded connection set-up and header waits, no bound on a body's transfer
// (a layer may take minutes), and enough idle connections for parallel
// layer fetches.
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
		ResponseHeaderTimeout: 60 * time.Second,
		ExpectContinueTimeout: time.Second,
		TLSClientConfig:       &tls.Config{InsecureSkipVerify: skipVerify, RootCAs: roots, MinVersion: tls.VersionTLS12}, //nolint:gosec // only for hosts named insecure
	}
}
