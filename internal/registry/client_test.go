package registry

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	ggcrregistry "github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/guest-puller/guest-puller/internal/errdefs"
	"github.com/guest-puller/guest-puller/internal/refname"
)

// testRegistry serves go-containerregistry's in-process registry behind
// wrap, on a loopback port.
func testRegistry(t *testing.T, wrap func(http.Handler) http.Handler) string {
	t.Helper()
	var h http.Handler = ggcrregistry.New(ggcrregistry.Logger(log.New(io.Discard, "", 0)))
	if wrap != nil {
		h = wrap(h)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

func push(t *testing.T, host, repo string, img v1.Image, auth ...remote.Option) name.Reference {
	t.Helper()
	ref, err := name.ParseReference(host+"/"+repo, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img, auth...); err != nil {
		t.Fatal(err)
	}
	return ref
}

func newClient(t *testing.T, opts Options) *Client {
	t.Helper()
	c, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestResolveAndBlob(t *testing.T) {
	host := testRegistry(t, nil)
	img, err := random.Image(1<<16, 2)
	if err != nil {
		t.Fatal(err)
	}
	ref := push(t, host, "app/one:v1", img)
	c := newClient(t, Options{Insecure: []string{host}})
	got, err := c.Resolve(context.Background(), ref)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := img.Digest()
	if got.Digest != want || got.IndexDigest != (v1.Hash{}) {
		t.Fatalf("digest %v index %v, want %v and none", got.Digest, got.IndexDigest, want)
	}
	rawCfg, _ := img.RawConfigFile()
	if !bytes.Equal(got.RawConfig, rawCfg) {
		t.Fatal("config differs")
	}
	layers, _ := img.Layers()
	for i, l := range layers {
		d, _ := l.Digest()
		rc, err := c.Blob(context.Background(), got.Repo(), got.Manifest.Layers[i])
		if err != nil {
			t.Fatal(err)
		}
		h := sha256.New()
		if _, err := io.Copy(h, rc); err != nil {
			t.Fatal(err)
		}
		rc.Close()
		if "sha256:"+hex.EncodeToString(h.Sum(nil)) != d.String() {
			t.Fatalf("layer %d content differs", i)
		}
	}
}

func TestResolveIndexPlatform(t *testing.T) {
	host := testRegistry(t, nil)
	amd, _ := random.Image(100, 1)
	arm, _ := random.Image(100, 1)
	armv7, _ := random.Image(100, 1)
	idx := mutate.AppendManifests(empty.Index,
		mutate.IndexAddendum{Add: amd, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "amd64"}}},
		mutate.IndexAddendum{Add: arm, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "arm64", Variant: "v8"}}},
		mutate.IndexAddendum{Add: armv7, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "arm", Variant: "v7"}}},
	)
	ref, _ := name.ParseReference(host+"/multi:1", name.Insecure)
	if err := remote.WriteIndex(ref, idx); err != nil {
		t.Fatal(err)
	}
	idxDigest, _ := idx.Digest()
	for _, tc := range []struct {
		platform string
		want     v1.Image
	}{
		{"linux/amd64", amd},
		{"linux/arm64", arm},
		{"linux/arm64/v8", arm},
		{"linux/arm/v7", armv7},
		{"linux/s390x", nil},
	} {
		t.Run(tc.platform, func(t *testing.T) {
			c := newClient(t, Options{Insecure: []string{host}, Platform: tc.platform})
			got, err := c.Resolve(context.Background(), ref)
			if tc.want == nil {
				if err == nil || !strings.Contains(err.Error(), "linux/amd64") {
					t.Fatalf("Resolve = %v, want an error listing the platforms", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			want, _ := tc.want.Digest()
			if got.Digest != want || got.IndexDigest != idxDigest {
				t.Fatalf("got %v via %v, want %v via %v", got.Digest, got.IndexDigest, want, idxDigest)
			}
		})
	}
}

// dropOnce cuts the connection half-way through the first GET of every
// blob, and counts the Range requests that follow.
type dropOnce struct {
	next   http.Handler
	seen   map[string]bool
	ranges atomic.Int32
}

func (d *dropOnce) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet || !strings.Contains(r.URL.Path, "/blobs/") {
		d.next.ServeHTTP(w, r)
		return
	}
	if r.Header.Get("Range") != "" {
		d.ranges.Add(1)
		d.next.ServeHTTP(w, r)
		return
	}
	if d.seen[r.URL.Path] {
		d.next.ServeHTTP(w, r)
		return
	}
	d.seen[r.URL.Path] = true
	rec := httptest.NewRecorder()
	d.next.ServeHTTP(rec, r)
	body := rec.Body.Bytes()
	for k, v := range rec.Header() {
		w.Header()[k] = v
	}
	w.WriteHeader(rec.Code)
	w.Write(body[:len(body)/2])
	w.(http.Flusher).Flush()
	conn, _, err := w.(http.Hijacker).Hijack()
	if err == nil {
		conn.Close()
	}
}

func TestBlobResumesAfterBrokenConnection(t *testing.T) {
	var d *dropOnce
	host := testRegistry(t, func(h http.Handler) http.Handler {
		d = &dropOnce{next: h, seen: map[string]bool{}}
		return d
	})
	img, _ := random.Image(1<<20, 1)
	ref := push(t, host, "resume:1", img)
	c := newClient(t, Options{Insecure: []string{host}})
	got, err := c.Resolve(context.Background(), ref)
	if err != nil {
		t.Fatal(err)
	}
	layer := got.Manifest.Layers[0]
	rc, err := c.Blob(context.Background(), got.Repo(), layer)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	h := sha256.New()
	n, err := io.Copy(h, rc)
	if err != nil {
		t.Fatal(err)
	}
	if n != layer.Size || "sha256:"+hex.EncodeToString(h.Sum(nil)) != layer.Digest.String() {
		t.Fatalf("read %d bytes with another digest, want %d bytes of %s", n, layer.Size, layer.Digest)
	}
	if d.ranges.Load() == 0 {
		t.Fatal("no Range request was made: the blob was not resumed")
	}
}

func TestBlobTooLong(t *testing.T) {
	host := testRegistry(t, nil)
	img, _ := random.Image(4096, 1)
	ref := push(t, host, "long:1", img)
	c := newClient(t, Options{Insecure: []string{host}})
	got, err := c.Resolve(context.Background(), ref)
	if err != nil {
		t.Fatal(err)
	}
	short := got.Manifest.Layers[0]
	short.Size -= 10 // the registry will send 10 bytes more than "described"
	rc, err := c.Blob(context.Background(), got.Repo(), short)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	if _, err := io.Copy(io.Discard, rc); !errors.Is(err, errdefs.ErrIntegrity) {
		t.Fatalf("copy = %v, want ErrIntegrity", err)
	}
}

func TestPlainHTTPNeedsInsecure(t *testing.T) {
	host := testRegistry(t, nil)
	img, _ := random.Image(100, 1)
	ref := push(t, host, "tls/only:1", img)
	c := newClient(t, Options{}) // 127.0.0.1 not named insecure
	if _, err := c.Resolve(context.Background(), ref); err == nil {
		t.Fatal("plain http to a registry not named insecure succeeded")
	}
}

// TestUnreachableRegistry: a registry nobody listens on is said once, as
// what a user checks (the address), not as the https attempt and the http
// fallback's two Go errors.
func TestUnreachableRegistry(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	host := l.Addr().String()
	l.Close()
	for _, insecure := range []bool{false, true} {
		opts := Options{Retry: fastRetry}
		if insecure {
			opts.Insecure = []string{host}
		}
		ref, _ := name.ParseReference(host + "/app:1")
		_, err := newClient(t, opts).Resolve(context.Background(), ref)
		msg := fmt.Sprint(err)
		if !strings.Contains(msg, host+"/app: cannot reach the registry: dial tcp "+host+": connect: connection refused") ||
			strings.Count(msg, "dial tcp") != 1 || strings.Contains(msg, "Get ") {
			t.Errorf("insecure %v: %q, want it said once that %s cannot be reached", insecure, msg, host)
		}
		if errors.Is(err, errdefs.ErrInvalidConfig) {
			t.Errorf("insecure %v: an unreachable registry is a configuration error: %v", insecure, err)
		}
	}
}

func basicAuth(user, pass string) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			u, p, ok := r.BasicAuth()
			if !ok || u != user || p != pass {
				w.Header().Set("WWW-Authenticate", `Basic realm="test"`)
				http.Error(w, `{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}`, http.StatusUnauthorized)
				return
			}
			next.ServeHTTP(w, r)
		})
	}
}

