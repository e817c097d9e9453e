package attest_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"

	"github.com/guest-puller/guest-puller/attest"
	"github.com/guest-puller/guest-puller/internal/devkbs"
	"github.com/guest-puller/guest-puller/internal/devkbs/devkbstest"
	"github.com/guest-puller/guest-puller/internal/errdefs"
	"github.com/guest-puller/guest-puller/internal/testutil"
)

// kbsEnv is a swtpm-backed guest and an in-process dev-kbs holding a KEK
// at default/key/1.
type kbsEnv struct {
	tpm       *devkbstest.Swtpm
	akDER     []byte
	resources string
	kek       []byte
	url       string
	clock     *clock
	auths     atomic.Int32
	attests   atomic.Int32
	handler   atomic.Pointer[devkbs.Server]
	log       *testutil.SyncBuffer
	cfg       devkbs.Config
}

type clock struct {
	mu  sync.Mutex
	off time.Duration
}

func (c *clock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return time.Now().Add(c.off)
}

func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	c.off += d
	c.mu.Unlock()
}

func writeResource(t *testing.T, dir, name string, data []byte) {
	t.Helper()
	p := filepath.Join(dir, filepath.FromSlash(name))
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

func newKBSEnv(t *testing.T, configure func(*kbsEnv, *devkbs.Config)) *kbsEnv {
	t.Helper()
	e := &kbsEnv{tpm: devkbstest.StartSwtpm(t), resources: t.TempDir(), clock: &clock{}, log: &testutil.SyncBuffer{}}
	akPEM, err := attest.AKPublicPEM(context.Background(), e.tpm.URI)
	if err != nil {
		t.Fatal(err)
	}
	e.akDER, err = devkbs.LoadAK(devkbstest.WriteFile(t, "ak.pem", akPEM))
	if err != nil {
		t.Fatal(err)
	}
	e.kek = make([]byte, 32)
	rand.Read(e.kek)
	writeResource(t, e.resources, "default/key/1", e.kek)
	writeResource(t, e.resources, "default/policy/p", []byte(`{"default":[{"type":"reject"}]}`))

	e.cfg = devkbs.Config{
		Resources:  e.resources,
		TrustedAKs: [][]byte{e.akDER},
		Logger:     slog.New(slog.NewTextHandler(e.log, nil)),
		Now:        e.clock.now,
	}
	if configure != nil {
		configure(e, &e.cfg)
	}
	e.restart(t)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/kbs/v0/auth":
			e.auths.Add(1)
		case "/kbs/v0/attest":
			e.attests.Add(1)
		}
		e.handler.Load().ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	e.url = srv.URL
	return e
}

