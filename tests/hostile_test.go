package tests

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
	"unicode"

	"github.com/ProtonMail/go-crypto/openpgp"
	"github.com/ProtonMail/go-crypto/openpgp/packet"
	jose "github.com/go-jose/go-jose/v4"
	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/specs-go"
	ispec "github.com/opencontainers/image-spec/specs-go/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	guestpullerv1 "github.com/guest-puller/guest-puller/api/v1"
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

		// The daemon: its gRPC status, which kata-agent shows, and its
		// log, which the guest's console shows.
		d := startDaemon(t, e, "--policy", policy, "--insecure-registry", host)
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		_, err := guestpullerv1.NewGuestPullerClient(d.client).Pull(ctx, &guestpullerv1.PullRequest{Image: host + "/app:1", ContainerId: "hostile-text"})
		if err == nil {
			t.Fatal("daemon pull from a registry that denies every manifest succeeded")
		}
		st := status.Convert(err)
		assertPrintable(t, "daemon status", st.Message())
		if !strings.Contains(st.Message(), `\x1b]0;owned\x07`) || len(st.Message()) > 2048 {
			t.Errorf("daemon status: the registry's message is not shown escaped and bounded (%d bytes): %.300q", len(st.Message()), st.Message())
		}
		// The daemon logs a failed pull as its reply goes out.
		var logs string
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			if logs = strings.TrimSpace(d.logs.String()); strings.Contains(logs, "DENIED") || time.Now().After(deadline) {
				break
			}
		}
		if !strings.Contains(logs, "DENIED") {
			t.Errorf("the daemon did not log the failure:\n%s", logs)
		}
		for _, line := range strings.Split(logs, "\n") {
			assertPrintable(t, "daemon log line", line)
			if len(line) > 4096 {
				t.Errorf("a daemon log line of %d bytes: %.300q", len(line), line)
			}
		}
	})

	t.Run("signature store error", func(t *testing.T) {
		// The image resolves; the registry fails its cosign attachment
		// tag with a message of its own, which the refusal quotes.
		src := testutil.BuildImage(t, testutil.ImageSpec{Layers: [][]byte{testutil.Tar(t, testutil.File("f", "x", 0o644))}})
		reg.Push(t, src, "sigstore/app:1")
		host := hostileRegistry(t, reg, func(r *http.Request) (int, string, bool) {
			if !strings.HasSuffix(r.URL.Path, ".sig") {
				return 0, "", false
			}
			return http.StatusInternalServerError, `{"errors":[{"code":"UNKNOWN","message":` + jsonString(controlSeq+"signature store down") + `}]}`, true
		})
		k := testutil.ECKey(t, t.TempDir(), "cosign")
		signed := e.write("signed.json", `{"default":[{"type":"sigstoreSigned","keyPath":"`+k.Public+`"}]}`)
		r := e.gp("policy", "check", host+"/sigstore/app:1", "--policy", signed, "--insecure-registry", host)
		if r.Code != 3 {
			t.Fatalf("exit %d, want 3: %s%s", r.Code, r.Stdout, r.Stderr)
		}
		assertPrintable(t, "policy check output", strings.ReplaceAll(r.Stdout, "\n", " "))
		assertPrintable(t, "policy check stderr", r.Stderr)
		if !strings.Contains(r.Stdout, "signature store down") {
			t.Errorf("the signature store's message is not shown: %s", r.Stdout)
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
			// PAX allows names up to 1 MiB.
			{"a PAX name of 1 MiB", "../" + strings.Repeat("b", 1<<20-1024), 5},
		} {
			t.Run(tc.name, func(t *testing.T) {
				src := testutil.BuildImage(t, testutil.ImageSpec{Layers: [][]byte{testutil.Tar(t, testutil.Dir("dir/", 0o755), testutil.File(tc.entry, "x", 0o644))}})
				ref := reg.Push(t, src, "names/app:"+strings.ReplaceAll(tc.name, " ", "-"))
				r := e.gpMeasured("pull", ref, "--quiet", "--policy", policy, "--insecure-registry", reg.Host)
				if r.Code != tc.code {
					t.Fatalf("exit %d, want %d: %.300s", r.Code, tc.code, r.Stderr)
				}
				msg := strings.TrimSpace(r.Stderr)
				assertPrintable(t, "error", msg)
				if !strings.Contains(msg, fmt.Sprintf("(%d bytes)", len(tc.entry))) {
					t.Errorf("the error does not say the name was shortened: %.300s", msg)
				}
				if len(msg) > 2048 {
					t.Errorf("a %d-byte entry name made a %d-byte error: %.300s", len(tc.entry), len(msg), msg)
				}
				assertPeakRSS(t, "pull", r)
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

// memoryBudget is what each hostile input of issue 15 may cost the
// guest-puller process at its peak (resident set), against gigabytes
// before.
const memoryBudget = 128 << 20

// gpMeasured is env.gp that also measures the command's peak RSS.
func (e *env) gpMeasured(args ...string) testutil.Result {
	e.t.Helper()
	return testutil.ExecMeasured(e.t, nil, bins["guest-puller"], e.withCache(args)...)
}

// assertPeakRSS fails the test if the finished command took more than
// memoryBudget of resident memory.
func assertPeakRSS(t *testing.T, what string, r testutil.Result) {
	t.Helper()
	if r.PeakRSS <= 0 {
		t.Fatalf("%s: no peak RSS measured", what)
	}
	t.Logf("%s: peak RSS %s", what, testutil.MiB(r.PeakRSS))
	if r.PeakRSS > memoryBudget {
		t.Errorf("%s: peak RSS %s, more than the %s budget", what, testutil.MiB(r.PeakRSS), testutil.MiB(memoryBudget))
	}
}

// testLayer is a layer as a registry serves it: a blob of a media type,
// with annotations, and the diff_id the image config claims for it.
type testLayer struct {
	blob        []byte
	diffID      string
	mediaType   string
	annotations map[string]string
}

// pushLayers stores an image of layers as repo:tag, blob by blob, and
// returns its reference: images no builder would write.
func pushLayers(t *testing.T, reg *testutil.Registry, repo, tag string, layers ...testLayer) string {
	t.Helper()
	m := ispec.Manifest{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ispec.MediaTypeImageManifest}
	var diffIDs []string
	for _, l := range layers {
		m.Layers = append(m.Layers, ispec.Descriptor{
			MediaType:   l.mediaType,
			Digest:      digest.Digest(reg.UploadBlob(t, repo, l.blob)),
			Size:        int64(len(l.blob)),
			Annotations: l.annotations,
		})
		diffIDs = append(diffIDs, l.diffID)
	}
	cfg, err := json.Marshal(ispec.Image{
		Platform: ispec.Platform{Architecture: runtime.GOARCH, OS: "linux"},
		RootFS:   ispec.RootFS{Type: "layers", DiffIDs: digestsOf(diffIDs)},
	})
	if err != nil {
		t.Fatal(err)
	}
	return pushConfig(t, reg, repo, tag, m, cfg)
}

// pushConfig stores m, with cfg as its configuration blob, as repo:tag
// (m's layers already uploaded), and returns its reference.
func pushConfig(t *testing.T, reg *testutil.Registry, repo, tag string, m ispec.Manifest, cfg []byte) string {
	t.Helper()
	m.Config = ispec.Descriptor{MediaType: ispec.MediaTypeImageConfig, Digest: digest.Digest(reg.UploadBlob(t, repo, cfg)), Size: int64(len(cfg))}
	raw, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	reg.PutManifest(t, repo, tag, ispec.MediaTypeImageManifest, raw)
	return reg.Host + "/" + repo + ":" + tag
}

func digestsOf(s []string) []digest.Digest {
	out := make([]digest.Digest, len(s))
	for i, d := range s {
		out[i] = digest.Digest(d)
	}
	return out
}

// pushEncryptedLayer stores, as repo:tag, an image of one encrypted layer
// whose recipient annotations are ann (with valid public options), and
// returns its reference. The layer blob is a placeholder: a pull must
// refuse the key before fetching it.
func pushEncryptedLayer(t *testing.T, reg *testutil.Registry, repo, tag string, ann map[string]string) string {
	t.Helper()
	pub, _ := json.Marshal(map[string]any{"cipher": "AES_256_CTR_HMAC_SHA256", "hmac": make([]byte, 32)})
	annotations := map[string]string{"org.opencontainers.image.enc.pubopts": base64.StdEncoding.EncodeToString(pub)}
	maps.Copy(annotations, ann)
	return pushLayers(t, reg, repo, tag, testLayer{
		blob:        []byte("placeholder ciphertext"),
		diffID:      fmt.Sprintf("sha256:%x", sha256.Sum256([]byte("placeholder tar"))),
		mediaType:   "application/vnd.oci.image.layer.v1.tar+gzip+encrypted",
		annotations: annotations,
	})
}

// gpgEncryptionKey makes an OpenPGP key with gpg (Ed25519 to sign, an
// X25519 subkey to encrypt) and returns its exported secret keyring, the
// --decryption-key guest-puller takes, and its encryption public key.
func gpgEncryptionKey(t *testing.T) (string, *packet.PublicKey) {
	t.Helper()
	home, err := os.MkdirTemp("", "gpg") // short: gpg-agent's socket path is limited
	if err != nil {
		t.Fatal(err)
	}
	env := []string{"GNUPGHOME=" + home}
	t.Cleanup(func() {
		exec.Command("gpgconf", "--homedir", home, "--kill", "all").Run()
		os.RemoveAll(home)
	})
	const uid = "Bomb Test <bombs@example.com>"
	gpg := func(args ...string) string {
		return testutil.RunEnv(t, env, "gpg", append([]string{"--batch", "--pinentry-mode", "loopback", "--passphrase", ""}, args...)...)
	}
	gpg("--quick-gen-key", uid, "ed25519", "sign", "never")
	var fpr string
	for _, line := range strings.Split(gpg("--with-colons", "--list-keys", uid), "\n") {
		if f := strings.Split(line, ":"); len(f) > 9 && f[0] == "fpr" {
			fpr = f[9]
			break
		}
	}
	gpg("--quick-add-key", fpr, "cv25519", "encr", "never")
	secret := filepath.Join(t.TempDir(), "secret.gpg")
	gpg("--output", secret, "--export-secret-keys", uid)
	pubFile := filepath.Join(t.TempDir(), "public.gpg")
	gpg("--output", pubFile, "--export", uid)
	f, err := os.Open(pubFile)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	el, err := openpgp.ReadKeyRing(f)
	if err != nil || len(el) != 1 {
		t.Fatalf("gpg's public key: %v", err)
	}
	k, ok := el[0].EncryptionKey(time.Now())
	if !ok {
		t.Fatal("gpg's key has no encryption subkey")
	}
	return secret, k.PublicKey
}

// TestKeyUnwrapBombs (issue 15, items 1 and 2): layer annotations that a
// registry serves with an image, crafted to make key unwrap take
// gigabytes, for each of the four recipient types (PGP, PKCS7, JWE, the
// attestation-agent key provider), are refused as "cannot decrypt" (exit 4) by the real binary
// before any layer is fetched, with its peak RSS under memoryBudget.
func TestKeyUnwrapBombs(t *testing.T) {
	reg := testutil.StartRegistry(t, testutil.RegistryOptions{})
	e := newEnv(t)
	policy := e.write("policy.json", acceptAll)
	gpgKey, gpgPub := gpgEncryptionKey(t)
	rsa := testutil.RSAKey(t, t.TempDir(), "rsa", "")
	b64 := base64.StdEncoding.EncodeToString
	const keys = "org.opencontainers.image.enc.keys."

	for _, tc := range []struct {
		name string
		keys []string
		ann  map[string]string
		want string
	}{
		{
			// As reported: 2.7 MB with the guest's public key, 2 GiB
			// inflated, 4.5 GB RSS before.
			name: "pgp: 2 GiB of zeros in one compressed packet",
			keys: []string{gpgKey},
			ann:  map[string]string{keys + "pgp": b64(testutil.PGPBomb(t, gpgPub, 2<<30, 0))},
			want: "wrapped key of",
		},
		{
			name: "pgp: 2 GiB behind three nested compressed packets",
			keys: []string{gpgKey},
			ann:  map[string]string{keys + "pgp": b64(testutil.PGPBomb(t, gpgPub, 2<<30, 3))},
			want: "holds more than",
		},
		{
			name: "pkcs7: 3 MB of indefinite-length BER nested 750,000 deep",
			keys: []string{rsa.Private, rsa.Cert},
			ann:  map[string]string{keys + "pkcs7": b64(testutil.NestedBER(750_000))},
			want: "wrapped key of",
		},
		{
			name: "pkcs7: 60 KB of BER nested 15,000 deep",
			keys: []string{rsa.Private, rsa.Cert},
			ann:  map[string]string{keys + "pkcs7": b64(testutil.NestedBER(15_000))},
			want: "nested more than",
		},
		{
			// go-jose inflates at most ten times the packet (and 250 KB
			// at least); the packet is at most 64 KiB.
			name: "jwe: 32 MiB of zeros in one compressed (zip DEF) packet",
			keys: []string{rsa.Private},
			ann:  map[string]string{keys + "jwe": b64(jweBomb(t, rsa.Public, 32<<20))},
			want: "no key unwraps it",
		},
		{
			name: "jwe: a 2 MB packet",
			keys: []string{rsa.Private},
			ann:  map[string]string{keys + "jwe": b64(bytes.Repeat([]byte("{"), 2<<20))},
			want: "wrapped key of",
		},
		{
			name: "attestation-agent: a 2 MB packet",
			keys: []string{"provider:attestation-agent"},
			ann: map[string]string{keys + "provider.attestation-agent": b64([]byte(`{"kid":"kbs:///default/key/1","wrap_type":"A256GCM","iv":"AAAAAAAAAAAAAAAA","wrapped_data":"` +
				strings.Repeat("A", 2<<20) + `"}`))},
			want: "wrapped key of",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tag := fmt.Sprintf("bomb-%x", sha256.Sum256([]byte(tc.name)))[:20]
			ref := pushEncryptedLayer(t, reg, "bombs/app", tag, tc.ann)
			args := []string{"pull", ref, "--quiet", "--policy", policy, "--insecure-registry", reg.Host}
			for _, k := range tc.keys {
				args = append(args, "--decryption-key", k)
			}
			if tc.keys[0] == "provider:attestation-agent" {
				// Never reached: the packet is refused before its KEK
				// is asked for.
				args = append(args, "--kbs", "http://127.0.0.1:1", "--attester", "sample")
			}
			r := e.gpMeasured(args...)
			if r.Code != 4 {
				t.Fatalf("exit %d, want 4: %s", r.Code, r.Stderr)
			}
			if !strings.Contains(r.Stderr, tc.want) {
				t.Errorf("the error does not say %q: %s", tc.want, r.Stderr)
			}
			assertPeakRSS(t, "pull", r)
		})
	}
}

// jweBomb is a JWE, compressed with DEFLATE ("zip": "DEF"), of size zero
// bytes for the RSA public key in pubPEM: what anyone with the guest's
// public key can write.
func jweBomb(t *testing.T, pubPEM string, size int) []byte {
	t.Helper()
	data, err := os.ReadFile(pubPEM)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(data)
	if block == nil {
		t.Fatalf("%s: no PEM", pubPEM)
	}
	pub, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	enc, err := jose.NewEncrypter(jose.A256GCM, jose.Recipient{Algorithm: jose.RSA_OAEP, Key: pub}, &jose.EncrypterOptions{Compression: jose.DEFLATE})
	if err != nil {
		t.Fatal(err)
	}
	obj, err := enc.Encrypt(make([]byte, size))
	if err != nil {
		t.Fatal(err)
	}
	return []byte(obj.FullSerialize())
}

// TestKeyProviderKEKFiles (issue 15, item 5): `guest-puller keyprovider`
// takes keypath= from whoever runs it. Only a regular file of exactly 32
// bytes is a KEK: /dev/zero is refused at once rather than read until
// memory runs out, a FIFO does not block, and the error says nothing of
// what a file holds or how big it is.
func TestKeyProviderKEKFiles(t *testing.T) {
	dir := t.TempDir()
	shadow := filepath.Join(dir, "shadow")
	if err := os.WriteFile(shadow, []byte(strings.Repeat("root:$y$j9T$salt$hash:19000:0:99999:7:::\n", 17)[:679]), 0o600); err != nil {
		t.Fatal(err)
	}
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	opts := base64.StdEncoding.EncodeToString([]byte(`{"symkey":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","digest":"","cipheroptions":{"nonce":"AAAAAAAAAAAAAAAAAAAAAA=="}}`))
	for name, path := range map[string]string{"/dev/zero": "/dev/zero", "a 679-byte file": shadow, "a FIFO": fifo, "a directory": dir} {
		t.Run(name, func(t *testing.T) {
			param := base64.StdEncoding.EncodeToString([]byte("keypath=" + path + "::keyid=kbs:///default/key/1"))
			req := `{"op":"keywrap","keywrapparams":{"ec":{"Parameters":{"attestation-agent":["` + param + `"]},"DecryptConfig":{"Parameters":{}}},"optsdata":"` + opts + `"}}`
			cmd := exec.Command(bins["guest-puller"], "keyprovider")
			peak := testutil.MeasurePeakRSS(t, cmd)
			cmd.Stdin = strings.NewReader(req)
			var stdout, stderr strings.Builder
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			err := cmd.Run()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != 2 {
				t.Fatalf("keyprovider: %v, want exit 2; stderr: %s", err, stderr.String())
			}
			msg := strings.ReplaceAll(stderr.String(), path, "")
			if !strings.Contains(msg, "want a regular file of exactly 32 bytes") {
				t.Errorf("stderr: %s", stderr.String())
			}
			for _, leak := range []string{"679", "root:"} {
				if strings.Contains(msg, leak) {
					t.Errorf("the error tells %q: %s", leak, stderr.String())
				}
			}
			assertPeakRSS(t, "keyprovider", testutil.Result{PeakRSS: peak()})
		})
	}
}

const zstdLayerType = "application/vnd.oci.image.layer.v1.tar+zstd"

// TestZstdWindows (issue 15, item 4): a registry can serve any zstd layer
// as a frame that asks for a 128 MiB window (zstd --long=27), which the
// decoder would fill and keep per layer. Windows up to 8 MiB (what builders
// write) still pull; larger ones are refused as unsafe content (exit 5)
// at the frame header, one layer or three at once, in bounded memory.
func TestZstdWindows(t *testing.T) {
	reg := testutil.StartRegistry(t, testutil.RegistryOptions{})
	e := newEnv(t)
	policy := e.write("policy.json", acceptAll)
	pull := func(ref string) testutil.Result {
		return e.gpMeasured("pull", ref, "--quiet", "--policy", policy, "--insecure-registry", reg.Host)
	}
	layer := func(name string, size int64, args ...string) testLayer {
		blob, diffID := testutil.ZstdTar(t, name, size, args...)
		return testLayer{blob: blob, diffID: diffID, mediaType: zstdLayerType}
	}

	t.Run("8 MiB windows pull", func(t *testing.T) {
		ref := pushLayers(t, reg, "zstd/ok", "1",
			layer("a", 48<<20, "--long=23"), layer("b", 48<<20, "--long=23"), layer("c", 48<<20, "-19"))
		r := pull(ref)
		if r.Code != 0 {
			t.Fatalf("exit %d: %s", r.Code, r.Stderr)
		}
		assertPeakRSS(t, "pull of three zstd layers with 8 MiB windows", r)
	})
	for _, tc := range []struct {
		name   string
		layers []testLayer
	}{
		{"a 16 MiB window", []testLayer{layer("a", 32<<20, "--long=24")}},
		{"a 128 MiB window over 300 MiB", []testLayer{layer("a", 300<<20, "--long=27")}},
		{"three 128 MiB windows at once", []testLayer{
			layer("a", 200<<20, "--long=27"), layer("b", 200<<20, "--long=27"), layer("c", 200<<20, "--long=27")}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ref := pushLayers(t, reg, "zstd/bomb", strings.ReplaceAll(tc.name, " ", "-"), tc.layers...)
			r := pull(ref)
			if r.Code != 5 {
				t.Fatalf("exit %d, want 5: %s", r.Code, r.Stderr)
			}
			if !strings.Contains(r.Stderr, "needs a window larger than 8 MiB") {
				t.Errorf("stderr: %s", r.Stderr)
			}
			assertPeakRSS(t, "pull", r)
			if l := e.cacheLs(); len(l.Layers) != 3 {
				t.Errorf("cache holds %d layers after the refusal, want the 3 of the first image", len(l.Layers))
			}
		})
	}
}

// daemonBudget is the peak RSS the daemon may reach serving eight
// concurrent pulls of zstd layers that each ask for the largest window
// allowed: the decoders of all requests share MaxConcurrentDownloads
// slots, so N pulls cannot multiply it.
const daemonBudget = 128 << 20

// TestDaemonZstdBombs (issue 15, item 4): eight concurrent requests to the
// real `guest-puller serve`, each for an image of three zstd layers at the
// largest window allowed, filled, plus one that asks for 128 MiB windows:
// the genuine ones are pulled, the bomb refused, and the daemon's peak RSS
// stays under daemonBudget.
func TestDaemonZstdBombs(t *testing.T) {
	reg := testutil.StartRegistry(t, testutil.RegistryOptions{})
	e := newEnv(t)
	policy := e.write("policy.json", acceptAll)
	var refs []string
	for i := range 7 {
		var layers []testLayer
		for j := range 3 {
			blob, diffID := testutil.ZstdTar(t, fmt.Sprintf("image-%d-layer-%d", i, j), 24<<20, "--long=23")
			layers = append(layers, testLayer{blob: blob, diffID: diffID, mediaType: zstdLayerType})
		}
		refs = append(refs, pushLayers(t, reg, fmt.Sprintf("daemon-zstd/app-%d", i), "1", layers...))
	}
	var bomb []testLayer
	for j := range 3 {
		blob, diffID := testutil.ZstdTar(t, fmt.Sprintf("bomb-%d", j), 200<<20, "--long=27")
		bomb = append(bomb, testLayer{blob: blob, diffID: diffID, mediaType: zstdLayerType})
	}
	refs = append(refs, pushLayers(t, reg, "daemon-zstd/bomb", "1", bomb...))

	d := startDaemon(t, e, "--policy", policy, "--insecure-registry", reg.Host)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	native := guestpullerv1.NewGuestPullerClient(d.client)
	errs := make([]error, len(refs))
	var wg sync.WaitGroup
	for i, ref := range refs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = native.Pull(ctx, &guestpullerv1.PullRequest{Image: ref, ContainerId: fmt.Sprintf("zstd-%d", i)})
		}()
	}
	wg.Wait()
	for i, err := range errs[:len(refs)-1] {
		if err != nil {
			t.Errorf("pull %d: %v", i, err)
		}
	}
	if err := errs[len(refs)-1]; status.Code(err) != codes.DataLoss || !strings.Contains(err.Error(), "needs a window larger than") {
		t.Errorf("pull of the 128 MiB windows: %v, want DataLoss naming the window", err)
	}
	hwm := vmHWM(t, d.cmd.Process.Pid)
	t.Logf("daemon peak RSS after %d concurrent pulls: %s", len(refs), testutil.MiB(hwm))
	if hwm > daemonBudget {
		t.Errorf("daemon peak RSS %s, more than the %s budget", testutil.MiB(hwm), testutil.MiB(daemonBudget))
	}
	for _, line := range strings.Split(strings.TrimSpace(d.logs.String()), "\n") {
		assertPrintable(t, "daemon log line", line)
	}
}

// vmHWM is the peak resident set size of a running process, in bytes.
func vmHWM(t *testing.T, pid int) int64 {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			var kb int64
			if _, err := fmt.Sscanf(strings.TrimSpace(v), "%d kB", &kb); err != nil {
				t.Fatalf("VmHWM %q: %v", v, err)
			}
			return kb << 10
		}
	}
	t.Fatal("no VmHWM in /proc/PID/status")
	return 0
}

