package devkbs

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
)

type testClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *testClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *testClock) advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

type testKBS struct {
	url   string
	clock *testClock
	dir   string
}

func startKBS(t *testing.T, mut func(*Config)) *testKBS {
	t.Helper()
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "default", "key", "dir"), 0o700)
	os.WriteFile(filepath.Join(dir, "default", "key", "1"), []byte("secret-kek"), 0o600)
	outside := filepath.Join(t.TempDir(), "outside")
	os.WriteFile(outside, []byte("outside the resources"), 0o600)
	os.Symlink(outside, filepath.Join(dir, "default", "key", "escape"))
	clk := &testClock{now: time.Now()}
	cfg := Config{Resources: dir, AllowSample: true, Now: clk.Now}
	if mut != nil {
		mut(&cfg)
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(s)
	t.Cleanup(func() { srv.Close(); s.Close() })
	return &testKBS{url: srv.URL, clock: clk, dir: dir}
}

type reply struct {
	status int
	body   []byte
	header http.Header
}

func (r reply) problem(t *testing.T) (kind, detail string) {
	t.Helper()
	var p struct{ Type, Detail string }
	if err := json.Unmarshal(r.body, &p); err != nil {
		t.Fatalf("status %d body %q is not a problem document", r.status, r.body)
	}
	return p.Type[strings.LastIndex(p.Type, "/")+1:], p.Detail
}

func do(t *testing.T, method, url, body string, hdr map[string]string) reply {
	t.Helper()
	req, _ := http.NewRequest(method, url, strings.NewReader(body))
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	rsp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer rsp.Body.Close()
	b, _ := io.ReadAll(rsp.Body)
	return reply{rsp.StatusCode, b, rsp.Header}
}

// guest is one protocol run with an EC tee key and sample evidence.
type guest struct {
	key    *ecdsa.PrivateKey
	jwk    json.RawMessage
	cookie string
	nonce  string
	token  string
}

func newGuest(t *testing.T) *guest {
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	pt, _ := k.PublicKey.Bytes()
	b := base64.RawURLEncoding
	jwk, _ := json.Marshal(map[string]string{"kty": "EC", "crv": "P-256", "alg": "ECDH-ES+A256KW", "x": b.EncodeToString(pt[1:33]), "y": b.EncodeToString(pt[33:])})
	return &guest{key: k, jwk: jwk}
}

func (g *guest) auth(t *testing.T, k *testKBS, tee string) reply {
	t.Helper()
	r := do(t, "POST", k.url+"/kbs/v0/auth", `{"version":"0.4.0","tee":"`+tee+`","extra-params":{}}`, nil)
	if r.status == 200 {
		var ch struct{ Nonce string }
		json.Unmarshal(r.body, &ch)
		g.nonce = ch.Nonce
		for _, c := range (&http.Response{Header: r.header}).Cookies() {
			if c.Name == sessionCookie {
				g.cookie = c.Value
			}
		}
	}
	return r
}

func (g *guest) attestBody(t *testing.T, nonce string, jwk json.RawMessage, evidence string, extra string) string {
	t.Helper()
	if evidence == "" {
		rd, err := bindingDigest(nonce, jwk, "")
		if err != nil {
			t.Fatal(err)
		}
		evidence = `{"svn":"1","report_data":"` + base64.StdEncoding.EncodeToString(rd) + `"}`
	}
	b, _ := json.Marshal(map[string]any{
		"init-data":    nil,
		"runtime-data": map[string]any{"nonce": nonce, "tee-pubkey": jwk},
		"tee-evidence": map[string]any{"primary_evidence": json.RawMessage(evidence), "additional_evidence": extra},
	})
	return string(b)
}

