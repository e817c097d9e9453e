package attest

import (
	"encoding/binary"
	"encoding/json"
	"testing"
)

// FuzzSNPCertTable: the certificate table the kernel hands back with an
// SNP report (from the host's GHCB: the host writes it) parses into
// entries whose data lie inside the table, or fails, without panicking;
// what parses marshals into evidence.
func FuzzSNPCertTable(f *testing.F) {
	entry := func(guid []byte, off, n uint32) []byte {
		e := make([]byte, 24)
		copy(e, guid)
		binary.LittleEndian.PutUint32(e[16:], off)
		binary.LittleEndian.PutUint32(e[20:], n)
		return e
	}
	vcek := []byte{0x63, 0xda, 0x75, 0x8d, 0xe6, 0x64, 0x45, 0x64, 0xad, 0xc5, 0xf4, 0xb9, 0x3b, 0xe8, 0xac, 0xcd}
	table := append(append(entry(vcek, 48, 4), entry(nil, 0, 0)...), "cert"...)
	f.Add(table)
	f.Add(entry(nil, 0, 0))
	f.Add(append(entry(vcek, 0xffffffff, 0xffffffff), entry(nil, 0, 0)...))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		entries, err := parseSNPCertTable(b)
		if err != nil {
			return
		}
		for _, e := range entries {
			if len(e.Data) > len(b) {
				t.Fatalf("entry of %d bytes from a table of %d", len(e.Data), len(b))
			}
		}
		if _, err := json.Marshal(entries); err != nil {
			t.Fatal(err)
		}
		if _, err := snpEvidence(make([]byte, 1184), b); err != nil && len(entries) > 0 {
			t.Logf("evidence: %v", err)
		}
	})
}
