package devkbs

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"strings"
	"testing"

	"github.com/guest-puller/guest-puller/attest"
	"github.com/guest-puller/guest-puller/internal/devkbs/devkbstest"
)

// tpmQuote returns real evidence from swtpm bound to reportData, and the
// trusted-AK set holding that TPM's AK.
func tpmQuote(t *testing.T, uri string, reportData []byte) (map[string]any, map[[sha256.Size]byte]bool) {
	t.Helper()
	a, err := attest.NewAttester("tpm", attest.AttesterOptions{TPM: uri})
	if err != nil {
		t.Fatal(err)
	}
	raw, err := a.Evidence(context.Background(), reportData)
	if err != nil {
		t.Fatal(err)
	}
	var ev map[string]any
	if err := json.Unmarshal(raw, &ev); err != nil {
		t.Fatal(err)
	}
	der, _ := base64.StdEncoding.DecodeString(ev["ak_public"].(string))
	return ev, map[[sha256.Size]byte]bool{sha256.Sum256(der): true}
}

func TestVerifyTPM(t *testing.T) {
	tpm := devkbstest.StartSwtpm(t)
	rd := make([]byte, 48)
	rand.Read(rd)
	good, trusted := tpmQuote(t, tpm.URI, rd)
	pcrs := good["tpm_quote"].(map[string]any)["pcrs"].([]any)
	pcr7, _ := hex.DecodeString(pcrs[7].(string))
	pcr17, _ := hex.DecodeString(pcrs[17].(string))

	clone := func(mut func(ev map[string]any, q map[string]any)) json.RawMessage {
		b, _ := json.Marshal(good)
		var ev map[string]any
		json.Unmarshal(b, &ev)
		if mut != nil {
			mut(ev, ev["tpm_quote"].(map[string]any))
		}
		out, _ := json.Marshal(ev)
		return out
	}
	flipB64 := func(s string, i int) string {
		b, _ := base64.StdEncoding.DecodeString(s)
		b[i%len(b)] ^= 1
		return base64.StdEncoding.EncodeToString(b)
	}
	otherRD := append([]byte(nil), rd...)
	otherRD[0] ^= 1

	tests := []struct {
		name     string
		evidence json.RawMessage
		expected []byte
		trusted  map[[sha256.Size]byte]bool
		ref      PCRReference
		want     string // "" = accepted
	}{
		{"genuine quote", clone(nil), rd, trusted, nil, ""},
		{"genuine quote within the reference set", clone(nil), rd, trusted,
			PCRReference{7: {make([]byte, 32), pcr7}, 17: {pcr17}}, ""},
		{"PCR outside the reference set", clone(nil), rd, trusted,
			PCRReference{7: {make([]byte, 31)}}, "PCR 7 value"},
		{"unregistered AK", clone(nil), rd, map[[sha256.Size]byte]bool{}, nil, "not registered"},
		{"evidence bound to other runtime data", clone(nil), otherRD, trusted, nil, "extraData does not bind"},
		{"report data beyond the first 32 bytes is not quoted", clone(nil), append(append([]byte(nil), rd[:32]...), make([]byte, 16)...), trusted, nil, ""},
		{"tampered signature", clone(func(_, q map[string]any) { q["signature"] = flipB64(q["signature"].(string), 100) }), rd, trusted, nil, "signature does not verify"},
		{"tampered message", clone(func(_, q map[string]any) { q["message"] = flipB64(q["message"].(string), 40) }), rd, trusted, nil, "signature does not verify"},
		{"reported PCR changed", clone(func(_, q map[string]any) { q["pcrs"].([]any)[3] = strings.Repeat("ab", 32) }), rd, trusted, nil, "do not match the quote's PCR digest"},
		{"23 PCRs", clone(func(_, q map[string]any) { q["pcrs"] = q["pcrs"].([]any)[:23] }), rd, trusted, nil, "want 24"},
		{"PCR not hex", clone(func(_, q map[string]any) { q["pcrs"].([]any)[0] = "zz" }), rd, trusted, nil, "not a hex SHA-256"},
		{"unknown member", clone(func(ev, _ map[string]any) { ev["report_data"] = "x" }), rd, trusted, nil, "malformed evidence"},
		{"ak_public not base64", clone(func(ev, _ map[string]any) { ev["ak_public"] = "%%%" }), rd, trusted, nil, "not base64"},
		{"not JSON", json.RawMessage(`"quote"`), rd, trusted, nil, "malformed evidence"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := verifyTPM(tt.evidence, tt.expected, tt.trusted, tt.ref)
			if tt.want == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want %q", err, tt.want)
			}
		})
	}
}

func TestVerifySample(t *testing.T) {
	rd := make([]byte, 48)
	rand.Read(rd)
	ev := func(s string) json.RawMessage {
		return json.RawMessage(`{"svn":"1","report_data":"` + s + `"}`)
	}
	tests := []struct {
		name string
		ev   json.RawMessage
		ok   bool
	}{
		{"bound", ev(base64.StdEncoding.EncodeToString(rd)), true},
		{"other report data", ev(base64.StdEncoding.EncodeToString(rd[1:])), false},
		{"not base64", ev("!!"), false},
		{"unknown member", json.RawMessage(`{"svn":"1","report_data":"","x":1}`), false},
	}
	for _, tt := range tests {
		if err := verifySample(tt.ev, rd); (err == nil) != tt.ok {
			t.Errorf("%s: err = %v, want ok=%v", tt.name, err, tt.ok)
		}
	}
}
