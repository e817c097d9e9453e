package attest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"
	"sync"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
	"github.com/google/go-tpm/tpm2/transport/linuxtpm"
)

// AKHandle is where the attestation key persists, as guest-components'
// TPM attester expects it.
const AKHandle = 0x81010002

const (
	tpmPCRCount = 24
	// tpmQualifyingDataSize is how much of the report data goes into the
	// quote's qualifyingData (DESIGN.md: its first 32 bytes).
	tpmQualifyingDataSize = 32
	// quoteAttempts bounds re-quoting when a PCR is extended between the
	// quote and the PCR read.
	quoteAttempts = 3
)

// akTemplate is an RSA-2048 restricted signing key with the RSASSA-SHA256
// scheme fixed in the key, so it signs only TPM-generated structures.
var akTemplate = tpm2.TPMTPublic{
	Type:    tpm2.TPMAlgRSA,
	NameAlg: tpm2.TPMAlgSHA256,
	ObjectAttributes: tpm2.TPMAObject{
		FixedTPM:            true,
		FixedParent:         true,
		SensitiveDataOrigin: true,
		UserWithAuth:        true,
		NoDA:                true,
		Restricted:          true,
		SignEncrypt:         true,
	},
	Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgRSA, &tpm2.TPMSRSAParms{
		Symmetric: tpm2.TPMTSymDefObject{Algorithm: tpm2.TPMAlgNull},
		Scheme: tpm2.TPMTRSAScheme{
			Scheme:  tpm2.TPMAlgRSASSA,
			Details: tpm2.NewTPMUAsymScheme(tpm2.TPMAlgRSASSA, &tpm2.TPMSSigSchemeRSASSA{HashAlg: tpm2.TPMAlgSHA256}),
		},
		KeyBits: 2048,
	}),
	Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgRSA, &tpm2.TPM2BPublicKeyRSA{Buffer: make([]byte, 256)}),
}

// tpmAttester quotes PCRs 0-23 of a TPM with the persistent AK.
type tpmAttester struct {
	path string // device or mssim://HOST:PORT
	// log, if set, is the event log sent with each quote.
	log *EventLog
	// initData, if set, is bound into PCR 8 before the first quote.
	initData *InitData
	bindMu   sync.Mutex
	bound    bool
}

func newTPMAttester(path string, opts AttesterOptions) (*tpmAttester, error) {
	if strings.HasPrefix(path, mssimScheme) {
		if _, err := mssimAddr(path); err != nil {
			return nil, err
		}
	}
	return &tpmAttester{path: path, log: opts.EventLog, initData: opts.InitData}, nil
}

func (a *tpmAttester) TEE() string { return "tpm" }

// tpmEvidence is the evidence Trustee's tpm verifier deserializes.
type tpmEvidence struct {
	TPMQuote struct {
		Signature string   `json:"signature"` // std-base64 TPMT_SIGNATURE
		Message   string   `json:"message"`   // std-base64 TPMS_ATTEST
		PCRs      []string `json:"pcrs"`      // SHA-256 PCRs 0..23, lowercase hex
	} `json:"tpm_quote"`
	AKPublic string `json:"ak_public"` // std-base64 DER SubjectPublicKeyInfo
	// AAEventLog is std-base64 of the raw AAEL whose entries were
	// extended into a PCR of this quote, when the guest keeps one.
	// Trustee's verifier ignores members it does not know.
	AAEventLog string `json:"aa_eventlog,omitempty"`
}

// Evidence quotes SHA-256 PCRs 0-23 with the first 32 bytes of reportData
// as qualifyingData. The PCR values are read after the quote and must hash
// to its pcrDigest; if a PCR moved in between, the quote is taken again.
// Init-data is bound into PCR 8 before the first quote, and the event log,
// if any, is read with no event appended between the quote and the read.
func (a *tpmAttester) Evidence(ctx context.Context, reportData []byte) (json.RawMessage, error) {
	if len(reportData) < tpmQualifyingDataSize {
		return nil, fmt.Errorf("tpm: report data is %d bytes, want at least %d", len(reportData), tpmQualifyingDataSize)
	}
	t, ak, der, err := openAK(ctx, a.path)
	if err != nil {
		return nil, err
	}
	defer t.Close()
	if err := a.bindInitData(ctx, t); err != nil {
		return nil, err
	}
	var eventLog []byte
	if a.log != nil {
		a.log.mu.Lock()
		defer a.log.mu.Unlock()
		// Read before quoting: no event can be appended until the quote is
		// taken, and a log read after it could show entries the quote
		// does not cover if another process appended one.
		if eventLog, err = a.log.read(); err != nil {
			return nil, err
		}
	}
	for attempt := 0; attempt < quoteAttempts; attempt++ {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		q, err := tpm2.Quote{
			SignHandle:     tpm2.AuthHandle{Handle: AKHandle, Name: ak.name, Auth: tpm2.PasswordAuth(nil)},
			QualifyingData: tpm2.TPM2BData{Buffer: reportData[:tpmQualifyingDataSize]},
			InScheme:       tpm2.TPMTSigScheme{Scheme: tpm2.TPMAlgNull},
			PCRSelect:      allPCRs(),
		}.Execute(t)
		if err != nil {
			return nil, fmt.Errorf("tpm quote: %w", err)
		}
		attest, err := q.Quoted.Contents()
		if err != nil {
			return nil, fmt.Errorf("tpm quote: %w", err)
		}
		info, err := attest.Attested.Quote()
		if err != nil {
			return nil, fmt.Errorf("tpm quote: %w", err)
		}
		pcrs, err := readPCRs(ctx, t)
		if err != nil {
			return nil, err
		}
		h := sha256.New()
		for _, v := range pcrs {
			h.Write(v)
		}
		if !bytes.Equal(h.Sum(nil), info.PCRDigest.Buffer) {
			continue
		}
		var ev tpmEvidence
		ev.TPMQuote.Signature = base64.StdEncoding.EncodeToString(tpm2.Marshal(q.Signature))
		ev.TPMQuote.Message = base64.StdEncoding.EncodeToString(q.Quoted.Bytes())
		for _, v := range pcrs {
			ev.TPMQuote.PCRs = append(ev.TPMQuote.PCRs, hex.EncodeToString(v))
		}
		ev.AKPublic = base64.StdEncoding.EncodeToString(der)
		if eventLog != nil {
			ev.AAEventLog = base64.StdEncoding.EncodeToString(eventLog)
		}
		return json.Marshal(ev)
	}
	return nil, fmt.Errorf("tpm quote: PCRs kept changing during %d quotes", quoteAttempts)
}

