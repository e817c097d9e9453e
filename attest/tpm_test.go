package attest

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/guest-puller/guest-puller/internal/devkbs/devkbstest"
)

func tpmEvidenceFor(t *testing.T, uri string, reportData []byte) tpmEvidence {
	t.Helper()
	att, err := NewAttester("tpm", AttesterOptions{TPM: uri})
	if err != nil {
		t.Fatal(err)
	}
	if att.TEE() != "tpm" {
		t.Fatalf("TEE() = %q, want tpm", att.TEE())
	}
	raw, err := att.Evidence(context.Background(), reportData)
	if err != nil {
		t.Fatalf("Evidence: %v", err)
	}
	// Trustee's verifier reads exactly these members; nothing else is sent.
	var shape map[string]json.RawMessage
	if err := json.Unmarshal(raw, &shape); err != nil {
		t.Fatal(err)
	}
	if len(shape) != 2 || shape["tpm_quote"] == nil || shape["ak_public"] == nil {
		t.Fatalf("evidence members: %s", raw)
	}
	var quote map[string]json.RawMessage
	if err := json.Unmarshal(shape["tpm_quote"], &quote); err != nil {
		t.Fatal(err)
	}
	if len(quote) != 3 || quote["signature"] == nil || quote["message"] == nil || quote["pcrs"] == nil {
		t.Fatalf("tpm_quote members: %s", shape["tpm_quote"])
	}
	var ev tpmEvidence
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&ev); err != nil {
		t.Fatal(err)
	}
	return ev
}

func mustB64(t *testing.T, s string) []byte {
	t.Helper()
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		t.Fatalf("not std base64: %v", err)
	}
	return b
}

// TestTPMQuoteVerifiesWithTpm2Checkquote has tpm2-tools, an independent
// verifier, check the quote: signature by the AK, PCR values against the
// quoted digest, and the qualifying data.
func TestTPMQuoteVerifiesWithTpm2Checkquote(t *testing.T) {
	checkquote, err := exec.LookPath("tpm2_checkquote")
	if err != nil {
		t.Fatalf("tpm2_checkquote (tpm2-tools) is required: %v", err)
	}
	tpm := devkbstest.StartSwtpm(t)
	reportData := make([]byte, 48)
	rand.Read(reportData)
	ev := tpmEvidenceFor(t, tpm.URI, reportData)

	if len(ev.TPMQuote.PCRs) != 24 {
		t.Fatalf("%d PCRs, want 24", len(ev.TPMQuote.PCRs))
	}
	lowerHex := regexp.MustCompile(`^[0-9a-f]{64}$`)
	var pcrs []byte
	for i, p := range ev.TPMQuote.PCRs {
		if !lowerHex.MatchString(p) {
			t.Fatalf("PCR %d = %q, want 64 lowercase hex digits", i, p)
		}
		b, _ := hex.DecodeString(p)
		pcrs = append(pcrs, b...)
	}
	der := mustB64(t, ev.AKPublic)
	if _, err := x509.ParsePKIXPublicKey(der); err != nil {
		t.Fatalf("ak_public is not DER SubjectPublicKeyInfo: %v", err)
	}

	dir := t.TempDir()
	files := map[string][]byte{
		"ak.pem":    pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}),
		"quote.msg": mustB64(t, ev.TPMQuote.Message),
		"quote.sig": mustB64(t, ev.TPMQuote.Signature),
		"pcrs.bin":  tpm2ToolsPCRFile(pcrs),
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	check := func(qualification string, pcrFile string) error {
		cmd := exec.Command(checkquote,
			"-u", filepath.Join(dir, "ak.pem"),
			"-m", filepath.Join(dir, "quote.msg"),
			"-s", filepath.Join(dir, "quote.sig"),
			"-f", filepath.Join(dir, pcrFile),
			"-g", "sha256",
			"-q", qualification)
		out, err := cmd.CombinedOutput()
		if err != nil {
			return &exec.ExitError{ProcessState: cmd.ProcessState, Stderr: out}
		}
		return nil
	}

	if err := check(hex.EncodeToString(reportData[:32]), "pcrs.bin"); err != nil {
		t.Fatalf("tpm2_checkquote rejected the quote: %s", err.(*exec.ExitError).Stderr)
	}
	// The same checker must refuse what does not match, or the pass above
	// means nothing.
	if err := check(hex.EncodeToString(reportData[16:48]), "pcrs.bin"); err == nil {
		t.Fatal("tpm2_checkquote accepted other qualifying data")
	}
	tampered := append([]byte(nil), pcrs...)
	tampered[7*32] ^= 1
	os.WriteFile(filepath.Join(dir, "tampered.bin"), tpm2ToolsPCRFile(tampered), 0o600)
	if err := check(hex.EncodeToString(reportData[:32]), "tampered.bin"); err == nil {
		t.Fatal("tpm2_checkquote accepted a changed PCR 7")
	}
}

