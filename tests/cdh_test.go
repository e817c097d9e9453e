package tests

// Issue 9: guest-puller as the confidential-data-hub (CDH). The binary is
// started as kata-agent starts CDH (by the name confidential-data-hub, with
// -c cdh.toml), and called as kata-agent calls it: ttrpc clients of CDH's
// four services built from guest-components' api.proto field numbers
// (api/cdhpb; api.TestCDHWireContract pins the numbers). dev-kbs is the
// KBS, swtpm the guest's TPM.
//
// The attestation-agent cannot run here: TestCDHDropIn serves its ttrpc
// API (attestation_agent.AttestationAgentService, from the upstream proto's
// field numbers) from the test process, producing evidence with
// guest-puller's own TPM attester over swtpm and keeping its event log, so
// dev-kbs still verifies a real quote and replays a real log.

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/ttrpc"
	rspec "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/guest-puller/guest-puller/api/cdhpb"
	"github.com/guest-puller/guest-puller/attest"
	"github.com/guest-puller/guest-puller/attest/aapb"
	"github.com/guest-puller/guest-puller/internal/devkbs/devkbstest"
	"github.com/guest-puller/guest-puller/internal/sealedsecret"
	"github.com/guest-puller/guest-puller/internal/testutil"
	"github.com/guest-puller/guest-puller/internal/testutil/isolate"
)

const (
	cdhPolicyURI   = "kbs:///default/security-policy/test"
	cdhAuthURI     = "kbs:///default/credential/test"
	cdhSecretURI   = "kbs:///default/app/secret"
	cdhSigningKID  = "kbs:///default/sealed-secret-key/1"
	cdhEnvelopeKEK = "kbs:///default/envelope-kek/1"
	cdhCredURI     = "kbs:///default/kms-credential/1"
	cdhSecret      = "resource only an attested guest reads"
	cdhCredential  = `{"access_key":"only-for-the-guest"}`
)

// cdhWorld is what the CDH tests share: a registry with authentication
// holding an image encrypted for the attestation-agent key provider, a
// swtpm whose AK dev-kbs trusts, and dev-kbs's resources: the KEK, the
// policy, the registry credentials, a secret, the sealed-secret signing key
// and an envelope KEK.
type cdhWorld struct {
	reg       *testutil.Registry
	tpm       *devkbstest.Swtpm
	akFile    string
	resources string
	kek       []byte
	signer    *ecdsa.PrivateKey
	envKEK    []byte
	encRef    string
	encDigest string
}

func newCDHWorld(t *testing.T) *cdhWorld {
	t.Helper()
	testutil.Need(t, "swtpm", "skopeo", "umoci", "docker-registry")
	w := &cdhWorld{resources: t.TempDir()}
	w.reg = testutil.StartRegistry(t, testutil.RegistryOptions{User: "cdh-user", Password: "pw-" + kbsRandomHex(t)})
	w.tpm = devkbstest.StartSwtpm(t)
	w.akFile = akPEMFile(t, w.tpm)

	w.kek = make([]byte, 32)
	w.envKEK = make([]byte, 32)
	rand.Read(w.kek)
	rand.Read(w.envKEK)
	w.signer, _ = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	jwk, err := sealedsecret.PublicJWK(w.signer)
	if err != nil {
		t.Fatal(err)
	}
	auth := base64.StdEncoding.EncodeToString([]byte(w.reg.User + ":" + w.reg.Password))
	for name, data := range map[string][]byte{
		"default/key/1":                w.kek,
		"default/security-policy/test": []byte(`{"default":[{"type":"reject"}],"transports":{"docker":{"` + w.reg.Host + `/cdh":[{"type":"encrypted"}]}}}`),
		"default/credential/test":      []byte(fmt.Sprintf(`{"auths":{%q:{"auth":%q}}}`, w.reg.Host, auth)),
		"default/app/secret":           []byte(cdhSecret),
		"default/sealed-secret-key/1":  jwk,
		"default/envelope-kek/1":       w.envKEK,
		"default/kms-credential/1":     []byte(cdhCredential),
	} {
		testutil.WriteResource(t, w.resources, name, data)
	}

	// The image sets HOME itself: the bundle keeps it (runtime spec: Env
	// verbatim), though the passwd entry of its user says /root.
	src := testutil.BuildImage(t, testutil.ImageSpec{
		Layers: [][]byte{
			testutil.Tar(t,
				testutil.Dir("etc/", 0o755),
				testutil.File("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n", 0o644),
				testutil.Dir("bin/", 0o755),
				testutil.File("bin/app", "#!/bin/sh\necho cdh\n", 0o755),
			),
			testutil.Tar(t, testutil.Dir("data/", 0o755), testutil.File("data/model.bin", "weights for attested guests only\n", 0o600)),
		},
		Config: []string{"--config.entrypoint=/bin/app", "--config.env=HOME=/data", "--config.env=MODE=cdh"},
	})
	provider := testutil.WriteKeyProviderConfig(t, bins["guest-puller"], "keyprovider")
	enc := testutil.EncryptLayout(t, src, "enc", provider, []string{"attestation-agent:keypath=" + writeKEK(t, w.kek) + "::keyid=" + kbsKeyID})
	w.encRef = w.reg.Push(t, enc, "cdh/app:1")
	_, w.encDigest = testutil.ParseManifest(t, w.reg.RawManifest(t, "cdh/app", "1"))
	return w
}

