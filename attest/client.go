package attest

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/singleflight"

	"github.com/guest-puller/guest-puller/internal/errdefs"
	"github.com/guest-puller/guest-puller/internal/idleread"
	"github.com/guest-puller/guest-puller/internal/untrusted"
)

const (
	protocolVersion = "0.4.0"
	sessionCookie   = "kbs-session-id"

	// maxReauth bounds the fresh handshakes after a 401, so a KBS that
	// keeps refusing ends the request instead of looping.
	maxReauth = 2
	// netAttempts bounds tries of one exchange when the network fails.
	netAttempts = 3
	netBackoff  = 200 * time.Millisecond

	// How long the KBS may take is derived from the idle timeout
	// (ClientOptions.IdleTimeout), so that one setting governs it: an
	// exchange fails when the KBS sends nothing for the idle time (waiting
	// for its answer or in the middle of it) and in any case after
	// exchangeIdles idle times in all, one to answer and one to send what
	// are small messages, so that a KBS trickling bytes cannot hold it
	// either; a failed exchange is sent again (netAttempts). Above that,
	// a resource request ends when its caller's context does. The
	// handshake, which concurrent callers share, runs under none of their
	// contexts: it is bounded by its parts, netAttempts tries of two
	// exchanges and the evidence.
	exchangeIdles = 2
	// evidenceTimeout bounds producing evidence (a TPM quote on a slow
	// TPM takes seconds; the attestation-agent has its own bound).
	evidenceTimeout = time.Minute
	// tokenSkew retires a token this long before its exp, so a request is
	// not sent with a token that expires in flight.
	tokenSkew = 10 * time.Second

	maxMessage  = 1 << 20  // auth/attest responses and problem documents
	maxResource = 16 << 20 // a JWE-wrapped resource
)

// Client speaks Trustee's KBS protocol (RCAR, kbs-types 0.4.0). It
// attests on first use and reuses the session and token; safe for
// concurrent use. It implements decrypt.ResourceGetter.
type Client struct {
	base     *url.URL
	att      Attester
	keyType  string
	hc       *http.Client
	idle     time.Duration   // the idle timeout, which every bound derives from
	initData json.RawMessage // the attest request's "init-data"

	flight singleflight.Group
	mu     sync.Mutex
	cur    *session
}

// session is one successful RCAR handshake: the KBS session cookie, the
// attestation token and the tee key both are bound to.
type session struct {
	cookie  string
	token   string
	expires time.Time // zero when the token carries no exp
	key     *teeKey
}

func (s *session) usable(now time.Time) bool {
	return s.expires.IsZero() || now.Add(tokenSkew).Before(s.expires)
}

// NewClient returns a client of the KBS at baseURL ("https://kbs:8080").
// A malformed URL, plain http to a host that is not loopback (unless
// Insecure), an unparsable CACert or an unknown KeyType are errors wrapping
// errdefs.ErrInvalidConfig.
func NewClient(baseURL string, att Attester, opts ClientOptions) (*Client, error) {
	u, err := url.Parse(baseURL)
	if err != nil {
		return nil, fmt.Errorf("kbs URL %q: %w: %v", baseURL, errdefs.ErrInvalidConfig, err)
	}
	if (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("kbs URL %q: %w: want http(s)://host[:port][/prefix]", baseURL, errdefs.ErrInvalidConfig)
	}
	if u.Scheme == "http" && !opts.Insecure && !isLoopback(u.Hostname()) {
		return nil, fmt.Errorf("kbs URL %q: %w: plain http is only allowed to a loopback host", baseURL, errdefs.ErrInvalidConfig)
	}
	u.Path = strings.TrimSuffix(u.Path, "/")
	u.RawPath = ""
	if att == nil {
		return nil, fmt.Errorf("kbs client: %w: no attester", errdefs.ErrInvalidConfig)
	}
	if opts.KeyType == "" {
		opts.KeyType = "EC"
	}
	if opts.KeyType != "EC" && opts.KeyType != "RSA" {
		return nil, fmt.Errorf("kbs client: %w: tee key type %q: want EC or RSA", errdefs.ErrInvalidConfig, opts.KeyType)
	}

	var hc http.Client
	if opts.HTTPClient != nil {
		hc = *opts.HTTPClient
	} else {
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12}
		if len(opts.CACert) > 0 {
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(opts.CACert) {
				return nil, fmt.Errorf("kbs client: %w: KBS certificate: no PEM certificate found", errdefs.ErrInvalidConfig)
			}
			tr.TLSClientConfig.RootCAs = pool
		}
		hc.Transport = tr
	}
	// A KBS that accepts the connection and then sends nothing must not
	// hold a pull: the request fails, and retryNet sends it again.
	idle := opts.IdleTimeout
	if idle <= 0 {
		idle = idleread.DefaultTimeout
	}
	next := hc.Transport
	if next == nil {
		next = http.DefaultTransport
	}
	hc.Transport = &idleread.Transport{Next: next, Idle: idle}
	// A redirect would carry the session cookie and token to wherever the
	// KBS (or whoever answers for it) points.
	hc.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }

	initData := json.RawMessage(`null`)
	if opts.InitData != nil {
		// kbs-types' InitData: the document itself, for the KBS to hash
		// with the algorithm it names and compare with the evidence.
		if initData, err = json.Marshal(struct {
			Format string `json:"format"`
			Body   string `json:"body"`
		}{"toml", string(opts.InitData.Body)}); err != nil {
			return nil, err
		}
	}
	return &Client{base: u, att: att, keyType: opts.KeyType, hc: &hc, idle: idle, initData: initData}, nil
}

func isLoopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// GetResource fetches a resource named "kbs:///repo/type/tag" (the host
// part, if any, is ignored) and returns its plaintext. Failures are of the
// kind errdefs.ErrDecrypt (errdefs.Kind: the callers say "cannot decrypt"
// in their words) and carry the KBS's problem detail, on one line; a
// malformed URI also wraps errdefs.ErrInvalidConfig.
func (c *Client) GetResource(ctx context.Context, uri string) ([]byte, error) {
	ru, err := ParseResourceURI(uri)
	if err != nil {
		return nil, errdefs.Kind(errdefs.ErrDecrypt, fmt.Errorf("kbs: %w", err))
	}
	plain, err := c.getResource(ctx, ru)
	if err != nil {
		return nil, errdefs.Kind(errdefs.ErrDecrypt, fmt.Errorf("kbs resource %s: %w", ru, err))
	}
	return plain, nil
}

func (c *Client) getResource(ctx context.Context, ru ResourceURI) ([]byte, error) {
	for reauth := 0; ; reauth++ {
		s, err := c.session(ctx)
		if err != nil {
			if reauth < maxReauth && isUnauthorized(err) {
				continue
			}
			return nil, err
		}
		var rsp *response
		err = retryNet(ctx, func() error {
			var err error
			rsp, err = c.exchange(ctx, http.MethodGet, "/kbs/v0/resource/"+ru.Path(), nil, s, maxResource)
			return err
		})
		if err != nil {
			return nil, err
		}
		switch rsp.status {
		case http.StatusOK:
			return s.key.decrypt(rsp.body)
		case http.StatusUnauthorized:
			c.drop(s)
			if reauth < maxReauth {
				continue
			}
		}
		return nil, rsp.problem("get resource")
	}
}

// session returns the current session, attesting when there is none or its
// token has expired. Concurrent callers share one handshake.
func (c *Client) session(ctx context.Context) (*session, error) {
	c.mu.Lock()
	s := c.cur
	c.mu.Unlock()
	if s != nil && s.usable(time.Now()) {
		return s, nil
	}
	ch := c.flight.DoChan("rcar", func() (any, error) {
		// The handshake outlives a caller that gives up: others may be
		// waiting on it. Its exchanges and evidence bound it.
		hctx := context.WithoutCancel(ctx)
		var s *session
		err := retryNet(hctx, func() error {
			var err error
			s, err = c.handshake(hctx)
			return err
		})
		if err != nil {
			return nil, err
		}
		c.mu.Lock()
		c.cur = s
		c.mu.Unlock()
		return s, nil
	})
	select {
	case <-ctx.Done():
		return nil, ctx.Err()
	case r := <-ch:
		if r.Err != nil {
			return nil, r.Err
		}
		return r.Val.(*session), nil
	}
}

// drop forgets s unless a newer session already replaced it.
func (c *Client) drop(s *session) {
	c.mu.Lock()
	if c.cur == s {
		c.cur = nil
	}
	c.mu.Unlock()
}

