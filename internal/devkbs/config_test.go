package devkbs

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func writeTemp(t *testing.T, data string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "f")
	os.WriteFile(p, []byte(data), 0o600)
	return p
}

func TestLoadPCRReference(t *testing.T) {
	h := strings.Repeat("ab", 32)
	tests := []struct {
		in     string
		counts map[int]int // allowed values per PCR
		err    string
	}{
		{`{"0":["` + h + `"],"23":["` + h + `","` + strings.ToUpper(h) + `"]}`, map[int]int{0: 1, 23: 2}, ""},
		{`{}`, map[int]int{}, ""},
		{`{"24":["` + h + `"]}`, nil, "not a PCR index"},
		{`{"07":["` + h + `"]}`, nil, "not a PCR index"},
		{`{"x":["` + h + `"]}`, nil, "not a PCR index"},
		{`{"1":[]}`, nil, "allows no value"},
		{`{"1":["abcd"]}`, nil, "not a hex SHA-256"},
		{`{"1":"` + h + `"}`, nil, "cannot unmarshal"},
		{`[`, nil, "unexpected"},
	}
	for _, tt := range tests {
		ref, err := LoadPCRReference(writeTemp(t, tt.in))
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("%s: err = %v, want %q", tt.in, err, tt.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", tt.in, err)
			continue
		}
		if len(ref) != len(tt.counts) {
			t.Errorf("%s: %d PCRs constrained, want %d", tt.in, len(ref), len(tt.counts))
		}
		for idx, n := range tt.counts {
			if len(ref[idx]) != n {
				t.Errorf("%s: PCR %d allows %d values, want %d", tt.in, idx, len(ref[idx]), n)
			}
		}
	}
	if _, err := LoadPCRReference(filepath.Join(t.TempDir(), "absent")); err == nil {
		t.Error("missing file accepted")
	}
}

func TestRules(t *testing.T) {
	r, err := LoadRules(writeTemp(t, `{"rules":[
		{"tee":["tpm"],"resources":["default/key/*"]},
		{"tee":["*"],"resources":["default/policy/p", "public/*/*"]}]}`))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		tee, resource string
		ok            bool
	}{
		{"tpm", "default/key/1", true},
		{"sample", "default/key/1", false},
		{"sample", "default/policy/p", true},
		{"tpm", "default/policy/q", false},
		{"snp", "public/a/b", true},
		{"tpm", "other/key/1", false},
	}
	for _, tt := range tests {
		if got := r.Allows(tt.tee, tt.resource); got != tt.ok {
			t.Errorf("Allows(%s, %s) = %v, want %v", tt.tee, tt.resource, got, tt.ok)
		}
	}
	bad := []struct{ in, err string }{
		{`{"rules":[{"tee":["tpm"],"resources":["["]}]}`, "syntax error in pattern"},
		{`{"rules":[{"tee":["tpm"],"resources":["a/b/c"],"pcrs":{}}]}`, "unknown field"},
		{`{"rules":[{"tee":[],"resources":["a/b/c"]}]}`, "needs tee and resources"},
		{`{"rule":[]}`, "unknown field"},
		{`{}`, "no \"rules\" list"},
	}
	for _, tt := range bad {
		if _, err := LoadRules(writeTemp(t, tt.in)); err == nil || !strings.Contains(err.Error(), tt.err) {
			t.Errorf("LoadRules(%s) err = %v, want %q", tt.in, err, tt.err)
		}
	}
	// An empty list is explicit: nothing is readable.
	none, err := LoadRules(writeTemp(t, `{"rules":[]}`))
	if err != nil || none.Allows("tpm", "default/key/1") {
		t.Errorf("empty rules: %v", err)
	}
}

func TestLoadAK(t *testing.T) {
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := x509.MarshalPKIXPublicKey(&k.PublicKey)
	pub := string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
	got, err := LoadAK(writeTemp(t, pub))
	if err != nil || string(got) != string(der) {
		t.Fatalf("LoadAK = %v", err)
	}
	for name, in := range map[string]string{
		"two blocks":  pub + pub,
		"private key": string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})),
		"not a key":   string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: []byte("x")})),
		"not PEM":     "hello",
	} {
		if _, err := LoadAK(writeTemp(t, in)); err == nil {
			t.Errorf("%s accepted", name)
		}
	}
}