func (g *guest) attest(t *testing.T, k *testKBS, body string) reply {
	t.Helper()
	r := do(t, "POST", k.url+"/kbs/v0/attest", body, map[string]string{"Cookie": sessionCookie + "=" + g.cookie})
	if r.status == 200 {
		var res struct{ Token string }
		json.Unmarshal(r.body, &res)
		g.token = res.Token
	}
	return r
}

func (g *guest) open(t *testing.T, r reply) string {
	t.Helper()
	if r.status != 200 {
		t.Fatalf("resource: %d %s", r.status, r.body)
	}
	obj, err := jose.ParseEncryptedJSON(string(r.body), []jose.KeyAlgorithm{jose.ECDH_ES_A256KW}, []jose.ContentEncryption{jose.A256GCM})
	if err != nil {
		t.Fatal(err)
	}
	plain, err := obj.Decrypt(g.key)
	if err != nil {
		t.Fatal(err)
	}
	return string(plain)
}

func TestAuth(t *testing.T) {
	k := startKBS(t, nil)
	noSample := startKBS(t, func(c *Config) { c.AllowSample = false })
	tests := []struct {
		name   string
		kbs    *testKBS
		body   string
		status int
		detail string
	}{
		{"tpm", k, `{"version":"0.4.0","tee":"tpm","extra-params":{}}`, 200, ""},
		{"extra-params as a string", k, `{"version":"0.4.0","tee":"tpm","extra-params":""}`, 200, ""},
		{"old protocol", k, `{"version":"0.3.0","tee":"tpm","extra-params":{}}`, 401, "protocol version"},
		{"tdx", k, `{"version":"0.4.0","tee":"tdx","extra-params":{}}`, 401, "cannot verify tdx"},
		{"snp", k, `{"version":"0.4.0","tee":"snp","extra-params":{}}`, 401, "cannot verify snp"},
		{"unknown tee", k, `{"version":"0.4.0","tee":"sgx","extra-params":{}}`, 401, "not supported"},
		{"sample not allowed", noSample, `{"version":"0.4.0","tee":"sample","extra-params":{}}`, 401, "--allow-sample"},
		{"unknown member", k, `{"version":"0.4.0","tee":"tpm","extra-params":{},"x":1}`, 400, "unknown field"},
		{"not JSON", k, `tee=tpm`, 400, "auth request"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := do(t, "POST", tt.kbs.url+"/kbs/v0/auth", tt.body, nil)
			if r.status != tt.status {
				t.Fatalf("status %d %s, want %d", r.status, r.body, tt.status)
			}
			if tt.status != 200 {
				if _, d := r.problem(t); !strings.Contains(d, tt.detail) {
					t.Fatalf("detail %q, want %q", d, tt.detail)
				}
				return
			}
			var ch map[string]any
			json.Unmarshal(r.body, &ch)
			nonce, _ := base64.StdEncoding.DecodeString(ch["nonce"].(string))
			if len(nonce) != 32 || ch["extra-params"] != "" {
				t.Fatalf("challenge %s", r.body)
			}
			ck := (&http.Response{Header: r.header}).Cookies()
			if len(ck) != 1 || ck[0].Name != "kbs-session-id" || !ck[0].HttpOnly || ck[0].Expires.IsZero() {
				t.Fatalf("cookies %v", ck)
			}
		})
	}
	// Challenges are fresh.
	a, b := newGuest(t), newGuest(t)
	a.auth(t, k, "tpm")
	b.auth(t, k, "tpm")
	if a.nonce == b.nonce || a.cookie == b.cookie {
		t.Fatal("two challenges share a nonce or session")
	}
}

