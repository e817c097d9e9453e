package attest

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// fakeTSM plays the kernel's part of configfs-tsm, since no TDX or SEV-SNP
// guest exists to test against: mkdir yields an entry with provider and
// generation attributes, and outblob is a FIFO whose writer builds the
// report from the inblob the attester wrote, as the kernel does when
// outblob is read.
type fakeTSM struct {
	t          *testing.T
	provider   string
	generation string
	auxblob    []byte
	report     func(inblob []byte) []byte

	mu      sync.Mutex
	created []string
	removed []string
	wg      sync.WaitGroup
}

func (f *fakeTSM) ops(ccel string) tsmOps {
	return tsmOps{newEntry: f.mkdir, removeEntry: f.rmdir, ccelPath: ccel}
}

func (f *fakeTSM) mkdir(dir string) (string, error) {
	entry, err := os.MkdirTemp(dir, "entry-")
	if err != nil {
		return "", err
	}
	write := func(name string, data []byte) {
		if err := os.WriteFile(filepath.Join(entry, name), data, 0o600); err != nil {
			f.t.Fatal(err)
		}
	}
	write("provider", []byte(f.provider+"\n"))
	write("generation", []byte(f.generation+"\n"))
	if f.auxblob != nil {
		write("auxblob", f.auxblob)
	}
	out := filepath.Join(entry, "outblob")
	if err := syscall.Mkfifo(out, 0o600); err != nil {
		f.t.Fatal(err)
	}
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		// Wait for the attester to open outblob; give up once the entry is
		// gone (the attester failed before reading it).
		var w *os.File
		for {
			var err error
			w, err = os.OpenFile(out, os.O_WRONLY|syscall.O_NONBLOCK, 0)
			if err == nil {
				break
			}
			if _, serr := os.Stat(out); serr != nil {
				return
			}
			time.Sleep(time.Millisecond)
		}
		defer w.Close()
		in, _ := os.ReadFile(filepath.Join(entry, "inblob"))
		w.Write(f.report(in))
	}()
	f.mu.Lock()
	f.created = append(f.created, entry)
	f.mu.Unlock()
	return entry, nil
}

func (f *fakeTSM) rmdir(entry string) error {
	f.mu.Lock()
	f.removed = append(f.removed, entry)
	f.mu.Unlock()
	return os.RemoveAll(entry)
}

func (f *fakeTSM) wait(t *testing.T) {
	f.wg.Wait()
	if strings.Join(f.created, ",") != strings.Join(f.removed, ",") {
		t.Errorf("entries created %v, removed %v", f.created, f.removed)
	}
}

func testReportData() []byte {
	rd := make([]byte, 48)
	for i := range rd {
		rd[i] = byte(i + 1)
	}
	return rd
}

func TestTSMTDX(t *testing.T) {
	ccel := filepath.Join(t.TempDir(), "CCEL")
	os.WriteFile(ccel, []byte("event log"), 0o600)
	for _, withCCEL := range []bool{true, false} {
		f := &fakeTSM{t: t, provider: "tdx_guest", generation: "1",
			report: func(in []byte) []byte { return append([]byte("TDXQUOTE"), in...) }}
		path := ccel
		if !withCCEL {
			path = filepath.Join(t.TempDir(), "absent")
		}
		a, err := newAttester("tsm", AttesterOptions{TSMDir: t.TempDir()}, f.ops(path))
		if err != nil {
			t.Fatal(err)
		}
		if a.TEE() != "tdx" {
			t.Fatalf("TEE() = %q, want tdx", a.TEE())
		}
		raw, err := a.Evidence(context.Background(), testReportData())
		if err != nil {
			t.Fatal(err)
		}
		f.wait(t)
		var ev map[string]*string
		if err := json.Unmarshal(raw, &ev); err != nil || len(ev) != 2 {
			t.Fatalf("evidence %s, want {cc_eventlog, quote}", raw)
		}
		quote, _ := base64.StdEncoding.DecodeString(*ev["quote"])
		want := append([]byte("TDXQUOTE"), testReportData()...)
		want = append(want, make([]byte, 16)...) // padded to 64 bytes
		if !bytes.Equal(quote, want) {
			t.Fatalf("quote %q, want the report over the padded report data", quote)
		}
		switch {
		case withCCEL && (ev["cc_eventlog"] == nil || *ev["cc_eventlog"] != base64.StdEncoding.EncodeToString([]byte("event log"))):
			t.Errorf("cc_eventlog = %v, want the CCEL table", ev["cc_eventlog"])
		case !withCCEL && ev["cc_eventlog"] != nil:
			t.Errorf("cc_eventlog = %q without a CCEL table, want null", *ev["cc_eventlog"])
		}
	}
}

