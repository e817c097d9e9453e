package attest

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/guest-puller/guest-puller/internal/devkbs/devkbstest"
	"github.com/guest-puller/guest-puller/internal/errdefs"
)

func TestNewAttesterKinds(t *testing.T) {
	tpm := devkbstest.StartSwtpm(t)
	absent := filepath.Join(t.TempDir(), "absent")
	tdx := &fakeTSM{t: t, provider: "tdx_guest", generation: "1", report: func(in []byte) []byte { return in }}
	tsmDir := t.TempDir()

	tests := []struct {
		name    string
		kind    string
		opts    AttesterOptions
		ops     tsmOps
		wantTEE string
		wantErr string
	}{
		{"auto prefers configfs-tsm", "auto", AttesterOptions{TSMDir: tsmDir, TPM: tpm.URI}, tdx.ops(""), "tdx", ""},
		{"auto falls back to the TPM", "auto", AttesterOptions{TSMDir: absent, TPM: tpm.URI}, tsmOps{}, "tpm", ""},
		{"auto with an empty kind", "", AttesterOptions{TSMDir: absent, TPM: tpm.URI}, tsmOps{}, "tpm", ""},
		{"auto never picks sample", "auto", AttesterOptions{TSMDir: absent, TPM: absent}, tsmOps{}, "", "no TEE found"},
		{"tpm", "tpm", AttesterOptions{TPM: tpm.URI}, tsmOps{}, "tpm", ""},
		{"sample only when named", "sample", AttesterOptions{}, tsmOps{}, "sample", ""},
		{"unknown kind", "sgx", AttesterOptions{}, tsmOps{}, "", "want auto, tpm, tsm or sample"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, err := newAttester(tt.kind, tt.opts, tt.ops)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if a.TEE() != tt.wantTEE {
				t.Fatalf("TEE() = %q, want %q", a.TEE(), tt.wantTEE)
			}
		})
	}
	tdx.wait(t)
	if _, err := NewAttester("sgx", AttesterOptions{}); !errors.Is(err, errdefs.ErrInvalidConfig) {
		t.Errorf("unknown kind: %v does not wrap ErrInvalidConfig", err)
	}
}

func TestSampleEvidence(t *testing.T) {
	a, err := NewAttester("sample", AttesterOptions{})
	if err != nil {
		t.Fatal(err)
	}
	rd := testReportData()
	raw, err := a.Evidence(context.Background(), rd)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"svn":"1","report_data":"` + base64.StdEncoding.EncodeToString(rd) + `"}`
	if string(raw) != want {
		t.Fatalf("evidence %s, want %s", raw, want)
	}
	var m map[string]string
	if json.Unmarshal(raw, &m) != nil || len(m) != 2 {
		t.Fatalf("evidence %s", raw)
	}
}
