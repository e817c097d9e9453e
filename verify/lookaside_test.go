package verify

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/ProtonMail/go-crypto/openpgp"
	"github.com/ProtonMail/go-crypto/openpgp/packet"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// Lookaside stores are read within bounds (issue 15, item 3): signatures
// are verified as they arrive and dropped, all the signature bytes of an
// image together are bounded, and a store cannot redirect elsewhere.

// signedBlob is an OpenPGP message signed by e: a valid signature of
// content, which is not a simple-signing payload.
func signedBlob(t *testing.T, e *openpgp.Entity, content []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	w, err := openpgp.Sign(&buf, e, nil, &packet.Config{DefaultCompressionAlgo: packet.CompressionNone})
	if err != nil {
		t.Fatal(err)
	}
	w.Write(content)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func testEntity(t *testing.T) (*openpgp.Entity, []byte) {
	t.Helper()
	e, err := openpgp.NewEntity("lookaside", "", "lookaside@example.com", &packet.Config{Algorithm: packet.PubKeyAlgoEdDSA})
	if err != nil {
		t.Fatal(err)
	}
	var pub bytes.Buffer
	if err := e.Serialize(&pub); err != nil {
		t.Fatal(err)
	}
	return e, pub.Bytes()
}

func TestLookasideBounds(t *testing.T) {
	ctx := context.Background()
	e, keyring := testEntity(t)
	target := Target{Identity: mustRef(t, "registry.example.com/app:1"), Digests: []v1.Hash{{Algorithm: "sha256", Hex: strings.Repeat("a", 64)}}}

	// Every signature-N is a valid signature over 900 KB that is no
	// payload: each must be read whole to be checked.
	big := signedBlob(t, e, bytes.Repeat([]byte("x"), 900<<10))
	var requests, sent atomic.Int64
	store := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		n, _ := w.Write(big)
		sent.Add(int64(n))
	}))
	t.Cleanup(store.Close)
	rd := lookasideConfig(t, "default-docker:\n  lookaside: "+store.URL+"\n")

	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	_, err := New(Options{RegistriesD: rd}).Evidence(target).SimpleSigning(ctx, keyring)
	runtime.ReadMemStats(&after)
	if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("exceed %d bytes in all", maxImageSignatures)) {
		t.Fatalf("SimpleSigning: %v, want the image's budget spent", err)
	}
	if n := requests.Load(); n > maxImageSignatures/int64(len(big))+2 {
		t.Errorf("%d signatures requested, with a budget for %d", n, maxImageSignatures/len(big))
	}
	if heap := after.HeapInuse; heap > before.HeapInuse+16<<20 {
		t.Errorf("heap grew by %d MiB reading the store", (heap-before.HeapInuse)>>20)
	}

	t.Run("oversized signature", func(t *testing.T) {
		// signature-1 is a valid signature behind 4 MiB of marker
		// packets, which readers skip: reading it means reading past
		// the per-signature bound.
		marker := []byte{0xc0 | 10, 3, 'P', 'G', 'P'}
		sig := append(bytes.Repeat(marker, maxSignatureSize/len(marker)+1), signedBlob(t, e, []byte("{}"))...)
		huge := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if !strings.HasSuffix(r.URL.Path, "/signature-1") {
				http.NotFound(w, r)
				return
			}
			w.Write(sig)
		}))
		t.Cleanup(huge.Close)
		_, err := New(Options{RegistriesD: lookasideConfig(t, "default-docker:\n  lookaside: "+huge.URL+"\n")}).Evidence(target).SimpleSigning(ctx, keyring)
		if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("signature exceeds %d bytes", maxSignatureSize)) {
			t.Errorf("SimpleSigning: %v, want the per-signature bound", err)
		}
	})

	t.Run("redirects", func(t *testing.T) {
		var elsewhere atomic.Int64
		other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			elsewhere.Add(1)
			http.NotFound(w, r)
		}))
		t.Cleanup(other.Close)
		var tlsStore *httptest.Server
		tlsStore = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			switch {
			case strings.HasPrefix(r.URL.Path, "/same/"):
				http.Redirect(w, r, "/moved/"+strings.TrimPrefix(r.URL.Path, "/same/"), http.StatusFound)
			case strings.HasPrefix(r.URL.Path, "/moved/"):
				http.NotFound(w, r)
			case strings.HasPrefix(r.URL.Path, "/plain/"):
				http.Redirect(w, r, "http://"+r.Host+r.URL.Path, http.StatusFound)
			default:
				http.Redirect(w, r, other.URL+r.URL.Path, http.StatusFound)
			}
		}))
		t.Cleanup(tlsStore.Close)
		for _, tc := range []struct{ path, want string }{
			{"/same", ""},
			{"/plain", "redirect from https to http refused"},
			{"/elsewhere", "redirect to another host"},
		} {
			rd := lookasideConfig(t, "default-docker:\n  lookaside: "+tlsStore.URL+tc.path+"\n")
			_, err := New(Options{RegistriesD: rd, HTTPClient: tlsStore.Client()}).Evidence(target).SimpleSigning(ctx, keyring)
			if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
				t.Errorf("%s: %v, want %q", tc.path, err, tc.want)
			}
		}
		if n := elsewhere.Load(); n != 0 {
			t.Errorf("the other host got %d requests", n)
		}
	})
}
