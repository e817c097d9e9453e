package attest

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
)

// snpReportSize is the size of an SEV-SNP ATTESTATION_REPORT (SNP firmware
// ABI, table "ATTESTATION_REPORT Structure"), signature included.
const snpReportSize = 0x4A0

// snpEvidence is guest-components' SnpEvidence: the report as the sev
// crate's AttestationReport serializes through serde (field by field, byte
// arrays as arrays of numbers) and the certificate table from the auxblob,
// which Trustee's snp verifier reads back with the same types.
func snpEvidence(report, auxblob []byte) (json.RawMessage, error) {
	if len(report) < snpReportSize {
		return nil, fmt.Errorf("snp report is %d bytes, want %d", len(report), snpReportSize)
	}
	r := report[:snpReportSize]
	ev := struct {
		AttestationReport snpReport       `json:"attestation_report"`
		CertChain         *[]snpCertEntry `json:"cert_chain"`
	}{AttestationReport: parseSNPReport(r)}
	if len(auxblob) > 0 {
		certs, err := parseSNPCertTable(auxblob)
		if err != nil {
			return nil, err
		}
		ev.CertChain = &certs
	}
	return json.Marshal(ev)
}

// byteArray marshals as a JSON array of numbers, as serde does for [u8; N]
// and Vec<u8> (encoding/json would write base64).
type byteArray []byte

func (b byteArray) MarshalJSON() ([]byte, error) {
	var sb strings.Builder
	sb.Grow(len(b)*4 + 2)
	sb.WriteByte('[')
	for i, v := range b {
		if i > 0 {
			sb.WriteByte(',')
		}
		sb.WriteString(strconv.Itoa(int(v)))
	}
	sb.WriteByte(']')
	return []byte(sb.String()), nil
}

type snpTCB struct {
	Bootloader uint8     `json:"bootloader"`
	TEE        uint8     `json:"tee"`
	Reserved   byteArray `json:"_reserved"`
	SNP        uint8     `json:"snp"`
	Microcode  uint8     `json:"microcode"`
}

func parseTCB(b []byte) snpTCB {
	return snpTCB{Bootloader: b[0], TEE: b[1], Reserved: byteArray(b[2:6]), SNP: b[6], Microcode: b[7]}
}

type snpSignature struct {
	R        byteArray `json:"r"`
	S        byteArray `json:"s"`
	Reserved byteArray `json:"_reserved"`
}

// snpReport mirrors sev::firmware::guest::AttestationReport member for
// member, in its order.
type snpReport struct {
	Version         uint32       `json:"version"`
	GuestSVN        uint32       `json:"guest_svn"`
	Policy          uint64       `json:"policy"`
	FamilyID        byteArray    `json:"family_id"`
	ImageID         byteArray    `json:"image_id"`
	VMPL            uint32       `json:"vmpl"`
	SigAlgo         uint32       `json:"sig_algo"`
	CurrentTCB      snpTCB       `json:"current_tcb"`
	PlatInfo        uint64       `json:"plat_info"`
	AuthorKeyEn     uint32       `json:"_author_key_en"`
	Reserved0       uint32       `json:"_reserved_0"`
	ReportData      byteArray    `json:"report_data"`
	Measurement     byteArray    `json:"measurement"`
	HostData        byteArray    `json:"host_data"`
	IDKeyDigest     byteArray    `json:"id_key_digest"`
	AuthorKeyDigest byteArray    `json:"author_key_digest"`
	ReportID        byteArray    `json:"report_id"`
	ReportIDMA      byteArray    `json:"report_id_ma"`
	ReportedTCB     snpTCB       `json:"reported_tcb"`
	Reserved1       byteArray    `json:"_reserved_1"`
	ChipID          byteArray    `json:"chip_id"`
	CommittedTCB    snpTCB       `json:"committed_tcb"`
	CurrentBuild    uint8        `json:"current_build"`
	CurrentMinor    uint8        `json:"current_minor"`
	CurrentMajor    uint8        `json:"current_major"`
	Reserved2       uint8        `json:"_reserved_2"`
	CommittedBuild  uint8        `json:"committed_build"`
	CommittedMinor  uint8        `json:"committed_minor"`
	CommittedMajor  uint8        `json:"committed_major"`
	Reserved3       uint8        `json:"_reserved_3"`
	LaunchTCB       snpTCB       `json:"launch_tcb"`
	Reserved4       byteArray    `json:"_reserved_4"`
	Signature       snpSignature `json:"signature"`
}

