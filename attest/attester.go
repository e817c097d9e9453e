package attest

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/guest-puller/guest-puller/internal/errdefs"
)

const defaultTPM = "/dev/tpmrm0"

func newAttester(kind string, opts AttesterOptions, ops tsmOps) (Attester, error) {
	if opts.TPM == "" {
		opts.TPM = defaultTPM
	}
	if opts.TSMDir == "" {
		opts.TSMDir = defaultTSMDir
	}
	switch kind {
	case "tpm":
		return newTPMAttester(opts.TPM, opts)
	case "tsm":
		return newTSMAttester(opts.TSMDir, ops)
	case "sample":
		return sampleAttester{}, nil
	case "auto", "":
		return autoAttester(opts, ops)
	default:
		return nil, fmt.Errorf("attester %q: %w: want auto, tpm, tsm or sample", kind, errdefs.ErrInvalidConfig)
	}
}

// ErrNoTEE: the auto attester found neither configfs-tsm nor a TPM.
var ErrNoTEE = errors.New("no TEE found")

// autoAttester prefers the TEE's own report (configfs-tsm) over a TPM, which
// in a confidential VM may be a vTPM the host emulates. It never falls back
// to sample evidence: that would prove nothing.
func autoAttester(opts AttesterOptions, ops tsmOps) (Attester, error) {
	var tsmErr, tpmErr error
	if _, err := os.Stat(opts.TSMDir); err == nil {
		a, err := newTSMAttester(opts.TSMDir, ops)
		if err == nil {
			return a, nil
		}
		tsmErr = err
	} else {
		tsmErr = fmt.Errorf("configfs-tsm: %w", err)
	}
	if strings.HasPrefix(opts.TPM, mssimScheme) {
		return newTPMAttester(opts.TPM, opts)
	}
	if _, err := os.Stat(opts.TPM); err == nil {
		return newTPMAttester(opts.TPM, opts)
	} else {
		tpmErr = fmt.Errorf("tpm: %w", err)
	}
	return nil, fmt.Errorf("attester auto: %w (%v; %v)", ErrNoTEE, tsmErr, tpmErr)
}

// sampleAttester is Trustee's sample TEE: no hardware, no trust, for
// development KBSes that explicitly allow it.
type sampleAttester struct{}

func (sampleAttester) TEE() string { return "sample" }

func (sampleAttester) Evidence(_ context.Context, reportData []byte) (json.RawMessage, error) {
	return json.Marshal(struct {
		SVN        string `json:"svn"`
		ReportData string `json:"report_data"`
	}{"1", base64.StdEncoding.EncodeToString(reportData)})
}