// restart replaces the KBS behind the URL with a fresh one: every session
// and token the old one issued becomes unknown.
func (e *kbsEnv) restart(t *testing.T) {
	t.Helper()
	s, err := devkbs.New(e.cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	e.handler.Store(s)
}

func (e *kbsEnv) tpmAttester(t *testing.T) attest.Attester {
	t.Helper()
	a, err := attest.NewAttester("tpm", attest.AttesterOptions{TPM: e.tpm.URI})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func (e *kbsEnv) client(t *testing.T, att attest.Attester, opts attest.ClientOptions) *attest.Client {
	t.Helper()
	c, err := attest.NewClient(e.url, att, opts)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestClientFetchesWithTPMEvidence(t *testing.T) {
	e := newKBSEnv(t, nil)
	for _, keyType := range []string{"", "EC", "RSA"} {
		t.Run("key "+keyType, func(t *testing.T) {
			c := e.client(t, e.tpmAttester(t), attest.ClientOptions{KeyType: keyType})
			got, err := c.GetResource(context.Background(), "kbs:///default/key/1")
			if err != nil {
				t.Fatalf("GetResource: %v\nkbs log:\n%s", err, e.log)
			}
			if !bytes.Equal(got, e.kek) {
				t.Fatal("the KEK fetched is not the one the KBS holds")
			}
			// The host part of the URI is ignored: the configured KBS serves it.
			got, err = c.GetResource(context.Background(), "kbs://elsewhere.example/default/policy/p")
			if err != nil || string(got) != `{"default":[{"type":"reject"}]}` {
				t.Fatalf("policy resource = %q, %v", got, err)
			}
		})
	}
}

func TestClientReusesOneAttestation(t *testing.T) {
	e := newKBSEnv(t, nil)
	c := e.client(t, e.tpmAttester(t), attest.ClientOptions{})
	ctx := context.Background()

	// Concurrent first use shares one handshake.
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got, err := c.GetResource(ctx, "kbs:///default/key/1")
			if err == nil && !bytes.Equal(got, e.kek) {
				err = errors.New("wrong KEK")
			}
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if a, b := e.auths.Load(), e.attests.Load(); a != 1 || b != 1 {
		t.Fatalf("8 concurrent fetches made %d auth and %d attest requests, want 1 and 1", a, b)
	}
	// Later requests reuse the session and token.
	for i := 0; i < 3; i++ {
		if _, err := c.GetResource(ctx, "kbs:///default/policy/p"); err != nil {
			t.Fatal(err)
		}
	}
	if a := e.attests.Load(); a != 1 {
		t.Fatalf("attested %d times, want 1", a)
	}

	// A KBS that no longer knows the session answers 401; the client
	// attests again, once, and succeeds.
	e.restart(t)
	got, err := c.GetResource(ctx, "kbs:///default/key/1")
	if err != nil || !bytes.Equal(got, e.kek) {
		t.Fatalf("after a KBS restart: %v", err)
	}
	if a := e.attests.Load(); a != 2 {
		t.Fatalf("attested %d times after the restart, want 2", a)
	}
}

// TestClientReattestsBeforeTokenExpiry: a token about to expire is not
// used; the client attests again instead of sending it.
func TestClientReattestsBeforeTokenExpiry(t *testing.T) {
	e := newKBSEnv(t, func(e *kbsEnv, c *devkbs.Config) { c.TokenTTL = 5 * time.Second })
	c := e.client(t, e.tpmAttester(t), attest.ClientOptions{})
	for i := 0; i < 2; i++ {
		if _, err := c.GetResource(context.Background(), "kbs:///default/key/1"); err != nil {
			t.Fatal(err)
		}
	}
	if a := e.attests.Load(); a != 2 {
		t.Fatalf("attested %d times with a token expiring within the client's margin, want 2", a)
	}
}

// TestClientBoundedReauth: a KBS that keeps answering 401 is asked a
// bounded number of times, and its RFC 7807 detail reaches the error on
// one line.
func TestClientBoundedReauth(t *testing.T) {
	var auths atomic.Int32
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		auths.Add(1)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusUnauthorized)
		io.WriteString(w, `{"type":"https://kbs.example/errors/PolicyDeny","detail":"first line\nsecond line"}`)
	}))
	defer s.Close()
	a, _ := attest.NewAttester("sample", attest.AttesterOptions{})
	c, err := attest.NewClient(s.URL, a, attest.ClientOptions{})
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.GetResource(context.Background(), "kbs:///default/key/1")
	// The kind is the callers' to say ("layer …: cannot decrypt: …"): it
	// maps to exit 4 without being written here.
	want := "kbs resource kbs:///default/key/1: kbs auth: 401 Unauthorized: PolicyDeny: first line second line"
	if err == nil || err.Error() != want || !errors.Is(err, errdefs.ErrDecrypt) {
		t.Fatalf("err = %v\nwant %s, of the kind errdefs.ErrDecrypt", err, want)
	}
	if n := auths.Load(); n != 3 {
		t.Fatalf("%d auth requests, want 3 (one and two re-authentications)", n)
	}
}

// roundTripper lets a test rewrite traffic as an attacker on the path would.
type roundTripper func(*http.Request) (*http.Response, error)

func (f roundTripper) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

func otherJWK(t *testing.T) (json.RawMessage, *ecdsa.PrivateKey) {
	t.Helper()
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	pt, _ := k.PublicKey.Bytes()
	b64 := base64.RawURLEncoding
	jwk, _ := json.Marshal(map[string]string{"kty": "EC", "crv": "P-256", "alg": "ECDH-ES+A256KW",
		"x": b64.EncodeToString(pt[1:33]), "y": b64.EncodeToString(pt[33:])})
	return jwk, k
}

