package attest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/guest-puller/guest-puller/internal/errdefs"
)

// Runtime measurement: the attestation-agent's event log (AAEL, Trustee's
// kbs/docs/confidential-containers-eventlog.md) in its raw form. The log is
// a text file of LF-terminated lines:
//
//	INIT/sha256 <hex value of the PCR when the log began>
//	<domain> <operation> <content>
//	…
//
// and the SHA-256 of each line (without its LF), the INIT line included,
// is extended into one PCR in order. A verifier replays the log from the
// INIT value and compares the result with the quoted PCR: the log then
// proves which events happened, in which order, since the log began.

const (
	// DefaultMeasurementPCR is the register the attestation-agent extends
	// runtime events into unless told otherwise: PCR 17, the first of the
	// dynamic-root-of-trust PCRs, which on TDX it maps to RTMR 3.
	DefaultMeasurementPCR = 17
	// DefaultTPMEventLogPCR is the PCR guest-puller's own event log uses on
	// a TPM. PCR 17 cannot be: a TPM extends PCRs 17-22 only from
	// localities 2-4 (TCG PC Client Platform TPM Profile), and an operating
	// system reaches its TPM at locality 0 (the attempt fails with
	// TPM_RC_LOCALITY). Of the PCRs locality 0 may extend, 16 and 23 can
	// also be reset from it, which would let any root process erase the
	// log's history; PCR 14 cannot be reset, and only shim's MOK
	// measurements use it, at boot, before the log's INIT entry.
	DefaultTPMEventLogPCR = 14

	// CoCoEventDomain and PullImageOperation are the Confidential
	// Containers event spec's image pull event.
	CoCoEventDomain    = "github.com/confidential-containers"
	PullImageOperation = "PullImage"

	// maxEventLog bounds the log read for evidence and at start (an image
	// pull's entry is about 200 bytes).
	maxEventLog = 16 << 20
	// maxEventLine bounds one entry.
	maxEventLine = 64 << 10
)

var (
	// ErrMeasurementUnsupported: the TEE has no runtime measurement
	// register that this process can extend.
	ErrMeasurementUnsupported = errors.New("runtime measurement is not supported by this TEE")
	// ErrMeasurementDisabled: the attestation-agent keeps no event log.
	ErrMeasurementDisabled = errors.New("runtime measurement is not enabled in the attestation-agent")
)

// Event is one AAEL event entry.
type Event struct {
	Domain, Operation, Content string
}

// PullImageEvent is the event the confidential-data-hub records after a
// successful pull, content spelled exactly as it spells it.
func PullImageEvent(image, manifestDigest string) Event {
	return Event{
		Domain:    CoCoEventDomain,
		Operation: PullImageOperation,
		Content:   `{"image":"` + image + `", "digest":"` + manifestDigest + `"}`,
	}
}

// String is the event's log line, without its LF.
func (e Event) String() string { return e.Domain + " " + e.Operation + " " + e.Content }

// validate applies the AAEL rules: printable characters only, no white
// space in the domain or the operation, none of the fields empty.
func (e Event) validate() error {
	for _, f := range []struct{ name, v string }{{"domain", e.Domain}, {"operation", e.Operation}, {"content", e.Content}} {
		if f.v == "" {
			return fmt.Errorf("event %s is empty", f.name)
		}
		for i := 0; i < len(f.v); i++ {
			c := f.v[i]
			if c < 0x20 || c > 0x7e || (c == ' ' && f.name != "content") {
				return fmt.Errorf("event %s has character %q at %d: AAEL fields are printable ASCII, and the domain and operation have no spaces", f.name, c, i)
			}
		}
	}
	return nil
}

// Measurer records runtime events: it appends the event to an event log
// and extends its digest into the runtime measurement register. It returns
// ErrMeasurementUnsupported or ErrMeasurementDisabled when the TEE or its
// attestation-agent records no events.
type Measurer interface {
	Measure(ctx context.Context, e Event) error
}

