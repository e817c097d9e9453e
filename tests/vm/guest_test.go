package vm

// Issue 10: guest-puller inside a Linux guest with its own TPM. The guest
// boots Debian's kernel (6.1 in bookworm: no overlay lowerdir+, so
// bundles take the classic mount(2) path), attests with the swtpm QEMU
// gives it as tpm-tis, pulls from the host's docker-registry and gets the
// KEK from the host's dev-kbs at 10.0.2.2, and unpacks into its own
// memory. Its init starts the daemon as kata-agent starts the
// confidential-data-hub, and a ttrpc client in the guest makes
// kata-agent's call.

import (
	"crypto/rand"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/guest-puller/guest-puller/internal/devkbs/devkbstest"
	"github.com/guest-puller/guest-puller/internal/testutil"
)

// hostIP is where a guest on QEMU's user network reaches the host's
// loopback.
var hostIP = net.IPv4(10, 0, 2, 2)

const (
	kbsKeyID     = "kbs:///default/key/1"
	guestPolicy  = "/etc/guest-puller/policy.json"
	guestCosign  = "/etc/guest-puller/cosign.pub"
	guestKBSCert = "/etc/guest-puller/kbs-ca.pem"
	cdhSocket    = "/run/confidential-containers/cdh.sock"
	// kataBundle is where kata-agent asks for a container's bundle:
	// /run/kata-containers/<container id>.
	kataBundle = "/run/kata-containers/vm-ctr-1"
)

// guestImage is a small two-layer image: the top layer overwrites and
// deletes files of the bottom one, so the rootfs is right only if the
// overlay stacks the layers in order.
func guestImage(t *testing.T) testutil.ImageSpec {
	base := testutil.Tar(t,
		testutil.Dir("etc/", 0o755),
		testutil.File("etc/os-release", "ID=vm-test\n", 0o644),
		testutil.Dir("bin/", 0o755),
		testutil.File("bin/app", "#!/bin/sh\necho v1\n", 0o755),
		testutil.File("bin/old", "removed by the top layer", 0o755),
		testutil.Dir("data/", 0o755),
		testutil.Entry{Name: "data/owned", Body: "owned by 1000", Mode: 0o640, UID: 1000, GID: 1000},
		testutil.Symlink("data/release", "../etc/os-release"),
	)
	top := testutil.Tar(t,
		testutil.File("bin/app", "#!/bin/sh\necho v2\n", 0o755),
		testutil.Whiteout("bin/old"),
		testutil.File("data/secret.txt", "weights only an attested guest may read\n", 0o600),
		testutil.Entry{Name: "data/big", Size: 256 << 10, Mode: 0o644},
	)
	return testutil.ImageSpec{Layers: [][]byte{base, top}, Config: []string{"--config.entrypoint=/bin/app"}}
}

// treeScript prints a rootfs's tree, one line per entry with its type,
// mode, owner and content hash, sorted; the same on the host (GNU) and in
// the guest (busybox).
const treeScript = `cd "$1" && export LC_ALL=C && {
	find . -type d -exec stat -c 'dir %n %a %u:%g' {} +
	find . -type l -exec stat -c 'link %n %N %u:%g' {} +
	find . -type f -exec stat -c 'file %n %a %u:%g %s' {} +
	find . -type f -exec sha256sum {} +
} | sort`

