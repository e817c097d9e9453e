package devkbs

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// DefaultEventLogPCR is the PCR a guest's event log replays to unless
// configured otherwise: the one guest-puller uses on a TPM (PCR 17, the
// attestation-agent's choice, is out of an operating system's reach on a
// TPM).
const DefaultEventLogPCR = 14

const (
	protocolVersion = "0.4.0"
	sessionCookie   = "kbs-session-id"
	tokenIssuer     = "dev-kbs"

	defaultTTL  = 5 * time.Minute
	maxSessions = 10000
	maxRequest  = 1 << 20
	maxResource = 4 << 20
)

// Config configures a Server.
type Config struct {
	// Resources is the directory holding <repo>/<type>/<tag> files.
	Resources string
	// TrustedAKs are the DER SubjectPublicKeyInfos of the TPM attestation
	// keys whose quotes are believed (see LoadAK).
	TrustedAKs [][]byte
	// PCRs constrains TPM PCR values; nil constrains none.
	PCRs PCRReference
	// AllowSample admits Trustee's sample TEE, whose evidence proves
	// nothing; the report data binding is still checked.
	AllowSample bool
	// Rules limit which TEE reads which resource; nil lets any verified
	// evidence read everything.
	Rules *Rules
	// EventLogPCR is the PCR a TPM guest's event log (aa_eventlog in its
	// evidence) must replay to; default 14, guest-puller's.
	EventLogPCR int
	// SessionTTL is how long a challenge and the session built on it live;
	// default 5 minutes. TokenTTL likewise for attestation tokens.
	SessionTTL, TokenTTL time.Duration
	// Logger receives refusals and failures; nil discards them.
	Logger *slog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Server is the KBS. It implements http.Handler.
type Server struct {
	cfg     Config
	root    *os.Root
	trusted map[[sha256.Size]byte]bool
	signKey *ecdsa.PrivateKey
	signer  jose.Signer
	mux     *http.ServeMux

	mu       sync.Mutex
	sessions map[string]*session
}

// session is one RCAR exchange: born at auth with a nonce, attested at most
// once, then good for resources until it expires.
type session struct {
	tee       string
	nonce     string
	expires   time.Time
	nonceUsed bool
	key       *teeKey // set once attested
}

// New returns a Server for cfg. Resources must be a directory.
func New(cfg Config) (*Server, error) {
	if cfg.SessionTTL <= 0 {
		cfg.SessionTTL = defaultTTL
	}
	if cfg.TokenTTL <= 0 {
		cfg.TokenTTL = defaultTTL
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.EventLogPCR == 0 {
		cfg.EventLogPCR = DefaultEventLogPCR
	}
	if cfg.EventLogPCR < 0 || cfg.EventLogPCR > 23 {
		return nil, fmt.Errorf("event log PCR %d is not 0-23", cfg.EventLogPCR)
	}
	root, err := os.OpenRoot(cfg.Resources)
	if err != nil {
		return nil, fmt.Errorf("resources: %w", err)
	}
	s := &Server{cfg: cfg, root: root, trusted: map[[sha256.Size]byte]bool{}, sessions: map[string]*session{}}
	for _, der := range cfg.TrustedAKs {
		s.trusted[sha256.Sum256(der)] = true
	}
	// Tokens only need to outlive this process: the signing key is
	// ephemeral and never leaves memory.
	s.signKey, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	s.signer, err = jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: s.signKey}, (&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		return nil, err
	}
	s.mux = http.NewServeMux()
	s.mux.HandleFunc("POST /kbs/v0/auth", s.auth)
	s.mux.HandleFunc("POST /kbs/v0/attest", s.attest)
	s.mux.HandleFunc("GET /kbs/v0/resource/{repo}/{type}/{tag}", s.resource)
	s.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		s.problem(w, r, http.StatusNotFound, "NotFound", "no endpoint %s %s", r.Method, r.URL.Path)
	})
	return s, nil
}

