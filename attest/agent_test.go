package attest

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/containerd/ttrpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/guest-puller/guest-puller/attest/aapb"
	"github.com/guest-puller/guest-puller/internal/errdefs"
)

// TestAgentWireContract pins the messages the attestation-agent client
// sends and reads to guest-components' attestation-agent.proto.
func TestAgentWireContract(t *testing.T) {
	type field struct {
		name   string
		number protowire.Number
		kind   protoreflect.Kind
	}
	for _, tc := range []struct {
		msg    proto.Message
		name   string
		fields []field
	}{
		{&aapb.GetEvidenceRequest{}, "attestation_agent.GetEvidenceRequest", []field{{"RuntimeData", 1, protoreflect.BytesKind}}},
		{&aapb.GetEvidenceResponse{}, "attestation_agent.GetEvidenceResponse", []field{{"Evidence", 1, protoreflect.BytesKind}}},
		{&aapb.GetTeeTypeRequest{}, "attestation_agent.GetTeeTypeRequest", nil},
		{&aapb.GetTeeTypeResponse{}, "attestation_agent.GetTeeTypeResponse", []field{{"tee", 1, protoreflect.StringKind}}},
		{&aapb.ExtendRuntimeMeasurementRequest{}, "attestation_agent.ExtendRuntimeMeasurementRequest", []field{
			{"Domain", 1, protoreflect.StringKind}, {"Operation", 2, protoreflect.StringKind}, {"Content", 3, protoreflect.StringKind}, {"RegisterIndex", 4, protoreflect.Uint64Kind},
		}},
		{&aapb.ExtendRuntimeMeasurementResponse{}, "attestation_agent.ExtendRuntimeMeasurementResponse", []field{{"Result", 1, protoreflect.EnumKind}}},
	} {
		d := tc.msg.ProtoReflect().Descriptor()
		if string(d.FullName()) != tc.name || d.Fields().Len() != len(tc.fields) {
			t.Errorf("%s: %s with %d fields", tc.name, d.FullName(), d.Fields().Len())
		}
		for _, f := range tc.fields {
			fd := d.Fields().ByName(protoreflect.Name(f.name))
			if fd == nil || fd.Number() != f.number || fd.Kind() != f.kind {
				t.Errorf("%s.%s: %v, want number %d %v", tc.name, f.name, fd, f.number, f.kind)
			}
		}
	}
	if !(&aapb.ExtendRuntimeMeasurementRequest{}).ProtoReflect().Descriptor().Fields().ByName("RegisterIndex").HasPresence() {
		t.Error("RegisterIndex is not optional: an absent index would be sent as PCR 0")
	}
	if aapb.RuntimeMeasurementResult_OK != 0 || aapb.RuntimeMeasurementResult_NOT_SUPPORTED != 1 || aapb.RuntimeMeasurementResult_NOT_ENABLED != 2 {
		t.Error("RuntimeMeasurementResult values differ from the agent's")
	}
}

// agentStub answers as an attestation-agent would, with canned replies.
// ttrpc runs each request on a goroutine of its own, and the race detector
// cannot see the order the socket imposes between them and the test: mu
// guards what requests and the test both touch.
type agentStub struct {
	aapb.AttestationAgentServiceService
	tee string

	mu       sync.Mutex
	evidence []byte
	result   aapb.RuntimeMeasurementResult
	got      *aapb.ExtendRuntimeMeasurementRequest
	data     []byte
}

func (a *agentStub) setEvidence(e []byte) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.evidence = e
}

func (a *agentStub) setResult(r aapb.RuntimeMeasurementResult) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.result = r
}

// last returns the runtime data of the last GetEvidence and the last
// ExtendRuntimeMeasurement request.
func (a *agentStub) last() ([]byte, *aapb.ExtendRuntimeMeasurementRequest) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.data, a.got
}

func (a *agentStub) GetTeeType(context.Context, *aapb.GetTeeTypeRequest) (*aapb.GetTeeTypeResponse, error) {
	return &aapb.GetTeeTypeResponse{Tee: a.tee}, nil
}

func (a *agentStub) GetEvidence(_ context.Context, r *aapb.GetEvidenceRequest) (*aapb.GetEvidenceResponse, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.data = r.RuntimeData
	return &aapb.GetEvidenceResponse{Evidence: a.evidence}, nil
}