// clockAttester advances the KBS clock while the evidence is produced, so
// the evidence arrives after its challenge expired.
type clockAttester struct {
	attest.Attester
	clock *clock
}

func (a clockAttester) Evidence(ctx context.Context, rd []byte) (json.RawMessage, error) {
	a.clock.advance(6 * time.Minute)
	return a.Attester.Evidence(ctx, rd)
}

// teeAttester claims a TEE the KBS cannot verify.
type teeAttester struct{ tee string }

func (a teeAttester) TEE() string { return a.tee }
func (a teeAttester) Evidence(context.Context, []byte) (json.RawMessage, error) {
	return json.RawMessage(`{"quote":"AAAA"}`), nil
}

func TestClientRefusals(t *testing.T) {
	type setup struct {
		configure func(*kbsEnv, *devkbs.Config)
		attester  func(*testing.T, *kbsEnv) attest.Attester
		transport func(*testing.T, *kbsEnv) http.RoundTripper
		url       func(*testing.T, *kbsEnv) string
		uri       string
	}
	tests := []struct {
		name string
		setup
		want string
	}{
		{"PCR value outside the reference set", setup{
			configure: func(e *kbsEnv, c *devkbs.Config) {
				c.PCRs = devkbs.PCRReference{0: {bytes.Repeat([]byte{0xab}, 32)}}
			},
		}, "PCR 0 value 0000000000000000000000000000000000000000000000000000000000000000 is not in the reference set"},
		{"unregistered attestation key", setup{
			configure: func(e *kbsEnv, c *devkbs.Config) {
				other := devkbstest.StartSwtpm(t)
				pem, err := attest.AKPublicPEM(context.Background(), other.URI)
				if err != nil {
					t.Fatal(err)
				}
				// Same template, different TPM: a different key.
				der, _ := devkbs.LoadAK(devkbstest.WriteFile(t, "other.pem", pem))
				c.TrustedAKs = [][]byte{der}
			},
		}, "attestation key is not registered"},
		{"replayed attest (same nonce twice)", setup{
			transport: func(t *testing.T, e *kbsEnv) http.RoundTripper {
				return roundTripper(func(r *http.Request) (*http.Response, error) {
					if r.URL.Path != "/kbs/v0/attest" {
						return http.DefaultTransport.RoundTrip(r)
					}
					body, _ := io.ReadAll(r.Body)
					first := r.Clone(r.Context())
					first.Body = io.NopCloser(bytes.NewReader(body))
					rsp, err := http.DefaultTransport.RoundTrip(first)
					if err != nil {
						return nil, err
					}
					rsp.Body.Close()
					r.Body = io.NopCloser(bytes.NewReader(body))
					return http.DefaultTransport.RoundTrip(r)
				})
			},
		}, "nonce was already used"},
		{"stale nonce (session expired)", setup{
			attester: func(t *testing.T, e *kbsEnv) attest.Attester {
				return clockAttester{e.tpmAttester(t), e.clock}
			},
		}, "session expired"},
		{"tee-pubkey swapped after the evidence was made", setup{
			transport: func(t *testing.T, e *kbsEnv) http.RoundTripper {
				jwk, _ := otherJWK(t)
				return roundTripper(func(r *http.Request) (*http.Response, error) {
					if r.URL.Path == "/kbs/v0/attest" {
						var req map[string]map[string]json.RawMessage
						body, _ := io.ReadAll(r.Body)
						json.Unmarshal(body, &req)
						req["runtime-data"]["tee-pubkey"] = jwk
						body, _ = json.Marshal(req)
						r.Body = io.NopCloser(bytes.NewReader(body))
						r.ContentLength = int64(len(body))
					}
					return http.DefaultTransport.RoundTrip(r)
				})
			},
		}, "quote extraData does not bind the runtime data"},
		{"sample evidence without --allow-sample", setup{
			attester: func(t *testing.T, e *kbsEnv) attest.Attester {
				a, _ := attest.NewAttester("sample", attest.AttesterOptions{})
				return a
			},
		}, "sample evidence is refused"},
		{"tdx evidence dev-kbs cannot verify", setup{
			attester: func(*testing.T, *kbsEnv) attest.Attester { return teeAttester{"tdx"} },
		}, "cannot verify tdx evidence"},
		{"rules deny the resource to tpm", setup{
			configure: func(e *kbsEnv, c *devkbs.Config) {
				c.Rules = &devkbs.Rules{Rules: []devkbs.Rule{{TEE: []string{"tpm"}, Resources: []string{"default/policy/*"}}}}
			},
		}, "resource default/key/1 is not readable by tpm evidence"},
		{"missing resource", setup{uri: "kbs:///default/key/2"}, "404 Not Found: ResourceNotFound: resource default/key/2 not found"},
		{"resource JWE encrypted to a different key", setup{
			transport: func(t *testing.T, e *kbsEnv) http.RoundTripper {
				_, k := otherJWK(t)
				return roundTripper(func(r *http.Request) (*http.Response, error) {
					rsp, err := http.DefaultTransport.RoundTrip(r)
					if err != nil || !strings.HasPrefix(r.URL.Path, "/kbs/v0/resource/") || rsp.StatusCode != 200 {
						return rsp, err
					}
					rsp.Body.Close()
					enc, _ := jose.NewEncrypter(jose.A256GCM, jose.Recipient{Algorithm: jose.ECDH_ES_A256KW, Key: &k.PublicKey}, nil)
					obj, _ := enc.Encrypt([]byte("attacker's key"))
					rsp.Body = io.NopCloser(strings.NewReader(obj.FullSerialize()))
					rsp.ContentLength = -1
					return rsp, nil
				})
			},
		}, "does not open with this session's tee key"},
		{"KBS down", setup{
			url: func(t *testing.T, e *kbsEnv) string {
				l, _ := net.Listen("tcp", "127.0.0.1:0")
				addr := l.Addr().String()
				l.Close()
				return "http://" + addr
			},
		}, "connection refused"},
		{"KBS answering garbage", setup{
			url: func(t *testing.T, e *kbsEnv) string {
				s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					io.WriteString(w, "<html>it works</html>")
				}))
				t.Cleanup(s.Close)
				return s.URL
			},
		}, "malformed challenge"},
		{"malformed resource URI", setup{uri: "kbs:///default/../key"}, "is not a name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newKBSEnv(t, tt.configure)
			att := e.tpmAttester(t)
			if tt.attester != nil {
				att = tt.attester(t, e)
			}
			opts := attest.ClientOptions{}
			if tt.transport != nil {
				opts.HTTPClient = &http.Client{Transport: tt.transport(t, e)}
			}
			url := e.url
			if tt.url != nil {
				url = tt.url(t, e)
			}
			uri := "kbs:///default/key/1"
			if tt.uri != "" {
				uri = tt.uri
			}
			c, err := attest.NewClient(url, att, opts)
			if err != nil {
				t.Fatal(err)
			}
			got, err := c.GetResource(context.Background(), uri)
			if err == nil {
				t.Fatalf("GetResource succeeded (%d bytes), want a refusal", len(got))
			}
			if !errors.Is(err, errdefs.ErrDecrypt) {
				t.Errorf("%v does not wrap ErrDecrypt", err)
			}
			// Only a resource the KBS says is missing is "not found": a
			// policy named by it is then a configuration error.
			if notFound := tt.name == "missing resource"; errors.Is(err, errdefs.ErrNotFound) != notFound {
				t.Errorf("%v: wraps ErrNotFound %v, want %v", err, !notFound, notFound)
			}
			msg := err.Error()
			if !strings.Contains(msg, tt.want) {
				t.Errorf("error %q\nwant it to say %q\nkbs log:\n%s", msg, tt.want, e.log)
			}
			if strings.ContainsAny(msg, "\n\r") {
				t.Errorf("error is not one line: %q", msg)
			}
			if strings.Contains(msg, hex.EncodeToString(e.kek)) || strings.Contains(msg, base64.StdEncoding.EncodeToString(e.kek)) || strings.Contains(msg, "eyJ") {
				t.Errorf("error leaks a secret: %q", msg)
			}
		})
	}
}

