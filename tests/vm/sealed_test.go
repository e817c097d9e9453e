package vm

// Issue 11: the sealed layer store. A guest with 512 MiB of RAM pulls an
// image larger than its memory into a LUKS2 + dm-integrity store on a
// disk file of the host's; the host finds no plaintext in the file, and a
// block it changes makes the next read, pull and bundle fail as an
// integrity error, after which the layer is fetched again. A store whose
// key is a KBS resource survives a restart of the guest.

import (
	"archive/tar"
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	mrand "math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/guest-puller/guest-puller/internal/devkbs/devkbstest"
	"github.com/guest-puller/guest-puller/internal/testutil"
)

// bigSize is the size of each of the five files of TestSealedStore's
// image, one per layer: 625 MiB in all.
const bigSize = 125 << 20

// testLayer is an uncompressed tar layer with one large file of random
// (incompressible) bytes and a small file holding a marker string.
type testLayer struct {
	tar       []byte
	diffID    string
	marker    string
	bigName   string
	bigSHA256 string
	sample    []byte // 64 bytes from the middle of the big file
}

func makeLayer(t testing.TB, n int, size int) testLayer {
	t.Helper()
	var seed [32]byte
	rand.Read(seed[:])
	big := make([]byte, size)
	mrand.NewChaCha8(seed).Read(big)
	l := testLayer{
		marker:  fmt.Sprintf("GUEST-PULLER-PLAINTEXT-MARKER-%d-%x", n, seed[:8]),
		bigName: fmt.Sprintf("data/big-%d.bin", n),
		sample:  append([]byte(nil), big[size/2:size/2+64]...),
	}
	sum := sha256.Sum256(big)
	l.bigSHA256 = hex.EncodeToString(sum[:])
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, f := range []struct {
		name string
		data []byte
	}{{fmt.Sprintf("data/marker-%d.txt", n), []byte(l.marker + "\n")}, {l.bigName, big}} {
		if err := tw.WriteHeader(&tar.Header{Name: f.name, Mode: 0o644, Size: int64(len(f.data)), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		tw.Write(f.data)
	}
	tw.Close()
	l.tar = buf.Bytes()
	l.diffID = fmt.Sprintf("sha256:%x", sha256.Sum256(l.tar))
	return l
}

// pushLayers pushes an image of uncompressed layers (so that the guest's
// time goes to the store, not to gunzip) and returns its blob digests.
func pushLayers(t testing.TB, reg *testutil.Registry, repo, tag string, layers []testLayer) []string {
	t.Helper()
	var diffIDs, descs []string
	var digests []string
	for _, l := range layers {
		d := reg.UploadBlob(t, repo, l.tar)
		digests = append(digests, d)
		diffIDs = append(diffIDs, fmt.Sprintf("%q", l.diffID))
		descs = append(descs, fmt.Sprintf(`{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":%q,"size":%d}`, d, len(l.tar)))
	}
	config := []byte(fmt.Sprintf(`{"architecture":"amd64","os":"linux","config":{},"rootfs":{"type":"layers","diff_ids":[%s]}}`, strings.Join(diffIDs, ",")))
	cd := reg.UploadBlob(t, repo, config)
	manifest := fmt.Sprintf(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":%q,"size":%d},"layers":[%s]}`,
		cd, len(config), strings.Join(descs, ","))
	reg.PutManifest(t, repo, tag, "application/vnd.oci.image.manifest.v1+json", []byte(manifest))
	return digests
}

// sealedPull is the part of `pull --json` these tests read.
type sealedPull struct {
	Rootfs string `json:"rootfs"`
	Layers []struct {
		Digest string `json:"digest"`
		Cached bool   `json:"cached"`
	} `json:"layers"`
}

func TestSealedStore(t *testing.T) {
	testutil.Need(t, "swtpm", "docker-registry", "qemu-system-x86_64")
	start := time.Now()
	reg := testutil.StartRegistry(t, testutil.RegistryOptions{})
	// The guest pulls through a proxy that counts blob downloads.
	proxy := testutil.StartProxy(t, reg.Host, testutil.ProxyOptions{})
	_, proxyPort, _ := net.SplitHostPort(proxy.Host)
	guestReg := net.JoinHostPort(hostIP.String(), proxyPort)

	// More than 600 MiB unpacked in five layers, in a guest of 512 MiB.
	var big []testLayer
	for i := range 5 {
		big = append(big, makeLayer(t, i, bigSize))
	}
	pushLayers(t, reg, "vm/big", "1", big)
	small := []testLayer{makeLayer(t, 10, 64<<10), makeLayer(t, 11, 4<<20)}
	smallDigests := pushLayers(t, reg, "vm/small", "1", small)
	bigRef, smallRef := guestReg+"/vm/big:1", guestReg+"/vm/small:1"

	// The persistent store's key is a KBS resource, released after
	// attestation with the guest's TPM.
	tpmState, akFile := provisionTPM(t)
	kbsCert, kbsKey := testutil.SelfSignedTLS(t, "dev-kbs", hostIP)
	resources := t.TempDir()
	storeKey := make([]byte, 32)
	rand.Read(storeKey)
	testutil.WriteResource(t, resources, "default/cache/key", storeKey)
	kbs := devkbstest.StartDevKBS(t, hostBin["dev-kbs"], "--resources", resources, "--tpm-ak", akFile, "--tls-cert", kbsCert, "--tls-key", kbsKey)
	_, kbsPort, _ := net.SplitHostPort(strings.TrimPrefix(kbs.URL, "https://"))

	// Two disk files of the host's: the ephemeral store's and the
	// persistent one's.
	dir := t.TempDir()
	diskA, diskB := filepath.Join(dir, "sealed.img"), filepath.Join(dir, "persistent.img")
	for disk, size := range map[string]int64{diskA: 2 << 30, diskB: 256 << 20} {
		f, err := os.Create(disk)
		if err != nil {
			t.Fatal(err)
		}
		f.Truncate(size)
		f.Close()
	}

	b, err := NewGuest(kernel, guestBin["./cmd/guest-puller"], guestBin["./tests/vm/vmguest"])
	if err != nil {
		t.Fatal(err)
	}
	b.File("etc/guest-puller/policy.json", []byte(`{"default":[{"type":"insecureAcceptAnything"}]}`), 0o644)
	b.CopyFile(guestKBSCert, kbsCert, 0o644)
	initramfs := filepath.Join(dir, "initramfs.cpio")
	if err := b.WriteFile(initramfs); err != nil {
		t.Fatal(err)
	}
	t.Logf("host side ready after %v", time.Since(start).Round(100*time.Millisecond))
	cfg := Config{Kernel: kernel, Initramfs: initramfs, MemoryMiB: 512, CPUs: 2, TPMState: tpmState, Disks: []string{diskA, diskB}}
	m := Boot(t, cfg)

	pull := func(t *testing.T, timeout time.Duration, image string, args ...string) testutil.Result {
		t.Helper()
		return m.RunWith(t, RunOptions{Timeout: timeout}, append([]string{"guest-puller", "pull", image, "--json", "--quiet",
			"--policy", "/etc/guest-puller/policy.json", "--insecure-registry", guestReg}, args...)...)
	}
	decode := func(t *testing.T, r testutil.Result) sealedPull {
		t.Helper()
		var res sealedPull
		if r.Code != 0 {
			t.Fatalf("pull: exit %d: %s", r.Code, r.Stderr)
		}
		if err := json.Unmarshal([]byte(r.Stdout), &res); err != nil {
			t.Fatalf("pull --json: %v\n%s", err, r.Stdout)
		}
		return res
	}
	sealed := []string{"--cache-device", "/dev/vda", "--cache", "/run/sealed"}

	// 1. The image does not fit in the guest's memory, but does in the
	// sealed store on the host's disk.
	t.Run("larger than memory", func(t *testing.T) {
		r := pull(t, 10*time.Minute, bigRef, "--cache", "/run/in-memory")
		if r.Code == 0 || !strings.Contains(r.Stderr, "no space left on device") {
			t.Errorf("pull into tmpfs: exit %d, want a failure for lack of space: %s", r.Code, r.Stderr)
		}
		m.Sh(t, "rm -rf /run/in-memory")

		pulled := time.Now()
		res := decode(t, pull(t, 15*time.Minute, bigRef, sealed...))
		t.Logf("pulled %d MiB into the sealed store in %v", 5*125, time.Since(pulled).Round(time.Second))
		if len(res.Layers) != len(big) {
			t.Fatalf("%d layers, want %d", len(res.Layers), len(big))
		}
		// Read back from the disk, not from memory: drop the page cache.
		m.Sh(t, "sync && echo 3 >/proc/sys/vm/drop_caches")
		for i, l := range big {
			if got := m.Sh(t, `cat "$1"`, res.Rootfs+fmt.Sprintf("/data/marker-%d.txt", i)); got != l.marker+"\n" {
				t.Errorf("marker %d reads %q", i, got)
			}
			// Every layer's large file: its size, and the 64 bytes at its
			// middle (the whole of one file is hashed below; all five
			// would take minutes under TCG).
			file := res.Rootfs + "/" + l.bigName
			if got := strings.TrimSpace(m.Sh(t, `wc -c <"$1"`, file)); got != fmt.Sprint(bigSize) {
				t.Errorf("%s holds %s bytes, want %d", l.bigName, got, bigSize)
			}
			if got := m.Sh(t, `dd if="$1" bs=64 skip="$2" count=1 2>/dev/null`, file, fmt.Sprint(bigSize/2/64)); got != string(l.sample) {
				t.Errorf("%s reads %x at its middle, want %x", l.bigName, got, l.sample)
			}
		}
		top := big[len(big)-1]
		if got := strings.Fields(m.Sh(t, `sha256sum "$1"`, res.Rootfs+"/"+top.bigName)); len(got) == 0 || got[0] != top.bigSHA256 {
			t.Errorf("%s reads back with sha256 %v, want %s", top.bigName, got, top.bigSHA256)
		}
		ls := m.Run(t, "guest-puller", "cache", "ls", "--json", "--cache", "/run/sealed")
		var l struct {
			Store struct {
				Sealed    bool   `json:"sealed"`
				Device    string `json:"device"`
				Integrity string `json:"integrity"`
			} `json:"store"`
		}
		if err := json.Unmarshal([]byte(ls.Stdout), &l); err != nil || !l.Store.Sealed || l.Store.Device != "/dev/vda" || l.Store.Integrity == "" {
			t.Errorf("cache ls: %v %s %s", err, ls.Stdout, ls.Stderr)
		}
	})
	if t.Failed() {
		return
	}

	// 2. The host's disk file holds none of the plaintext.
	t.Run("host sees ciphertext", func(t *testing.T) {
		m.Sh(t, "sync")
		var needles [][]byte
		for _, l := range big {
			needles = append(needles, []byte(l.marker), l.sample)
		}
		scanDisk(t, diskA, needles)
	})

	// 3. The host changes blocks under a layer's data.
	t.Run("tampering", func(t *testing.T) {
		m.Sh(t, "sync")
		before := blockHashes(t, diskA)
		res := decode(t, pull(t, 5*time.Minute, smallRef, sealed...))
		m.Sh(t, "sync")
		target := res.Rootfs + "/" + small[1].bigName
		off, n := largestChange(before, blockHashes(t, diskA))
		if n < 1<<20 {
			t.Fatalf("the 4 MiB file's data was not found on the disk: largest changed run %d bytes", n)
		}
		// The file reads back whole from the disk before the host acts.
		m.Sh(t, "echo 3 >/proc/sys/vm/drop_caches")
		if got := strings.Fields(m.Sh(t, `sha256sum "$1"`, target)); len(got) == 0 || got[0] != small[1].bigSHA256 {
			t.Fatalf("%s reads %v before the host changed it, want %s", target, got, small[1].bigSHA256)
		}
		m.Sh(t, "echo 3 >/proc/sys/vm/drop_caches")
		tamper(t, diskA, off+n/4, n/2)

		// dm-integrity's verdict, through ext4: EIO, never other bytes.
		if r := m.Run(t, "cat", target); r.Code == 0 || !strings.Contains(r.Stderr, "Input/output error") {
			t.Errorf("reading a file whose blocks the host changed: exit %d, want an I/O error: %s", r.Code, r.Stderr)
		} else {
			t.Logf("reading it: %s", strings.TrimSpace(r.Stderr))
		}
		r := pull(t, 5*time.Minute, smallRef, sealed...)
		if r.Code != 5 || !strings.Contains(r.Stderr, smallDigests[1]) {
			t.Errorf("pull over a changed layer: exit %d, want 5 naming layer %s: %s", r.Code, smallDigests[1], r.Stderr)
		}
		gets := proxy.FullGets(smallDigests[1]) + proxy.RangeGets(smallDigests[1])
		again := decode(t, pull(t, 5*time.Minute, smallRef, sealed...))
		if len(again.Layers) != 2 || !again.Layers[0].Cached || again.Layers[1].Cached {
			t.Errorf("the pull after it: layers %+v, want the first cached and the changed one fetched again", again.Layers)
		}
		if n := proxy.FullGets(smallDigests[1]) + proxy.RangeGets(smallDigests[1]) - gets; n == 0 {
			t.Errorf("the pull after it did not download layer %s again", smallDigests[1])
		}
		if got := strings.Fields(m.Sh(t, `sha256sum "$1"`, again.Rootfs+"/"+small[1].bigName)); len(got) == 0 || got[0] != small[1].bigSHA256 {
			t.Errorf("after the refetch the file reads %v, want %s", got, small[1].bigSHA256)
		}
	})

	// 4. A store whose key the KBS holds survives a restart: the guest
	// powers off, boots again, opens the store with the key from dev-kbs
	// and finds the layers there.
	kbsArgs := []string{"--cache-device", "/dev/vdb", "--cache", "/run/persistent",
		"--cache-device-key", "kbs:///default/cache/key", "--kbs", "https://" + net.JoinHostPort(hostIP.String(), kbsPort),
		"--kbs-cert", guestKBSCert, "--attester", "tpm"}
	layerGets := func() int {
		n := 0
		for _, d := range smallDigests {
			n += proxy.FullGets(d) + proxy.RangeGets(d)
		}
		return n
	}
	t.Run("kbs key before restart", func(t *testing.T) {
		res := decode(t, pull(t, 5*time.Minute, smallRef, kbsArgs...))
		for _, l := range res.Layers {
			if l.Cached {
				t.Errorf("first pull into a new store: layer %s cached", l.Digest)
			}
		}
		m.Sh(t, "sync")
	})
	m.PowerOff(t)
	// Neither the key nor the volume key it unlocks is in the host's file,
	// in any spelling; nor is the image's plaintext.
	volumeKey := dumpVolumeKey(t, diskB, storeKey)
	scanDisk(t, diskB, [][]byte{[]byte(small[0].marker), small[1].sample,
		storeKey, []byte(hex.EncodeToString(storeKey)), []byte(base64.StdEncoding.EncodeToString(storeKey)),
		volumeKey[:32], volumeKey[32:64], volumeKey[64:], []byte(hex.EncodeToString(volumeKey[:32]))})
	m = Boot(t, cfg)
	t.Run("kbs key after restart", func(t *testing.T) {
		gets := layerGets()
		res := decode(t, pull(t, 5*time.Minute, smallRef, kbsArgs...))
		for _, l := range res.Layers {
			if !l.Cached {
				t.Errorf("after the restart: layer %s fetched again", l.Digest)
			}
		}
		if n := layerGets() - gets; n != 0 {
			t.Errorf("after the restart the guest downloaded %d layer blobs", n)
		}
		if got := strings.Fields(m.Sh(t, `sha256sum "$1"`, res.Rootfs+"/"+small[1].bigName)); len(got) == 0 || got[0] != small[1].bigSHA256 {
			t.Errorf("after the restart the file reads %v, want %s", got, small[1].bigSHA256)
		}
		ls := m.Run(t, "guest-puller", "cache", "ls", "--cache", "/run/persistent")
		if !strings.Contains(ls.Stdout, "sealed on /dev/vdb") {
			t.Errorf("cache ls: %s %s", ls.Stdout, ls.Stderr)
		}
	})

	m.PowerOff(t)
	if !m.Exited() {
		t.Error("qemu or swtpm still running after power-off")
	}
	t.Logf("whole sealed store test: %v", time.Since(start).Round(time.Second))
}

// scanDisk fails if any needle is in the disk file.
func scanDisk(t *testing.T, disk string, needles [][]byte) {
	t.Helper()
	f, err := os.Open(disk)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	const chunk = 16 << 20
	buf := make([]byte, chunk+4096)
	var carry int
	for off := int64(0); ; {
		n, err := f.ReadAt(buf[carry:carry+chunk], off)
		data := buf[:carry+n]
		for i, nd := range needles {
			if bytes.Contains(data, nd) {
				t.Errorf("needle %d (%d bytes) is in the host's disk file at about offset %d", i, len(nd), off)
			}
		}
		off += int64(n)
		if err != nil || n == 0 {
			return
		}
		// Keep the tail, so a needle across two chunks is found too.
		carry = copy(buf, data[len(data)-4096:])
	}
}

// dumpVolumeKey reads, on the host, the volume key of the LUKS2 store on
// disk with its key, as only a holder of the key can: cryptsetup decrypts
// the keyslot in user space (no device-mapper). With dm-integrity the
// volume key is the AES-XTS-512 key followed by the HMAC-SHA256 key.
func dumpVolumeKey(t *testing.T, disk string, key []byte) []byte {
	t.Helper()
	keyFile := filepath.Join(t.TempDir(), "key")
	if err := os.WriteFile(keyFile, key, 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("cryptsetup", "luksDump", "--dump-volume-key", "--batch-mode", "--key-file", keyFile, disk).CombinedOutput()
	if err != nil {
		t.Fatalf("cryptsetup luksDump --dump-volume-key: %v\n%s", err, out)
	}
	// "MK dump:" (or "Volume key:") and hex bytes, wrapped over lines.
	var hexKey strings.Builder
	in := false
	for _, line := range strings.Split(string(out), "\n") {
		if name, rest, ok := strings.Cut(line, ":"); ok && !strings.HasPrefix(line, "\t") && !strings.HasPrefix(line, " ") {
			in = name == "MK dump" || name == "Volume key"
			line = rest
		}
		if in {
			hexKey.WriteString(strings.Join(strings.Fields(line), ""))
		}
	}
	vk, err := hex.DecodeString(hexKey.String())
	if err != nil || len(vk) != 96 {
		t.Fatalf("volume key of %s: %d bytes (%v), want 96:\n%s", disk, len(vk), err, out)
	}
	return vk
}

// blockHashes hashes a disk file in 4 KiB blocks.
func blockHashes(t *testing.T, disk string) [][32]byte {
	t.Helper()
	data, err := os.ReadFile(disk)
	if err != nil {
		t.Fatal(err)
	}
	out := make([][32]byte, len(data)/4096)
	for i := range out {
		out[i] = sha256.Sum256(data[i*4096 : (i+1)*4096])
	}
	return out
}

// largestChange is the longest run of changed blocks: where a file of
// several MiB that was just written lies (the filesystem's metadata
// changes in scattered blocks).
func largestChange(before, after [][32]byte) (off, n int64) {
	bestStart, bestLen, start := 0, 0, -1
	for i := range after {
		changed := i >= len(before) || before[i] != after[i]
		if changed && start < 0 {
			start = i
		}
		if (!changed || i == len(after)-1) && start >= 0 {
			end := i
			if changed {
				end = i + 1
			}
			if end-start > bestLen {
				bestStart, bestLen = start, end-start
			}
			start = -1
		}
	}
	return int64(bestStart) * 4096, int64(bestLen) * 4096
}

// tamper flips a byte in every 4 KiB block of the range, as a host
// changing the guest's data would.
func tamper(t *testing.T, disk string, off, n int64) {
	t.Helper()
	f, err := os.OpenFile(disk, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 1)
	for p := off; p < off+n; p += 4096 {
		if _, err := f.ReadAt(b, p+100); err != nil {
			t.Fatal(err)
		}
		b[0] ^= 0xff
		if _, err := f.WriteAt(b, p+100); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	t.Logf("host changed %d blocks at offset %d of %s", n/4096, off, filepath.Base(disk))
}