// EventLog is an AAEL kept by this process for a TPM PCR. Evidence of a
// TPM attester given the log (AttesterOptions.EventLog) carries the log's
// content, read from the file, so that the KBS can replay it against the
// quoted PCR. Safe for concurrent use within one process; two processes
// must not keep logs of the same PCR.
type EventLog struct {
	tpm  string
	path string
	pcr  int

	// mu orders appends with quotes: evidence reads the log and quotes the
	// PCR with no event extended in between.
	mu sync.Mutex
}

// OpenEventLog opens the event log at path for PCR pcr of the TPM tpm (a
// device or mssim://HOST:PORT), starting it with an INIT entry of the PCR's
// current value when the file is missing or empty. An existing log must
// replay to the PCR's current value; a last entry written but not extended
// (a crash in between) is extended now, and a last line cut short is
// dropped. A log that does not match the PCR is an error: events appended
// to it could never be verified.
func OpenEventLog(ctx context.Context, tpm, path string, pcr int) (*EventLog, error) {
	if pcr < 0 || pcr >= tpmPCRCount {
		return nil, fmt.Errorf("event log: %w: PCR %d is not 0-23", errdefs.ErrInvalidConfig, pcr)
	}
	if tpm == "" {
		tpm = defaultTPM
	}
	l := &EventLog{tpm: tpm, path: path, pcr: pcr}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("event log: %w", err)
	}
	t, err := openTPM(ctx, tpm)
	if err != nil {
		return nil, err
	}
	defer t.Close()
	if err := l.recover(ctx, t); err != nil {
		return nil, fmt.Errorf("event log %s: %w", path, err)
	}
	return l, nil
}

// Path is where the log is kept.
func (l *EventLog) Path() string { return l.path }

// PCR is the PCR the log's events are extended into.
func (l *EventLog) PCR() int { return l.pcr }

func (l *EventLog) recover(ctx context.Context, t transport.TPM) error {
	cur, err := readPCR(ctx, t, l.pcr)
	if err != nil {
		return err
	}
	data, err := readBounded(l.path, maxEventLog)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	if len(data) == 0 {
		return l.append(t, fmt.Sprintf("INIT/sha256 %x", cur))
	}
	if i := bytes.LastIndexByte(data, '\n'); i != len(data)-1 {
		// An entry cut short was never extended: the append is written
		// in full before the PCR moves.
		if err := os.Truncate(l.path, int64(i+1)); err != nil {
			return err
		}
		data = data[:i+1]
	}
	log, err := ParseEventLog(data)
	if err != nil {
		return err
	}
	if bytes.Equal(log.Replay(), cur) {
		return nil
	}
	if n := len(log.Lines); n > 1 {
		prev := &EventLogData{Init: log.Init, Lines: log.Lines[:n-1]}
		if bytes.Equal(prev.Replay(), cur) {
			return l.extend(t, log.Lines[n-1])
		}
	}
	return fmt.Errorf("%w: the log replays to %x, but PCR %d holds %x", errdefs.ErrIntegrity, log.Replay(), l.pcr, cur)
}