// startKBS runs dev-kbs on the world's resources, trusting its AK.
func (w *cdhWorld) startKBS(t *testing.T, extra ...string) *devkbstest.DevKBS {
	t.Helper()
	args := append([]string{"--resources", w.resources, "--tpm-ak", w.akFile}, extra...)
	return devkbstest.StartDevKBS(t, bins["dev-kbs"], args...)
}

// config writes a cdh.toml: every [image] key CDH reads, each URI a
// kbs:/// resource or a file:// one.
func (w *cdhWorld) config(t *testing.T, dir, kbsURL string, extra string) string {
	t.Helper()
	regConf := filepath.Join(dir, "registries.conf")
	sigstore := filepath.Join(dir, "sigstore.yaml")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	for p, data := range map[string]string{
		regConf:  fmt.Sprintf("[[registry]]\nlocation = %q\ninsecure = true\n", w.reg.Host),
		sigstore: "default-docker:\n  use-sigstore-attachments: true\n",
	} {
		if err := os.WriteFile(p, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	cfg := fmt.Sprintf(`socket = "unix://%s"

[kbc]
name = "cc_kbc"
url = %q

[image]
work_dir = %q
image_security_policy_uri = %q
authenticated_registry_credentials_uri = %q
registry_configuration_uri = "file://%s"
sigstore_config_uri = "file://%s"
max_concurrent_layer_downloads_per_image = 2
%s`, filepath.Join(dir, "run", "cdh.sock"), kbsURL, filepath.Join(dir, "image"), cdhPolicyURI, cdhAuthURI, regConf, sigstore, extra)
	p := filepath.Join(dir, "cdh.toml")
	if err := os.WriteFile(p, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { testutil.UnmountUnder(t, dir) })
	return p
}

// testAgent serves the attestation-agent's ttrpc API from the test: a
// TPM attester over swtpm that keeps an event log, as the agent does.
type testAgent struct {
	att      attest.Attester
	log      *attest.EventLog
	evidence atomic.Int32
	events   atomic.Int32
}

func (a *testAgent) GetEvidence(ctx context.Context, req *aapb.GetEvidenceRequest) (*aapb.GetEvidenceResponse, error) {
	a.evidence.Add(1)
	ev, err := a.att.Evidence(ctx, req.RuntimeData)
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	return &aapb.GetEvidenceResponse{Evidence: ev}, nil
}

func (a *testAgent) GetTeeType(context.Context, *aapb.GetTeeTypeRequest) (*aapb.GetTeeTypeResponse, error) {
	return &aapb.GetTeeTypeResponse{Tee: a.att.TEE()}, nil
}

func (a *testAgent) ExtendRuntimeMeasurement(ctx context.Context, req *aapb.ExtendRuntimeMeasurementRequest) (*aapb.ExtendRuntimeMeasurementResponse, error) {
	if req.RegisterIndex != nil && int(*req.RegisterIndex) != a.log.PCR() {
		return nil, status.Errorf(codes.InvalidArgument, "this agent logs into PCR %d", a.log.PCR())
	}
	if err := a.log.Measure(ctx, attest.Event{Domain: req.Domain, Operation: req.Operation, Content: req.Content}); err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	a.events.Add(1)
	return &aapb.ExtendRuntimeMeasurementResponse{Result: aapb.RuntimeMeasurementResult_OK}, nil
}

func (a *testAgent) GetAdditionalEvidence(context.Context, *aapb.GetAdditionalEvidenceRequest) (*aapb.GetEvidenceResponse, error) {
	return nil, status.Error(codes.Unimplemented, "no additional TEE")
}

func (a *testAgent) GetToken(context.Context, *aapb.GetTokenRequest) (*aapb.GetTokenResponse, error) {
	return nil, status.Error(codes.Unimplemented, "not used by CDH")
}

func (a *testAgent) BindInitData(context.Context, *aapb.BindInitDataRequest) (*aapb.BindInitDataResponse, error) {
	return nil, status.Error(codes.Unimplemented, "not used by CDH")
}

func (a *testAgent) GetAdditionalTees(context.Context, *aapb.GetAdditionalTeesRequest) (*aapb.GetAdditionalTeesResponse, error) {
	return &aapb.GetAdditionalTeesResponse{}, nil
}

func startTestAgent(t *testing.T, tpm *devkbstest.Swtpm, sock, logPath string) *testAgent {
	t.Helper()
	ctx := context.Background()
	el, err := attest.OpenEventLog(ctx, tpm.URI, logPath, attest.DefaultTPMEventLogPCR)
	if err != nil {
		t.Fatal(err)
	}
	att, err := attest.NewAttester("tpm", attest.AttesterOptions{TPM: tpm.URI, EventLog: el})
	if err != nil {
		t.Fatal(err)
	}
	a := &testAgent{att: att, log: el}
	srv, err := ttrpc.NewServer()
	if err != nil {
		t.Fatal(err)
	}
	aapb.RegisterAttestationAgentServiceService(srv, a)
	if err := os.MkdirAll(filepath.Dir(sock), 0o700); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ctx, l)
	t.Cleanup(func() { srv.Close() })
	return a
}

// cdhProc is a running confidential-data-hub.
type cdhProc struct {
	cmd    *exec.Cmd
	logs   *testutil.SyncBuffer
	client *ttrpc.Client
}

// startCDH starts bin with args as kata-agent starts CDH (its
// launch_process: OCICRYPT_KEYPROVIDER_CONFIG set, the socket path removed
// first) and waits, as kata-agent does, for the socket to exist.
func startCDH(t *testing.T, socket string, bin string, args ...string) *cdhProc {
	t.Helper()
	os.Remove(socket)
	p := &cdhProc{logs: &testutil.SyncBuffer{}}
	p.cmd = exec.Command(bin, args...)
	isolate.DieWithTest(p.cmd)
	p.cmd.Env = append(os.Environ(), "OCICRYPT_KEYPROVIDER_CONFIG=/etc/ocicrypt_config.json")
	p.cmd.Stdout, p.cmd.Stderr = p.logs, p.logs
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if p.cmd.ProcessState == nil {
			p.cmd.Process.Kill()
			p.cmd.Wait()
		}
		if t.Failed() {
			t.Logf("confidential-data-hub log:\n%s", p.logs)
		}
	})
	deadline := time.Now().Add(20 * time.Second)
	for {
		if fi, err := os.Stat(socket); err == nil && fi.Mode()&os.ModeSocket != 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no socket %s after 20s:\n%s", socket, p.logs)
		}
		time.Sleep(20 * time.Millisecond)
	}
	conn, err := net.Dial("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	p.client = ttrpc.NewClient(conn)
	t.Cleanup(func() { p.client.Close() })
	return p
}