// Close releases the resources directory.
func (s *Server) Close() error { return s.root.Close() }

func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.mux.ServeHTTP(w, r) }

// problem writes an RFC 7807 error as Trustee's KBS does, and logs it.
func (s *Server) problem(w http.ResponseWriter, r *http.Request, status int, kind, format string, args ...any) {
	detail := fmt.Sprintf(format, args...)
	level := slog.LevelWarn
	if status >= 500 {
		level = slog.LevelError
	}
	s.cfg.Logger.Log(r.Context(), level, "refused", "method", r.Method, "path", r.URL.Path, "remote", r.RemoteAddr, "status", status, "reason", detail)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(struct {
		Type   string `json:"type"`
		Detail string `json:"detail"`
	}{"https://github.com/confidential-containers/kbs/errors/" + kind, detail})
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(v)
}

// decodeStrict reads one JSON document with no unknown members.
func decodeStrict(r *http.Request, v any) error {
	dec := json.NewDecoder(io.LimitReader(r.Body, maxRequest))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return errors.New("trailing data after the JSON document")
	}
	return nil
}

func randomString(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return base64.StdEncoding.EncodeToString(b)
}

func (s *Server) auth(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Version     string          `json:"version"`
		TEE         string          `json:"tee"`
		ExtraParams json.RawMessage `json:"extra-params"`
	}
	if err := decodeStrict(r, &req); err != nil {
		s.problem(w, r, http.StatusBadRequest, "InvalidRequest", "auth request: %v", err)
		return
	}
	if req.Version != protocolVersion {
		s.problem(w, r, http.StatusUnauthorized, "ProtocolVersion", "protocol version %q is not supported (want %s)", req.Version, protocolVersion)
		return
	}
	switch req.TEE {
	case "tpm":
	case "sample":
		if !s.cfg.AllowSample {
			s.problem(w, r, http.StatusUnauthorized, "AttestationFailed", "sample evidence is refused (dev-kbs runs without --allow-sample)")
			return
		}
	case "tdx", "snp":
		s.problem(w, r, http.StatusUnauthorized, "AttestationFailed", "dev-kbs cannot verify %s evidence (no verifier for it here); use Trustee", req.TEE)
		return
	default:
		s.problem(w, r, http.StatusUnauthorized, "AttestationFailed", "tee %q is not supported", req.TEE)
		return
	}

	now := s.cfg.Now()
	id := randomString(32)
	sess := &session{tee: req.TEE, nonce: randomString(32), expires: now.Add(s.cfg.SessionTTL)}
	s.mu.Lock()
	for k, v := range s.sessions {
		if !now.Before(v.expires) {
			delete(s.sessions, k)
		}
	}
	full := len(s.sessions) >= maxSessions
	if !full {
		s.sessions[id] = sess
	}
	s.mu.Unlock()
	if full {
		s.problem(w, r, http.StatusServiceUnavailable, "TooManySessions", "too many open sessions")
		return
	}
	http.SetCookie(w, &http.Cookie{
		Name: sessionCookie, Value: id, Path: "/", Expires: sess.expires,
		HttpOnly: true, Secure: r.TLS != nil, SameSite: http.SameSiteStrictMode,
	})
	writeJSON(w, struct {
		Nonce       string `json:"nonce"`
		ExtraParams string `json:"extra-params"`
	}{sess.nonce, ""})
}