// tpm2ToolsPCRFile writes SHA-256 PCRs 0-23 in the "serialized" form
// tpm2_quote -o produces and tpm2_checkquote -f reads without -l: the C
// structures TPML_PCR_SELECTION, a UINT32 count and that many TPML_DIGEST
// (eight digests each), little-endian with their padding. (tpm2-tools 5.4
// cannot read more than eight PCRs in its raw "values" form.)
func tpm2ToolsPCRFile(pcrs []byte) []byte {
	le := binary.LittleEndian
	sel := make([]byte, 4+16*8) // count, TPMS_PCR_SELECTION[16] (7 bytes, padded to 8)
	le.PutUint32(sel[0:], 1)
	le.PutUint16(sel[4:], uint16(tpm2.TPMAlgSHA256))
	sel[6] = 3
	sel[7], sel[8], sel[9] = 0xff, 0xff, 0xff
	out := le.AppendUint32(sel, 3)
	for g := 0; g < 3; g++ {
		out = le.AppendUint32(out, 8)
		for j := 0; j < 8; j++ {
			d := make([]byte, 2+64) // TPM2B_DIGEST: size, buffer[64]
			le.PutUint16(d, 32)
			copy(d[2:], pcrs[(g*8+j)*32:(g*8+j+1)*32])
			out = append(out, d...)
		}
	}
	return out
}

func persistentHandles(t *testing.T, uri string) []tpm2.TPMHandle {
	t.Helper()
	tp, err := openTPM(context.Background(), uri)
	if err != nil {
		t.Fatal(err)
	}
	defer tp.Close()
	rsp, err := tpm2.GetCapability{
		Capability:    tpm2.TPMCapHandles,
		Property:      0x81000000,
		PropertyCount: 64,
	}.Execute(tp)
	if err != nil {
		t.Fatal(err)
	}
	hl, err := rsp.CapabilityData.Data.Handles()
	if err != nil {
		t.Fatal(err)
	}
	return hl.Handle
}

// persistKey creates a primary key from tmpl under hierarchy and makes it
// persistent at AKHandle, standing in for a key provisioned by someone else.
func persistKey(t *testing.T, uri string, hierarchy tpm2.TPMHandle, tmpl tpm2.TPMTPublic) []byte {
	t.Helper()
	tp, err := openTPM(context.Background(), uri)
	if err != nil {
		t.Fatal(err)
	}
	defer tp.Close()
	cp, err := tpm2.CreatePrimary{
		PrimaryHandle: tpm2.AuthHandle{Handle: hierarchy, Auth: tpm2.PasswordAuth(nil)},
		InPublic:      tpm2.New2B(tmpl),
	}.Execute(tp)
	if err != nil {
		t.Fatal(err)
	}
	defer tpm2.FlushContext{FlushHandle: cp.ObjectHandle}.Execute(tp)
	if _, err := (tpm2.EvictControl{
		Auth:             tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)},
		ObjectHandle:     tpm2.NamedHandle{Handle: cp.ObjectHandle, Name: cp.Name},
		PersistentHandle: AKHandle,
	}).Execute(tp); err != nil {
		t.Fatal(err)
	}
	pub, err := cp.OutPublic.Contents()
	if err != nil {
		t.Fatal(err)
	}
	der, err := akDER(pub)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func pemDER(t *testing.T, b []byte) []byte {
	t.Helper()
	blk, rest := pem.Decode(b)
	if blk == nil || blk.Type != "PUBLIC KEY" || len(bytes.TrimSpace(rest)) != 0 {
		t.Fatalf("not a single PUBLIC KEY PEM block: %q", b)
	}
	return blk.Bytes
}

