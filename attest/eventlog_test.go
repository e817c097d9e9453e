package attest

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/guest-puller/guest-puller/internal/devkbs/devkbstest"
	"github.com/guest-puller/guest-puller/internal/errdefs"
)

// pcrread reads one SHA-256 PCR with tpm2-tools, a reader independent of
// this package's go-tpm code.
func pcrread(t *testing.T, tpm *devkbstest.Swtpm, index int) []byte {
	t.Helper()
	bin, err := exec.LookPath("tpm2_pcrread")
	if err != nil {
		t.Fatalf("tpm2_pcrread (tpm2-tools) is required: %v", err)
	}
	out := filepath.Join(t.TempDir(), "pcr.bin")
	cmd := exec.Command(bin, "-T", tpm.TCTI, fmt.Sprintf("sha256:%d", index), "-o", out)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("tpm2_pcrread: %v\n%s", err, b)
	}
	v, err := os.ReadFile(out)
	if err != nil || len(v) != 32 {
		t.Fatalf("tpm2_pcrread output: %x, %v", v, err)
	}
	return v
}

// extend is the TPM's extend operation, written out here so the test does
// not check the package's replay against itself.
func extend(pcr []byte, line string) []byte {
	d := sha256.Sum256([]byte(line))
	n := sha256.Sum256(append(append([]byte(nil), pcr...), d[:]...))
	return n[:]
}

func TestEventDigestMatchesTheAttestationAgent(t *testing.T) {
	// guest-components' raw AAEL test vector: the entry
	// "domain operation content" has this SHA-256 digest.
	d := sha256.Sum256([]byte(Event{"domain", "operation", "content"}.String()))
	if got := hex.EncodeToString(d[:]); got != "65aad3b1620d4fe224d727579db2db87ff5c033f3e4424ae0fd72eb1149d3bd5" {
		t.Errorf("digest %s", got)
	}
	e := PullImageEvent("registry.example.com/app:1", "sha256:0c0c")
	if want := `github.com/confidential-containers PullImage {"image":"registry.example.com/app:1", "digest":"sha256:0c0c"}`; e.String() != want {
		t.Errorf("PullImage entry %q, want the confidential-data-hub's %q", e.String(), want)
	}
}

func TestEventLog(t *testing.T) {
	tpm := devkbstest.StartSwtpm(t)
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "log", "aael")
	const pcr = DefaultTPMEventLogPCR
	initPCR := pcrread(t, tpm, pcr)

	l, err := OpenEventLog(ctx, tpm.URI, path, pcr)
	if err != nil {
		t.Fatal(err)
	}
	initLine := "INIT/sha256 " + hex.EncodeToString(initPCR)
	want := extend(initPCR, initLine)
	events := []Event{
		PullImageEvent("registry.example.com/app:1", "sha256:"+strings.Repeat("ab", 32)),
		PullImageEvent("registry.example.com/db:2", "sha256:"+strings.Repeat("cd", 32)),
	}
	for _, e := range events {
		if err := l.Measure(ctx, e); err != nil {
			t.Fatal(err)
		}
		want = extend(want, e.String())
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	wantLog := initLine + "\n" + events[0].String() + "\n" + events[1].String() + "\n"
	if string(data) != wantLog {
		t.Errorf("log:\n%s\nwant:\n%s", data, wantLog)
	}
	if got := pcrread(t, tpm, pcr); hex.EncodeToString(got) != hex.EncodeToString(want) {
		t.Fatalf("PCR 17 = %x, want the log's replay %x", got, want)
	}
	parsed, err := ParseEventLog(data)
	if err != nil {
		t.Fatal(err)
	}
	if got := parsed.Events(); len(got) != 2 || got[1] != events[1] {
		t.Errorf("events %q", got)
	}

	// Reopening finds the log consistent and appends after it.
	if _, err := OpenEventLog(ctx, tpm.URI, path, pcr); err != nil {
		t.Fatalf("reopen: %v", err)
	}

	t.Run("an entry written but not extended is extended at open", func(t *testing.T) {
		e := PullImageEvent("registry.example.com/crash:1", "sha256:"+strings.Repeat("ef", 32))
		appendFile(t, path, e.String()+"\n")
		if _, err := OpenEventLog(ctx, tpm.URI, path, pcr); err != nil {
			t.Fatal(err)
		}
		want = extend(want, e.String())
		if got := pcrread(t, tpm, pcr); hex.EncodeToString(got) != hex.EncodeToString(want) {
			t.Fatalf("PCR 17 = %x, want %x", got, want)
		}
	})
	t.Run("a line cut short is dropped", func(t *testing.T) {
		before, _ := os.ReadFile(path)
		appendFile(t, path, "github.com/confidential-containers PullImage {\"ima")
		if _, err := OpenEventLog(ctx, tpm.URI, path, pcr); err != nil {
			t.Fatal(err)
		}
		if after, _ := os.ReadFile(path); string(after) != string(before) {
			t.Errorf("log after recovery:\n%s", after)
		}
	})
	t.Run("a log that does not replay to the PCR is refused", func(t *testing.T) {
		data, _ := os.ReadFile(path)
		tampered := strings.Replace(string(data), "registry.example.com/db:2", "registry.example.com/db:3", 1)
		os.WriteFile(path, []byte(tampered), 0o600)
		_, err := OpenEventLog(ctx, tpm.URI, path, pcr)
		if !errors.Is(err, errdefs.ErrIntegrity) || !strings.Contains(err.Error(), "PCR 14") {
			t.Errorf("tampered log: %v", err)
		}
		os.WriteFile(path, data, 0o600)
	})

	t.Run("evidence carries the log its quote covers", func(t *testing.T) {
		att, err := NewAttester("tpm", AttesterOptions{TPM: tpm.URI, EventLog: l})
		if err != nil {
			t.Fatal(err)
		}
		rd := make([]byte, 48)
		rand.Read(rd)
		raw, err := att.Evidence(ctx, rd)
		if err != nil {
			t.Fatal(err)
		}
		ev := decodeTPMEvidence(t, raw)
		logged := mustB64(t, ev.AAEventLog)
		if cur, _ := os.ReadFile(path); string(logged) != string(cur) {
			t.Errorf("aa_eventlog:\n%s\nwant the file:\n%s", logged, cur)
		}
		d, err := ParseEventLog(logged)
		if err != nil {
			t.Fatal(err)
		}
		if got := hex.EncodeToString(d.Replay()); got != ev.TPMQuote.PCRs[pcr] {
			t.Errorf("the log replays to %s, the quote has PCR %d = %s", got, pcr, ev.TPMQuote.PCRs[pcr])
		}
	})
}