func TestCredentials(t *testing.T) {
	const user, pass = "alice", "s3cret-Pa55"
	host := testRegistry(t, basicAuth(user, pass))
	img, _ := random.Image(100, 1)
	ref := push(t, host, "private/app:1", img, remote.WithAuth(&authn.Basic{Username: user, Password: pass}))

	authFile := filepath.Join(t.TempDir(), "auth.json")
	writeAuthFile(t, authFile, host, user, pass)
	repoKeyed := filepath.Join(t.TempDir(), "auth.json")
	writeAuthFile(t, repoKeyed, host+"/private", user, pass)
	upperKeyed := filepath.Join(t.TempDir(), "auth.json")
	writeAuthFile(t, upperKeyed, "https://"+strings.ToUpper(strings.Replace(host, "127.0.0.1", "localhost", 1))+"/v1/", user, pass)
	wrongFile := filepath.Join(t.TempDir(), "auth.json")
	writeAuthFile(t, wrongFile, host, user, "wrong")

	read := func(p string) []byte {
		data, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		return data
	}
	for _, tc := range []struct {
		name  string
		creds Credentials
		ok    bool
	}{
		{"creds", Credentials{Creds: user + ":" + pass}, true},
		{"auth file", Credentials{AuthFile: read(authFile)}, true},
		{"auth file keyed by namespace", Credentials{AuthFile: read(repoKeyed)}, true},
		{"wrong password", Credentials{Creds: user + ":nope-" + pass}, false},
		{"wrong auth file", Credentials{AuthFile: read(wrongFile)}, false},
		{"anonymous", Credentials{AuthFile: []byte(`{}`)}, false},
		// The auth file's key and the image name spell the host
		// differently: still the same registry.
		{"auth file keyed by another spelling", Credentials{AuthFile: read(upperKeyed)}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newClient(t, Options{Insecure: []string{host, "LocalHost" + host[len("127.0.0.1"):]}, Credentials: tc.creds})
			r := ref
			if strings.Contains(tc.name, "spelling") {
				var err error
				if r, err = refname.Parse(strings.Replace(ref.String(), "127.0.0.1", "LOCALHOST", 1)); err != nil {
					t.Fatal(err)
				}
			}
			_, err := c.Resolve(context.Background(), r)
			if tc.ok {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), "authentication failed") {
				t.Fatalf("Resolve = %v, want an authentication error", err)
			}
			if strings.Contains(err.Error(), pass) {
				t.Fatalf("error leaks the password: %v", err)
			}
		})
	}
}