// TestEncryptedOnlyNote (issue 15, item 7): `policy check` says what a
// scope that requires encryption but no signature does not prove, and
// does not say it of the confidential cell [sigstoreSigned, encrypted].
func TestEncryptedOnlyNote(t *testing.T) {
	reg := testutil.StartRegistry(t, testutil.RegistryOptions{})
	e := newEnv(t)
	src := testutil.BuildImage(t, testutil.ImageSpec{Layers: [][]byte{testutil.Tar(t, testutil.File("f", "x", 0o644))}})
	reg.Push(t, src, "enc-only/app:1")
	reg.Push(t, src, "confidential/app:1")
	k := testutil.ECKey(t, t.TempDir(), "cosign")
	policy := e.write("policy.json", `{"default":[{"type":"reject"}],"transports":{"docker":{
		"`+reg.Host+`/enc-only":[{"type":"encrypted"}],
		"`+reg.Host+`/confidential":[{"type":"sigstoreSigned","keyPath":"`+k.Public+`"},{"type":"encrypted"}]}}}`)
	check := func(repo string, extra ...string) testutil.Result {
		r := e.gp(append([]string{"policy", "check", reg.Host + "/" + repo + "/app:1", "--policy", policy, "--insecure-registry", reg.Host}, extra...)...)
		if r.Code != 3 {
			t.Fatalf("policy check %s: exit %d, want 3 (a plain unsigned image): %s%s", repo, r.Code, r.Stdout, r.Stderr)
		}
		return r
	}
	const note = "note: this scope requires encrypted layers but no signature"
	if r := check("enc-only"); !strings.Contains(r.Stdout, note) || !strings.Contains(r.Stdout, "[sigstoreSigned, encrypted]") {
		t.Errorf("encrypted-only scope: no note:\n%s", r.Stdout)
	}
	var out struct{ Notes []string }
	if r := check("enc-only", "--json"); json.Unmarshal([]byte(r.Stdout), &out) != nil || len(out.Notes) != 1 {
		t.Errorf("policy check --json: notes %q in:\n%s", out.Notes, r.Stdout)
	}
	if r := check("confidential"); strings.Contains(r.Stdout, "note:") {
		t.Errorf("[sigstoreSigned, encrypted] scope has a note:\n%s", r.Stdout)
	}
}