func fakeSNPReport(in []byte) []byte {
	r := make([]byte, snpReportSize)
	binary.LittleEndian.PutUint32(r[0x00:], 2)       // version
	binary.LittleEndian.PutUint64(r[0x08:], 0x30000) // policy
	r[0x38], r[0x3E], r[0x3F] = 3, 8, 115            // current_tcb bootloader, snp, microcode
	copy(r[0x50:0x90], in)                           // report_data
	for i := 0x90; i < 0xC0; i++ {                   // measurement
		r[i] = 0xAA
	}
	r[0x1A0] = 0xC1 // chip_id
	r[0x2A0] = 0x51 // signature r
	return r
}

func snpCertTable(entries ...[]byte) []byte {
	// entries alternate GUID (16 bytes) and data.
	n := len(entries) / 2
	table := make([]byte, (n+1)*24)
	off := len(table)
	var data []byte
	for i := 0; i < n; i++ {
		copy(table[i*24:], entries[2*i])
		binary.LittleEndian.PutUint32(table[i*24+16:], uint32(off+len(data)))
		binary.LittleEndian.PutUint32(table[i*24+20:], uint32(len(entries[2*i+1])))
		data = append(data, entries[2*i+1]...)
	}
	return append(table, data...)
}

func TestTSMSNP(t *testing.T) {
	vcek := []byte{0x63, 0xda, 0x75, 0x8d, 0xe6, 0x64, 0x45, 0x64, 0xad, 0xc5, 0xf4, 0xb9, 0x3b, 0xe8, 0xac, 0xcd}
	other := []byte{0x11, 0x11, 0x11, 0x11, 0x22, 0x22, 0x33, 0x33, 0x44, 0x44, 0x55, 0x55, 0x55, 0x55, 0x55, 0x55}
	f := &fakeTSM{t: t, provider: "sev_guest", generation: "1", report: fakeSNPReport,
		auxblob: snpCertTable(vcek, []byte{0x30, 0x82, 1}, other, []byte{9})}
	a, err := newAttester("tsm", AttesterOptions{TSMDir: t.TempDir()}, f.ops(""))
	if err != nil {
		t.Fatal(err)
	}
	if a.TEE() != "snp" {
		t.Fatalf("TEE() = %q, want snp", a.TEE())
	}
	raw, err := a.Evidence(context.Background(), testReportData())
	if err != nil {
		t.Fatal(err)
	}
	f.wait(t)

	var ev struct {
		Report    json.RawMessage `json:"attestation_report"`
		CertChain []struct {
			CertType json.RawMessage `json:"cert_type"`
			Data     []int           `json:"data"`
		} `json:"cert_chain"`
	}
	if err := json.Unmarshal(raw, &ev); err != nil {
		t.Fatal(err)
	}
	// The sev crate's AttestationReport, member by member, in order.
	wantMembers := "version guest_svn policy family_id image_id vmpl sig_algo current_tcb plat_info _author_key_en _reserved_0 report_data measurement host_data id_key_digest author_key_digest report_id report_id_ma reported_tcb _reserved_1 chip_id committed_tcb current_build current_minor current_major _reserved_2 committed_build committed_minor committed_major _reserved_3 launch_tcb _reserved_4 signature"
	dec := json.NewDecoder(bytes.NewReader(ev.Report))
	dec.Token()
	var members []string
	for dec.More() {
		tok, _ := dec.Token()
		members = append(members, tok.(string))
		var skip json.RawMessage
		dec.Decode(&skip)
	}
	if strings.Join(members, " ") != wantMembers {
		t.Fatalf("report members\n%v\nwant\n%v", strings.Join(members, " "), wantMembers)
	}
	var rep struct {
		Version    int   `json:"version"`
		Policy     int   `json:"policy"`
		ReportData []int `json:"report_data"`
		Measure    []int `json:"measurement"`
		CurrentTCB struct {
			Bootloader, SNP, Microcode int
			Reserved                   []int `json:"_reserved"`
		} `json:"current_tcb"`
		ChipID    []int `json:"chip_id"`
		Signature struct {
			R, S     []int
			Reserved []int `json:"_reserved"`
		} `json:"signature"`
		Reserved4 []int `json:"_reserved_4"`
	}
	json.Unmarshal(ev.Report, &rep)
	if rep.Version != 2 || rep.Policy != 0x30000 || rep.CurrentTCB.Bootloader != 3 || rep.CurrentTCB.SNP != 8 || rep.CurrentTCB.Microcode != 115 || len(rep.CurrentTCB.Reserved) != 4 {
		t.Errorf("report fields %+v", rep)
	}
	if len(rep.ReportData) != 64 || rep.ReportData[0] != 1 || rep.ReportData[47] != 48 || rep.ReportData[48] != 0 {
		t.Errorf("report_data %v, want the padded report data as numbers", rep.ReportData)
	}
	if len(rep.Measure) != 48 || rep.Measure[0] != 0xAA || len(rep.ChipID) != 64 || rep.ChipID[0] != 0xC1 {
		t.Errorf("measurement/chip_id %v %v", rep.Measure, rep.ChipID)
	}
	if len(rep.Signature.R) != 72 || rep.Signature.R[0] != 0x51 || len(rep.Signature.S) != 72 || len(rep.Signature.Reserved) != 368 || len(rep.Reserved4) != 168 {
		t.Errorf("signature/reserved sizes %d %d %d %d", len(rep.Signature.R), len(rep.Signature.S), len(rep.Signature.Reserved), len(rep.Reserved4))
	}
	if len(ev.CertChain) != 2 {
		t.Fatalf("cert_chain has %d entries, want 2", len(ev.CertChain))
	}
	if string(ev.CertChain[0].CertType) != `"VCEK"` || len(ev.CertChain[0].Data) != 3 || ev.CertChain[0].Data[0] != 0x30 {
		t.Errorf("cert 0 = %s %v", ev.CertChain[0].CertType, ev.CertChain[0].Data)
	}
	if string(ev.CertChain[1].CertType) != `{"OTHER":"11111111-2222-3333-4444-555555555555"}` {
		t.Errorf("cert 1 type = %s", ev.CertChain[1].CertType)
	}
}

