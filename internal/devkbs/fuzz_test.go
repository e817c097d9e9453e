package devkbs

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"testing"
)

// FuzzServerRequests: what a guest sends dev-kbs (the auth request, the
// attest request with its evidence, a resource path) is parsed without
// panicking and refused with a client error, or answered. In the attest
// body, "@NONCE@" becomes the session's own challenge, so that evidence
// parsing is reached past the nonce check.
func FuzzServerRequests(f *testing.F) {
	f.Add([]byte(`{"version":"0.4.0","tee":"sample","extra-params":{}}`),
		[]byte(`{"init-data":null,"runtime-data":{"nonce":"@NONCE@","tee-pubkey":{"kty":"EC","crv":"P-256","alg":"ECDH-ES+A256KW","x":"AA","y":"AA"}},"tee-evidence":{"primary_evidence":{"svn":"1","report_data":"AAAA"},"additional_evidence":""}}`),
		"default/key/1")
	f.Add([]byte(`{"version":"0.4.0","tee":"tpm","extra-params":{}}`),
		[]byte(`{"init-data":{"format":"toml","body":"x = 1"},"runtime-data":{"nonce":"@NONCE@","tee-pubkey":{"kty":"RSA","alg":"RSA-OAEP-256","n":"AQAB","e":"AQAB"}},"tee-evidence":{"primary_evidence":{"tpm_quote":{"signature":"AAAA","message":"AAAA","pcrs":["00"]},"ak_public":"AAAA"},"additional_evidence":""}}`),
		"default/key/../1")
	f.Add([]byte(`{"version":"0.3.0","tee":"snp"}`), []byte(`{}`), "%2e%2e/%2e%2e/etc/passwd")
	dir := f.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "default", "key"), 0o700); err != nil {
		f.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "default", "key", "1"), make([]byte, 32), 0o600); err != nil {
		f.Fatal(err)
	}
	s, err := New(Config{Resources: dir, AllowSample: true})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { s.Close() })
	do := func(method, path string, body []byte, cookies []*http.Cookie) *httptest.ResponseRecorder {
		u := &url.URL{Scheme: "http", Host: "kbs", Path: path}
		req, err := http.NewRequest(method, u.String(), bytes.NewReader(body))
		if err != nil {
			f.Fatalf("request for %q: %v", path, err)
		}
		req.RemoteAddr = "127.0.0.1:1"
		req.Header.Set("Content-Type", "application/json")
		for _, c := range cookies {
			req.AddCookie(c)
		}
		w := httptest.NewRecorder()
		s.ServeHTTP(w, req)
		return w
	}
	f.Fuzz(func(t *testing.T, authBody, attestBody []byte, resource string) {
		check := func(what string, w *httptest.ResponseRecorder) {
			if w.Code >= 500 && w.Code != http.StatusServiceUnavailable {
				t.Fatalf("%s: %d %s", what, w.Code, w.Body)
			}
		}
		a := do(http.MethodPost, "/kbs/v0/auth", authBody, nil)
		check("auth", a)
		var challenge struct{ Nonce string }
		json.Unmarshal(a.Body.Bytes(), &challenge)
		cookies := a.Result().Cookies()
		body := bytes.ReplaceAll(attestBody, []byte("@NONCE@"), []byte(challenge.Nonce))
		at := do(http.MethodPost, "/kbs/v0/attest", body, cookies)
		check("attest", at)
		check("resource", do(http.MethodGet, "/kbs/v0/resource/"+resource, nil, cookies))
	})
}
