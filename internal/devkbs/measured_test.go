package devkbs

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	"github.com/guest-puller/guest-puller/attest"
	"github.com/guest-puller/guest-puller/internal/devkbs/devkbstest"
)

const testInitData = `version = "0.1.0"
algorithm = "sha256"
[data]
"cdh.toml" = "socket = \"unix:///run/confidential-containers/cdh.sock\""
`

func initDataMember(t *testing.T, body string) json.RawMessage {
	t.Helper()
	b, err := json.Marshal(map[string]string{"format": "toml", "body": body})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestMeasuredTPMEvidence checks what a guest measured, as guest-puller's
// attester sends it from swtpm: init-data bound into PCR 8, and image
// pulls logged and extended into PCR 14.
func TestMeasuredTPMEvidence(t *testing.T) {
	tpm := devkbstest.StartSwtpm(t)
	ctx := context.Background()
	id, err := attest.ParseInitData([]byte(testInitData))
	if err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(t.TempDir(), "aael")
	el, err := attest.OpenEventLog(ctx, tpm.URI, logPath, DefaultEventLogPCR)
	if err != nil {
		t.Fatal(err)
	}
	for _, img := range []string{"registry.example.com/app:1", "registry.example.com/db:2"} {
		if err := el.Measure(ctx, attest.PullImageEvent(img, "sha256:"+strings.Repeat("ab", 32))); err != nil {
			t.Fatal(err)
		}
	}
	att, err := attest.NewAttester("tpm", attest.AttesterOptions{TPM: tpm.URI, EventLog: el, InitData: id})
	if err != nil {
		t.Fatal(err)
	}
	rd := make([]byte, 48)
	rand.Read(rd)
	raw, err := att.Evidence(ctx, rd)
	if err != nil {
		t.Fatal(err)
	}
	var ev map[string]any
	json.Unmarshal(raw, &ev)
	der, _ := base64.StdEncoding.DecodeString(ev["ak_public"].(string))
	trusted := map[[sha256.Size]byte]bool{sha256.Sum256(der): true}

	claims, err := verifyTPM(raw, rd, trusted, nil)
	if err != nil {
		t.Fatal(err)
	}
	init, err := parseInitData(initDataMember(t, testInitData))
	if err != nil {
		t.Fatal(err)
	}
	if err := checkInitDataTPM(init, claims); err != nil {
		t.Errorf("bound init-data refused: %v", err)
	}
	events, err := checkEventLog(claims, DefaultEventLogPCR)
	if err != nil {
		t.Fatalf("the guest's log refused: %v", err)
	}
	if len(events) != 2 || events[1].Operation != "PullImage" || !strings.Contains(events[1].Content, `"image":"registry.example.com/db:2"`) {
		t.Errorf("events %+v", events)
	}

	t.Run("other init-data", func(t *testing.T) {
		other, err := parseInitData(initDataMember(t, testInitData+"# changed\n"))
		if err != nil {
			t.Fatal(err)
		}
		if err := checkInitDataTPM(other, claims); err == nil || !strings.Contains(err.Error(), "does not match PCR 8") {
			t.Errorf("init-data other than the bound one: %v", err)
		}
	})
	t.Run("tampered log", func(t *testing.T) {
		c := *claims
		c.eventLog = []byte(strings.Replace(string(claims.eventLog), "db:2", "db:3", 1))
		if _, err := checkEventLog(&c, DefaultEventLogPCR); err == nil || !strings.Contains(err.Error(), "does not match PCR 14") {
			t.Errorf("tampered log: %v", err)
		}
		c.eventLog = []byte(strings.Join(strings.SplitAfter(string(claims.eventLog), "\n")[:2], ""))
		if _, err := checkEventLog(&c, DefaultEventLogPCR); err == nil {
			t.Error("a log with its last entry dropped was accepted")
		}
		if _, err := checkEventLog(claims, 15); err == nil {
			t.Error("the log was accepted against another PCR")
		}
	})
	t.Run("log member not base64", func(t *testing.T) {
		bad := strings.Replace(string(raw), `"aa_eventlog":"`, `"aa_eventlog":"%`, 1)
		if _, err := verifyTPM(json.RawMessage(bad), rd, trusted, nil); err == nil || !strings.Contains(err.Error(), "aa_eventlog") {
			t.Errorf("aa_eventlog not base64: %v", err)
		}
	})
}

func TestParseInitDataMember(t *testing.T) {
	for _, tc := range []struct {
		raw  string
		want string
	}{
		{`{"format":"json","body":"{}"}`, "format"},
		{`{"format":"toml","body":"version = \"0.1.0\"\nalgorithm = \"md5\"\n"}`, "algorithm"},
		{`{"format":"toml","body":"algorithm = \"sha256\"\n"}`, "no version"},
		{`{"format":"toml","body":"x = "}`, "body"},
		{`{"format":"toml","body":"","extra":1}`, "format, body"},
		{`"toml"`, "format, body"},
	} {
		if _, err := parseInitData(json.RawMessage(tc.raw)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("parseInitData(%s): %v, want %q", tc.raw, err, tc.want)
		}
	}
}

func FuzzReplayEventLog(f *testing.F) {
	f.Add([]byte("INIT/sha256 " + strings.Repeat("0", 64) + "\n"))
	f.Add([]byte("INIT/sha256 " + strings.Repeat("f", 64) + "\ngithub.com/confidential-containers PullImage {\"image\":\"a\", \"digest\":\"sha256:00\"}\n"))
	f.Add([]byte("INIT/sha256 0\nx"))
	f.Fuzz(func(t *testing.T, data []byte) {
		events, final, err := replayEventLog(data)
		if err != nil {
			return
		}
		if len(final) != sha256.Size || len(events) != strings.Count(string(data), "\n")-1 {
			t.Fatalf("replayed %q into %d events, %x", data, len(events), final)
		}
	})
}

func FuzzParseInitData(f *testing.F) {
	f.Add([]byte(`{"format":"toml","body":"version = \"0.1.0\"\nalgorithm = \"sha256\"\n[data]\n\"a\" = \"b\"\n"}`))
	f.Add([]byte(`{"format":"toml","body":"version = \"0.1.0\"\nalgorithm = \"sha512\"\n"}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		d, err := parseInitData(data)
		if err != nil {
			return
		}
		if len(d.digest) < sha256.Size {
			t.Fatalf("parsed %q into %+v", data, d)
		}
	})
}