// handshake runs RCAR: auth (challenge), evidence over the binding of the
// nonce and a fresh tee key, attest (token).
func (c *Client) handshake(ctx context.Context) (*session, error) {
	key, err := newTEEKey(c.keyType)
	if err != nil {
		return nil, err
	}
	req, err := json.Marshal(struct {
		Version     string          `json:"version"`
		TEE         string          `json:"tee"`
		ExtraParams json.RawMessage `json:"extra-params"`
	}{protocolVersion, c.att.TEE(), json.RawMessage(`{}`)})
	if err != nil {
		return nil, err
	}
	rsp, err := c.exchange(ctx, http.MethodPost, "/kbs/v0/auth", req, nil, maxMessage)
	if err != nil {
		return nil, err
	}
	if rsp.status != http.StatusOK {
		return nil, rsp.problem("auth")
	}
	var challenge struct {
		Nonce       string          `json:"nonce"`
		ExtraParams json.RawMessage `json:"extra-params"`
	}
	if err := json.Unmarshal(rsp.body, &challenge); err != nil || challenge.Nonce == "" {
		return nil, fmt.Errorf("kbs auth: malformed challenge from %s", c.base.Host)
	}
	if err := checkHashAlgorithm(challenge.ExtraParams); err != nil {
		return nil, fmt.Errorf("kbs auth: %w", err)
	}
	cookie := ""
	for _, ck := range rsp.cookies {
		if ck.Name == sessionCookie {
			cookie = ck.Value
		}
	}
	if cookie == "" {
		return nil, fmt.Errorf("kbs auth: no %s cookie in the challenge", sessionCookie)
	}

	rd := runtimeData{Nonce: challenge.Nonce, TEEPubKey: key.jwk}
	digest, err := reportData(rd)
	if err != nil {
		return nil, err
	}
	ectx, cancel := context.WithTimeout(ctx, evidenceTimeout)
	evidence, err := c.att.Evidence(ectx, digest)
	cancel()
	if err != nil {
		return nil, fmt.Errorf("%s evidence: %w", c.att.TEE(), err)
	}
	req, err = json.Marshal(struct {
		InitData    json.RawMessage `json:"init-data"`
		RuntimeData runtimeData     `json:"runtime-data"`
		TEEEvidence struct {
			Primary    json.RawMessage `json:"primary_evidence"`
			Additional string          `json:"additional_evidence"`
		} `json:"tee-evidence"`
	}{
		InitData:    c.initData,
		RuntimeData: rd,
		TEEEvidence: struct {
			Primary    json.RawMessage `json:"primary_evidence"`
			Additional string          `json:"additional_evidence"`
		}{Primary: evidence},
	})
	if err != nil {
		return nil, err
	}
	s := &session{cookie: cookie, key: key}
	rsp, err = c.exchange(ctx, http.MethodPost, "/kbs/v0/attest", req, s, maxMessage)
	if err != nil {
		return nil, err
	}
	if rsp.status != http.StatusOK {
		return nil, rsp.problem("attest")
	}
	var result struct {
		Token string `json:"token"`
	}
	if err := json.Unmarshal(rsp.body, &result); err != nil || result.Token == "" {
		return nil, fmt.Errorf("kbs attest: malformed attestation result from %s", c.base.Host)
	}
	s.token = result.Token
	s.expires = tokenExpiry(result.Token)
	return s, nil
}

// checkHashAlgorithm refuses a challenge that selects a binding hash other
// than the SHA-384 this client computes (it advertises no alternatives).
func checkHashAlgorithm(extra json.RawMessage) error {
	var params struct {
		Selected *string `json:"selected-hash-algorithm"`
	}
	// extra-params is "" or {} in practice; anything not an object selects
	// nothing.
	if json.Unmarshal(extra, &params) != nil || params.Selected == nil {
		return nil
	}
	if !strings.EqualFold(*params.Selected, "sha384") {
		return fmt.Errorf("KBS selected hash algorithm %s; only sha384 is supported", untrusted.Quote(*params.Selected))
	}
	return nil
}

// tokenExpiry reads the exp claim of a JWT without verifying it: the token
// is the KBS's to check; the client only uses exp to know when to re-attest.
func tokenExpiry(token string) time.Time {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return time.Time{}
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return time.Time{}
	}
	var claims struct {
		Exp json.Number `json:"exp"`
	}
	if json.Unmarshal(payload, &claims) != nil {
		return time.Time{}
	}
	exp, err := claims.Exp.Float64()
	if err != nil || exp <= 0 {
		return time.Time{}
	}
	return time.Unix(int64(exp), 0)
}