// bindInitData binds the init-data once per attester; a failure is
// retried at the next quote.
func (a *tpmAttester) bindInitData(ctx context.Context, t transport.TPM) error {
	if a.initData == nil {
		return nil
	}
	a.bindMu.Lock()
	defer a.bindMu.Unlock()
	if a.bound {
		return nil
	}
	if err := bindInitData(ctx, t, a.initData); err != nil {
		return err
	}
	a.bound = true
	return nil
}

// AKPublicPEM returns the TPM's attestation key as a PEM "PUBLIC KEY"
// (SubjectPublicKeyInfo), creating and persisting the key at AKHandle if
// absent. This is what a KBS operator registers (dev-kbs --tpm-ak, Trustee's
// trusted_ak_keys_dir). tpm is a device path or mssim://HOST:PORT; empty
// means /dev/tpmrm0.
func AKPublicPEM(ctx context.Context, tpm string) ([]byte, error) {
	if tpm == "" {
		tpm = defaultTPM
	}
	t, _, der, err := openAK(ctx, tpm)
	if err != nil {
		return nil, err
	}
	defer t.Close()
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), nil
}

// openAK opens the TPM at path and loads (or creates) the AK; the caller
// closes the TPM.
func openAK(ctx context.Context, path string) (transport.TPMCloser, *akInfo, []byte, error) {
	t, err := openTPM(ctx, path)
	if err != nil {
		return nil, nil, nil, err
	}
	ak, err := loadOrCreateAK(ctx, t)
	if err == nil {
		var der []byte
		if der, err = akDER(ak.public); err == nil {
			return t, ak, der, nil
		}
	}
	t.Close()
	return nil, nil, nil, err
}

func openTPM(ctx context.Context, path string) (transport.TPMCloser, error) {
	if strings.HasPrefix(path, mssimScheme) {
		return dialMSSIM(ctx, path)
	}
	t, err := linuxtpm.Open(path)
	if err != nil {
		return nil, fmt.Errorf("tpm %s: %w", path, err)
	}
	return t, nil
}

type akInfo struct {
	name   tpm2.TPM2BName
	public *tpm2.TPMTPublic
}

// loadOrCreateAK returns the key at AKHandle, creating it from akTemplate
// under the endorsement hierarchy and persisting it there if absent. A
// different key at the handle is an error: it belongs to someone else.
func loadOrCreateAK(ctx context.Context, t transport.TPM) (*akInfo, error) {
	ak, err := readAK(t)
	if err == nil || !errors.Is(err, tpm2.TPMRCHandle) {
		return ak, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	cp, err := tpm2.CreatePrimary{
		PrimaryHandle: tpm2.AuthHandle{Handle: tpm2.TPMRHEndorsement, Auth: tpm2.PasswordAuth(nil)},
		InPublic:      tpm2.New2B(akTemplate),
	}.Execute(t)
	if err != nil {
		return nil, fmt.Errorf("tpm: create attestation key: %w", err)
	}
	defer tpm2.FlushContext{FlushHandle: cp.ObjectHandle}.Execute(t) // the persistent copy is what we use
	_, err = tpm2.EvictControl{
		Auth:             tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)},
		ObjectHandle:     tpm2.NamedHandle{Handle: cp.ObjectHandle, Name: cp.Name},
		PersistentHandle: AKHandle,
	}.Execute(t)
	// Another process may have persisted the same primary key meanwhile;
	// whatever is there now is checked like any existing key.
	if err != nil && !errors.Is(err, tpm2.TPMRCNVDefined) {
		return nil, fmt.Errorf("tpm: persist attestation key at %#x: %w", AKHandle, err)
	}
	return readAK(t)
}