func TestClientAllowedSample(t *testing.T) {
	e := newKBSEnv(t, func(e *kbsEnv, c *devkbs.Config) {
		c.AllowSample = true
		c.Rules = &devkbs.Rules{Rules: []devkbs.Rule{{TEE: []string{"sample"}, Resources: []string{"default/policy/*"}}}}
	})
	a, _ := attest.NewAttester("sample", attest.AttesterOptions{})
	c := e.client(t, a, attest.ClientOptions{})
	if got, err := c.GetResource(context.Background(), "kbs:///default/policy/p"); err != nil || !strings.Contains(string(got), "reject") {
		t.Fatalf("sample allowed: %q, %v", got, err)
	}
	// The rules still keep the KEK from sample evidence.
	if _, err := c.GetResource(context.Background(), "kbs:///default/key/1"); err == nil || !strings.Contains(err.Error(), "not readable by sample") {
		t.Fatalf("sample read the KEK: %v", err)
	}
}

func TestNewClientOptions(t *testing.T) {
	a, _ := attest.NewAttester("sample", attest.AttesterOptions{})
	tests := []struct {
		url  string
		opts attest.ClientOptions
		ok   bool
	}{
		{"http://127.0.0.1:8080", attest.ClientOptions{}, true},
		{"http://localhost:8080/prefix/", attest.ClientOptions{}, true},
		{"http://[::1]:8080", attest.ClientOptions{}, true},
		{"https://kbs.example:8080", attest.ClientOptions{}, true},
		{"http://kbs.example:8080", attest.ClientOptions{}, false},
		{"http://10.0.0.1:8080", attest.ClientOptions{}, false},
		{"http://kbs.example:8080", attest.ClientOptions{Insecure: true}, true},
		{"ftp://kbs.example", attest.ClientOptions{}, false},
		{"https://", attest.ClientOptions{}, false},
		{"https://user:pw@kbs.example", attest.ClientOptions{}, false},
		{"https://kbs.example?x=1", attest.ClientOptions{}, false},
		{"https://kbs.example", attest.ClientOptions{KeyType: "DSA"}, false},
		{"https://kbs.example", attest.ClientOptions{CACert: []byte("not a certificate")}, false},
	}
	for _, tt := range tests {
		_, err := attest.NewClient(tt.url, a, tt.opts)
		if tt.ok != (err == nil) {
			t.Errorf("NewClient(%q, %+v) err = %v, want ok=%v", tt.url, tt.opts, err, tt.ok)
		}
		if err != nil && !errors.Is(err, errdefs.ErrInvalidConfig) {
			t.Errorf("NewClient(%q) error %v does not wrap ErrInvalidConfig", tt.url, err)
		}
	}
	if _, err := attest.NewClient("https://kbs.example", nil, attest.ClientOptions{}); !errors.Is(err, errdefs.ErrInvalidConfig) {
		t.Errorf("nil attester: %v", err)
	}
}