func TestEventLogRefusals(t *testing.T) {
	tpm := devkbstest.StartSwtpm(t)
	ctx := context.Background()
	l, err := OpenEventLog(ctx, tpm.URI, filepath.Join(t.TempDir(), "aael"), 16)
	if err != nil {
		t.Fatal(err)
	}
	before := pcrread(t, tpm, 16)
	for _, e := range []Event{
		{"github.com/confidential-containers", "PullImage", "line\nbreak"},
		{"two words", "PullImage", "x"},
		{"d", "Pull Image", "x"},
		{"d", "op", ""},
		{"d", "op", "caf\u00e9"},
	} {
		if err := l.Measure(ctx, e); err == nil {
			t.Errorf("event %q was logged", e.String())
		}
	}
	if after := pcrread(t, tpm, 16); hex.EncodeToString(after) != hex.EncodeToString(before) {
		t.Errorf("a refused event moved PCR 16")
	}
	if _, err := OpenEventLog(ctx, tpm.URI, filepath.Join(t.TempDir(), "aael"), 24); !errors.Is(err, errdefs.ErrInvalidConfig) {
		t.Errorf("PCR 24: %v", err)
	}
	// The attestation-agent's PCR 17 is out of an operating system's reach
	// on a TPM: a clear configuration error, and no INIT entry left behind.
	p17 := filepath.Join(t.TempDir(), "aael17")
	_, err = OpenEventLog(ctx, tpm.URI, p17, 17)
	if !errors.Is(err, errdefs.ErrInvalidConfig) || !strings.Contains(err.Error(), "locality") {
		t.Errorf("PCR 17: %v", err)
	}
	if data, _ := os.ReadFile(p17); len(data) != 0 {
		t.Errorf("a failed open left %q in the log", data)
	}
}

func TestParseEventLog(t *testing.T) {
	init := "INIT/sha256 " + strings.Repeat("0", 64)
	for _, tc := range []struct {
		log string
		ok  bool
	}{
		{init + "\n", true},
		{init + "\nd op {\"a\": 1}\n", true},
		{init, false},          // no final LF
		{init + "\r\n", false}, // CR
		{"INIT sha256/" + strings.Repeat("0", 64) + "\n", false}, // the older spelling
		{"INIT/sha384 " + strings.Repeat("0", 96) + "\n", false},
		{"INIT/sha256 " + strings.Repeat("A", 64) + "\n", false},
		{"INIT/sha256 00\n", false},
		{init + "\nd op\n", false},
		{init + "\n\n", false},
		{"d op c\n" + init + "\n", false},
		{init + "\nd op c\x00\n", false},
	} {
		_, err := ParseEventLog([]byte(tc.log))
		if (err == nil) != tc.ok {
			t.Errorf("ParseEventLog(%q): %v, want ok=%v", tc.log, err, tc.ok)
		}
	}
}

func FuzzParseEventLog(f *testing.F) {
	f.Add([]byte("INIT/sha256 " + strings.Repeat("0", 64) + "\n"))
	f.Add([]byte("INIT/sha256 " + strings.Repeat("f", 64) + "\ngithub.com/confidential-containers PullImage {\"image\":\"a\", \"digest\":\"sha256:00\"}\n"))
	f.Add([]byte("INIT/sha256 00\nd o c"))
	f.Fuzz(func(t *testing.T, data []byte) {
		d, err := ParseEventLog(data)
		if err != nil {
			return
		}
		if len(d.Init) != 32 || len(d.Lines) == 0 || len(d.Events()) != len(d.Lines)-1 {
			t.Fatalf("parsed %q into %+v", data, d)
		}
		_ = d.Replay()
	})
}

func appendFile(t *testing.T, path, s string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(s); err != nil {
		t.Fatal(err)
	}
}

func decodeTPMEvidence(t *testing.T, raw []byte) tpmEvidence {
	t.Helper()
	var ev tpmEvidence
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&ev); err != nil {
		t.Fatalf("evidence %s: %v", raw, err)
	}
	return ev
}
