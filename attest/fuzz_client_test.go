package attest_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/guest-puller/guest-puller/attest"
)

// FuzzClientResponses: every answer the KBS gives the client (the auth
// challenge, the attestation result and its token, a resource, problem
// documents, any status) is from a server the guest only trusts after it
// answered: the client parses all of it without panicking and fails, on
// one line, or returns the resource.
func FuzzClientResponses(f *testing.F) {
	b64 := base64.RawURLEncoding.EncodeToString
	token := "e30." + b64([]byte(`{"exp":4102444800}`)) + ".c2ln"
	for _, s := range []struct {
		auth, att, res []byte
		status         byte
	}{
		{[]byte(`{"nonce":"` + base64.StdEncoding.EncodeToString(make([]byte, 32)) + `","extra-params":""}`), []byte(`{"token":"` + token + `"}`), []byte(`{"protected":"e30","encrypted_key":"","iv":"AAAA","ciphertext":"AAAA","tag":"AAAA"}`), 0},
		{[]byte(`{"nonce":"x","extra-params":{"selected-hash-algorithm":"sha512"}}`), nil, nil, 0},
		{[]byte(`{"nonce":"x"}`), []byte(`{"token":"a.` + b64([]byte(`{"exp":"soon"}`)) + `.b"}`), []byte(`{"type":"https://x/errors/PolicyDeny","detail":"no\nway"}`), 1},
		{[]byte(`{"type":"https://x/errors/Unauthorized","detail":"` + strings.Repeat("\x1b[31m", 100) + `"}`), nil, nil, 2},
	} {
		f.Add(s.auth, s.att, s.res, s.status)
	}
	f.Fuzz(func(t *testing.T, authBody, attestBody, resourceBody []byte, status byte) {
		statuses := []int{http.StatusOK, http.StatusUnauthorized, http.StatusNotFound, http.StatusInternalServerError}
		answer := func(r *http.Request, body []byte, n int) *http.Response {
			code := http.StatusOK
			if status != 0 {
				code = statuses[(int(status)>>n)%len(statuses)]
			}
			h := http.Header{"Content-Type": {"application/json"}}
			if strings.HasSuffix(r.URL.Path, "/auth") {
				h.Set("Set-Cookie", "kbs-session-id=fuzz; Path=/")
			}
			return &http.Response{StatusCode: code, Header: h, Body: io.NopCloser(bytes.NewReader(body)), Request: r, ContentLength: int64(len(body))}
		}
		rt := roundTripper(func(r *http.Request) (*http.Response, error) {
			if r.Body != nil {
				io.Copy(io.Discard, r.Body)
			}
			switch {
			case strings.HasSuffix(r.URL.Path, "/auth"):
				return answer(r, authBody, 0), nil
			case strings.HasSuffix(r.URL.Path, "/attest"):
				return answer(r, attestBody, 2), nil
			default:
				return answer(r, resourceBody, 4), nil
			}
		})
		c, err := attest.NewClient("http://127.0.0.1:1", teeAttester{"sample"}, attest.ClientOptions{HTTPClient: &http.Client{Transport: rt}})
		if err != nil {
			t.Fatal(err)
		}
		_, err = c.GetResource(context.Background(), "kbs:///default/key/1")
		if err != nil && strings.ContainsAny(err.Error(), "\n\r") {
			t.Fatalf("error spans lines: %q", err)
		}
	})
}
