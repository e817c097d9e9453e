package registry

import (
	"context"
	"crypto/x509"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	ggcrregistry "github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// TestRootCAs: a registry whose certificate chains to a CA the system does
// not know is reached once that CA is among Options.RootCAs, and refused
// without it (the confidential-data-hub's extra_root_certificates).
func TestRootCAs(t *testing.T) {
	srv := httptest.NewTLSServer(ggcrregistry.New(ggcrregistry.Logger(log.New(io.Discard, "", 0))))
	t.Cleanup(srv.Close)
	host := strings.TrimPrefix(srv.URL, "https://")
	ref, err := name.ParseReference(host + "/app:1")
	if err != nil {
		t.Fatal(err)
	}
	img, _ := random.Image(100, 1)
	if err := remote.Write(ref, img, remote.WithTransport(srv.Client().Transport)); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := newClient(t, Options{}).Resolve(ctx, ref); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("a registry with an unknown CA: %v, want a certificate error", err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(srv.Certificate())
	if _, err := newClient(t, Options{RootCAs: pool}).Resolve(ctx, ref); err != nil {
		t.Errorf("with the CA among RootCAs: %v", err)
	}
}

// TestProxy: every request goes through Options.Proxy (the
// confidential-data-hub's image_pull_proxy).
func TestProxy(t *testing.T) {
	host := testRegistry(t, nil)
	img, _ := random.Image(100, 2)
	ref := push(t, host, "app/proxied:1", img)
	var relayed atomic.Int32
	proxy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// A forward proxy for plain http: the request line carries the
		// absolute URL.
		relayed.Add(1)
		out, _ := http.NewRequestWithContext(r.Context(), r.Method, r.URL.String(), r.Body)
		out.Header = r.Header.Clone()
		rsp, err := http.DefaultTransport.RoundTrip(out)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		defer rsp.Body.Close()
		for k, v := range rsp.Header {
			w.Header()[k] = v
		}
		w.WriteHeader(rsp.StatusCode)
		io.Copy(w, rsp.Body)
	}))
	t.Cleanup(proxy.Close)
	pu, _ := url.Parse(proxy.URL)
	c := newClient(t, Options{Insecure: []string{host}, Proxy: http.ProxyURL(pu)})
	got, err := c.Resolve(context.Background(), ref)
	if err != nil {
		t.Fatal(err)
	}
	rc, err := c.Blob(context.Background(), got.Repo(), got.Manifest.Layers[0])
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, rc)
	rc.Close()
	if n := relayed.Load(); n < 3 {
		t.Errorf("%d requests went through the proxy, want every one (ping, manifest, config, blob)", n)
	}
}
