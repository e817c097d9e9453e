package attest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"sync"
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
	path string
	tee  string

	mu     sync.Mutex
	conn   *ttrpc.Client
	client aapb.AttestationAgentServiceService
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
	a := &Agent{path: path}
	c, err := a.dial(ctx)
	if err != nil {
		return nil, err
	}
	dctx, cancel := context.WithTimeout(ctx, agentDialTimeout)
	defer cancel()
	rsp, err := c.GetTeeType(dctx, &aapb.GetTeeTypeRequest{})
	if err != nil {
		a.Close()
		return nil, fmt.Errorf("attestation-agent %s: GetTeeType: %w", path, err)
	}
	if !validTEEName(rsp.Tee) {
		a.Close()
		return nil, fmt.Errorf("attestation-agent %s: GetTeeType answered %q, not a TEE name", path, rsp.Tee)
	}
	a.tee = rsp.Tee
	return a, nil
}

// dial (re)connects to the agent, replacing a connection that broke.
func (a *Agent) dial(ctx context.Context) (aapb.AttestationAgentServiceService, error) {
	dctx, cancel := context.WithTimeout(ctx, agentDialTimeout)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(dctx, "unix", a.path)
	if err != nil {
		return nil, fmt.Errorf("attestation-agent %s: %w", a.path, err)
	}
	c := ttrpc.NewClient(conn)
	a.mu.Lock()
	if a.conn != nil {
		a.conn.Close()
	}
	a.conn, a.client = c, aapb.NewAttestationAgentServiceClient(c)
	a.mu.Unlock()
	return a.client, nil
}

// call runs f on the agent's connection. If the connection is gone (the
// agent restarted, say), it dials once more and runs f again: a call that
// found the connection closed never reached the agent.
func (a *Agent) call(ctx context.Context, f func(aapb.AttestationAgentServiceService) error) error {
	a.mu.Lock()
	c := a.client
	a.mu.Unlock()
	err := f(c)
	if !errors.Is(err, ttrpc.ErrClosed) {
		return err
	}
	if c, derr := a.dial(ctx); derr == nil {
		err = f(c)
	}
	return err
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
func (a *Agent) Close() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.conn.Close()
}

// TEE implements Attester: the TEE the agent named when dialled.
func (a *Agent) TEE() string { return a.tee }

// Evidence implements Attester: the agent's evidence bound to reportData.
func (a *Agent) Evidence(ctx context.Context, reportData []byte) (json.RawMessage, error) {
	ctx, cancel := context.WithTimeout(ctx, agentEvidenceTimeout)
	defer cancel()
	var rsp *aapb.GetEvidenceResponse
	err := a.call(ctx, func(c aapb.AttestationAgentServiceService) (err error) {
		rsp, err = c.GetEvidence(ctx, &aapb.GetEvidenceRequest{RuntimeData: reportData})
		return err
	})
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
	var rsp *aapb.ExtendRuntimeMeasurementResponse
	err := a.call(ctx, func(c aapb.AttestationAgentServiceService) (err error) {
		rsp, err = c.ExtendRuntimeMeasurement(ctx, &aapb.ExtendRuntimeMeasurementRequest{
			Domain:    e.Domain,
			Operation: e.Operation,
			Content:   e.Content,
		})
		return err
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
