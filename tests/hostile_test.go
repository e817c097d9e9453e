package tests

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"testing"
	"unicode"

	"github.com/guest-puller/guest-puller/internal/testutil"
)

// Hostile input, second read (issue 15) and remote text in messages
// (issue 8, item 8): what a registry, a KBS or a layer writes reaches the
// operator's terminal and the daemon's log only bounded and with nothing a
// terminal would act on.

// controlSeq is what a hostile server writes into its messages: set the
// terminal title, ring the bell, clear the screen, and a bidi override that
// reverses what follows.
const controlSeq = "\x1b]0;owned\a\x1b[2J\x1b[31m\u202e"

// assertPrintable fails the test if out (a command's stderr) holds a
// character that does not print, other than the newline that ends it.
func assertPrintable(t *testing.T, what, out string) {
	t.Helper()
	for _, r := range strings.TrimSuffix(out, "\n") {
		if r != ' ' && !unicode.IsPrint(r) {
			t.Errorf("%s holds %U, which a terminal acts on:\n%q", what, r, out)
			return
		}
	}
}

// hostileRegistry is a real registry behind a proxy that answers the
// requests answer picks with its own status and body.
func hostileRegistry(t *testing.T, reg *testutil.Registry, answer func(r *http.Request) (status int, body string, ok bool)) string {
	t.Helper()
	target, _ := url.Parse("http://" + reg.Host)
	rp := httputil.NewSingleHostReverseProxy(target)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if status, body, ok := answer(r); ok {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(status)
			w.Write([]byte(body))
			return
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

func TestHostileText(t *testing.T) {
	reg := testutil.StartRegistry(t, testutil.RegistryOptions{})
	e := newEnv(t)
	policy := e.write("policy.json", acceptAll)

	t.Run("registry error message", func(t *testing.T) {
		// A distribution-spec error whose message carries control
		// sequences and 55 KB of text (go-containerregistry reads 64 KiB of
		// an error body).
		msg := controlSeq + "denied" + strings.Repeat(" and denied", 5000)
		host := hostileRegistry(t, reg, func(r *http.Request) (int, string, bool) {
			if !strings.Contains(r.URL.Path, "/manifests/") {
				return 0, "", false
			}
			return http.StatusBadRequest, `{"errors":[{"code":"DENIED","message":` + jsonString(msg) + `}]}`, true
		})
		for _, args := range [][]string{
			{"pull", host + "/app:1", "--quiet"},
			{"policy", "check", host + "/app:1"},
		} {
			r := e.gp(append(args, "--policy", policy, "--insecure-registry", host)...)
			if r.Code != 1 {
				t.Fatalf("%s: exit %d, want 1: %s", args[0], r.Code, r.Stderr)
			}
			assertPrintable(t, args[0]+" stderr", r.Stderr)
			if !strings.Contains(r.Stderr, `\x1b]0;owned\x07`) || !strings.Contains(r.Stderr, "DENIED") {
				t.Errorf("%s: the registry's message is not shown, escaped: %s", args[0], r.Stderr)
			}
			if len(r.Stderr) > 2048 {
				t.Errorf("%s: a %d-byte registry message made a %d-byte error", args[0], len(msg), len(r.Stderr))
			}
		}
	})

	t.Run("blob status line", func(t *testing.T) {
		// The registry's reason phrase is its own text; only the status
		// code is reported.
		src := testutil.BuildImage(t, testutil.ImageSpec{Layers: [][]byte{testutil.Tar(t, testutil.File("f", "x", 0o644))}})
		reg.Push(t, src, "reason/app:1")
		target, _ := url.Parse("http://" + reg.Host)
		rp := httputil.NewSingleHostReverseProxy(target)
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if !strings.Contains(r.URL.Path, "/blobs/") || strings.Contains(r.URL.Path, "config") {
				rp.ServeHTTP(w, r)
				return
			}
			// net/http writes only the code's own text; hijack the
			// connection to send a reason phrase of our choosing.
			conn, buf, err := w.(http.Hijacker).Hijack()
			if err != nil {
				return
			}
			defer conn.Close()
			buf.WriteString("HTTP/1.1 403 " + controlSeq + "Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
			buf.Flush()
		}))
		t.Cleanup(srv.Close)
		host := strings.TrimPrefix(srv.URL, "http://")
		r := e.gp("pull", host+"/reason/app:1", "--quiet", "--policy", policy, "--insecure-registry", host)
		if r.Code == 0 {
			t.Fatalf("pull through a registry that forbids every blob succeeded")
		}
		assertPrintable(t, "pull stderr", r.Stderr)
		if !strings.Contains(r.Stderr, "403 Forbidden") {
			t.Errorf("the status is not reported: %s", r.Stderr)
		}
	})

	t.Run("KBS problem detail", func(t *testing.T) {
		kbs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/problem+json")
			w.WriteHeader(http.StatusUnauthorized)
			w.Write([]byte(`{"type":"https://github.com/confidential-containers/kbs/errors/` + jsonString(controlSeq)[1:] + `,"detail":` +
				jsonString("attestation refused\n"+controlSeq+strings.Repeat("x", 100000)) + `}`))
		}))
		t.Cleanup(kbs.Close)
		r := e.gp("pull", reg.Host+"/never/contacted:1", "--quiet", "--policy", "kbs:///default/policy/1",
			"--kbs", kbs.URL, "--attester", "sample")
		if r.Code != 4 {
			t.Fatalf("exit %d, want 4: %s", r.Code, r.Stderr)
		}
		assertPrintable(t, "pull stderr", r.Stderr)
		if !strings.Contains(r.Stderr, "attestation refused") || len(r.Stderr) > 2048 {
			t.Errorf("the KBS's detail is not shown bounded (%d bytes): %.300s", len(r.Stderr), r.Stderr)
		}
	})

	t.Run("tar entry names", func(t *testing.T) {
		long := strings.Repeat("a", 5000)
		for _, tc := range []struct {
			name  string
			entry string
			code  int
		}{
			// Refused by our own checks: unsafe content.
			{"unsafe", "../" + controlSeq + long + "/planted", 5},
			// Refused by the filesystem (a name longer than NAME_MAX),
			// whose error repeats the path.
			{"too long for the filesystem", "dir/" + controlSeq + long, 1},
		} {
			t.Run(tc.name, func(t *testing.T) {
				src := testutil.BuildImage(t, testutil.ImageSpec{Layers: [][]byte{testutil.Tar(t, testutil.Dir("dir/", 0o755), testutil.File(tc.entry, "x", 0o644))}})
				ref := reg.Push(t, src, "names/app:"+strings.ReplaceAll(tc.name, " ", "-"))
				msg := e.pullFails(tc.code, ref, "--policy", policy, "--insecure-registry", reg.Host)
				assertPrintable(t, "error", msg)
				if !strings.Contains(msg, "(5") || !strings.Contains(msg, "bytes)") {
					t.Errorf("the error does not say the name was shortened: %s", msg)
				}
				if len(msg) > 2048 {
					t.Errorf("a %d-byte entry name made a %d-byte error: %.300s", len(tc.entry), len(msg), msg)
				}
			})
		}
	})
}

// jsonString is s as a JSON string literal: its control characters reach
// the client as JSON escapes, which decode back to the raw bytes.
func jsonString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}