func TestTSMRefusals(t *testing.T) {
	good := func(in []byte) []byte { return append([]byte("Q"), in...) }
	tests := []struct {
		name       string
		provider   string
		generation string
		report     func([]byte) []byte
		auxblob    []byte
		reportData []byte
		want       string
	}{
		{"raced by another writer", "tdx_guest", "2", good, nil, testReportData(), "another writer"},
		{"unparsable generation", "tdx_guest", "x", good, nil, testReportData(), "generation"},
		{"report data too long", "tdx_guest", "1", good, nil, make([]byte, 65), "at most 64"},
		{"short snp report", "sev_guest", "1", good, nil, testReportData(), "want 1184"},
		{"snp cert table without terminator", "sev_guest", "1", fakeSNPReport, append(append(bytes.Repeat([]byte{7}, 16), 24, 0, 0, 0, 2, 0, 0, 0), 1, 2, 3, 4, 5, 6), testReportData(), "terminating"},
		{"snp cert table out of bounds", "sev_guest", "1", fakeSNPReport, append(append([]byte{1}, make([]byte, 15)...), 0, 1, 0, 0, 1, 0, 0, 0), testReportData(), "past the table"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := &fakeTSM{t: t, provider: tt.provider, generation: tt.generation, report: tt.report, auxblob: tt.auxblob}
			a, err := newAttester("tsm", AttesterOptions{TSMDir: t.TempDir()}, f.ops(""))
			if err != nil {
				t.Fatal(err)
			}
			_, err = a.Evidence(context.Background(), tt.reportData)
			f.wait(t)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want it to mention %q", err, tt.want)
			}
		})
	}

	f := &fakeTSM{t: t, provider: "foo_guest", generation: "1", report: good}
	_, err := newAttester("tsm", AttesterOptions{TSMDir: t.TempDir()}, f.ops(""))
	f.wait(t)
	if err == nil || !strings.Contains(err.Error(), "foo_guest") {
		t.Fatalf("unknown provider: err = %v", err)
	}
	if _, err := NewAttester("tsm", AttesterOptions{TSMDir: filepath.Join(t.TempDir(), "absent")}); err == nil {
		t.Fatal("tsm attester without configfs-tsm succeeded")
	}
}