func (p *cdhProc) stop(t *testing.T) {
	t.Helper()
	p.client.Close()
	p.cmd.Process.Signal(syscall.SIGTERM)
	if err := p.cmd.Wait(); err != nil {
		t.Errorf("confidential-data-hub exit on SIGTERM: %v", err)
	}
}

// credentialDir makes a directory of its own where CDH allows credentials,
// and removes it (and the parents it made) when the test ends.
func credentialDir(t *testing.T) string {
	t.Helper()
	var made []string
	for _, d := range []string{"/run/confidential-containers", "/run/confidential-containers/cdh", "/run/confidential-containers/cdh/kbs"} {
		if _, err := os.Stat(d); os.IsNotExist(err) {
			made = append(made, d)
		}
	}
	dir := "/run/confidential-containers/cdh/kbs/guest-puller-test-" + kbsRandomHex(t)[:12]
	t.Cleanup(func() {
		os.RemoveAll(dir)
		for i := len(made) - 1; i >= 0; i-- {
			os.Remove(made[i])
		}
	})
	return dir
}

// waitLog waits a little for dev-kbs's log, read by another goroutine, to
// hold every one of subs.
func waitLog(k *devkbstest.DevKBS, subs ...string) (string, bool) {
	deadline := time.Now().Add(5 * time.Second)
	for {
		log := k.Log()
		ok := true
		for _, s := range subs {
			ok = ok && strings.Contains(log, s)
		}
		if ok || time.Now().After(deadline) {
			return log, ok
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func wantCode(t *testing.T, what string, err error, code codes.Code, msgs ...string) {
	t.Helper()
	st, _ := status.FromError(err)
	if err == nil || st.Code() != code {
		t.Fatalf("%s: %v, want %v", what, err, code)
	}
	for _, m := range msgs {
		if !strings.Contains(st.Message(), m) {
			t.Errorf("%s: message %q lacks %q", what, st.Message(), m)
		}
	}
}

// TestCDHDropIn: kata-agent starts the binary by CDH's name with -c, and
// calls all four services; evidence comes from the attestation-agent,
// which logs every pull; dev-kbs replays the log against the quoted PCR.
func TestCDHDropIn(t *testing.T) {
	w := newCDHWorld(t)
	kbs := w.startKBS(t)
	// The proxy counts attestations; it changes nothing.
	proxy := testutil.StartKBSProxy(t, kbs.URL, testutil.KBSProxyOptions{})
	dir := t.TempDir()
	aaSock := filepath.Join(dir, "aa", "attestation-agent.sock")
	aaLog := filepath.Join(dir, "aa", "eventlog")
	agent := startTestAgent(t, w.tpm, aaSock, aaLog)
	creds := credentialDir(t)
	credFile := filepath.Join(creds, "kms", "credential.json")
	cfg := w.config(t, dir, proxy.URL, fmt.Sprintf(`
[aa]
aa_socket = "unix://%s"

[[credentials]]
resource_uri = %q
path = %q
`, aaSock, cdhCredURI, credFile))
	// kata-agent runs /usr/local/bin/confidential-data-hub: the same
	// binary under that name.
	cdhBin := filepath.Join(t.TempDir(), "confidential-data-hub")
	if err := os.Symlink(bins["guest-puller"], cdhBin); err != nil {
		t.Fatal(err)
	}
	socket := filepath.Join(dir, "run", "cdh.sock")
	p := startCDH(t, socket, cdhBin, "-c", cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	t.Run("PullImage: encrypted for the attestation-agent key provider", func(t *testing.T) {
		bundle := filepath.Join(dir, "kata", "c0ffee01")
		resp, err := cdhpb.NewImagePullServiceClient(p.client).PullImage(ctx, &cdhpb.ImagePullRequest{ImageUrl: w.encRef, BundlePath: bundle})
		if err != nil {
			t.Fatal(err)
		}
		if resp.ManifestDigest != w.encDigest {
			t.Errorf("manifest_digest %q, want %q", resp.ManifestDigest, w.encDigest)
		}
		if got, err := os.ReadFile(filepath.Join(bundle, "rootfs", "data", "model.bin")); err != nil || string(got) != "weights for attested guests only\n" {
			t.Errorf("rootfs/data/model.bin = %q, %v", got, err)
		}
		var spec rspec.Spec
		data, _ := os.ReadFile(filepath.Join(bundle, "config.json"))
		if err := json.Unmarshal(data, &spec); err != nil {
			t.Fatal(err)
		}
		if !slices.Contains(spec.Process.Env, "HOME=/data") || slices.Contains(spec.Process.Env, "HOME=/root") {
			t.Errorf("env %q: the image's HOME=/data must stay, verbatim", spec.Process.Env)
		}
		if agent.evidence.Load() == 0 {
			t.Error("the KBS was reached without the attestation-agent's evidence")
		}
		if n := agent.events.Load(); n != 1 {
			t.Errorf("%d events sent to the attestation-agent, want 1 (the pull)", n)
		}
	})

	t.Run("GetResource", func(t *testing.T) {
		got, err := cdhpb.NewGetResourceServiceClient(p.client).GetResource(ctx, &cdhpb.GetResourceRequest{ResourcePath: cdhSecretURI})
		if err != nil || string(got.GetResource()) != cdhSecret {
			t.Fatalf("GetResource = %q, %v", got.GetResource(), err)
		}
		// CDH's other spelling names a KBS host, which is ignored: the
		// resource comes from the configured KBS, after the same attestation.
		got, err = cdhpb.NewGetResourceServiceClient(p.client).GetResource(ctx, &cdhpb.GetResourceRequest{ResourcePath: "kbs://kbs.example.com:8080/default/app/secret"})
		if err != nil || string(got.GetResource()) != cdhSecret {
			t.Fatalf("GetResource(kbs://host/…) = %q, %v", got.GetResource(), err)
		}
		_, err = cdhpb.NewGetResourceServiceClient(p.client).GetResource(ctx, &cdhpb.GetResourceRequest{ResourcePath: "kbs:///default/app/missing"})
		wantCode(t, "a missing resource", err, codes.NotFound, "kbs:///default/app/missing")
	})

	t.Run("UnsealSecret: vault and envelope", func(t *testing.T) {
		env, err := sealedsecret.Envelope(cdhEnvelopeKEK, w.envKEK, []byte("envelope plaintext"))
		if err != nil {
			t.Fatal(err)
		}
		c := cdhpb.NewSealedSecretServiceClient(p.client)
		for want, payload := range map[string]any{cdhSecret: sealedsecret.Vault(cdhSecretURI), "envelope plaintext": env} {
			sealed, err := sealedsecret.Seal(payload, w.signer, cdhSigningKID)
			if err != nil {
				t.Fatal(err)
			}
			out, err := c.UnsealSecret(ctx, &cdhpb.UnsealSecretInput{Secret: []byte(sealed)})
			if err != nil || string(out.GetPlaintext()) != want {
				t.Errorf("UnsealSecret = %q, %v; want %q", out.GetPlaintext(), err, want)
			}
		}
		other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		forged, _ := sealedsecret.Seal(sealedsecret.Vault(cdhSecretURI), other, cdhSigningKID)
		_, err = c.UnsealSecret(ctx, &cdhpb.UnsealSecretInput{Secret: []byte(forged)})
		wantCode(t, "a secret signed by another key", err, codes.DataLoss, "signature does not verify")
		aliyun, _ := sealedsecret.Seal(map[string]any{"version": "0.1.0", "type": "vault", "provider": "aliyun", "name": "x", "provider_settings": map[string]any{}, "annotations": map[string]any{}}, w.signer, cdhSigningKID)
		_, err = c.UnsealSecret(ctx, &cdhpb.UnsealSecretInput{Secret: []byte(aliyun)})
		wantCode(t, "provider aliyun", err, codes.InvalidArgument, `provider "aliyun" is not supported`)
	})

	// tests/vm serves a real SecureMount (this host has no device-mapper);
	// here, requests the host could forge are refused before any device is
	// touched.
	t.Run("SecureMount: untrusted options refused", func(t *testing.T) {
		sm := cdhpb.NewSecureMountServiceClient(p.client)
		_, err := sm.SecureMount(ctx, &cdhpb.SecureMountRequest{
			VolumeType: "BlockDevice", Options: map[string]string{"deviceId": "/dev/vdb", "encryptType": "LUKS"}, MountPoint: "/run/secure",
		})
		wantCode(t, "SecureMount of an unknown volume type", err, codes.InvalidArgument, `volume_type "BlockDevice"`)
		_, err = sm.SecureMount(ctx, &cdhpb.SecureMountRequest{
			VolumeType: "block-device", MountPoint: "/etc/secure",
			Options: map[string]string{"devicePath": "/dev/vdb", "sourceType": "empty", "targetType": "fileSystem", "encryptionType": "luks2", "filesystemType": "ext4"},
		})
		wantCode(t, "SecureMount outside kata's directory", err, codes.InvalidArgument, "mount_point")
	})

	t.Run("credentials written at start, mode 0600", func(t *testing.T) {
		deadline := time.Now().Add(30 * time.Second)
		for {
			fi, err := os.Stat(credFile)
			if err == nil {
				if fi.Mode().Perm() != 0o600 {
					t.Errorf("%s has mode %v, want 0600", credFile, fi.Mode().Perm())
				}
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s not written: %v", credFile, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
		if got, _ := os.ReadFile(credFile); string(got) != cdhCredential {
			t.Errorf("credential %q", got)
		}
	})

	// One attestation served the pull (policy, registry credentials,
	// layer KEK), GetResource, the sealed secrets and the credentials.
	if n := proxy.Requests("POST /kbs/v0/attest"); n != 1 {
		t.Errorf("%d attestations, want the one all requests share", n)
	}

	log := p.logs.String()
	for _, secret := range append(kekSecrets(w.kek), cdhSecret, cdhCredential, w.reg.Password, "envelope plaintext") {
		if strings.Contains(log, secret) {
			t.Errorf("the daemon's log carries a secret (%.12q…)", secret)
		}
	}
	if strings.Contains(log, "every image is accepted") {
		t.Error("a policy was configured, yet the log says there is none")
	}
	p.stop(t)
	if _, err := os.Stat(socket); !os.IsNotExist(err) {
		t.Errorf("socket left behind: %v", err)
	}

	// The guest restarts its CDH: the new one attests anew, with the
	// attestation-agent's log, now holding the pull, in its evidence. A
	// log that does not replay to the quoted PCR is refused.
	data, err := os.ReadFile(aaLog)
	if err != nil {
		t.Fatal(err)
	}
	tampered := strings.Replace(string(data), w.encDigest, "sha256:"+strings.Repeat("0", 64), 1)
	if tampered == string(data) {
		t.Fatalf("the attestation-agent's log does not hold the pull's digest:\n%s", data)
	}
	if err := os.WriteFile(aaLog, []byte(tampered), 0o600); err != nil {
		t.Fatal(err)
	}
	p = startCDH(t, socket, cdhBin, "-c", cfg)
	_, err = cdhpb.NewGetResourceServiceClient(p.client).GetResource(ctx, &cdhpb.GetResourceRequest{ResourcePath: cdhSecretURI})
	wantCode(t, "GetResource with a tampered log", err, codes.FailedPrecondition, "aa_eventlog does not match PCR 14")
	if err := os.WriteFile(aaLog, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := cdhpb.NewGetResourceServiceClient(p.client).GetResource(ctx, &cdhpb.GetResourceRequest{ResourcePath: cdhSecretURI}); err != nil {
		t.Fatalf("with the log restored: %v", err)
	}
	t.Run("the KBS replayed the log to the quoted PCR and saw the pull", func(t *testing.T) {
		if log, ok := waitLog(kbs, "operation=PullImage", w.encDigest, "eventlog-pcr=14"); !ok {
			t.Errorf("dev-kbs log shows no replayed PullImage event of %s:\n%s", w.encDigest, log)
		}
		data, _ := os.ReadFile(aaLog)
		want := attest.PullImageEvent(w.encRef, w.encDigest).String() + "\n"
		if !strings.HasPrefix(string(data), "INIT/sha256 ") || !strings.HasSuffix(string(data), want) {
			t.Errorf("the attestation-agent's log:\n%s\nwant the INIT entry first and last %q", data, want)
		}
	})

	p.stop(t)
}

// TestCDHOwnTPM: the confidential-data-hub attesting with its own TPM, the KBS
// down when it starts. The socket comes up at once; the first pull fails
// with a clear status and the next, once the KBS is up, succeeds without a
// restart. Init-data is bound into PCR 8 and sent with each attestation;
// pulls are logged into PCR 14. dev-kbs checks both, and refuses init-data
// other than the bound one.
func TestCDHOwnTPM(t *testing.T) {
	w := newCDHWorld(t)
	dir := t.TempDir()
	port := testutil.FreePort(t)
	kbsURL := fmt.Sprintf("http://127.0.0.1:%d", port)
	cfg := w.config(t, dir, kbsURL, "")
	initData := `version = "0.1.0"
algorithm = "sha256"

[data]
"cdh.toml" = '''
[kbc]
name = "cc_kbc"
url = "` + kbsURL + `"
'''
`
	initFile := filepath.Join(dir, "initdata.toml")
	os.WriteFile(initFile, []byte(initData), 0o600)
	eventLog := filepath.Join(dir, "eventlog")
	socket := filepath.Join(dir, "run", "cdh.sock")
	flags := []string{"--attester", "tpm", "--tpm", w.tpm.URI, "--initdata", initFile, "--eventlog", eventLog}
	start := time.Now()
	// Started as kata-agent starts CDH (its name, -c); the flags only
	// point it at this test's swtpm and files, where a guest has defaults.
	cdhBin := filepath.Join(t.TempDir(), "confidential-data-hub")
	if err := os.Symlink(bins["guest-puller"], cdhBin); err != nil {
		t.Fatal(err)
	}
	p := startCDH(t, socket, cdhBin, append([]string{"-c", cfg}, flags...)...)
	t.Logf("socket up %v after start, with the KBS down", time.Since(start).Round(time.Millisecond))
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	pull := func(id string) (*cdhpb.ImagePullResponse, error) {
		return cdhpb.NewImagePullServiceClient(p.client).PullImage(ctx, &cdhpb.ImagePullRequest{ImageUrl: w.encRef, BundlePath: filepath.Join(dir, "kata", id)})
	}

	_, err := pull("first")
	wantCode(t, "a pull with the KBS down", err, codes.FailedPrecondition, cdhPolicyURI, "connection refused")

	// Tokens live 5 s, less than the client's 10 s margin: every request
	// attests anew, so the KBS sees the event log as it is at that request.
	kbs := w.startKBS(t, "--listen", fmt.Sprintf("127.0.0.1:%d", port), "--token-ttl", "5s")
	resp, err := pull("second")
	if err != nil {
		t.Fatalf("the pull after the KBS came up: %v", err)
	}
	if resp.ManifestDigest != w.encDigest {
		t.Errorf("manifest_digest %q, want %q", resp.ManifestDigest, w.encDigest)
	}
	if p.cmd.ProcessState != nil {
		t.Fatal("the daemon exited")
	}
	if _, err := cdhpb.NewGetResourceServiceClient(p.client).GetResource(ctx, &cdhpb.GetResourceRequest{ResourcePath: cdhSecretURI}); err != nil {
		t.Fatal(err)
	}
	id, err := attest.ParseInitData([]byte(initData))
	if err != nil {
		t.Fatal(err)
	}
	if log, ok := waitLog(kbs, fmt.Sprintf("init-data=sha256:%x", id.Digest)); !ok {
		t.Errorf("dev-kbs did not check the init-data (sha256:%x):\n%s", id.Digest, log)
	}
	if log, ok := waitLog(kbs, "operation=PullImage", w.encDigest); !ok {
		t.Errorf("dev-kbs log shows no replayed PullImage event:\n%s", log)
	}
	data, _ := os.ReadFile(eventLog)
	if lines := strings.Split(strings.TrimSuffix(string(data), "\n"), "\n"); len(lines) != 2 || !strings.HasPrefix(lines[0], "INIT/sha256 ") || lines[1] != attest.PullImageEvent(w.encRef, w.encDigest).String() {
		t.Errorf("event log:\n%s\nwant the INIT entry and the one pull that succeeded", data)
	}
	p.stop(t)

	// The same guest, its init-data changed on the way to the KBS: the
	// KBS finds it does not match PCR 8.
	proxy := testutil.StartKBSProxy(t, kbs.URL, testutil.KBSProxyOptions{InitData: strings.Replace(initData, "cc_kbc", "cc_kbc2", 1)})
	cfg2 := w.config(t, filepath.Join(dir, "second"), proxy.URL, "")
	socket2 := filepath.Join(dir, "second", "run", "cdh.sock")
	p = startCDH(t, socket2, cdhBin, append([]string{"-c", cfg2}, flags...)...)
	_, err = cdhpb.NewGetResourceServiceClient(p.client).GetResource(ctx, &cdhpb.GetResourceRequest{ResourcePath: cdhSecretURI})
	wantCode(t, "init-data other than the bound one", err, codes.FailedPrecondition, "init-data does not match PCR 8")
	p.stop(t)
}