// TestClientIdleTimeout: a KBS that accepts a request and then sends
// nothing, before its answer or in the middle of it, costs the idle time
// and a retry, not the pull; a caller's own deadline ends a request to a
// KBS that stalls for good, as the caller's deadline.
func TestClientIdleTimeout(t *testing.T) {
	e := newKBSEnv(t, nil)
	var mu sync.Mutex
	seen := map[string]int{}
	stalls := map[string]string{} // path → "answer" or "body": stall its first request there
	stallFor := 0                 // >0: stall every request
	done := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen[r.URL.Path]++
		how := stalls[r.URL.Path]
		if seen[r.URL.Path] > 1 {
			how = ""
		}
		if stallFor > 0 {
			how = "answer"
		}
		mu.Unlock()
		wait := func() {
			select {
			case <-r.Context().Done():
			case <-done:
			}
		}
		switch how {
		case "answer":
			wait()
		case "body":
			rec := httptest.NewRecorder()
			e.handler.Load().ServeHTTP(rec, r)
			for k, v := range rec.Header() {
				w.Header()[k] = v
			}
			w.WriteHeader(rec.Code)
			w.Write(rec.Body.Bytes()[:rec.Body.Len()/2])
			w.(http.Flusher).Flush()
			wait()
		default:
			e.handler.Load().ServeHTTP(w, r)
		}
	}))
	t.Cleanup(func() { close(done); srv.Close() })
	count := func(path string) int {
		mu.Lock()
		defer mu.Unlock()
		return seen[path]
	}

	mu.Lock()
	stalls["/kbs/v0/auth"] = "answer"
	stalls["/kbs/v0/resource/default/key/1"] = "body"
	mu.Unlock()
	c, err := attest.NewClient(srv.URL, e.tpmAttester(t), attest.ClientOptions{IdleTimeout: 500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	got, err := c.GetResource(ctx, "kbs:///default/key/1")
	if err != nil || !bytes.Equal(got, e.kek) {
		t.Fatalf("GetResource through a stalling KBS: %v", err)
	}
	if a, r := count("/kbs/v0/auth"), count("/kbs/v0/resource/default/key/1"); a != 2 || r != 2 {
		t.Errorf("%d auth and %d resource requests, want 2 and 2 (each stalled once, then retried)", a, r)
	}

	mu.Lock()
	stallFor = 1
	mu.Unlock()
	slow, err := attest.NewClient(srv.URL, e.tpmAttester(t), attest.ClientOptions{IdleTimeout: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if _, err := slow.GetResource(short, "kbs:///default/key/1"); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("GetResource past the caller's deadline: %v, want context.DeadlineExceeded", err)
	}
}

// TestClientBoundsFollowIdleTimeout: the idle timeout is the one setting
// the client's bounds derive from. A KBS that answers within it is waited
// for, however large the idle timeout is set; one that trickles its
// answer, never quiet for the idle time, is cut after two idle timeouts
// in all and tried again, three times, and the error says why.
func TestClientBoundsFollowIdleTimeout(t *testing.T) {
	e := newKBSEnv(t, nil)
	const idle = 400 * time.Millisecond
	var resources atomic.Int32
	var trickle atomic.Bool
	done := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		isResource := strings.HasPrefix(r.URL.Path, "/kbs/v0/resource/")
		if isResource {
			resources.Add(1)
		}
		if !isResource || !trickle.Load() {
			// Slow, but never quiet for the idle time.
			time.Sleep(idle * 3 / 4)
			e.handler.Load().ServeHTTP(w, r)
			return
		}
		rec := httptest.NewRecorder()
		e.handler.Load().ServeHTTP(rec, r)
		for k, v := range rec.Header() {
			w.Header()[k] = v
		}
		w.WriteHeader(rec.Code)
		for _, b := range rec.Body.Bytes() {
			w.Write([]byte{b})
			w.(http.Flusher).Flush()
			select {
			case <-r.Context().Done():
				return
			case <-done:
				return
			case <-time.After(idle / 4):
			}
		}
	}))
	t.Cleanup(func() { close(done); srv.Close() })
	c, err := attest.NewClient(srv.URL, e.tpmAttester(t), attest.ClientOptions{IdleTimeout: idle})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	got, err := c.GetResource(ctx, "kbs:///default/key/1")
	if err != nil || !bytes.Equal(got, e.kek) {
		t.Fatalf("GetResource from a KBS that answers within the idle timeout: %v", err)
	}
	if n := resources.Load(); n != 1 {
		t.Errorf("%d resource requests to a slow KBS, want 1", n)
	}

	trickle.Store(true)
	resources.Store(0)
	_, err = c.GetResource(ctx, "kbs:///default/key/1")
	if !errors.Is(err, errdefs.ErrDecrypt) || !strings.Contains(err.Error(), "took longer than 800ms (2 idle timeouts)") {
		t.Errorf("GetResource from a trickling KBS: %v, want a failure saying it took longer than two idle timeouts", err)
	}
	if n := resources.Load(); n != 3 {
		t.Errorf("%d resource requests to a trickling KBS, want 3 (one and two retries)", n)
	}
	if ctx.Err() != nil {
		t.Errorf("the caller's deadline ended the request, not the client's bound")
	}
}
