package attest

// This file is the package's contract with pull/ and cmd/ (see
// docs/ARCHITECTURE.md).

import (
	"context"
	"encoding/json"
	"net/http"
	"time"
)

// Attester produces evidence of the guest's state bound to reportData (the
// 48-byte SHA-384 binding digest of DESIGN.md; each TEE uses it as DESIGN.md
// says).
type Attester interface {
	// TEE is the kbs-types tee name: "tpm", "tdx", "snp", "sample", ...
	TEE() string
	// Evidence returns the primary_evidence JSON for reportData.
	Evidence(ctx context.Context, reportData []byte) (json.RawMessage, error)
}

// AttesterOptions configure NewAttester.
type AttesterOptions struct {
	// TPM is a TPM device path or mssim://HOST:PORT; default /dev/tpmrm0.
	TPM string
	// TSMDir is the configfs-tsm report directory; default
	// /sys/kernel/config/tsm/report.
	TSMDir string
	// EventLog, for a TPM attester, is the runtime event log whose content
	// goes with every quote (see OpenEventLog).
	EventLog *EventLog
	// InitData, for a TPM attester, is bound into PCR 8 before the first
	// quote. Other TEEs bind init-data at launch (TDX MRCONFIGID, SNP
	// HOSTDATA), set by the host.
	InitData *InitData
}

// NewAttester returns the attester of kind "auto", "tpm", "tsm" or "sample".
// auto picks configfs-tsm, then a TPM, and never sample. An unknown kind is
// an error wrapping errdefs.ErrInvalidConfig.
func NewAttester(kind string, opts AttesterOptions) (Attester, error) {
	return newAttester(kind, opts, tsmOps{})
}

// ClientOptions configure a KBS client.
type ClientOptions struct {
	// CACert is PEM (CA or leaf) the KBS's TLS must chain to; nil means the
	// system roots. Plain http is refused unless the host is loopback or
	// Insecure is set.
	CACert   []byte
	Insecure bool
	// KeyType is the ephemeral tee key: "EC" (P-256, default) or "RSA".
	KeyType string
	// HTTPClient overrides the transport (tests); timeouts still apply.
	HTTPClient *http.Client
	// IdleTimeout is how long the KBS may send nothing, for an answer or
	// mid-body, before the request fails and is retried; 0 means
	// idleread.DefaultTimeout. Every bound of the client derives from it:
	// one exchange takes at most two idle timeouts in all (one to answer,
	// one to send), is tried three times, and a resource request ends
	// when its caller's context does; the attestation handshake that
	// callers share is bounded by its exchanges and its evidence (a
	// minute at most).
	IdleTimeout time.Duration
	// InitData, if set, is sent in every attest request ("init-data":
	// {"format": "toml", "body": …}) for the KBS to check against the
	// evidence's binding of it.
	InitData *InitData
}