func TestAttest(t *testing.T) {
	k := startKBS(t, nil)
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 1024)
	smallRSA, _ := json.Marshal(map[string]string{"kty": "RSA", "alg": "RSA-OAEP-256",
		"n": base64.RawURLEncoding.EncodeToString(rsaKey.N.Bytes()), "e": "AQAB"})

	tests := []struct {
		name   string
		build  func(g, other *guest) string
		status int
		detail string
	}{
		{"bound sample evidence", func(g, _ *guest) string { return g.attestBody(t, g.nonce, g.jwk, "", "") }, 200, ""},
		{"nonce of another session", func(g, o *guest) string { return g.attestBody(t, o.nonce, g.jwk, "", "") }, 401, "not this session's challenge"},
		{"evidence bound to another key", func(g, o *guest) string {
			rd, _ := bindingDigest(g.nonce, o.jwk, "")
			return g.attestBody(t, g.nonce, g.jwk, `{"svn":"1","report_data":"`+base64.StdEncoding.EncodeToString(rd)+`"}`, "")
		}, 401, "does not bind"},
		{"init-data", func(g, _ *guest) string {
			return strings.Replace(g.attestBody(t, g.nonce, g.jwk, "", ""), `"init-data":null`, `"init-data":{"format":"toml","body":"x"}`, 1)
		}, 401, "init-data"},
		{"additional evidence", func(g, _ *guest) string { return g.attestBody(t, g.nonce, g.jwk, "", "dev") }, 401, "additional"},
		{"tee key with the wrong alg", func(g, _ *guest) string {
			jwk := json.RawMessage(strings.Replace(string(g.jwk), "ECDH-ES+A256KW", "ECDH-ES", 1))
			return g.attestBody(t, g.nonce, jwk, "", "")
		}, 401, "tee-pubkey"},
		{"1024-bit RSA tee key", func(g, _ *guest) string { return g.attestBody(t, g.nonce, smallRSA, "", "") }, 401, "too small"},
		{"unknown member", func(g, _ *guest) string {
			return strings.Replace(g.attestBody(t, g.nonce, g.jwk, "", ""), `{`, `{"x":1,`, 1)
		}, 400, "unknown field"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g, other := newGuest(t), newGuest(t)
			g.auth(t, k, "sample")
			other.auth(t, k, "sample")
			r := g.attest(t, k, tt.build(g, other))
			if r.status != tt.status {
				t.Fatalf("status %d %s, want %d", r.status, r.body, tt.status)
			}
			if tt.status != 200 {
				if _, d := r.problem(t); !strings.Contains(d, tt.detail) {
					t.Fatalf("detail %q, want %q", d, tt.detail)
				}
			}
			// Whatever happened, the nonce is spent.
			r = g.attest(t, k, g.attestBody(t, g.nonce, g.jwk, "", ""))
			if _, d := r.problem(t); r.status != 401 || !strings.Contains(d, "already used") {
				t.Fatalf("second attest: %d %s", r.status, r.body)
			}
		})
	}

	t.Run("no session", func(t *testing.T) {
		g := newGuest(t)
		r := g.attest(t, k, g.attestBody(t, "x", g.jwk, "", ""))
		if _, d := r.problem(t); r.status != 401 || !strings.Contains(d, "session") {
			t.Fatalf("%d %s", r.status, r.body)
		}
	})
	t.Run("expired session", func(t *testing.T) {
		g := newGuest(t)
		g.auth(t, k, "sample")
		k.clock.advance(5*time.Minute + time.Second)
		r := g.attest(t, k, g.attestBody(t, g.nonce, g.jwk, "", ""))
		if _, d := r.problem(t); r.status != 401 || !strings.Contains(d, "expired") {
			t.Fatalf("%d %s", r.status, r.body)
		}
	})
}