func TestGuest(t *testing.T) {
	testutil.Need(t, "swtpm", "skopeo", "umoci", "docker-registry", "qemu-system-x86_64")
	start := time.Now()

	// The host's side: a registry with the image encrypted for the
	// attestation-agent key provider and cosign-signed, the same image
	// unsigned in another repository of the signed scope, and plain.
	reg := testutil.StartRegistry(t, testutil.RegistryOptions{})
	_, regPort, _ := net.SplitHostPort(reg.Host)
	guestReg := net.JoinHostPort(hostIP.String(), regPort)
	kek := make([]byte, 32)
	rand.Read(kek)
	kekFile := filepath.Join(t.TempDir(), "kek")
	if err := os.WriteFile(kekFile, kek, 0o600); err != nil {
		t.Fatal(err)
	}
	src := testutil.BuildImage(t, guestImage(t))
	provider := testutil.WriteKeyProviderConfig(t, hostBin["guest-puller"], "keyprovider")
	encSrc := testutil.EncryptLayout(t, src, "enc", provider, []string{"attestation-agent:keypath=" + kekFile + "::keyid=" + kbsKeyID})
	reg.Push(t, encSrc, "vm/app:1")
	reg.Push(t, encSrc, "vm/unsigned:1")
	plainRef := reg.Push(t, src, "vm/plain:1")
	_, digest := testutil.ParseManifest(t, reg.RawManifest(t, "vm/app", "1"))
	cosign := testutil.NewCosignKey(t)
	// The guest pulls the image by the name it has there, 10.0.2.2:PORT:
	// the signature claims that identity.
	cosign.Sign(t, reg.Host+"/vm/app@"+digest, "--sign-container-identity", guestReg+"/vm/app")
	appRef, unsignedRef := guestReg+"/vm/app:1", guestReg+"/vm/unsigned:1"

	tpmState, akFile := provisionTPM(t)

	// dev-kbs serves TLS to 10.0.2.2. The one the guest's daemon uses is
	// started once the guest has reported its PCRs, on a port fixed now.
	kbsCert, kbsKey := testutil.SelfSignedTLS(t, "dev-kbs", hostIP)
	resources := t.TempDir()
	testutil.WriteResource(t, resources, "default/key/1", kek)
	kbsPort := testutil.FreePort(t)
	guestKBS := fmt.Sprintf("https://%s:%d", hostIP, kbsPort)

	policy := fmt.Sprintf(`{"default":[{"type":"reject"}],"transports":{"docker":{%q:[
		{"type":"sigstoreSigned","keyPath":%q,"signedIdentity":{"type":"matchRepository"}},
		{"type":"encrypted"}]}}}`, guestReg+"/vm", guestCosign)
	pullFlags := []string{"--policy", guestPolicy, "--insecure-registry", guestReg, "--kbs-cert", guestKBSCert, "--attester", "tpm"}

	b, err := NewGuest(kernel, guestBin["./cmd/guest-puller"], guestBin["./tests/vm/vmguest"])
	if err != nil {
		t.Fatal(err)
	}
	b.File(guestPolicy, []byte(policy), 0o644)
	b.CopyFile(guestCosign, cosign.Pub, 0o644)
	b.CopyFile(guestKBSCert, kbsCert, 0o644)
	// What kata-agent does at start: run /usr/local/bin/confidential-data-hub
	// with -c and its config, which opens the socket at once and contacts
	// the KBS only when a request needs it.
	kbsPEM, err := os.ReadFile(kbsCert)
	if err != nil {
		t.Fatal(err)
	}
	b.File("etc/guest-puller/registries.conf", []byte(fmt.Sprintf("[[registry]]\nlocation = %q\ninsecure = true\n", guestReg)), 0o644)
	b.File("etc/guest-puller/sigstore.yaml", []byte("default-docker:\n  use-sigstore-attachments: true\n"), 0o644)
	b.File("etc/vmtest/cdh.toml", []byte(fmt.Sprintf(`socket = "unix://%s"

[kbc]
name = "cc_kbc"
url = %q
kbs_cert = %q

[image]
image_security_policy_uri = "file://%s"
registry_configuration_uri = "file:///etc/guest-puller/registries.conf"
sigstore_config_uri = "file:///etc/guest-puller/sigstore.yaml"
`, cdhSocket, guestKBS, kbsPEM, guestPolicy)), 0o644)
	b.File("etc/vmtest/start", []byte(`#!/bin/sh
mkdir -p /run/confidential-containers/initdata
cp /etc/vmtest/cdh.toml /run/confidential-containers/initdata/cdh.toml
/usr/local/bin/confidential-data-hub -c /run/confidential-containers/initdata/cdh.toml >/run/cdh.log 2>&1 &
`), 0o755)
	initramfs := filepath.Join(t.TempDir(), "initramfs.cpio")
	if err := b.WriteFile(initramfs); err != nil {
		t.Fatal(err)
	}
	t.Logf("host side ready after %v", time.Since(start).Round(100*time.Millisecond))

	// A disk of the host's for kata's trusted storage (SecureMount).
	disk := filepath.Join(t.TempDir(), "storage.img")
	if f, err := os.Create(disk); err != nil {
		t.Fatal(err)
	} else {
		f.Truncate(64 << 20)
		f.Close()
	}
	m := Boot(t, Config{Kernel: kernel, Initramfs: initramfs, MemoryMiB: 1024, CPUs: 2, TPMState: tpmState, Disks: []string{disk}})
	defer func() {
		if t.Failed() {
			t.Logf("daemon log in the guest:\n%s", m.Run(t, "cat", "/run/cdh.log").Stdout)
		}
	}()

	// 1. What the guest is: its kernel, the PCRs its firmware measured
	// into its TPM, and the guest-puller it runs.
	var pcrs [8]string
	t.Run("report", func(t *testing.T) {
		if m.Kernel != kernel.Release {
			t.Errorf("guest runs kernel %q, want %q", m.Kernel, kernel.Release)
		}
		m.Sh(t, "test -c /dev/tpm0 && test -c /dev/tpmrm0")
		out := strings.Fields(m.Sh(t, "cd /sys/class/tpm/tpm0/pcr-sha256 && cat 0 1 2 3 4 5 6 7"))
		if len(out) != 8 {
			t.Fatalf("PCRs 0-7: %q", out)
		}
		for i, v := range out {
			if len(v) != 64 {
				t.Fatalf("PCR %d = %q", i, v)
			}
			pcrs[i] = strings.ToLower(v)
			// SeaBIOS extends at least a separator into each of PCRs 0-7
			// before it boots: a zero one was not measured.
			if strings.Trim(v, "0") == "" {
				t.Errorf("PCR %d is zero: the firmware did not measure into it", i)
			}
		}
		if t.Failed() {
			t.FailNow()
		}
		version := m.Run(t, "guest-puller", "version")
		report, _ := json.MarshalIndent(map[string]any{"kernel": m.Kernel, "pcrs-sha256": pcrs, "guest-puller": strings.TrimSpace(version.Stdout)}, "", "  ")
		t.Logf("guest report:\n%s", report)
		if version.Code != 0 || !strings.HasPrefix(version.Stdout, "guest-puller ") {
			t.Errorf("guest-puller version: exit %d: %q %s", version.Code, version.Stdout, version.Stderr)
		}
	})
	if t.Failed() {
		return
	}

	// The reference values are what the guest measured, PCRs 0-7; the
	// refusing KBS differs in PCR 7 alone.
	ref := map[string][]string{}
	for i, v := range pcrs {
		ref[fmt.Sprint(i)] = []string{v}
	}
	goodPCRs, _ := json.Marshal(ref)
	wrong := []byte(pcrs[7])
	wrong[0] = "01"[wrong[0]&1]
	ref["7"] = []string{string(wrong)}
	badPCRs, _ := json.Marshal(ref)
	kbsArgs := func(pcrs []byte) []string {
		return []string{"--resources", resources, "--tpm-ak", akFile, "--tls-cert", kbsCert, "--tls-key", kbsKey,
			"--pcrs", devkbstest.WriteFile(t, "pcrs.json", pcrs)}
	}
	devkbstest.StartDevKBS(t, hostBin["dev-kbs"], append(kbsArgs(goodPCRs), "--listen", fmt.Sprintf("127.0.0.1:%d", kbsPort))...)
	bad := devkbstest.StartDevKBS(t, hostBin["dev-kbs"], kbsArgs(badPCRs)...)
	_, badPort, _ := net.SplitHostPort(strings.TrimPrefix(bad.URL, "https://"))
	badKBS := "https://" + net.JoinHostPort(hostIP.String(), badPort)

	// The rootfs the image must give: the plain image pulled on the host.
	want := hostTree(t, plainRef, reg.Host)
	if !strings.Contains(want, "file ./data/secret.txt 600 0:0") || !strings.Contains(want, "file ./data/owned 640 1000:1000") {
		t.Fatalf("the image's rootfs pulled on the host lacks its files:\n%s", want)
	}

	// 2. The signed, encrypted image, with the KEK from dev-kbs after a
	// quote by the guest's own TPM.
	t.Run("pull", func(t *testing.T) {
		r := m.RunWith(t, RunOptions{Timeout: 4 * time.Minute}, append([]string{"guest-puller", "pull", appRef, "--json", "--quiet",
			"--cache", "/run/gp-pull", "--kbs", guestKBS}, pullFlags...)...)
		if r.Code != 0 {
			t.Fatalf("pull in the guest: exit %d: %s", r.Code, r.Stderr)
		}
		var res struct {
			ManifestDigest string `json:"manifestDigest"`
			Rootfs         string `json:"rootfs"`
			RootfsType     string `json:"rootfsType"`
			Layers         []struct {
				Encrypted bool `json:"encrypted"`
			} `json:"layers"`
			Signatures []struct {
				Verified bool `json:"verified"`
			} `json:"signatures"`
		}
		if err := json.Unmarshal([]byte(r.Stdout), &res); err != nil {
			t.Fatalf("pull --json: %v\n%s", err, r.Stdout)
		}
		if res.ManifestDigest != digest {
			t.Errorf("manifest digest %s, want %s", res.ManifestDigest, digest)
		}
		if len(res.Layers) != 2 || !res.Layers[0].Encrypted || !res.Layers[1].Encrypted {
			t.Errorf("layers %+v: want two, both decrypted", res.Layers)
		}
		if len(res.Signatures) != 1 || !res.Signatures[0].Verified {
			t.Errorf("signatures %+v: want one, verified", res.Signatures)
		}
		// Linux 6.1 has no lowerdir+: the bundle is still an overlay,
		// mounted with the classic lowerdir= option.
		if res.RootfsType != "overlay" {
			t.Errorf("rootfs type %q, want overlay", res.RootfsType)
		}
		opts := checkMount(t, m, res.Rootfs)
		if !kernelHasLowerdirPlus(m.Kernel) && !strings.Contains(opts, "lowerdir=") {
			t.Errorf("overlay options on Linux %s: %s, want the classic lowerdir=", m.Kernel, opts)
		}
		if got := m.Sh(t, treeScript, res.Rootfs); got != want {
			t.Errorf("guest rootfs differs from the image:\n%s\nwant:\n%s", got, want)
		}
	})

	// 3. Refusals, each into an empty cache that must stay empty.
	refused := func(t *testing.T, wantCode int, wantMsg, image string, args ...string) {
		t.Helper()
		cache := "/run/gp-" + strings.ReplaceAll(t.Name(), "/", "-")
		r := m.RunWith(t, RunOptions{Timeout: 4 * time.Minute}, append([]string{"guest-puller", "pull", image, "--quiet", "--cache", cache}, args...)...)
		if r.Code != wantCode || !strings.Contains(r.Stderr, wantMsg) {
			t.Errorf("pull %s: exit %d, want %d with %q; stderr: %s", image, r.Code, wantCode, wantMsg, r.Stderr)
		}
		ls := m.Run(t, "guest-puller", "cache", "ls", "--json", "--cache", cache)
		var l struct {
			Images []json.RawMessage `json:"images"`
			Layers []json.RawMessage `json:"layers"`
		}
		if err := json.Unmarshal([]byte(ls.Stdout), &l); err != nil || ls.Code != 0 {
			t.Fatalf("cache ls: exit %d: %v %s", ls.Code, err, ls.Stderr)
		}
		if len(l.Images)+len(l.Layers) != 0 {
			t.Errorf("a refused pull left %d images and %d layers in the cache", len(l.Images), len(l.Layers))
		}
		if n := m.Sh(t, "find $1/layers $1/staging -mindepth 1 | wc -l", cache); strings.TrimSpace(n) != "0" {
			t.Errorf("a refused pull left %s entries under layers/ and staging/", strings.TrimSpace(n))
		}
	}
	t.Run("refused/pcr", func(t *testing.T) {
		refused(t, 4, "kbs", appRef, append([]string{"--kbs", badKBS}, pullFlags...)...)
		if !strings.Contains(bad.Log(), "PCR 7 value") {
			t.Errorf("dev-kbs did not refuse for PCR 7:\n%s", bad.Log())
		}
	})
	t.Run("refused/unsigned", func(t *testing.T) {
		refused(t, 3, "signature", unsignedRef, append([]string{"--kbs", guestKBS}, pullFlags...)...)
	})

	// 4. kata-agent's call to the daemon its init started.
	t.Run("daemon", func(t *testing.T) {
		out := m.RunWith(t, RunOptions{Timeout: 4 * time.Minute}, "vmguest", "pull-image", "unix://"+cdhSocket, appRef, kataBundle)
		if out.Code != 0 {
			t.Fatalf("api.ImagePullService/PullImage: exit %d: %s", out.Code, out.Stderr)
		}
		var resp struct {
			ManifestDigest string `json:"manifestDigest"`
		}
		if err := json.Unmarshal([]byte(out.Stdout), &resp); err != nil || resp.ManifestDigest != digest {
			t.Errorf("PullImage answered %q (%v), want manifest digest %s", out.Stdout, err, digest)
		}
		m.Sh(t, "test -s $1/config.json", kataBundle)
		checkMount(t, m, kataBundle+"/rootfs")
		if got := m.Sh(t, treeScript, kataBundle+"/rootfs"); got != want {
			t.Errorf("bundle rootfs differs from the image:\n%s\nwant:\n%s", got, want)
		}
	})

	// kata-agent's SecureMount of a block device for its trusted image
	// storage, the request exactly as its rpc.rs (cdh_handler_trusted_storage)
	// makes it: the device by number, LUKS2 with dm-integrity (its
	// secure_storage_integrity default), ext4 with its mkfsOpts, at image-rs's
	// work_dir with its trailing slash. It is served by the same code as the
	// sealed layer store. That work_dir is the daemon's layer cache: the
	// daemon opens its cache anew there, and the next pull lands on the
	// sealed store, while the bundle made before keeps its layers.
	t.Run("secure mount", func(t *testing.T) {
		const mp = "/run/kata-containers/image"
		devID := strings.TrimSpace(m.Sh(t, "cat /sys/block/vda/dev"))
		r := m.Run(t, "vmguest", "secure-mount", "unix://"+cdhSocket, "block-device", mp+"/",
			"deviceId="+devID, "sourceType=empty", "targetType=fileSystem", "filesystemType=ext4",
			"mkfsOpts=-E lazy_journal_init", "encryptionType=luks2", "dataIntegrity=true")
		if r.Code != 0 {
			t.Fatalf("api.SecureMountService/SecureMount: exit %d: %s", r.Code, r.Stderr)
		}
		mounts := m.Sh(t, "cat /proc/mounts")
		if !regexp.MustCompile(`(?m)^/dev/mapper/\S+ ` + mp + ` ext4 `).MatchString(mounts) {
			t.Fatalf("%s is not an ext4 mount of a mapper device:\n%s", mp, mounts)
		}
		if st := m.Sh(t, "cryptsetup status $(awk -v mp=$1 '$2 == mp {print $1}' /proc/mounts)", mp); !strings.Contains(st, "LUKS2") || !strings.Contains(st, "integrity: hmac(sha256)") {
			t.Errorf("cryptsetup status:\n%s", st)
		}
		secret := fmt.Sprintf("kata trusted storage %d", kbsPort)
		m.Sh(t, `echo "$2" >"$1/file" && sync && echo 3 >/proc/sys/vm/drop_caches && grep -q "$2" "$1/file"`, mp, secret)

		const second = "/run/kata-containers/vm-ctr-2"
		if out := m.RunWith(t, RunOptions{Timeout: 4 * time.Minute}, "vmguest", "pull-image", "unix://"+cdhSocket, appRef, second); out.Code != 0 {
			t.Fatalf("PullImage after the secure mount over the cache: exit %d: %s", out.Code, out.Stderr)
		}
		if n := strings.TrimSpace(m.Sh(t, "ls $1/layers | wc -l", mp)); n != "2" {
			t.Errorf("%s/layers on the secure mount holds %s layers, want the image's 2", mp, n)
		}
		for _, b := range []string{second, kataBundle} {
			if got := m.Sh(t, treeScript, b+"/rootfs"); got != want {
				t.Errorf("%s rootfs after the secure mount over the cache differs from the image:\n%s", b, got)
			}
		}
		m.Sh(t, "sync")
		scanDisk(t, disk, [][]byte{[]byte(secret), []byte("weights only an attested guest may read")})
		// Untrusted options are refused: a mount point outside kata's.
		if r := m.Run(t, "vmguest", "secure-mount", "unix://"+cdhSocket, "block-device", "/etc/x",
			"devicePath=/dev/vda", "sourceType=empty", "targetType=fileSystem", "encryptionType=luks2", "filesystemType=ext4"); r.Code == 0 || !strings.Contains(r.Stderr, "InvalidArgument") {
			t.Errorf("SecureMount at /etc/x: exit %d: %s", r.Code, r.Stderr)
		}
	})

	m.PowerOff(t)
	if !m.Exited() {
		t.Error("qemu or swtpm still running after power-off")
	}
	t.Logf("whole VM test: %v", time.Since(start).Round(time.Second))
}