func (a *agentStub) ExtendRuntimeMeasurement(_ context.Context, r *aapb.ExtendRuntimeMeasurementRequest) (*aapb.ExtendRuntimeMeasurementResponse, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.got = r
	if a.result < 0 {
		return nil, status.Error(codes.Internal, "[ERROR:attestation-agent] AA extend runtime measurement failed")
	}
	return &aapb.ExtendRuntimeMeasurementResponse{Result: a.result}, nil
}

func serveAgent(t *testing.T, a *agentStub) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "aa.sock")
	serveAgentAt(t, a, sock)
	return "unix://" + sock
}

func serveAgentAt(t *testing.T, a *agentStub, sock string) *ttrpc.Server {
	t.Helper()
	os.Remove(sock)
	srv, err := ttrpc.NewServer()
	if err != nil {
		t.Fatal(err)
	}
	aapb.RegisterAttestationAgentServiceService(srv, a)
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(context.Background(), l)
	t.Cleanup(func() { srv.Close() })
	return srv
}

func TestAgent(t *testing.T) {
	ctx := context.Background()
	stub := &agentStub{tee: "az-snp-vtpm", evidence: []byte(` {"quote":"AAAA"}` + "\n")}
	addr := serveAgent(t, stub)
	a, err := DialAgent(ctx, addr)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if a.TEE() != "az-snp-vtpm" {
		t.Errorf("TEE %q", a.TEE())
	}
	rd := []byte("48 bytes of report data, as the KBS client binds")
	ev, err := a.Evidence(ctx, rd)
	if data, _ := stub.last(); err != nil || string(ev) != `{"quote":"AAAA"}` || string(data) != string(rd) {
		t.Errorf("Evidence = %s, %v; the agent got %q", ev, err, data)
	}
	e := PullImageEvent("registry.example.com/app:1", "sha256:00")
	for _, tc := range []struct {
		result aapb.RuntimeMeasurementResult
		want   error
	}{
		{aapb.RuntimeMeasurementResult_OK, nil},
		{aapb.RuntimeMeasurementResult_NOT_SUPPORTED, ErrMeasurementUnsupported},
		{aapb.RuntimeMeasurementResult_NOT_ENABLED, ErrMeasurementDisabled},
	} {
		stub.setResult(tc.result)
		if err := a.Measure(ctx, e); !errors.Is(err, tc.want) {
			t.Errorf("result %v: %v, want %v", tc.result, err, tc.want)
		}
		if _, got := stub.last(); got.Domain != e.Domain || got.Operation != e.Operation || got.Content != e.Content || got.RegisterIndex != nil {
			t.Errorf("the agent got %+v; want %+v and its own default register", got, e)
		}
	}
	stub.setResult(-1)
	if err := a.Measure(ctx, e); err == nil || errors.Is(err, ErrMeasurementUnsupported) {
		t.Errorf("a failing agent: %v", err)
	}

	for _, bad := range [][]byte{[]byte("not json"), []byte(`"a string"`), nil} {
		stub.setEvidence(bad)
		if _, err := a.Evidence(ctx, rd); err == nil {
			t.Errorf("evidence %q accepted", bad)
		}
	}
	// The agent restarts: the client dials it again.
	stub.setEvidence([]byte(`{"restarted":true}`))
	restart := filepath.Join(t.TempDir(), "aa.sock")
	first := serveAgentAt(t, stub, restart)
	b, err := DialAgent(ctx, "unix://"+restart)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	first.Close()
	serveAgentAt(t, stub, restart)
	if ev, err := b.Evidence(ctx, rd); err != nil || string(ev) != `{"restarted":true}` {
		t.Errorf("evidence after the agent restarted: %s, %v", ev, err)
	}

	stub.tee = "TDX; rm -rf"
	if _, err := DialAgent(ctx, addr); err == nil || !strings.Contains(err.Error(), "not a TEE name") {
		t.Errorf("a bad TEE name: %v", err)
	}
	for _, bad := range []string{"vsock://3:1", "run/aa.sock", "unix://relative"} {
		if _, err := DialAgent(ctx, bad); !errors.Is(err, errdefs.ErrInvalidConfig) {
			t.Errorf("DialAgent(%q): %v", bad, err)
		}
	}
	if _, err := DialAgent(ctx, "unix://"+filepath.Join(t.TempDir(), "none.sock")); err == nil {
		t.Error("an absent agent was dialled")
	}
}
