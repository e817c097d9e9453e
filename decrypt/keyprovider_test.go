package decrypt

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/guest-puller/guest-puller/internal/errdefs"
)

// wrapRequest is what ocicrypt sends for
// --encryption-key provider:attestation-agent:PARAM (one per PARAM).
func wrapRequest(optsData []byte, params ...string) string {
	ps := make([][]byte, len(params))
	for i, p := range params {
		ps[i] = []byte(p)
	}
	return string(must(json.Marshal(map[string]any{
		"op": "keywrap",
		"keywrapparams": map[string]any{
			"ec":       map[string]any{"Parameters": map[string][][]byte{aaProvider: ps}, "DecryptConfig": map[string]any{"Parameters": map[string][][]byte{}}},
			"optsdata": optsData,
		},
		"keyunwrapparams": map[string]any{"dc": nil, "annotation": nil},
	})))
}

// unwrapRequest is what ocicrypt sends to unwrap one packet.
func unwrapRequest(packet []byte, params ...string) string {
	ps := make([][]byte, len(params))
	for i, p := range params {
		ps[i] = []byte(p)
	}
	return string(must(json.Marshal(map[string]any{
		"op":              "keyunwrap",
		"keywrapparams":   map[string]any{"ec": nil, "optsdata": nil},
		"keyunwrapparams": map[string]any{"dc": map[string]any{"Parameters": map[string][][]byte{aaProvider: ps}}, "annotation": packet},
	})))
}

