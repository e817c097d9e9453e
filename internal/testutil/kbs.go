package testutil

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containers/ocicrypt"
	ocicryptconfig "github.com/containers/ocicrypt/config"
	keyproviderconfig "github.com/containers/ocicrypt/config/keyprovider-config"
	"github.com/containers/ocicrypt/keywrap/keyprovider"
	"github.com/go-jose/go-jose/v4"
	"github.com/opencontainers/go-digest"
	ispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// This file holds the fixtures of the attestation and KBS tests: images
// encrypted for the attestation-agent key provider, and a proxy in front
// of a KBS that records what the KBS hands out and can tamper with it.

// WriteKeyProviderConfig writes an ocicrypt keyprovider configuration (the
// file OCICRYPT_KEYPROVIDER_CONFIG names) that runs `bin args…` as the
// attestation-agent key provider, and returns its path.
func WriteKeyProviderConfig(t testing.TB, bin string, args ...string) string {
	t.Helper()
	cfg := keyproviderconfig.OcicryptConfig{KeyProviderConfig: map[string]keyproviderconfig.KeyProviderAttrs{
		"attestation-agent": {Command: &keyproviderconfig.Command{Path: bin, Args: args}},
	}}
	data, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "ocicrypt_keyprovider.conf")
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// ocicryptMu serializes use of ocicrypt's package-level key wrapper
// registry.
var ocicryptMu sync.Mutex

// EncryptLayout encrypts the layers of the OCI layout image src
// ("oci:DIR:TAG", as BuildImage returns) the way `skopeo copy
// --encryption-key provider:…` does, and adds the result to the same layout
// as tag dstTag; it returns "oci:DIR:dstTag" for Registry.Push (a plain
// skopeo copy of an encrypted layout keeps it as it is).
//
// providerConfig is an ocicrypt keyprovider configuration
// (WriteKeyProviderConfig); recipients are --encryption-key values without
// the "provider:" prefix, like
// "attestation-agent:keypath=KEK::keyid=kbs:///default/key/1". layers are
// the indexes of the layers to encrypt (bottom first); none means all, as
// skopeo's default.
//
// Why not skopeo: Debian's skopeo 1.9.3 links an ocicrypt too old for the
// keyprovider protocol ("Provided protocol not recognized"). ocicrypt reads
// $OCICRYPT_KEYPROVIDER_CONFIG once, in its package init; this registers
// the configured providers the same way that init does
// (RegisterKeyWrapper("provider."+name, keyprovider.NewKeyWrapper(…))), so
// the configured command, over ocicrypt's own protocol, wraps every key.
func EncryptLayout(t testing.TB, src, dstTag, providerConfig string, recipients []string, layers ...int) string {
	t.Helper()
	dir, tag, ok := strings.Cut(strings.TrimPrefix(src, "oci:"), ":")
	if !ok || !strings.HasPrefix(src, "oci:") {
		t.Fatalf("EncryptLayout: %q is not oci:DIR:TAG", src)
	}
	data, err := os.ReadFile(providerConfig)
	if err != nil {
		t.Fatal(err)
	}
	var pc keyproviderconfig.OcicryptConfig
	if err := json.Unmarshal(data, &pc); err != nil {
		t.Fatalf("%s: %v", providerConfig, err)
	}
	var params [][]byte
	for _, r := range recipients {
		params = append(params, []byte(r))
	}
	cc, err := ocicryptconfig.EncryptWithKeyProvider(params)
	if err != nil {
		t.Fatal(err)
	}

	var index ispec.Index
	kbsReadJSON(t, filepath.Join(dir, "index.json"), &index)
	var mdesc *ispec.Descriptor
	for i, d := range index.Manifests {
		if d.Annotations[ispec.AnnotationRefName] == tag {
			mdesc = &index.Manifests[i]
		}
	}
	if mdesc == nil {
		t.Fatalf("EncryptLayout: no tag %q in %s", tag, dir)
	}
	var m ispec.Manifest
	kbsReadJSON(t, layoutBlobPath(dir, mdesc.Digest), &m)

	selected := func(i int) bool {
		if len(layers) == 0 {
			return true
		}
		for _, l := range layers {
			if l == i {
				return true
			}
		}
		return false
	}
	ocicryptMu.Lock()
	defer ocicryptMu.Unlock()
	for name, attrs := range pc.KeyProviderConfig {
		ocicrypt.RegisterKeyWrapper("provider."+name, keyprovider.NewKeyWrapper(name, attrs))
	}
	for i, l := range m.Layers {
		if !selected(i) {
			continue
		}
		in, err := os.Open(layoutBlobPath(dir, l.Digest))
		if err != nil {
			t.Fatal(err)
		}
		r, finish, err := ocicrypt.EncryptLayer(cc.EncryptConfig, in, l)
		if err != nil {
			in.Close()
			t.Fatalf("encrypt layer %d: %v", i, err)
		}
		d, size := layoutWriteBlob(t, dir, r)
		in.Close()
		annotations, err := finish()
		if err != nil {
			t.Fatalf("encrypt layer %d: %v", i, err)
		}
		for k, v := range l.Annotations {
			if _, ok := annotations[k]; !ok {
				annotations[k] = v
			}
		}
		m.Layers[i] = ispec.Descriptor{
			MediaType:   l.MediaType + "+encrypted",
			Digest:      d,
			Size:        size,
			Annotations: annotations,
		}
	}
	raw, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	d, size := layoutWriteBlob(t, dir, bytes.NewReader(raw))
	out := index.Manifests[:0:0]
	for _, md := range index.Manifests {
		if md.Annotations[ispec.AnnotationRefName] != dstTag {
			out = append(out, md)
		}
	}
	index.Manifests = append(out, ispec.Descriptor{
		MediaType:   ispec.MediaTypeImageManifest,
		Digest:      d,
		Size:        size,
		Annotations: map[string]string{ispec.AnnotationRefName: dstTag},
	})
	idx, err := json.Marshal(index)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "index.json"), idx, 0o644); err != nil {
		t.Fatal(err)
	}
	return "oci:" + dir + ":" + dstTag
}