func TestResource(t *testing.T) {
	k := startKBS(t, func(c *Config) { c.TokenTTL = time.Minute })
	attested := func(t *testing.T) *guest {
		g := newGuest(t)
		g.auth(t, k, "sample")
		if r := g.attest(t, k, g.attestBody(t, g.nonce, g.jwk, "", "")); r.status != 200 {
			t.Fatalf("attest: %d %s", r.status, r.body)
		}
		return g
	}
	get := func(path string, hdr map[string]string) reply {
		return do(t, "GET", k.url+"/kbs/v0/resource/"+path, "", hdr)
	}

	g := attested(t)
	if got := g.open(t, get("default/key/1", map[string]string{"Cookie": sessionCookie + "=" + g.cookie})); got != "secret-kek" {
		t.Fatalf("by cookie: %q", got)
	}
	if got := g.open(t, get("default/key/1", map[string]string{"Authorization": "Bearer " + g.token})); got != "secret-kek" {
		t.Fatalf("by token: %q", got)
	}
	// Encrypted to the attested key only.
	r := get("default/key/1", map[string]string{"Authorization": "Bearer " + g.token})
	if _, err := func() ([]byte, error) {
		obj, _ := jose.ParseEncryptedJSON(string(r.body), []jose.KeyAlgorithm{jose.ECDH_ES_A256KW}, []jose.ContentEncryption{jose.A256GCM})
		return obj.Decrypt(newGuest(t).key)
	}(); err == nil {
		t.Fatal("another key opened the resource")
	}
	if bytes.Contains(r.body, []byte("secret-kek")) {
		t.Fatal("plaintext in the response")
	}

	unattested := newGuest(t)
	unattested.auth(t, k, "sample")
	foreign := startKBS(t, nil)
	fg := newGuest(t)
	fg.auth(t, foreign, "sample")
	fg.attest(t, foreign, fg.attestBody(t, fg.nonce, fg.jwk, "", ""))

	tests := []struct {
		name   string
		path   string
		hdr    map[string]string
		status int
		detail string
	}{
		{"no credentials", "default/key/1", nil, 401, "cookie"},
		{"session not attested", "default/key/1", map[string]string{"Cookie": sessionCookie + "=" + unattested.cookie}, 401, "not attested"},
		{"token from another KBS", "default/key/1", map[string]string{"Authorization": "Bearer " + fg.token}, 401, "not issued by this KBS"},
		{"malformed token", "default/key/1", map[string]string{"Authorization": "Bearer abc"}, 401, "malformed token"},
		{"basic auth", "default/key/1", map[string]string{"Authorization": "Basic YTpi"}, 401, "Bearer"},
		{"missing", "default/key/2", map[string]string{"Authorization": "Bearer " + g.token}, 404, "not found"},
		{"directory", "default/key/dir", map[string]string{"Authorization": "Bearer " + g.token}, 404, "not found"},
		{"symlink out of the resources", "default/key/escape", map[string]string{"Authorization": "Bearer " + g.token}, 500, "escape"},
		{"dot-dot (cleaned by the client)", "default/key/..", map[string]string{"Authorization": "Bearer " + g.token}, 404, "no endpoint"},
		{"encoded dot-dot", "default/key/%2e%2e", map[string]string{"Authorization": "Bearer " + g.token}, 400, "not a name"},
		{"encoded slash", "default/key/a%2Fb", map[string]string{"Authorization": "Bearer " + g.token}, 400, "character"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := get(tt.path, tt.hdr)
			if r.status != tt.status {
				t.Fatalf("status %d %s, want %d", r.status, r.body, tt.status)
			}
			if _, d := r.problem(t); !strings.Contains(d, tt.detail) {
				t.Fatalf("detail %q, want %q", d, tt.detail)
			}
			if bytes.Contains(r.body, []byte("outside the resources")) {
				t.Fatal("served a file outside the resources directory")
			}
		})
	}

	// Tokens expire; so do sessions.
	k.clock.advance(2 * time.Minute)
	if r := get("default/key/1", map[string]string{"Authorization": "Bearer " + g.token}); r.status != 401 {
		t.Fatalf("expired token: %d", r.status)
	}
	k.clock.advance(4 * time.Minute)
	if r := get("default/key/1", map[string]string{"Cookie": sessionCookie + "=" + g.cookie}); r.status != 401 {
		t.Fatalf("expired session: %d", r.status)
	}
}