func TestServeKeyProvider(t *testing.T) {
	const kid = "kbs:///default/key/1"
	kek, kekPath := newKEK(t)
	otherKEK, otherPath := newKEK(t)
	short := filepath.Join(t.TempDir(), "short-kek")
	if err := os.WriteFile(short, kek[:31], 0o600); err != nil {
		t.Fatal(err)
	}
	optsData := []byte(`{"symkey":"c3ltbWV0cmljIGtleSBvZiB0aGlydHktdHdvIGJ5dGVzIQ==","digest":"sha256:0000000000000000000000000000000000000000000000000000000000000000","cipheroptions":{"nonce":"AAAAAAAAAAAAAAAAAAAAAA=="}}`)
	packet := must(sealAAPacket(kid, kek, make([]byte, 12), optsData))
	ctx := context.Background()

	tests := []struct {
		name      string
		req       string
		resources ResourceGetter
		want      error // nil: success
		wantMsg   string
	}{
		{name: "wrap", req: wrapRequest(optsData, "keypath="+kekPath+"::keyid="+kid)},
		{name: "wrap, explicit defaults", req: wrapRequest(optsData, "keyid="+kid+"::keypath="+kekPath+"::algorithm=A256GCM::sample=false")},
		{name: "wrap, kid with KBS host", req: wrapRequest(optsData, "keypath="+kekPath+"::keyid=kbs://kbs.example:8080/default/key/1")},
		{name: "wrap without keypath", req: wrapRequest(optsData, "keyid="+kid), want: errdefs.ErrInvalidConfig, wantMsg: "needs keypath="},
		{name: "wrap without keyid", req: wrapRequest(optsData, "keypath="+kekPath), want: errdefs.ErrInvalidConfig, wantMsg: "needs keypath="},
		{name: "wrap, bare provider", req: wrapRequest(optsData, "Enabled"), want: errdefs.ErrInvalidConfig, wantMsg: "needs keypath="},
		{name: "wrap, two recipients", req: wrapRequest(optsData, "keypath="+kekPath+"::keyid="+kid, "keypath="+otherPath+"::keyid=kbs:///default/key/2"), want: errdefs.ErrInvalidConfig, wantMsg: "want one attestation-agent recipient, got 2"},
		{name: "wrap, no recipient", req: wrapRequest(optsData), want: errdefs.ErrInvalidConfig, wantMsg: "got 0"},
		{name: "wrap, unknown parameter", req: wrapRequest(optsData, "keypath="+kekPath+"::keyid="+kid+"::kbs=http://x"), want: errdefs.ErrInvalidConfig, wantMsg: `unknown attestation-agent parameter "kbs"`},
		{name: "wrap, not key=value", req: wrapRequest(optsData, "keypath="+kekPath+"::"+kid), want: errdefs.ErrInvalidConfig, wantMsg: "is not key=value"},
		{name: "wrap, A256CTR", req: wrapRequest(optsData, "keypath="+kekPath+"::keyid="+kid+"::algorithm=A256CTR"), want: errdefs.ErrInvalidConfig, wantMsg: "not supported"},
		{name: "wrap, sample key", req: wrapRequest(optsData, "sample=true"), want: errdefs.ErrInvalidConfig, wantMsg: "sample"},
		{name: "wrap, keyid not a resource", req: wrapRequest(optsData, "keypath="+kekPath+"::keyid=default/key/1"), want: errdefs.ErrInvalidConfig, wantMsg: "is not a kbs://"},
		{name: "wrap, KEK too short", req: wrapRequest(optsData, "keypath="+short+"::keyid="+kid), want: errdefs.ErrInvalidConfig, wantMsg: "want a regular file of exactly 32 bytes"},
		{name: "wrap, KEK missing", req: wrapRequest(optsData, "keypath="+short+".nope::keyid="+kid), want: errdefs.ErrInvalidConfig, wantMsg: "no such file"},
		{name: "wrap, no optsdata", req: wrapRequest(nil, "keypath="+kekPath+"::keyid="+kid), want: errdefs.ErrInvalidConfig, wantMsg: "no ec or optsdata"},
		{name: "unwrap with keypath", req: unwrapRequest(packet, "keypath="+kekPath)},
		{name: "unwrap, second KEK opens", req: unwrapRequest(packet, "keypath="+otherPath, "keypath="+kekPath)},
		{name: "unwrap with matching keyid", req: unwrapRequest(packet, "keypath="+kekPath+"::keyid=kbs://other-host/default/key/1")},
		{name: "unwrap from the KBS", req: unwrapRequest(packet, "Enabled"), resources: &mapGetter{resources: map[string][]byte{kid: kek}}},
		{name: "unwrap from the KBS, no parameters", req: unwrapRequest(packet), resources: &mapGetter{resources: map[string][]byte{kid: kek}}},
		{name: "unwrap, wrong KEK", req: unwrapRequest(packet, "keypath="+otherPath), want: errdefs.ErrDecrypt, wantMsg: "does not open"},
		{name: "unwrap, keyid of another kid", req: unwrapRequest(packet, "keypath="+kekPath+"::keyid=kbs:///default/key/2"), want: errdefs.ErrDecrypt, wantMsg: "does not name kid"},
		{name: "unwrap, no KEK source", req: unwrapRequest(packet), want: errdefs.ErrDecrypt, wantMsg: "give keypath="},
		{name: "unwrap, KBS refuses", req: unwrapRequest(packet), resources: &mapGetter{}, want: errdefs.ErrDecrypt, wantMsg: "not found"},
		{name: "unwrap, not a packet", req: unwrapRequest([]byte(`{"kid":"kbs:///a/b/c"}`), "keypath="+kekPath), want: errdefs.ErrDecrypt, wantMsg: "unsupported wrap_type"},
		{name: "unknown op", req: `{"op":"keyrotate"}`, want: errdefs.ErrInvalidConfig, wantMsg: `unknown op "keyrotate"`},
		{name: "unknown request field", req: `{"op":"keywrap","keywrapparams":{"ec":null,"optsdata":null},"extra":1}`, want: errdefs.ErrInvalidConfig, wantMsg: "malformed JSON"},
		{name: "not JSON", req: `op=keywrap`, want: errdefs.ErrInvalidConfig, wantMsg: "malformed JSON"},
		{name: "oversized", req: `{"op":"keywrap","x":"` + strings.Repeat("a", maxKeyProviderInput) + `"}`, want: errdefs.ErrInvalidConfig, wantMsg: "larger than"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			err := ServeKeyProvider(ctx, strings.NewReader(tc.req), &out, KeyProviderOptions{Resources: tc.resources})
			if tc.want != nil {
				if !errors.Is(err, tc.want) {
					t.Fatalf("error %v, want %v", err, tc.want)
				}
				if !strings.Contains(err.Error(), tc.wantMsg) {
					t.Errorf("error %q does not say %q", err, tc.wantMsg)
				}
				if strings.Contains(err.Error(), "\n") {
					t.Errorf("error spans lines: %q", err)
				}
				if out.Len() != 0 {
					t.Errorf("wrote %q on failure", out.String())
				}
				return
			}
			if err != nil {
				t.Fatalf("ServeKeyProvider: %v", err)
			}
			var resp map[string]map[string][]byte
			if err := json.Unmarshal(out.Bytes(), &resp); err != nil {
				t.Fatalf("response %s: %v", out.Bytes(), err)
			}
			if len(resp) != 1 {
				t.Errorf("response %s has more than the result", out.Bytes())
			}
			if res, ok := resp["keywrapresults"]; ok {
				// The annotation is a packet the decrypt side opens.
				p, err := parseAAPacket(res["annotation"])
				if err != nil {
					t.Fatalf("wrapped packet %s: %v", res["annotation"], err)
				}
				got, err := p.open(kek)
				if err != nil || !bytes.Equal(got, optsData) {
					t.Fatalf("wrapped packet opens to %q, %v", got, err)
				}
				if _, err := p.open(otherKEK); err == nil {
					t.Error("wrapped packet opens with another KEK")
				}
				return
			}
			if got := resp["keyunwrapresults"]["optsdata"]; !bytes.Equal(got, optsData) {
				t.Errorf("unwrapped %q, want %q", got, optsData)
			}
		})
	}
}