func kbsReadJSON(t testing.TB, path string, v any) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

func layoutBlobPath(dir string, d digest.Digest) string {
	return filepath.Join(dir, "blobs", d.Algorithm().String(), d.Encoded())
}

// layoutWriteBlob stores r's bytes as a blob of the layout dir.
func layoutWriteBlob(t testing.TB, dir string, r io.Reader) (digest.Digest, int64) {
	t.Helper()
	f, err := os.CreateTemp(filepath.Join(dir, "blobs", "sha256"), ".tmp-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.Remove(f.Name())
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(f, h), r)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatal(err)
	}
	d := digest.NewDigestFromEncoded(digest.SHA256, hex.EncodeToString(h.Sum(nil)))
	if err := os.Rename(f.Name(), layoutBlobPath(dir, d)); err != nil {
		t.Fatal(err)
	}
	return d, n
}

// WriteResource writes a KBS resource file DIR/<repo>/<type>/<tag> for
// dev-kbs --resources DIR.
func WriteResource(t testing.TB, dir, name string, data []byte) {
	t.Helper()
	p := filepath.Join(dir, filepath.FromSlash(name))
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

// KBSProxyOptions say how a KBSProxy tampers with the protocol.
type KBSProxyOptions struct {
	// ForeignResourceKey answers every successful resource request with a
	// well-formed JWE encrypted to another EC P-256 key than the tee key
	// the guest attested with.
	ForeignResourceKey bool
	// ReplayAttest sends every attestation request to the KBS twice and
	// answers with the second reply: the KBS sees a nonce used again.
	ReplayAttest bool
	// SwapTeeKey replaces the tee-pubkey of every attestation request
	// with another key after the guest bound its own into the evidence.
	SwapTeeKey bool
	// InitData, if set, replaces the body of the init-data every
	// attestation request carries: init-data other than the guest bound.
	InitData string
	// StallFirst answers the first request to each path with the KBS's
	// status, headers and the first half of its body, then sends nothing
	// more until the client gives up on it (or the test ends).
	StallFirst bool
}

// KBSProxy is a reverse proxy in front of a KBS that records every
// secret the KBS hands out (session cookies, attestation tokens, resource
// responses) and counts requests by path.
type KBSProxy struct {
	// URL is http://127.0.0.1:PORT of the proxy.
	URL string

	mu       sync.Mutex
	secrets  []string
	requests map[string]int
	stalls   []time.Duration
	stop     chan struct{}
}

// StartKBSProxy proxies to the KBS at target (http://HOST:PORT).
func StartKBSProxy(t testing.TB, target string, opts KBSProxyOptions) *KBSProxy {
	t.Helper()
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	p := &KBSProxy{requests: map[string]int{}, stop: make(chan struct{})}
	foreign, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	rp := httputil.NewSingleHostReverseProxy(u)
	rp.ModifyResponse = func(resp *http.Response) error {
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			return err
		}
		req := resp.Request
		if opts.ForeignResourceKey && resp.StatusCode == http.StatusOK && strings.HasPrefix(req.URL.Path, "/kbs/v0/resource/") {
			enc, err := jose.NewEncrypter(jose.A256GCM, jose.Recipient{Algorithm: jose.ECDH_ES_A256KW, Key: &foreign.PublicKey}, nil)
			if err != nil {
				return err
			}
			obj, err := enc.Encrypt(bytes.Repeat([]byte{0x42}, 32))
			if err != nil {
				return err
			}
			body = []byte(obj.FullSerialize())
		}
		p.mu.Lock()
		if resp.StatusCode == http.StatusOK {
			p.secrets = append(p.secrets, string(body))
			var tok struct {
				Token string `json:"token"`
			}
			if json.Unmarshal(body, &tok) == nil && tok.Token != "" {
				p.secrets = append(p.secrets, tok.Token)
				// The signature alone, in case a log shows only a part.
				if i := strings.LastIndex(tok.Token, "."); i > 0 && len(tok.Token)-i > 16 {
					p.secrets = append(p.secrets, tok.Token[i+1:])
				}
			}
		}
		for _, c := range resp.Cookies() {
			p.secrets = append(p.secrets, c.Value)
		}
		p.mu.Unlock()
		resp.Body = io.NopCloser(bytes.NewReader(body))
		resp.ContentLength = int64(len(body))
		resp.Header.Set("Content-Length", fmt.Sprint(len(body)))
		return nil
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.mu.Lock()
		p.requests[r.Method+" "+r.URL.Path]++
		stall := opts.StallFirst && p.requests[r.Method+" "+r.URL.Path] == 1
		p.mu.Unlock()
		if stall {
			rec := httptest.NewRecorder()
			rp.ServeHTTP(rec, r)
			for k, v := range rec.Header() {
				w.Header()[k] = v
			}
			w.WriteHeader(rec.Code)
			w.Write(rec.Body.Bytes()[:rec.Body.Len()/2])
			w.(http.Flusher).Flush()
			start := time.Now()
			select {
			case <-r.Context().Done():
				p.mu.Lock()
				p.stalls = append(p.stalls, time.Since(start))
				p.mu.Unlock()
			case <-p.stop:
			}
			return
		}
		if r.URL.Path == "/kbs/v0/attest" && (opts.ReplayAttest || opts.SwapTeeKey || opts.InitData != "") {
			body, err := io.ReadAll(r.Body)
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			if opts.SwapTeeKey {
				body = swapTeeKey(t, body, &foreign.PublicKey)
			}
			if opts.InitData != "" {
				body = replaceInitData(t, body, opts.InitData)
			}
			if opts.ReplayAttest {
				first := r.Clone(r.Context())
				first.RequestURI = ""
				first.URL.Scheme, first.URL.Host, first.Host = u.Scheme, u.Host, u.Host
				first.Body = io.NopCloser(bytes.NewReader(body))
				first.ContentLength = int64(len(body))
				if resp, err := http.DefaultTransport.RoundTrip(first); err == nil {
					resp.Body.Close()
				}
			}
			r.Body = io.NopCloser(bytes.NewReader(body))
			r.ContentLength = int64(len(body))
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(p.stop) })
	p.URL = srv.URL
	return p
}

