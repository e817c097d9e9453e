package attest

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

const (
	defaultTSMDir = "/sys/kernel/config/tsm/report"
	// defaultCCEL is the ACPI CC event log TDX guests expose; guest-components
	// sends it along with the quote when it is readable.
	defaultCCEL = "/sys/firmware/acpi/tables/data/CCEL"
	// tsmReportDataSize is the inblob size of both TDX (REPORTDATA) and SNP
	// (REPORT_DATA).
	tsmReportDataSize = 64
)

// tsmOps are the file system steps that configfs performs differently from
// an ordinary directory. The zero value is the real configfs; tests plug in
// a fake that plays the kernel's part, since no TEE exists to test against.
type tsmOps struct {
	newEntry    func(dir string) (string, error) // default: mkdir a unique entry
	removeEntry func(entry string) error         // default: rmdir
	ccelPath    string
}

func (o tsmOps) mkdir(dir string) (string, error) {
	if o.newEntry != nil {
		return o.newEntry(dir)
	}
	return os.MkdirTemp(dir, "guest-puller-")
}

func (o tsmOps) rmdir(entry string) error {
	if o.removeEntry != nil {
		return o.removeEntry(entry)
	}
	return os.Remove(entry)
}

// tsmAttester gets TDX quotes and SEV-SNP reports through the kernel's
// configfs-tsm report interface.
type tsmAttester struct {
	dir string
	tee string // "tdx" or "snp"
	ops tsmOps
}

// newTSMAttester probes dir for its provider. The probe entry is the only
// way to learn it: the provider attribute exists per report entry.
func newTSMAttester(dir string, ops tsmOps) (*tsmAttester, error) {
	a := &tsmAttester{dir: dir, ops: ops}
	entry, err := ops.mkdir(dir)
	if err != nil {
		return nil, fmt.Errorf("configfs-tsm %s: %w", dir, err)
	}
	defer ops.rmdir(entry) // a probe entry holds no report: nothing to lose if it lingers
	a.tee, err = tsmProvider(entry)
	if err != nil {
		return nil, err
	}
	return a, nil
}

func tsmProvider(entry string) (string, error) {
	b, err := os.ReadFile(filepath.Join(entry, "provider"))
	if err != nil {
		return "", fmt.Errorf("configfs-tsm provider: %w", err)
	}
	switch p := strings.TrimSpace(string(b)); p {
	case "tdx_guest":
		return "tdx", nil
	case "sev_guest":
		return "snp", nil
	default:
		return "", fmt.Errorf("configfs-tsm provider %q is not supported (want tdx_guest or sev_guest)", p)
	}
}

func (a *tsmAttester) TEE() string { return a.tee }

// Evidence writes reportData (zero-padded to 64 bytes) as the inblob of a
// fresh report entry and reads the report back; generation must be 1, or
// another writer raced us on the entry and the report may not be ours.
func (a *tsmAttester) Evidence(ctx context.Context, reportData []byte) (json.RawMessage, error) {
	if len(reportData) > tsmReportDataSize {
		return nil, fmt.Errorf("configfs-tsm: report data is %d bytes, at most %d fit", len(reportData), tsmReportDataSize)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	entry, err := a.ops.mkdir(a.dir)
	if err != nil {
		return nil, fmt.Errorf("configfs-tsm %s: %w", a.dir, err)
	}
	defer a.ops.rmdir(entry) // once read, a lingering entry is only clutter

	tee, err := tsmProvider(entry)
	if err != nil {
		return nil, err
	}
	if tee != a.tee {
		return nil, fmt.Errorf("configfs-tsm provider changed from %s to %s", a.tee, tee)
	}
	inblob := make([]byte, tsmReportDataSize)
	copy(inblob, reportData)
	if err := os.WriteFile(filepath.Join(entry, "inblob"), inblob, 0); err != nil {
		return nil, fmt.Errorf("configfs-tsm inblob: %w", err)
	}
	outblob, err := os.ReadFile(filepath.Join(entry, "outblob"))
	if err != nil {
		return nil, fmt.Errorf("configfs-tsm outblob: %w", err)
	}
	auxblob, err := os.ReadFile(filepath.Join(entry, "auxblob"))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("configfs-tsm auxblob: %w", err)
	}
	gen, err := os.ReadFile(filepath.Join(entry, "generation"))
	if err != nil {
		return nil, fmt.Errorf("configfs-tsm generation: %w", err)
	}
	if g, err := strconv.ParseUint(strings.TrimSpace(string(gen)), 10, 32); err != nil || g != 1 {
		return nil, fmt.Errorf("configfs-tsm generation is %q, want 1: another writer used the report entry", strings.TrimSpace(string(gen)))
	}

	switch a.tee {
	case "tdx":
		return tdxEvidence(outblob, a.ccel())
	default:
		return snpEvidence(outblob, auxblob)
	}
}

func (a *tsmAttester) ccel() string {
	if a.ops.ccelPath != "" {
		return a.ops.ccelPath
	}
	return defaultCCEL
}

// tdxEvidence is guest-components' TdxEvidence: the quote and, when the
// firmware exposes it, the CC event log, both std-base64.
func tdxEvidence(quote []byte, ccelPath string) (json.RawMessage, error) {
	ev := struct {
		CCEventlog *string `json:"cc_eventlog"`
		Quote      string  `json:"quote"`
	}{Quote: base64.StdEncoding.EncodeToString(quote)}
	if el, err := os.ReadFile(ccelPath); err == nil {
		s := base64.StdEncoding.EncodeToString(el)
		ev.CCEventlog = &s
	}
	return json.Marshal(ev)
}