// provisionTPM makes the state of the guest's TPM before boot: its AK,
// made persistent at 0x81010002 by `guest-puller attest ak` on the same
// swtpm state, is what dev-kbs will trust. It returns the state directory
// and the AK's public key (PEM) to register with dev-kbs.
func provisionTPM(t *testing.T) (state, akFile string) {
	t.Helper()
	state = devkbstest.StateDir(t)
	tpm := devkbstest.StartSwtpmWithState(t, state)
	ak := testutil.Exec(t, nil, hostBin["guest-puller"], "attest", "ak", "--tpm", tpm.URI)
	if ak.Code != 0 {
		t.Fatalf("attest ak: exit %d: %s", ak.Code, ak.Stderr)
	}
	tpm.Stop()
	return state, devkbstest.WriteFile(t, "ak.pem", []byte(ak.Stdout))
}

// checkMount fails unless path is an overlay mount in the guest, and
// returns its options.
func checkMount(t *testing.T, m *Machine, path string) string {
	t.Helper()
	mounts := m.Sh(t, "cat /proc/mounts")
	for _, line := range strings.Split(mounts, "\n") {
		f := strings.Fields(line)
		if len(f) > 3 && f[1] == path {
			if f[2] != "overlay" {
				t.Errorf("%s is a %s mount, want overlay", path, f[2])
			}
			return f[3]
		}
	}
	t.Errorf("%s is not mounted in the guest:\n%s", path, mounts)
	return ""
}