// Measure implements Measurer: it appends e to the log and extends the
// entry's digest into the PCR. When the PCR cannot be extended, the entry
// is taken back out of the log.
func (l *EventLog) Measure(ctx context.Context, e Event) error {
	if err := e.validate(); err != nil {
		return fmt.Errorf("event log: %w", err)
	}
	line := e.String()
	if len(line) > maxEventLine {
		return fmt.Errorf("event log: the entry is %d bytes, more than %d", len(line), maxEventLine)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	t, err := openTPM(ctx, l.tpm)
	if err != nil {
		return err
	}
	defer t.Close()
	if err := l.append(t, line); err != nil {
		return fmt.Errorf("event log %s: %w", l.path, err)
	}
	return nil
}

// append writes one entry and then extends the PCR with its digest; if the
// extension fails the file is cut back to where it was.
func (l *EventLog) append(t transport.TPM, line string) error {
	f, err := os.OpenFile(l.path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if _, err := io.WriteString(f, line+"\n"); err != nil {
		f.Truncate(fi.Size())
		return err
	}
	if err := f.Sync(); err != nil {
		f.Truncate(fi.Size())
		return err
	}
	if err := l.extend(t, line); err != nil {
		if terr := f.Truncate(fi.Size()); terr != nil {
			return fmt.Errorf("%w (and the entry could not be taken back out of the log: %v)", err, terr)
		}
		return err
	}
	return nil
}

func (l *EventLog) extend(t transport.TPM, line string) error {
	sum := sha256.Sum256([]byte(line))
	return extendPCR(t, l.pcr, sum[:])
}

// read returns the log's content for evidence; the caller holds l.mu.
func (l *EventLog) read() ([]byte, error) {
	data, err := readBounded(l.path, maxEventLog)
	if err != nil {
		return nil, fmt.Errorf("event log: %w", err)
	}
	return data, nil
}

// EventLogData is a parsed AAEL: the INIT value and every line, the INIT
// line first.
type EventLogData struct {
	Init  []byte
	Lines []string
}

// ParseEventLog parses an AAEL in its raw form. Every line ends with LF
// (no CR); the first is "INIT/sha256 <64 hex digits>"; every other is an
// event of printable ASCII with a domain and an operation free of white
// space.
func ParseEventLog(data []byte) (*EventLogData, error) {
	if len(data) == 0 || data[len(data)-1] != '\n' {
		return nil, errors.New("AAEL: the log does not end with a line feed")
	}
	lines := strings.Split(string(data[:len(data)-1]), "\n")
	alg, value, ok := strings.Cut(lines[0], " ")
	if !ok || alg != "INIT/sha256" {
		return nil, fmt.Errorf("AAEL: the first line is not an INIT/sha256 entry")
	}
	init, err := hex.DecodeString(value)
	if err != nil || len(init) != sha256.Size || strings.ToLower(value) != value {
		return nil, fmt.Errorf("AAEL: the INIT value is not 64 lowercase hex digits")
	}
	for i, line := range lines[1:] {
		domain, rest, ok1 := strings.Cut(line, " ")
		op, content, ok2 := strings.Cut(rest, " ")
		if !ok1 || !ok2 {
			return nil, fmt.Errorf("AAEL: line %d is not \"<domain> <operation> <content>\"", i+2)
		}
		if err := (Event{domain, op, content}).validate(); err != nil {
			return nil, fmt.Errorf("AAEL: line %d: %v", i+2, err)
		}
	}
	return &EventLogData{Init: init, Lines: lines}, nil
}

// Events returns the event entries, the INIT entry left out.
func (d *EventLogData) Events() []Event {
	var out []Event
	for _, line := range d.Lines[1:] {
		domain, rest, _ := strings.Cut(line, " ")
		op, content, _ := strings.Cut(rest, " ")
		out = append(out, Event{domain, op, content})
	}
	return out
}

// Replay returns the PCR value the log leads to from its INIT value.
func (d *EventLogData) Replay() []byte {
	pcr := append([]byte(nil), d.Init...)
	for _, line := range d.Lines {
		entry := sha256.Sum256([]byte(line))
		next := sha256.Sum256(append(pcr, entry[:]...))
		pcr = next[:]
	}
	return pcr
}

func readPCR(ctx context.Context, t transport.TPM, index int) ([]byte, error) {
	pcrs, err := readPCRs(ctx, t)
	if err != nil {
		return nil, err
	}
	return pcrs[index], nil
}

func extendPCR(t transport.TPM, index int, digest []byte) error {
	_, err := tpm2.PCRExtend{
		PCRHandle: tpm2.AuthHandle{Handle: tpm2.TPMHandle(uint32(index)), Auth: tpm2.PasswordAuth(nil)},
		Digests: tpm2.TPMLDigestValues{Digests: []tpm2.TPMTHA{{
			HashAlg: tpm2.TPMAlgSHA256,
			Digest:  digest,
		}}},
	}.Execute(t)
	if errors.Is(err, tpm2.TPMRCLocality) {
		return fmt.Errorf("tpm: extend PCR %d: %w: the TPM allows it only from a higher locality than an operating system's (PCRs 17-22 are for the dynamic root of trust); log events to a PCR 0-15 instead", index, errdefs.ErrInvalidConfig)
	}
	if err != nil {
		return fmt.Errorf("tpm: extend PCR %d: %w", index, err)
	}
	return nil
}

// readBounded reads a file of at most limit bytes.
func readBounded(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("%s is larger than %d bytes", path, limit)
	}
	return data, nil
}