// swapTeeKey replaces runtime-data.tee-pubkey in an attestation request.
func swapTeeKey(t testing.TB, body []byte, pub *ecdsa.PublicKey) []byte {
	var req map[string]json.RawMessage
	if err := json.Unmarshal(body, &req); err != nil {
		return body
	}
	var rd map[string]json.RawMessage
	if err := json.Unmarshal(req["runtime-data"], &rd); err != nil {
		return body
	}
	jwk, err := json.Marshal(jose.JSONWebKey{Key: pub, Algorithm: string(jose.ECDH_ES_A256KW)})
	if err != nil {
		t.Error(err)
		return body
	}
	rd["tee-pubkey"] = jwk
	if req["runtime-data"], err = json.Marshal(rd); err != nil {
		return body
	}
	out, err := json.Marshal(req)
	if err != nil {
		return body
	}
	return out
}

// replaceInitData replaces the body of an attestation request's init-data.
func replaceInitData(t testing.TB, body []byte, initData string) []byte {
	var req map[string]json.RawMessage
	if err := json.Unmarshal(body, &req); err != nil {
		return body
	}
	var err error
	if req["init-data"], err = json.Marshal(map[string]string{"format": "toml", "body": initData}); err != nil {
		t.Error(err)
		return body
	}
	out, err := json.Marshal(req)
	if err != nil {
		return body
	}
	return out
}

// Secrets are the cookies, tokens and response bodies the KBS has handed
// out through the proxy so far.
func (p *KBSProxy) Secrets() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.secrets...)
}

// Stalls says, for each stalled answer (StallFirst) its client gave up
// on, how long the client waited.
func (p *KBSProxy) Stalls() []time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]time.Duration(nil), p.stalls...)
}

// Requests is how many requests "METHOD /path" the proxy has relayed.
func (p *KBSProxy) Requests(methodPath string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.requests[methodPath]
}

// SelfSignedTLS writes a self-signed P-256 certificate for 127.0.0.1 (and
// the extra addresses, such as 10.0.2.2 where a VM guest sees the host)
// and its key into a fresh directory, for dev-kbs --tls-cert/--tls-key and
// guest-puller --kbs-cert.
func SelfSignedTLS(t testing.TB, cn string, extra ...net.IP) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IPAddresses:           append([]net.IP{net.IPv4(127, 0, 0, 1)}, extra...),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}
