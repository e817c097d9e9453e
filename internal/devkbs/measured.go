package devkbs

import (
	"bytes"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/BurntSushi/toml"
)

// Measured boot-time and runtime state a guest sends beside its evidence,
// checked against what the evidence proves: the init-data document against
// its binding in PCR 8, and the attestation-agent event log (AAEL) against
// the PCR its entries were extended into. This is an independent reading
// of the formats (Trustee's kbs/docs/initdata.md and
// confidential-containers-eventlog.md), written apart from the guest's.

// initDataPCR is where a TPM guest binds init-data: SHA-256(zeros ||
// digest), as Trustee's TPM verifier checks it.
const initDataPCR = 8

const maxInitDataBody = 1 << 20

// initData is a parsed init-data document.
type initData struct {
	algorithm string
	digest    []byte
	keys      []string // the data table's document names
}

// parseInitData reads the attest request's "init-data" member,
// {"format": "toml", "body": "<document>"}. The digest is the document's
// hash with the algorithm it names, over its bytes as sent.
func parseInitData(raw json.RawMessage) (*initData, error) {
	var doc struct {
		Format string `json:"format"`
		Body   string `json:"body"`
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&doc); err != nil {
		return nil, fmt.Errorf("not a {format, body} object: %v", err)
	}
	if doc.Format != "toml" {
		return nil, fmt.Errorf("format %q is not supported (want toml)", doc.Format)
	}
	if len(doc.Body) > maxInitDataBody {
		return nil, fmt.Errorf("body larger than %d bytes", maxInitDataBody)
	}
	var body struct {
		Version   string            `toml:"version"`
		Algorithm string            `toml:"algorithm"`
		Data      map[string]string `toml:"data"`
	}
	md, err := toml.Decode(doc.Body, &body)
	if err != nil {
		return nil, fmt.Errorf("body: %v", err)
	}
	if und := md.Undecoded(); len(und) > 0 {
		return nil, fmt.Errorf("body: unknown key %s", und[0])
	}
	if body.Version == "" {
		return nil, errors.New("body: no version")
	}
	d := &initData{algorithm: body.Algorithm}
	switch body.Algorithm {
	case "sha256":
		s := sha256.Sum256([]byte(doc.Body))
		d.digest = s[:]
	case "sha384":
		s := sha512.Sum384([]byte(doc.Body))
		d.digest = s[:]
	case "sha512":
		s := sha512.Sum512([]byte(doc.Body))
		d.digest = s[:]
	default:
		return nil, fmt.Errorf("body: algorithm %q is not sha256, sha384 or sha512", body.Algorithm)
	}
	for k := range body.Data {
		d.keys = append(d.keys, k)
	}
	return d, nil
}

// checkInitDataTPM compares init-data with its binding in the quoted PCR 8.
func checkInitDataTPM(d *initData, c *tpmClaims) error {
	if d.algorithm != "sha256" {
		return fmt.Errorf("init-data uses %s; a TPM binds only a sha256 digest into PCR %d", d.algorithm, initDataPCR)
	}
	if !c.quoted[initDataPCR] {
		return fmt.Errorf("the quote does not cover PCR %d, where init-data is bound", initDataPCR)
	}
	want := sha256.Sum256(append(make([]byte, sha256.Size), d.digest...))
	if subtle.ConstantTimeCompare(want[:], c.pcrs[initDataPCR]) != 1 {
		return fmt.Errorf("init-data does not match PCR %d: the document hashes to %x, which binds to %x, but the quote has %x", initDataPCR, d.digest, want, c.pcrs[initDataPCR])
	}
	return nil
}

// aaelEvent is one event of a replayed log.
type aaelEvent struct {
	Domain, Operation, Content string
}

// replayEventLog parses a raw AAEL and replays it: from the INIT entry's
// value, each line's SHA-256 (the INIT line's included) is extended in
// order. It returns the events after the INIT entry and the value the
// log leads to.
func replayEventLog(log []byte) ([]aaelEvent, []byte, error) {
	if len(log) == 0 || log[len(log)-1] != '\n' {
		return nil, nil, errors.New("the log does not end with a line feed")
	}
	lines := strings.Split(string(log[:len(log)-1]), "\n")
	value, ok := strings.CutPrefix(lines[0], "INIT/sha256 ")
	if !ok {
		return nil, nil, errors.New("the first entry is not INIT/sha256")
	}
	pcr, err := hex.DecodeString(value)
	if err != nil || len(pcr) != sha256.Size {
		return nil, nil, errors.New("the INIT value is not a hex SHA-256 value")
	}
	var events []aaelEvent
	for i, line := range lines {
		if i > 0 {
			f := strings.SplitN(line, " ", 3)
			if len(f) != 3 || f[0] == "" || f[1] == "" || f[2] == "" {
				return nil, nil, fmt.Errorf("entry %d is not \"<domain> <operation> <content>\"", i+1)
			}
			events = append(events, aaelEvent{f[0], f[1], f[2]})
		}
		for j := 0; j < len(line); j++ {
			if line[j] < 0x20 || line[j] > 0x7e {
				return nil, nil, fmt.Errorf("entry %d has a character that is not printable ASCII", i+1)
			}
		}
		d := sha256.Sum256([]byte(line))
		next := sha256.Sum256(append(pcr, d[:]...))
		pcr = next[:]
	}
	return events, pcr, nil
}

// checkEventLog replays the log the evidence carried and compares it with
// the quoted PCR its entries went to.
func checkEventLog(c *tpmClaims, pcr int) ([]aaelEvent, error) {
	events, final, err := replayEventLog(c.eventLog)
	if err != nil {
		return nil, fmt.Errorf("aa_eventlog: %v", err)
	}
	if !c.quoted[pcr] {
		return nil, fmt.Errorf("aa_eventlog: the quote does not cover PCR %d", pcr)
	}
	if subtle.ConstantTimeCompare(final, c.pcrs[pcr]) != 1 {
		return nil, fmt.Errorf("aa_eventlog does not match PCR %d: the log replays to %x, the quote has %x", pcr, final, c.pcrs[pcr])
	}
	return events, nil
}