// TestKeyProviderIVs checks that each wrap draws a fresh IV: GCM under one
// KEK must never reuse one.
func TestKeyProviderIVs(t *testing.T) {
	_, kekPath := newKEK(t)
	seen := map[string]bool{}
	for range 20 {
		var out bytes.Buffer
		if err := ServeKeyProvider(context.Background(), strings.NewReader(wrapRequest([]byte("{}"), "keypath="+kekPath+"::keyid=kbs:///a/b/c")), &out, KeyProviderOptions{}); err != nil {
			t.Fatal(err)
		}
		var resp struct {
			R struct{ Annotation []byte } `json:"keywrapresults"`
		}
		if err := json.Unmarshal(out.Bytes(), &resp); err != nil {
			t.Fatal(err)
		}
		var p aaPacket
		if err := json.Unmarshal(resp.R.Annotation, &p); err != nil {
			t.Fatal(err)
		}
		if iv, _ := base64.StdEncoding.DecodeString(p.IV); len(iv) != 12 || seen[p.IV] {
			t.Fatalf("IV %q reused or not 12 bytes", p.IV)
		}
		seen[p.IV] = true
	}
}

func TestResourceURI(t *testing.T) {
	tests := []struct{ kid, want string }{
		{"kbs:///default/key/1", "kbs:///default/key/1"},
		{"kbs://kbs.example.com/default/key/1", "kbs:///default/key/1"},
		{"kbs://10.0.0.1:8080/repo/type/tag", "kbs:///repo/type/tag"},
		{"kbs:///default/key", ""},
		{"kbs:///default/key/1/2", ""},
		{"kbs:///default//1", ""},
		{"kbs:///default/../1", ""},
		{"kbs:///default/key/1?version=2", ""},
		{"kbs:default/key/1", ""},
		{"kbs+pkcs11:///default/key/1", ""},
		{"https://kbs/default/key/1", ""},
		{"/default/key/1", ""},
		{"", ""},
	}
	for _, tc := range tests {
		got, err := resourceURI(tc.kid)
		if tc.want == "" {
			if err == nil {
				t.Errorf("resourceURI(%q) = %q, want an error", tc.kid, got)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("resourceURI(%q) = %q, %v; want %q", tc.kid, got, err, tc.want)
		}
	}
}

// TestReadKEK: keypath= names whatever the caller of the key provider
// likes (issue 15, item 5). Only a regular file of exactly 32 bytes is
// read; anything else is refused at once, and the refusal says nothing of
// what the file holds or how big it is.
func TestReadKEK(t *testing.T) {
	dir := t.TempDir()
	kek, good := newKEK(t)
	shadow := filepath.Join(dir, "shadow")
	if err := os.WriteFile(shadow, bytes.Repeat([]byte("root:$6$salt$hash:19000:0:99999:7:::\n"), 19)[:679], 0o600); err != nil {
		t.Fatal(err)
	}
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	long := filepath.Join(dir, "kek-and-more")
	if err := os.WriteFile(long, append(kek, '\n'), 0o600); err != nil {
		t.Fatal(err)
	}
	if got, err := readKEK(good); err != nil || !bytes.Equal(got, kek) {
		t.Fatalf("readKEK(a 32-byte file) = %x, %v", got, err)
	}
	for name, path := range map[string]string{
		"/dev/zero":       "/dev/zero",
		"a FIFO":          fifo,
		"a directory":     dir,
		"a 679-byte file": shadow,
		"33 bytes":        long,
		"a symlink to a 679-byte file": func() string {
			l := filepath.Join(dir, "link")
			if err := os.Symlink(shadow, l); err != nil {
				t.Fatal(err)
			}
			return l
		}(),
	} {
		got, err := readKEK(path)
		if err == nil {
			t.Errorf("%s: read as a KEK: %x", name, got)
			continue
		}
		if !errors.Is(err, errdefs.ErrInvalidConfig) || !strings.Contains(err.Error(), "want a regular file of exactly 32 bytes") {
			t.Errorf("%s: %v", name, err)
		}
		for _, leak := range []string{"679", "33", "root:"} {
			if strings.Contains(strings.ReplaceAll(err.Error(), path, ""), leak) {
				t.Errorf("%s: the error tells %q: %v", name, leak, err)
			}
		}
	}
}