func TestBadOptions(t *testing.T) {
	for name, opts := range map[string]Options{
		"auth file not JSON": {Credentials: Credentials{AuthFile: []byte("{not json"), AuthFileName: "x.json"}},
		"creds without user": {Credentials: Credentials{Creds: ":pw"}},
		"bad platform":       {Platform: "linux/amd64/v3/extra"},
		"bad insecure host":  {Insecure: []string{"not a host"}},
	} {
		if _, err := New(opts); !errors.Is(err, errdefs.ErrInvalidConfig) {
			t.Errorf("%s: New = %v, want ErrInvalidConfig", name, err)
		}
	}
}

func writeAuthFile(t *testing.T, path, key, user, pass string) {
	t.Helper()
	enc := base64.StdEncoding.EncodeToString([]byte(user + ":" + pass))
	if err := os.WriteFile(path, []byte(`{"auths":{"`+key+`":{"auth":"`+enc+`"}}}`), 0o600); err != nil {
		t.Fatal(err)
	}
}

// bearerAuth is a registry that wants a bearer token, issued by its token
// endpoint to the right basic credentials (the distribution token flow).
func bearerAuth(user, pass string) func(http.Handler) http.Handler {
	const token = "tok-3f9a"
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/token" {
				u, p, ok := r.BasicAuth()
				if !ok || u != user || p != pass || r.URL.Query().Get("service") != "test-registry" || !strings.Contains(r.URL.Query().Get("scope"), "repository:") {
					http.Error(w, "denied", http.StatusUnauthorized)
					return
				}
				w.Header().Set("Content-Type", "application/json")
				io.WriteString(w, `{"token":"`+token+`","expires_in":300}`)
				return
			}
			if r.Header.Get("Authorization") != "Bearer "+token {
				w.Header().Set("WWW-Authenticate", `Bearer realm="http://`+r.Host+`/token",service="test-registry"`)
				http.Error(w, `{"errors":[{"code":"UNAUTHORIZED"}]}`, http.StatusUnauthorized)
				return
			}
			next.ServeHTTP(w, r)
		})
	}
}

