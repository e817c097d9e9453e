package attest

import (
	"crypto/sha512"
	"encoding/hex"
	"encoding/json"
	"testing"
)

// Vectors from RFC 8785 (section 3.2.2/3.2.3 and appendix B), plus the
// shapes the KBS binding uses.
func TestCanonicalJSON(t *testing.T) {
	tests := []struct{ name, in, want string }{
		{
			"rfc8785 3.2.2",
			`{
			  "numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],
			  "string": "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/",
			  "literals": [null, true, false]
			}`,
			`{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],"string":"€$\u000f\nA'B\"\\\\\"/"}`,
		},
		{
			"rfc8785 3.2.3 sorting by UTF-16 code units",
			`{"\u20ac":"Euro Sign","\r":"Carriage Return","\ufb33":"Hebrew Letter Dalet With Dagesh","1":"One","\ud83d\ude00":"Emoji: Grinning Face","\u0080":"Control","\u00f6":"Latin Small Letter O With Diaeresis"}`,
			"{\"\\r\":\"Carriage Return\",\"1\":\"One\",\"\u0080\":\"Control\",\"\u00f6\":\"Latin Small Letter O With Diaeresis\",\"\u20ac\":\"Euro Sign\",\"\U0001F600\":\"Emoji: Grinning Face\",\"\ufb33\":\"Hebrew Letter Dalet With Dagesh\"}",
		},
		{"rfc8785 B numbers", `[-0, 1e21, 1e20, 9007199254740992, 5e-324, 0.000001, 1e-7, -1.5e-9]`, `[0,1e+21,100000000000000000000,9007199254740992,5e-324,0.000001,1e-7,-1.5e-9]`},
		{"nested objects sorted, whitespace dropped", `{ "b" : {"z":1, "a":[ {"d":2,"c":1} ]}, "a" : "" }`, `{"a":"","b":{"a":[{"c":1,"d":2}],"z":1}}`},
		{"empty containers", `{"x":{},"y":[]}`, `{"x":{},"y":[]}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := canonicalJSON([]byte(tt.in))
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tt.want {
				t.Errorf("got  %s\nwant %s", got, tt.want)
			}
		})
	}
	for _, bad := range []string{`{"a":1`, `{"a":1,"a":2}`, `nul`} {
		if _, err := canonicalJSON([]byte(bad)); err == nil {
			t.Errorf("canonicalJSON(%s) accepted invalid JSON", bad)
		}
	}
}

// TestReportData pins the binding digest to a canonical document written
// out by hand, so a change in member order, escaping or the empty
// additional-evidence shows.
func TestReportData(t *testing.T) {
	jwk := json.RawMessage(`{"kty":"EC","crv":"P-256","alg":"ECDH-ES+A256KW","x":"X0","y":"Y0"}`)
	got, err := reportData(runtimeData{Nonce: "bm9uY2U=", TEEPubKey: jwk})
	if err != nil {
		t.Fatal(err)
	}
	canon := `{"additional-evidence":"","nonce":"bm9uY2U=","tee-pubkey":{"alg":"ECDH-ES+A256KW","crv":"P-256","kty":"EC","x":"X0","y":"Y0"}}`
	want := sha512.Sum384([]byte(canon))
	if hex.EncodeToString(got) != hex.EncodeToString(want[:]) {
		t.Fatalf("reportData = %x, want SHA-384(%s)", got, canon)
	}
	if len(got) != 48 {
		t.Fatalf("len = %d, want 48", len(got))
	}
}