func readAK(t transport.TPM) (*akInfo, error) {
	rp, err := tpm2.ReadPublic{ObjectHandle: tpm2.TPMHandle(AKHandle)}.Execute(t)
	if err != nil {
		return nil, fmt.Errorf("tpm: read attestation key at %#x: %w", AKHandle, err)
	}
	pub, err := rp.OutPublic.Contents()
	if err != nil {
		return nil, fmt.Errorf("tpm: attestation key at %#x: %w", AKHandle, err)
	}
	if err := checkAK(pub); err != nil {
		return nil, fmt.Errorf("tpm: key at %#x is not usable as the attestation key: %w", AKHandle, err)
	}
	return &akInfo{name: rp.Name, public: pub}, nil
}

// checkAK accepts a key only if it can do what a verifier assumes: sign
// TPM-generated structures with RSASSA-SHA256, 2048-bit, never leaving
// this TPM.
func checkAK(pub *tpm2.TPMTPublic) error {
	if pub.Type != tpm2.TPMAlgRSA {
		return fmt.Errorf("not an RSA key")
	}
	a := pub.ObjectAttributes
	if !a.Restricted || !a.SignEncrypt || a.Decrypt || !a.FixedTPM || !a.FixedParent || !a.SensitiveDataOrigin {
		return fmt.Errorf("not a restricted, TPM-bound signing key")
	}
	rsa, err := pub.Parameters.RSADetail()
	if err != nil {
		return err
	}
	if rsa.KeyBits != 2048 {
		return fmt.Errorf("%d-bit key, want 2048", rsa.KeyBits)
	}
	if rsa.Exponent != 0 && rsa.Exponent != 65537 {
		return fmt.Errorf("public exponent %d, want 65537", rsa.Exponent)
	}
	if rsa.Scheme.Scheme != tpm2.TPMAlgRSASSA {
		return fmt.Errorf("signing scheme %v, want RSASSA", rsa.Scheme.Scheme)
	}
	ss, err := rsa.Scheme.Details.RSASSA()
	if err != nil {
		return err
	}
	if ss.HashAlg != tpm2.TPMAlgSHA256 {
		return fmt.Errorf("signing hash %v, want SHA-256", ss.HashAlg)
	}
	return nil
}

func akDER(pub *tpm2.TPMTPublic) ([]byte, error) {
	key, err := tpm2.Pub(*pub)
	if err != nil {
		return nil, fmt.Errorf("tpm: attestation key: %w", err)
	}
	der, err := x509.MarshalPKIXPublicKey(key)
	if err != nil {
		return nil, fmt.Errorf("tpm: attestation key: %w", err)
	}
	return der, nil
}

func allPCRs() tpm2.TPMLPCRSelection {
	return tpm2.TPMLPCRSelection{PCRSelections: []tpm2.TPMSPCRSelection{{
		Hash:      tpm2.TPMAlgSHA256,
		PCRSelect: []byte{0xff, 0xff, 0xff},
	}}}
}

// readPCRs reads SHA-256 PCRs 0-23. TPM2_PCR_Read returns at most eight
// digests per call and says which ones in pcrSelectionOut, so the request
// shrinks by what each answer covered.
func readPCRs(ctx context.Context, t transport.TPM) ([][]byte, error) {
	want := []byte{0xff, 0xff, 0xff}
	vals := make([][]byte, tpmPCRCount)
	for !isZero(want) {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		rsp, err := tpm2.PCRRead{PCRSelectionIn: tpm2.TPMLPCRSelection{PCRSelections: []tpm2.TPMSPCRSelection{{
			Hash: tpm2.TPMAlgSHA256, PCRSelect: append([]byte(nil), want...),
		}}}}.Execute(t)
		if err != nil {
			return nil, fmt.Errorf("tpm: read PCRs: %w", err)
		}
		digests := rsp.PCRValues.Digests
		got := 0
		for _, sel := range rsp.PCRSelectionOut.PCRSelections {
			if sel.Hash != tpm2.TPMAlgSHA256 {
				continue
			}
			for i := 0; i < tpmPCRCount && i/8 < len(sel.PCRSelect); i++ {
				if sel.PCRSelect[i/8]&(1<<(i%8)) == 0 {
					continue
				}
				if got >= len(digests) || want[i/8]&(1<<(i%8)) == 0 {
					return nil, fmt.Errorf("tpm: read PCRs: inconsistent answer")
				}
				if len(digests[got].Buffer) != sha256.Size {
					return nil, fmt.Errorf("tpm: read PCRs: PCR %d digest is %d bytes", i, len(digests[got].Buffer))
				}
				vals[i] = digests[got].Buffer
				want[i/8] &^= 1 << (i % 8)
				got++
			}
		}
		if got == 0 {
			return nil, fmt.Errorf("tpm: read PCRs: the TPM has no SHA-256 bank for PCRs %v", selected(want))
		}
	}
	return vals, nil
}

func selected(mask []byte) []int {
	var out []int
	for i := 0; i < len(mask)*8; i++ {
		if mask[i/8]&(1<<(i%8)) != 0 {
			out = append(out, i)
		}
	}
	return out
}