func TestBearerToken(t *testing.T) {
	const user, pass = "bob", "t0ken-Pass"
	host := testRegistry(t, bearerAuth(user, pass))
	img, _ := random.Image(1000, 2)
	ref := push(t, host, "bearer/app:1", img, remote.WithAuth(&authn.Basic{Username: user, Password: pass}))
	c := newClient(t, Options{Insecure: []string{host}, Credentials: Credentials{Creds: user + ":" + pass}})
	got, err := c.Resolve(context.Background(), ref)
	if err != nil {
		t.Fatal(err)
	}
	rc, err := c.Blob(context.Background(), got.Repo(), got.Manifest.Layers[1])
	if err != nil {
		t.Fatal(err)
	}
	n, err := io.Copy(io.Discard, rc)
	rc.Close()
	if err != nil || n != got.Manifest.Layers[1].Size {
		t.Fatalf("blob through the bearer token: %d bytes, %v", n, err)
	}
	bad := newClient(t, Options{Insecure: []string{host}, Credentials: Credentials{Creds: user + ":wrong"}})
	if _, err := bad.Resolve(context.Background(), ref); err == nil || !strings.Contains(err.Error(), "authentication failed") {
		t.Fatalf("wrong password: %v", err)
	}
}

// TestCredentialHelper runs a docker credential helper named by the auth
// file's credHelpers, as docker does.
func TestCredentialHelper(t *testing.T) {
	const user, pass = "helped", "Fr0m-Helper"
	host := testRegistry(t, basicAuth(user, pass))
	img, _ := random.Image(100, 1)
	ref := push(t, host, "helper/app:1", img, remote.WithAuth(&authn.Basic{Username: user, Password: pass}))
	dir := t.TempDir()
	script := "#!/bin/sh\nread server\n[ \"$1\" = get ] && [ \"$server\" = \"" + host + "\" ] || exit 1\n" +
		"echo '{\"ServerURL\":\"" + host + "\",\"Username\":\"" + user + "\",\"Secret\":\"" + pass + "\"}'\n"
	if err := os.WriteFile(filepath.Join(dir, "docker-credential-gptest"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", dir+":"+os.Getenv("PATH"))
	c := newClient(t, Options{Insecure: []string{host}, Credentials: Credentials{AuthFile: []byte(`{"credHelpers":{"` + host + `":"gptest"}}`)}})
	if _, err := c.Resolve(context.Background(), ref); err != nil {
		t.Fatal(err)
	}
}