// parseSNPReport reads the little-endian report at the ABI's offsets.
func parseSNPReport(r []byte) snpReport {
	le := binary.LittleEndian
	return snpReport{
		Version:         le.Uint32(r[0x00:]),
		GuestSVN:        le.Uint32(r[0x04:]),
		Policy:          le.Uint64(r[0x08:]),
		FamilyID:        r[0x10:0x20],
		ImageID:         r[0x20:0x30],
		VMPL:            le.Uint32(r[0x30:]),
		SigAlgo:         le.Uint32(r[0x34:]),
		CurrentTCB:      parseTCB(r[0x38:0x40]),
		PlatInfo:        le.Uint64(r[0x40:]),
		AuthorKeyEn:     le.Uint32(r[0x48:]),
		Reserved0:       le.Uint32(r[0x4C:]),
		ReportData:      r[0x50:0x90],
		Measurement:     r[0x90:0xC0],
		HostData:        r[0xC0:0xE0],
		IDKeyDigest:     r[0xE0:0x110],
		AuthorKeyDigest: r[0x110:0x140],
		ReportID:        r[0x140:0x160],
		ReportIDMA:      r[0x160:0x180],
		ReportedTCB:     parseTCB(r[0x180:0x188]),
		Reserved1:       r[0x188:0x1A0],
		ChipID:          r[0x1A0:0x1E0],
		CommittedTCB:    parseTCB(r[0x1E0:0x1E8]),
		CurrentBuild:    r[0x1E8],
		CurrentMinor:    r[0x1E9],
		CurrentMajor:    r[0x1EA],
		Reserved2:       r[0x1EB],
		CommittedBuild:  r[0x1EC],
		CommittedMinor:  r[0x1ED],
		CommittedMajor:  r[0x1EE],
		Reserved3:       r[0x1EF],
		LaunchTCB:       parseTCB(r[0x1F0:0x1F8]),
		Reserved4:       r[0x1F8:0x2A0],
		Signature: snpSignature{
			R:        r[0x2A0:0x2E8],
			S:        r[0x2E8:0x330],
			Reserved: r[0x330:0x4A0],
		},
	}
}

// snpCertEntry is the sev crate's CertTableEntry: cert_type is a unit
// variant name, or {"OTHER":"<uuid>"} for a GUID it does not know.
type snpCertEntry struct {
	CertType any       `json:"cert_type"`
	Data     byteArray `json:"data"`
}

var snpCertTypes = map[string]string{
	"c0b406a4-a803-4952-9743-3fb6014cd0ae": "ARK",
	"4ab7b379-bbac-4fe4-a02f-05aef327c782": "ASK",
	"63da758d-e664-4564-adc5-f4b93be8accd": "VCEK",
	"a8074bc2-a25a-483e-aae6-39c045a0b8a1": "VLEK",
	"92f81bc3-5811-4d3d-97ff-d19f88dc67ea": "CRL",
}

// parseSNPCertTable parses the GHCB extended-report certificate table the
// kernel returns as auxblob: entries of {GUID, u32 offset, u32 length}
// ended by an all-zero entry, offsets relative to the table.
func parseSNPCertTable(b []byte) ([]snpCertEntry, error) {
	const entrySize = 24
	var out []snpCertEntry
	for off := 0; ; off += entrySize {
		if off+entrySize > len(b) {
			return nil, fmt.Errorf("snp certificate table: no terminating entry")
		}
		e := b[off : off+entrySize]
		guid := e[:16]
		certOff := binary.LittleEndian.Uint32(e[16:])
		certLen := binary.LittleEndian.Uint32(e[20:])
		if isZero(guid) && certOff == 0 && certLen == 0 {
			return out, nil
		}
		end := uint64(certOff) + uint64(certLen)
		if end > uint64(len(b)) {
			return nil, fmt.Errorf("snp certificate table: entry %d points past the table", off/entrySize)
		}
		id := formatUUID(guid)
		var ct any = map[string]string{"OTHER": id}
		if name, ok := snpCertTypes[id]; ok {
			ct = name
		}
		out = append(out, snpCertEntry{CertType: ct, Data: byteArray(b[certOff:end])})
	}
}

func isZero(b []byte) bool {
	for _, v := range b {
		if v != 0 {
			return false
		}
	}
	return true
}

// formatUUID renders 16 bytes in RFC 4122 byte order, as uuid::Uuid's
// from_bytes followed by to_string does.
func formatUUID(b []byte) string {
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}
