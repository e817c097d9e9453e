package cdh

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/guest-puller/guest-puller/internal/cdhconfig"
)

// TestLazy: what the first requests need (the policy, the KBS client) is
// built once for all the callers waiting, whoever gives up, and built again
// after a failure.
func TestLazy(t *testing.T) {
	var builds atomic.Int32
	release := make(chan struct{})
	fail := true
	l := lazy[int]{build: func(ctx context.Context) (int, error) {
		n := builds.Add(1)
		<-release
		if ctx.Err() != nil {
			return 0, ctx.Err()
		}
		if fail {
			return 0, errors.New("KBS unreachable")
		}
		return int(n), nil
	}}

	// A caller that gives up does not end the build for the others.
	impatient, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { _, err := l.get(impatient); errc <- err }()
	for builds.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	var wg sync.WaitGroup
	results := make([]error, 4)
	for i := range results {
		wg.Add(1)
		go func() { defer wg.Done(); _, results[i] = l.get(context.Background()) }()
	}
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Errorf("the impatient caller: %v", err)
	}
	time.Sleep(10 * time.Millisecond) // the others are waiting on the one build
	close(release)
	wg.Wait()
	for i, err := range results {
		if err == nil || err.Error() != "KBS unreachable" {
			t.Errorf("caller %d: %v, want the shared build's failure", i, err)
		}
	}
	if n := builds.Load(); n != 1 {
		t.Fatalf("%d builds for 5 concurrent callers, want 1", n)
	}

	// The next need tries again, and a success is kept.
	fail = false
	for i := 0; i < 3; i++ {
		v, err := l.get(context.Background())
		if err != nil || v != 2 {
			t.Fatalf("get after the failure: %d, %v; want the second build's 2", v, err)
		}
	}
	if n := builds.Load(); n != 2 {
		t.Errorf("%d builds, want 2", n)
	}
}

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
