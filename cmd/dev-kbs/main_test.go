package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/guest-puller/guest-puller/attest"
	"github.com/guest-puller/guest-puller/internal/devkbs/devkbstest"
	"github.com/guest-puller/guest-puller/internal/errdefs"
)

func TestRunUsage(t *testing.T) {
	dir := t.TempDir()
	badPCRs := devkbstest.WriteFile(t, "pcrs.json", []byte(`{"99":["00"]}`))
	tests := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"help", []string{"--help"}, 0, "usage: dev-kbs"},
		{"no resources", nil, 2, "--resources is required"},
		{"stray argument", []string{"--resources", dir, "x"}, 2, "unexpected argument"},
		{"half TLS", []string{"--resources", dir, "--tls-cert", "c.pem"}, 2, "go together"},
		{"bad PCR file", []string{"--resources", dir, "--pcrs", badPCRs}, 2, "not a PCR index"},
		{"missing AK file", []string{"--resources", dir, "--tpm-ak", filepath.Join(dir, "absent.pem")}, 2, "absent.pem"},
		{"missing resources dir", []string{"--resources", filepath.Join(dir, "absent")}, 2, "resources"},
		{"zero session TTL", []string{"--resources", dir, "--session-ttl", "0s"}, 2, "must be positive"},
		{"unknown flag", []string{"--resources", dir, "--frobnicate"}, 2, "frobnicate"},
		{"unusable address", []string{"--resources", dir, "--listen", "256.1.1.1:1"}, 1, "256.1.1.1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := run(context.Background(), tt.args, &stdout, &stderr)
			if code != tt.code {
				t.Fatalf("exit %d, want %d; stderr: %s", code, tt.code, stderr.String())
			}
			if out := stdout.String() + stderr.String(); !strings.Contains(out, tt.want) {
				t.Fatalf("output %q, want %q", out, tt.want)
			}
		})
	}
}

// selfSigned writes a certificate for 127.0.0.1 and its key.
func selfSigned(t *testing.T) (certFile, keyFile string, certPEM []byte) {
	t.Helper()
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "dev-kbs"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	kd, _ := x509.MarshalPKCS8PrivateKey(k)
	certPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	return devkbstest.WriteFile(t, "cert.pem", certPEM),
		devkbstest.WriteFile(t, "key.pem", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kd})),
		certPEM
}

// TestDevKBSBinary runs the real dev-kbs binary over TLS and fetches a KEK
// with TPM evidence from swtpm, as guest-puller would.
func TestDevKBSBinary(t *testing.T) {
	bin := devkbstest.BuildDevKBS(t)
	tpm := devkbstest.StartSwtpm(t)
	ctx := context.Background()
	akPEM, err := attest.AKPublicPEM(ctx, tpm.URI)
	if err != nil {
		t.Fatal(err)
	}
	akFile := devkbstest.WriteFile(t, "ak.pem", akPEM)

	resources := t.TempDir()
	kek := make([]byte, 32)
	rand.Read(kek)
	for name, data := range map[string][]byte{"default/key/1": kek, "default/policy/p": []byte("{}")} {
		p := filepath.Join(resources, name)
		os.MkdirAll(filepath.Dir(p), 0o700)
		os.WriteFile(p, data, 0o600)
	}
	zero := strings.Repeat("00", 32)
	goodPCRs := devkbstest.WriteFile(t, "pcrs.json", []byte(`{"0":["`+zero+`"],"7":["`+strings.Repeat("11", 32)+`","`+zero+`"]}`))
	badPCRs := devkbstest.WriteFile(t, "bad.json", []byte(`{"0":["`+strings.Repeat("11", 32)+`"]}`))
	rules := devkbstest.WriteFile(t, "rules.json", []byte(`{"rules":[{"tee":["tpm"],"resources":["default/key/*"]}]}`))
	certFile, keyFile, certPEM := selfSigned(t)

	att, err := attest.NewAttester("tpm", attest.AttesterOptions{TPM: tpm.URI})
	if err != nil {
		t.Fatal(err)
	}
	kbs := devkbstest.StartDevKBS(t, bin, "--resources", resources, "--tpm-ak", akFile,
		"--pcrs", goodPCRs, "--rules", rules, "--tls-cert", certFile, "--tls-key", keyFile)
	if !strings.HasPrefix(kbs.URL, "https://127.0.0.1:") {
		t.Fatalf("dev-kbs URL %q", kbs.URL)
	}

	c, err := attest.NewClient(kbs.URL, att, attest.ClientOptions{CACert: certPEM})
	if err != nil {
		t.Fatal(err)
	}
	got, err := c.GetResource(ctx, "kbs:///default/key/1")
	if err != nil {
		t.Fatalf("GetResource: %v\ndev-kbs log:\n%s", err, kbs.Log())
	}
	if !bytes.Equal(got, kek) {
		t.Fatal("fetched KEK differs from the resource file")
	}

	// The rules keep the policy from tpm evidence; dev-kbs logs why.
	_, err = c.GetResource(ctx, "kbs:///default/policy/p")
	if !errors.Is(err, errdefs.ErrDecrypt) || !strings.Contains(err.Error(), "not readable by tpm evidence") {
		t.Fatalf("rules: %v", err)
	}
	log := kbs.Log()
	if !strings.Contains(log, "refused") || !strings.Contains(log, "not readable by tpm evidence") {
		t.Fatalf("refusal not logged:\n%s", log)
	}
	if strings.Contains(log, hex.EncodeToString(kek)) || strings.Contains(log, base64.StdEncoding.EncodeToString(kek)) || strings.Contains(log, "eyJ") {
		t.Fatalf("dev-kbs log holds a secret:\n%s", log)
	}

	// Without the pinned certificate, TLS fails.
	c2, _ := attest.NewClient(kbs.URL, att, attest.ClientOptions{})
	if _, err := c2.GetResource(ctx, "kbs:///default/key/1"); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("unpinned TLS: %v", err)
	}

	refusals := []struct {
		name string
		args []string
		want string
	}{
		{"PCR reference not met", []string{"--tpm-ak", akFile, "--pcrs", badPCRs}, "PCR 0 value " + zero + " is not in the reference set"},
		{"AK not registered", nil, "attestation key is not registered"},
	}
	for _, tt := range refusals {
		t.Run(tt.name, func(t *testing.T) {
			k := devkbstest.StartDevKBS(t, bin, append([]string{"--resources", resources}, tt.args...)...)
			c, err := attest.NewClient(k.URL, att, attest.ClientOptions{})
			if err != nil {
				t.Fatal(err)
			}
			_, err = c.GetResource(ctx, "kbs:///default/key/1")
			if !errors.Is(err, errdefs.ErrDecrypt) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want %q", err, tt.want)
			}
			if !strings.Contains(k.Log(), tt.want) {
				t.Fatalf("dev-kbs did not log the reason:\n%s", k.Log())
			}
		})
	}
}