// lookup returns the live session named by the request's cookie.
func (s *Server) lookup(r *http.Request) (*session, error) {
	c, err := r.Cookie(sessionCookie)
	if err != nil {
		return nil, errors.New("no kbs-session-id cookie")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	sess, ok := s.sessions[c.Value]
	if !ok {
		return nil, errors.New("unknown session")
	}
	if !s.cfg.Now().Before(sess.expires) {
		delete(s.sessions, c.Value)
		return nil, errors.New("session expired; request a new challenge")
	}
	return sess, nil
}

type attestRequest struct {
	InitData    json.RawMessage `json:"init-data"`
	RuntimeData struct {
		Nonce     string          `json:"nonce"`
		TEEPubKey json.RawMessage `json:"tee-pubkey"`
	} `json:"runtime-data"`
	TEEEvidence struct {
		Primary    json.RawMessage `json:"primary_evidence"`
		Additional string          `json:"additional_evidence"`
	} `json:"tee-evidence"`
}

func (s *Server) attest(w http.ResponseWriter, r *http.Request) {
	sess, err := s.lookup(r)
	if err != nil {
		s.problem(w, r, http.StatusUnauthorized, "InvalidSession", "%v", err)
		return
	}
	// The nonce is spent by the first attempt, successful or not: evidence
	// is never checked twice against one challenge.
	s.mu.Lock()
	used := sess.nonceUsed
	sess.nonceUsed = true
	nonce, tee := sess.nonce, sess.tee
	s.mu.Unlock()
	if used {
		s.problem(w, r, http.StatusUnauthorized, "AttestationFailed", "the challenge nonce was already used; request a new challenge")
		return
	}

	var req attestRequest
	if err := decodeStrict(r, &req); err != nil {
		s.problem(w, r, http.StatusBadRequest, "InvalidRequest", "attest request: %v", err)
		return
	}
	if subtle.ConstantTimeCompare([]byte(req.RuntimeData.Nonce), []byte(nonce)) != 1 {
		s.problem(w, r, http.StatusUnauthorized, "AttestationFailed", "runtime-data nonce is not this session's challenge")
		return
	}
	var init *initData
	if len(bytes.TrimSpace(req.InitData)) != 0 && !bytes.Equal(bytes.TrimSpace(req.InitData), []byte("null")) {
		if init, err = parseInitData(req.InitData); err != nil {
			s.problem(w, r, http.StatusUnauthorized, "AttestationFailed", "init-data: %v", err)
			return
		}
	}
	if req.TEEEvidence.Additional != "" {
		s.problem(w, r, http.StatusUnauthorized, "AttestationFailed", "additional (device) evidence is not supported by dev-kbs")
		return
	}
	key, err := parseTEEKey(req.RuntimeData.TEEPubKey)
	if err != nil {
		s.problem(w, r, http.StatusUnauthorized, "AttestationFailed", "tee-pubkey: %v", err)
		return
	}
	expected, err := bindingDigest(req.RuntimeData.Nonce, req.RuntimeData.TEEPubKey, req.TEEEvidence.Additional)
	if err != nil {
		s.problem(w, r, http.StatusBadRequest, "InvalidRequest", "runtime-data: %v", err)
		return
	}
	var events []aaelEvent
	eventLog := false
	switch tee {
	case "tpm":
		var claims *tpmClaims
		if claims, err = verifyTPM(req.TEEEvidence.Primary, expected, s.trusted, s.cfg.PCRs); err != nil {
			break
		}
		if init != nil {
			if err = checkInitDataTPM(init, claims); err != nil {
				break
			}
		}
		if claims.eventLog != nil {
			eventLog = true
			events, err = checkEventLog(claims, s.cfg.EventLogPCR)
		}
	case "sample":
		if err = verifySample(req.TEEEvidence.Primary, expected); err == nil && init != nil {
			// As Trustee's sample verifier: nothing binds it.
			s.cfg.Logger.Warn("init-data is not checked for sample evidence", "remote", r.RemoteAddr)
		}
	default:
		err = fmt.Errorf("tee %q cannot be verified", tee)
	}
	if err != nil {
		s.problem(w, r, http.StatusUnauthorized, "AttestationFailed", "%s evidence: %v", tee, err)
		return
	}

	now := s.cfg.Now()
	token, err := jwt.Signed(s.signer).Claims(jwt.Claims{
		Issuer:   tokenIssuer,
		IssuedAt: jwt.NewNumericDate(now),
		Expiry:   jwt.NewNumericDate(now.Add(s.cfg.TokenTTL)),
		ID:       randomString(16),
	}).Claims(tokenClaims{TEE: tee, TEEPubKey: req.RuntimeData.TEEPubKey}).Serialize()
	if err != nil {
		s.problem(w, r, http.StatusInternalServerError, "TokenIssueFailed", "sign token: %v", err)
		return
	}
	s.mu.Lock()
	sess.key = key
	s.mu.Unlock()
	attrs := []any{"tee", tee, "remote", r.RemoteAddr}
	if init != nil {
		attrs = append(attrs, "init-data", fmt.Sprintf("%s:%x", init.algorithm, init.digest))
	}
	if eventLog {
		attrs = append(attrs, "eventlog-pcr", s.cfg.EventLogPCR, "events", len(events))
	}
	s.cfg.Logger.Info("attested", attrs...)
	for i, e := range events {
		s.cfg.Logger.Info("event", "index", i+1, "domain", e.Domain, "operation", e.Operation, "content", e.Content)
	}
	writeJSON(w, struct {
		Token string `json:"token"`
	}{token})
}

type tokenClaims struct {
	TEE       string          `json:"tee"`
	TEEPubKey json.RawMessage `json:"tee-pubkey"`
}

// principal is who asks for a resource: the TEE type it attested as and the
// key to encrypt to.
func (s *Server) principal(r *http.Request) (tee string, key *teeKey, err error) {
	if h := r.Header.Get("Authorization"); h != "" {
		raw, ok := cutPrefixFold(h, "Bearer ")
		if !ok {
			return "", nil, errors.New("Authorization is not a Bearer token")
		}
		tok, err := jwt.ParseSigned(raw, []jose.SignatureAlgorithm{jose.ES256})
		if err != nil {
			return "", nil, errors.New("malformed token")
		}
		var std jwt.Claims
		var cl tokenClaims
		if err := tok.Claims(&s.signKey.PublicKey, &std, &cl); err != nil {
			return "", nil, errors.New("token not issued by this KBS")
		}
		if err := std.ValidateWithLeeway(jwt.Expected{Issuer: tokenIssuer, Time: s.cfg.Now()}, 0); err != nil {
			return "", nil, fmt.Errorf("token: %v", err)
		}
		key, err := parseTEEKey(cl.TEEPubKey)
		if err != nil {
			return "", nil, fmt.Errorf("token: %v", err)
		}
		return cl.TEE, key, nil
	}
	sess, err := s.lookup(r)
	if err != nil {
		return "", nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if sess.key == nil {
		return "", nil, errors.New("session has not attested")
	}
	return sess.tee, sess.key, nil
}

func cutPrefixFold(s, prefix string) (string, bool) {
	if len(s) < len(prefix) || !bytes.EqualFold([]byte(s[:len(prefix)]), []byte(prefix)) {
		return "", false
	}
	return s[len(prefix):], true
}

func (s *Server) resource(w http.ResponseWriter, r *http.Request) {
	segs := []string{r.PathValue("repo"), r.PathValue("type"), r.PathValue("tag")}
	for _, seg := range segs {
		if err := validSegment(seg); err != nil {
			s.problem(w, r, http.StatusBadRequest, "InvalidRequest", "resource path: %v", err)
			return
		}
	}
	name := segs[0] + "/" + segs[1] + "/" + segs[2]
	tee, key, err := s.principal(r)
	if err != nil {
		s.problem(w, r, http.StatusUnauthorized, "TokenVerificationFailed", "%v", err)
		return
	}
	if s.cfg.Rules != nil && !s.cfg.Rules.Allows(tee, name) {
		s.problem(w, r, http.StatusUnauthorized, "PolicyDeny", "resource %s is not readable by %s evidence under the rules", name, tee)
		return
	}
	data, err := s.read(filepath.Join(segs...))
	switch {
	case errors.Is(err, fs.ErrNotExist):
		s.problem(w, r, http.StatusNotFound, "ResourceNotFound", "resource %s not found", name)
		return
	case err != nil:
		s.problem(w, r, http.StatusInternalServerError, "ResourceReadFailed", "resource %s: %v", name, err)
		return
	}
	jwe, err := key.encrypt(data)
	if err != nil {
		s.problem(w, r, http.StatusInternalServerError, "EncryptionFailed", "resource %s: %v", name, err)
		return
	}
	s.cfg.Logger.Info("served", "resource", name, "tee", tee, "remote", r.RemoteAddr)
	w.Header().Set("Content-Type", "application/json")
	io.WriteString(w, jwe)
}

// read opens the resource inside the resources directory only: os.Root
// refuses any path or symlink that leads out of it.
func (s *Server) read(name string) ([]byte, error) {
	f, err := s.root.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fs.ErrNotExist
	}
	if fi.Size() > maxResource {
		return nil, fmt.Errorf("larger than %d bytes", maxResource)
	}
	return io.ReadAll(io.LimitReader(f, maxResource))
}

// validSegment is the resource name grammar of attest.ParseResourceURI.
func validSegment(seg string) error {
	if seg == "" {
		return errors.New("empty segment")
	}
	dots := true
	for _, r := range seg {
		switch {
		case r == '.':
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '_', r == '-':
			dots = false
		default:
			return fmt.Errorf("segment %q has character %q", seg, r)
		}
	}
	if dots {
		return fmt.Errorf("segment %q is not a name", seg)
	}
	return nil
}

// teeKey is the public half of a guest's ephemeral tee key.
type teeKey struct {
	pub any
	alg jose.KeyAlgorithm
}

// parseTEEKey accepts the two kbs-types TeePubKey forms this KBS encrypts
// to: EC P-256 for ECDH-ES+A256KW and RSA (at least 2048 bits) for
// RSA-OAEP-256.
func parseTEEKey(raw json.RawMessage) (*teeKey, error) {
	var hdr struct {
		Kty, Crv, Alg string
	}
	if err := json.Unmarshal(raw, &hdr); err != nil {
		return nil, fmt.Errorf("not a JWK: %v", err)
	}
	var jwk jose.JSONWebKey
	if err := jwk.UnmarshalJSON(raw); err != nil {
		return nil, fmt.Errorf("not a JWK: %v", err)
	}
	if !jwk.IsPublic() {
		return nil, errors.New("not a public key")
	}
	switch k := jwk.Key.(type) {
	case *ecdsa.PublicKey:
		if hdr.Kty != "EC" || hdr.Crv != "P-256" || hdr.Alg != string(jose.ECDH_ES_A256KW) {
			return nil, fmt.Errorf("EC key must be P-256 with alg %s", jose.ECDH_ES_A256KW)
		}
		return &teeKey{pub: k, alg: jose.ECDH_ES_A256KW}, nil
	case *rsa.PublicKey:
		if hdr.Kty != "RSA" || hdr.Alg != string(jose.RSA_OAEP_256) {
			return nil, fmt.Errorf("RSA key must have alg %s", jose.RSA_OAEP_256)
		}
		if k.N.BitLen() < 2048 {
			return nil, fmt.Errorf("RSA key of %d bits is too small", k.N.BitLen())
		}
		return &teeKey{pub: k, alg: jose.RSA_OAEP_256}, nil
	default:
		return nil, fmt.Errorf("key type %q is not supported", hdr.Kty)
	}
}

// encrypt wraps data for the key as a flattened JWE (A256GCM content).
func (k *teeKey) encrypt(data []byte) (string, error) {
	enc, err := jose.NewEncrypter(jose.A256GCM, jose.Recipient{Algorithm: k.alg, Key: k.pub}, nil)
	if err != nil {
		return "", err
	}
	obj, err := enc.Encrypt(data)
	if err != nil {
		return "", err
	}
	return obj.FullSerialize(), nil
}