// TestLookasideFlood (issue 15, item 3): a lookaside store that answers
// every signature-N with 4 MiB made `policy check` hold 128 of them
// (714 MiB) before verifying any. Signatures are now verified one at a
// time as they arrive and dropped, and an image's signatures are read
// within 8 MiB in all: the check is refused (exit 3) in bounded memory.
func TestLookasideFlood(t *testing.T) {
	reg := testutil.StartRegistry(t, testutil.RegistryOptions{})
	e := newEnv(t)
	src := testutil.BuildImage(t, testutil.ImageSpec{Layers: [][]byte{testutil.Tar(t, testutil.File("f", "x", 0o644))}})
	ref := reg.Push(t, src, "lookaside/app:1")
	gpg := testutil.NewGPGKey(t, "Lookaside Signer <signer@example.com>")
	policy := e.write("policy.json", `{"default":[{"type":"signedBy","keyType":"GPGKeys","keyPath":"`+gpg.Pub+`"}]}`)

	// A signature that must be read whole to be checked: gpg's, by the
	// policy's key, over 900 KB that are no simple-signing payload.
	content := filepath.Join(t.TempDir(), "content")
	if err := os.WriteFile(content, bytes.Repeat([]byte("z"), 900<<10), 0o644); err != nil {
		t.Fatal(err)
	}
	testutil.RunEnv(t, []string{"GNUPGHOME=" + gpg.Home}, "gpg", "--batch", "--compress-algo", "none",
		"--local-user", gpg.Fingerprint, "--output", content+".sig", "--sign", content)
	signed, err := os.ReadFile(content + ".sig")
	if err != nil {
		t.Fatal(err)
	}
	junk := bytes.Repeat([]byte{0xa5}, 4<<20)

	for _, tc := range []struct {
		name        string
		body        []byte
		want        string
		maxRequests int64
	}{
		// Junk is refused at its first bytes: 128 requests, a few bytes
		// read of each.
		{"4 MiB of junk for every signature", junk, "more than 128 signatures", 128},
		// A signature by the policy's key is read whole: 8 MiB of them.
		{"a 900 KB signature for every signature", signed, "exceed 8388608 bytes in all", 10},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var requests atomic.Int64
			store := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				requests.Add(1)
				w.Write(tc.body)
			}))
			t.Cleanup(store.Close)
			regD := filepath.Join(t.TempDir(), "registries.d")
			if err := os.MkdirAll(regD, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(regD, "lookaside.yaml"), []byte("default-docker:\n  lookaside: "+store.URL+"\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			r := e.gpMeasured("policy", "check", ref, "--policy", policy, "--insecure-registry", reg.Host, "--registries-d", regD)
			if r.Code != 3 {
				t.Fatalf("exit %d, want 3: %s%s", r.Code, r.Stdout, r.Stderr)
			}
			if !strings.Contains(r.Stdout+r.Stderr, tc.want) {
				t.Errorf("the refusal does not say %q:\n%s%s", tc.want, r.Stdout, r.Stderr)
			}
			if n := requests.Load(); n > tc.maxRequests {
				t.Errorf("%d signatures requested, want at most %d", n, tc.maxRequests)
			}
			assertPeakRSS(t, "policy check", r)
		})
	}
}
