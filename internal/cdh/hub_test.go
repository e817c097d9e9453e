package cdh

import (
	"net/http"
	"net/url"
	"testing"

	"github.com/guest-puller/guest-puller/internal/cdhconfig"
)

func TestProxyFunc(t *testing.T) {
	f, err := proxyFunc(cdhconfig.Proxy{})
	if err != nil || f != nil {
		t.Fatalf("no proxy configured: a function (%v); want nil, the environment's proxy", err)
	}
	f, err = proxyFunc(cdhconfig.Proxy{HTTPS: "http://proxy.internal:3128", HTTP: "http://plain.internal:3128", NoProxy: "registry.local,10.0.0.0/8"})
	if err != nil {
		t.Fatal(err)
	}
	for target, want := range map[string]string{
		"https://quay.io/v2/":          "http://proxy.internal:3128",
		"http://insecure.example/v2/":  "http://plain.internal:3128",
		"https://registry.local/v2/":   "",
		"https://10.1.2.3:5000/v2/":    "",
		"https://registry.example/v2/": "http://proxy.internal:3128",
	} {
		u, _ := url.Parse(target)
		got, err := f(&http.Request{URL: u})
		if err != nil {
			t.Fatal(err)
		}
		if (got == nil && want != "") || (got != nil && got.String() != want) {
			t.Errorf("proxy for %s = %v, want %q", target, got, want)
		}
	}
}
