package attest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"time"

	"github.com/containerd/ttrpc"

	"github.com/guest-puller/guest-puller/attest/aapb"
	"github.com/guest-puller/guest-puller/internal/errdefs"
)

const (
	// DefaultAgentSocket is where kata-agent starts the attestation-agent,
	// and the confidential-data-hub's default [aa] aa_socket.
	DefaultAgentSocket = "unix:///run/confidential-containers/attestation-agent/attestation-agent.sock"

	// The attestation-agent's clients in guest-components wait this long:
	// evidence may take a TEE round trip, an event one PCR extension.
	agentEvidenceTimeout = 50 * time.Second
	agentMeasureTimeout  = 10 * time.Second
	agentDialTimeout     = 10 * time.Second

	// maxEvidence bounds the evidence an agent may hand back.
	maxEvidence = 4 << 20
)

// Agent is the attestation-agent reached over ttrpc
// (attestation_agent.AttestationAgentService): an Attester whose evidence
// the agent produces, so every TEE the agent supports works, and a
// Measurer whose events the agent logs and extends.
type Agent struct {
	conn   *ttrpc.Client
	client aapb.AttestationAgentServiceService
	tee    string
}

// AgentSocketPath returns the file of an attestation-agent address:
// "unix:///run/…/attestation-agent.sock", or an absolute path. Other
// addresses wrap errdefs.ErrInvalidConfig.
func AgentSocketPath(addr string) (string, error) {
	p := strings.TrimPrefix(addr, "unix://")
	if !filepath.IsAbs(p) || strings.Contains(p, "://") {
		return "", fmt.Errorf("attestation-agent socket %q: %w: want unix:///absolute/path", addr, errdefs.ErrInvalidConfig)
	}
	return filepath.Clean(p), nil
}

// DialAgent connects to the attestation-agent at addr (see AgentSocketPath)
// and asks it which TEE it attests.
func DialAgent(ctx context.Context, addr string) (*Agent, error) {
	path, err := AgentSocketPath(addr)
	if err != nil {
		return nil, err
	}
	dctx, cancel := context.WithTimeout(ctx, agentDialTimeout)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(dctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("attestation-agent %s: %w", path, err)
	}
	c := ttrpc.NewClient(conn)
	a := &Agent{conn: c, client: aapb.NewAttestationAgentServiceClient(c)}
	rsp, err := a.client.GetTeeType(dctx, &aapb.GetTeeTypeRequest{})
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("attestation-agent %s: GetTeeType: %w", path, err)
	}
	if !validTEEName(rsp.Tee) {
		c.Close()
		return nil, fmt.Errorf("attestation-agent %s: GetTeeType answered %q, not a TEE name", path, rsp.Tee)
	}
	a.tee = rsp.Tee
	return a, nil
}

// validTEEName admits kbs-types' spellings ("tdx", "az-snp-vtpm", …).
func validTEEName(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for _, r := range s {
		if (r < 'a' || r > 'z') && (r < '0' || r > '9') && r != '-' && r != '_' {
			return false
		}
	}
	return true
}

// Close closes the connection.
func (a *Agent) Close() error { return a.conn.Close() }

// TEE implements Attester: the TEE the agent named when dialled.
func (a *Agent) TEE() string { return a.tee }

// Evidence implements Attester: the agent's evidence bound to reportData.
func (a *Agent) Evidence(ctx context.Context, reportData []byte) (json.RawMessage, error) {
	ctx, cancel := context.WithTimeout(ctx, agentEvidenceTimeout)
	defer cancel()
	rsp, err := a.client.GetEvidence(ctx, &aapb.GetEvidenceRequest{RuntimeData: reportData})
	if err != nil {
		return nil, fmt.Errorf("attestation-agent GetEvidence: %w", err)
	}
	ev := bytes.TrimSpace(rsp.Evidence)
	if len(ev) > maxEvidence {
		return nil, fmt.Errorf("attestation-agent GetEvidence: %d bytes of evidence, more than %d", len(ev), maxEvidence)
	}
	if len(ev) == 0 || ev[0] != '{' || !json.Valid(ev) {
		return nil, fmt.Errorf("attestation-agent GetEvidence: the evidence is not a JSON object")
	}
	return json.RawMessage(bytes.Clone(ev)), nil
}

// Measure implements Measurer: the agent appends the event to its log and
// extends its default register (PCR 17, or the RTMR it maps to).
func (a *Agent) Measure(ctx context.Context, e Event) error {
	if err := e.validate(); err != nil {
		return fmt.Errorf("attestation-agent: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, agentMeasureTimeout)
	defer cancel()
	rsp, err := a.client.ExtendRuntimeMeasurement(ctx, &aapb.ExtendRuntimeMeasurementRequest{
		Domain:    e.Domain,
		Operation: e.Operation,
		Content:   e.Content,
	})
	if err != nil {
		return fmt.Errorf("attestation-agent ExtendRuntimeMeasurement: %w", err)
	}
	switch rsp.Result {
	case aapb.RuntimeMeasurementResult_OK:
		return nil
	case aapb.RuntimeMeasurementResult_NOT_SUPPORTED:
		return fmt.Errorf("attestation-agent (%s): %w", a.tee, ErrMeasurementUnsupported)
	case aapb.RuntimeMeasurementResult_NOT_ENABLED:
		return fmt.Errorf("attestation-agent: %w", ErrMeasurementDisabled)
	default:
		return fmt.Errorf("attestation-agent ExtendRuntimeMeasurement: unknown result %d", rsp.Result)
	}
}