// kernelHasLowerdirPlus reports whether a kernel release is 6.8 or later.
func kernelHasLowerdirPlus(release string) bool {
	var major, minor int
	fmt.Sscanf(release, "%d.%d", &major, &minor)
	return major > 6 || major == 6 && minor >= 8
}

// hostTree pulls ref on the host and prints its rootfs with treeScript.
func hostTree(t *testing.T, ref, registry string) string {
	t.Helper()
	dir := t.TempDir()
	t.Cleanup(func() { testutil.UnmountUnder(t, dir) })
	policy := filepath.Join(dir, "policy.json")
	os.WriteFile(policy, []byte(`{"default":[{"type":"insecureAcceptAnything"}]}`), 0o600)
	r := testutil.Exec(t, nil, hostBin["guest-puller"], "pull", ref, "--json", "--quiet", "--policy", policy,
		"--insecure-registry", registry, "--cache", filepath.Join(dir, "cache"))
	if r.Code != 0 {
		t.Fatalf("host pull %s: exit %d: %s", ref, r.Code, r.Stderr)
	}
	var res struct {
		Rootfs string `json:"rootfs"`
	}
	if err := json.Unmarshal([]byte(r.Stdout), &res); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("sh", "-c", treeScript, "sh", res.Rootfs).Output()
	if err != nil {
		t.Fatalf("host tree: %v", err)
	}
	return string(out)
}