func TestAKPersistence(t *testing.T) {
	ctx := context.Background()
	state := devkbstest.StateDir(t)
	tpm := devkbstest.StartSwtpmWithState(t, state)

	if h := persistentHandles(t, tpm.URI); len(h) != 0 {
		t.Fatalf("fresh TPM has persistent handles %v", h)
	}
	first, err := AKPublicPEM(ctx, tpm.URI)
	if err != nil {
		t.Fatalf("AKPublicPEM: %v", err)
	}
	if h := persistentHandles(t, tpm.URI); len(h) != 1 || h[0] != AKHandle {
		t.Fatalf("persistent handles after first run = %v, want [%#x]", h, AKHandle)
	}

	// A TPM restart keeps the persistent AK; the second run finds it and
	// creates nothing.
	tpm.Stop()
	tpm = devkbstest.StartSwtpmWithState(t, state)
	second, err := AKPublicPEM(ctx, tpm.URI)
	if err != nil {
		t.Fatalf("AKPublicPEM after restart: %v", err)
	}
	if !bytes.Equal(first, second) {
		t.Fatal("AK changed across a TPM restart")
	}
	if h := persistentHandles(t, tpm.URI); len(h) != 1 || h[0] != AKHandle {
		t.Fatalf("persistent handles after second run = %v, want [%#x]", h, AKHandle)
	}
	ev := tpmEvidenceFor(t, tpm.URI, make([]byte, 48))
	if !bytes.Equal(mustB64(t, ev.AKPublic), pemDER(t, first)) {
		t.Fatal("evidence ak_public is not the key AKPublicPEM printed")
	}
}

func TestAKReusesExistingKey(t *testing.T) {
	ctx := context.Background()

	t.Run("suitable key provisioned by someone else", func(t *testing.T) {
		tpm := devkbstest.StartSwtpm(t)
		// Same template under the owner hierarchy: a different key that
		// a fresh creation under the endorsement hierarchy would not give.
		want := persistKey(t, tpm.URI, tpm2.TPMRHOwner, akTemplate)
		got, err := AKPublicPEM(ctx, tpm.URI)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(pemDER(t, got), want) {
			t.Fatal("the key already at 0x81010002 was not reused")
		}
	})

	t.Run("unsuitable key is refused, not replaced", func(t *testing.T) {
		tpm := devkbstest.StartSwtpm(t)
		want := persistKey(t, tpm.URI, tpm2.TPMRHOwner, tpm2.RSASRKTemplate)
		_, err := AKPublicPEM(ctx, tpm.URI)
		if err == nil || !strings.Contains(err.Error(), "not usable as the attestation key") {
			t.Fatalf("err = %v, want a refusal of the storage key at 0x81010002", err)
		}
		// Still the storage key: nothing was evicted.
		tp, err := openTPM(ctx, tpm.URI)
		if err != nil {
			t.Fatal(err)
		}
		defer tp.Close()
		rp, err := tpm2.ReadPublic{ObjectHandle: tpm2.TPMHandle(AKHandle)}.Execute(tp)
		if err != nil {
			t.Fatal(err)
		}
		pub, _ := rp.OutPublic.Contents()
		der, _ := akDER(pub)
		if !bytes.Equal(der, want) {
			t.Fatal("the key at 0x81010002 was replaced")
		}
	})
}

func TestTPMAttesterErrors(t *testing.T) {
	tests := []struct {
		name, tpm string
		want      string
	}{
		{"missing device", "/nonexistent/tpm0", "/nonexistent/tpm0"},
		{"not a device", "/etc/hostname", "not a device"},
		{"nobody listening", "mssim://127.0.0.1:1", "connection refused"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			att, err := NewAttester("tpm", AttesterOptions{TPM: tt.tpm})
			if err != nil {
				t.Fatal(err)
			}
			_, err = att.Evidence(context.Background(), make([]byte, 48))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want it to mention %q", err, tt.want)
			}
		})
	}
	for _, bad := range []string{"mssim://", "mssim://127.0.0.1", "mssim://127.0.0.1:2321/x", "mssim://h:1?q"} {
		if _, err := NewAttester("tpm", AttesterOptions{TPM: bad}); err == nil {
			t.Errorf("NewAttester(tpm, %q) accepted a malformed simulator URI", bad)
		}
	}
	att, _ := NewAttester("tpm", AttesterOptions{TPM: "mssim://127.0.0.1:1"})
	if _, err := att.Evidence(context.Background(), make([]byte, 16)); err == nil {
		t.Error("Evidence accepted 16 bytes of report data")
	}
}
