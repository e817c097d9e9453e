package attest

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"errors"
	"strings"
	"testing"

	"github.com/guest-puller/guest-puller/internal/devkbs/devkbstest"
	"github.com/guest-puller/guest-puller/internal/errdefs"
)

const testInitData = `version = "0.1.0"
algorithm = "sha256"

[data]
"cdh.toml" = '''
socket = "unix:///run/confidential-containers/cdh.sock"
[kbc]
name = "cc_kbc"
url = "http://10.0.2.2:8080"
'''
"policy.rego" = "package agent_policy"
`

func TestParseInitData(t *testing.T) {
	d, err := ParseInitData([]byte(testInitData))
	if err != nil {
		t.Fatal(err)
	}
	if sum := sha256.Sum256([]byte(testInitData)); hex.EncodeToString(d.Digest) != hex.EncodeToString(sum[:]) {
		t.Errorf("digest %x, want the SHA-256 of the document as given", d.Digest)
	}
	if d.Version != "0.1.0" || !strings.Contains(d.Data["cdh.toml"], "cc_kbc") || d.Data["policy.rego"] == "" {
		t.Errorf("parsed %+v", d)
	}
	sha384 := strings.Replace(testInitData, `"sha256"`, `"sha384"`, 1)
	if d, err := ParseInitData([]byte(sha384)); err != nil || len(d.Digest) != 48 {
		t.Errorf("sha384: %v", err)
	} else if sum := sha512.Sum384([]byte(sha384)); hex.EncodeToString(d.Digest) != hex.EncodeToString(sum[:]) {
		t.Errorf("sha384 digest %x", d.Digest)
	}
	for _, bad := range []string{
		strings.Replace(testInitData, `"sha256"`, `"md5"`, 1),
		strings.Replace(testInitData, `version = "0.1.0"`, ``, 1),
		testInitData + "extra = 1\n",
		testInitData + "[data.nested]\nx = 1\n",
		"version = ",
	} {
		if _, err := ParseInitData([]byte(bad)); !errors.Is(err, errdefs.ErrInvalidConfig) {
			t.Errorf("ParseInitData(%q): %v, want a configuration error", bad, err)
		}
	}
}

func TestBindInitDataTPM(t *testing.T) {
	tpm := devkbstest.StartSwtpm(t)
	d, err := ParseInitData([]byte(testInitData))
	if err != nil {
		t.Fatal(err)
	}
	att, err := NewAttester("tpm", AttesterOptions{TPM: tpm.URI, InitData: d})
	if err != nil {
		t.Fatal(err)
	}
	rd := make([]byte, 48)
	rand.Read(rd)
	// Two quotes: the digest is extended once, as Trustee's verifier
	// expects PCR 8 = SHA-256(32 zero bytes || digest).
	for i := 0; i < 2; i++ {
		raw, err := att.Evidence(context.Background(), rd)
		if err != nil {
			t.Fatal(err)
		}
		want := sha256.Sum256(append(make([]byte, 32), d.Digest...))
		if got := pcrread(t, tpm, 8); hex.EncodeToString(got) != hex.EncodeToString(want[:]) {
			t.Fatalf("quote %d: PCR 8 = %x, want %x", i, got, want)
		}
		if ev := decodeTPMEvidence(t, raw); ev.TPMQuote.PCRs[8] != hex.EncodeToString(want[:]) {
			t.Errorf("quote %d reports PCR 8 = %s", i, ev.TPMQuote.PCRs[8])
		}
	}

	// A second attester (a restarted daemon) finds the binding in place.
	again, _ := NewAttester("tpm", AttesterOptions{TPM: tpm.URI, InitData: d})
	if _, err := again.Evidence(context.Background(), rd); err != nil {
		t.Errorf("after a restart: %v", err)
	}
	// Other init-data cannot be bound on top.
	other, _ := ParseInitData([]byte(strings.Replace(testInitData, "10.0.2.2", "10.0.2.3", 1)))
	att2, _ := NewAttester("tpm", AttesterOptions{TPM: tpm.URI, InitData: other})
	if _, err := att2.Evidence(context.Background(), rd); err == nil || !strings.Contains(err.Error(), "PCR 8 already holds") {
		t.Errorf("binding other init-data: %v", err)
	}
	// A TPM extends SHA-256 digests only.
	d384, _ := ParseInitData([]byte(strings.Replace(testInitData, `"sha256"`, `"sha384"`, 1)))
	att3, _ := NewAttester("tpm", AttesterOptions{TPM: tpm.URI, InitData: d384})
	if _, err := att3.Evidence(context.Background(), rd); !errors.Is(err, errdefs.ErrInvalidConfig) {
		t.Errorf("sha384 init-data on a TPM: %v", err)
	}
}

func FuzzParseInitData(f *testing.F) {
	f.Add([]byte(testInitData))
	f.Add([]byte("version = \"0.1.0\"\nalgorithm = \"sha512\"\n[data]\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		d, err := ParseInitData(data)
		if err != nil {
			return
		}
		if len(d.Digest) < 32 || d.Version == "" {
			t.Fatalf("parsed %q into %+v", data, d)
		}
	})
}