// response is a KBS answer read in full (bounded).
type response struct {
	status  int
	cookies []*http.Cookie
	body    []byte
}

// exchange sends one request. s, when set, supplies the session cookie and
// the bearer token. Transport failures, an idle KBS and one slower than
// exchangeIdles idle times in all are returned as *netError.
func (c *Client) exchange(ctx context.Context, method, path string, body []byte, s *session, limit int64) (*response, error) {
	parent := ctx
	limitAll := exchangeIdles * c.idle
	ctx, cancel := context.WithTimeoutCause(ctx, limitAll, &slowError{limit: limitAll})
	defer cancel()
	// The bound on the whole exchange, rather than the caller's context,
	// is what ended it.
	why := func(err error) error {
		if parent.Err() == nil && ctx.Err() != nil {
			return context.Cause(ctx)
		}
		return err
	}
	u := *c.base
	u.Path += path
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, u.String(), rd)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Accept", "application/json")
	if s != nil {
		req.AddCookie(&http.Cookie{Name: sessionCookie, Value: s.cookie})
		if s.token != "" {
			req.Header.Set("Authorization", "Bearer "+s.token)
		}
	}
	rsp, err := c.hc.Do(req)
	if err != nil {
		return nil, &netError{op: method + " " + path, err: why(err)}
	}
	defer rsp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(rsp.Body, limit+1))
	if err != nil {
		return nil, &netError{op: method + " " + path, err: why(err)}
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("kbs %s %s: response larger than %d bytes", method, path, limit)
	}
	return &response{status: rsp.StatusCode, cookies: rsp.Cookies(), body: data}, nil
}

// slowError is an exchange that took longer than its bound in all,
// though the KBS never went quiet for the idle time.
type slowError struct{ limit time.Duration }

func (e *slowError) Error() string {
	return fmt.Sprintf("the KBS took longer than %s (%d idle timeouts) to answer and send its response", e.limit, exchangeIdles)
}

// netError is a failure to reach the KBS or read its answer; only these
// are retried.
type netError struct {
	op  string
	err error
}

func (e *netError) Error() string {
	// net/http's errors name the request themselves.
	if _, ok := e.err.(*url.Error); ok {
		return untrusted.Text(e.err.Error())
	}
	return "kbs " + e.op + ": " + untrusted.Text(e.err.Error())
}
func (e *netError) Unwrap() error { return e.err }

func retryNet(ctx context.Context, f func() error) error {
	var err error
	for i := 0; i < netAttempts; i++ {
		if i > 0 {
			t := time.NewTimer(netBackoff << (i - 1))
			select {
			case <-ctx.Done():
				t.Stop()
				return err
			case <-t.C:
			}
		}
		err = f()
		var ne *netError
		if err == nil || !errors.As(err, &ne) || ctx.Err() != nil {
			return err
		}
	}
	return err
}

// problemError is a KBS refusal or failure, with its RFC 7807 details.
type problemError struct {
	op     string
	status int
	kind   string
	detail string
}

func (e *problemError) Error() string {
	msg := fmt.Sprintf("kbs %s: %d %s", e.op, e.status, http.StatusText(e.status))
	if e.kind != "" {
		msg += ": " + e.kind
	}
	if e.detail != "" {
		msg += ": " + e.detail
	}
	return msg
}

// Is makes a 404 an errdefs.ErrNotFound: the resource does not exist (as
// dev-kbs says; Trustee answers most failures with 401, which stays a
// refusal).
func (e *problemError) Is(target error) bool {
	return target == errdefs.ErrNotFound && e.status == http.StatusNotFound
}

func isUnauthorized(err error) bool {
	var pe *problemError
	return errors.As(err, &pe) && pe.status == http.StatusUnauthorized
}

// problem turns a non-200 answer into an error. The body is only trusted
// as far as it is an RFC 7807 document; anything else is not echoed.
func (r *response) problem(op string) error {
	var p struct {
		Type   string `json:"type"`
		Detail string `json:"detail"`
	}
	pe := &problemError{op: op, status: r.status}
	if json.Unmarshal(r.body, &p) == nil {
		pe.kind = untrusted.Text(p.Type[strings.LastIndex(p.Type, "/")+1:])
		pe.detail = untrusted.Text(p.Detail)
	}
	return pe
}
