package vm

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/guest-puller/guest-puller/internal/testutil"
)

// BenchmarkSealedPull pulls the same image, in the guest, into tmpfs (guest
// memory) and into the sealed store on a disk file of the host's, and
// reports both wall times and their ratio. Each iteration starts from an
// empty cache: the image record and its layers are removed (cache rm, gc)
// and the page cache dropped between pulls.
//
//	go test -run '^$' -bench SealedPull -benchtime 3x ./tests/vm
func BenchmarkSealedPull(b *testing.B) {
	reg := testutil.StartRegistry(b, testutil.RegistryOptions{})
	_, port, _ := net.SplitHostPort(reg.Host)
	guestReg := net.JoinHostPort(hostIP.String(), port)
	var layers []testLayer
	for i := range 3 {
		layers = append(layers, makeLayer(b, i, 64<<20))
	}
	pushLayers(b, reg, "bench/app", "1", layers)
	ref := guestReg + "/bench/app:1"

	dir := b.TempDir()
	disk := filepath.Join(dir, "sealed.img")
	f, err := os.Create(disk)
	if err != nil {
		b.Fatal(err)
	}
	f.Truncate(2 << 30)
	f.Close()
	g, err := NewGuest(kernel, guestBin["./cmd/guest-puller"], guestBin["./tests/vm/vmguest"])
	if err != nil {
		b.Fatal(err)
	}
	g.File("etc/guest-puller/policy.json", []byte(`{"default":[{"type":"insecureAcceptAnything"}]}`), 0o644)
	initramfs := filepath.Join(dir, "initramfs.cpio")
	if err := g.WriteFile(initramfs); err != nil {
		b.Fatal(err)
	}
	m := Boot(b, Config{Kernel: kernel, Initramfs: initramfs, MemoryMiB: 1024, CPUs: 2, Disks: []string{disk}})
	defer m.PowerOff(b)

	pull := func(cache string, extra ...string) time.Duration {
		b.Helper()
		m.Sh(b, "sync && echo 3 >/proc/sys/vm/drop_caches")
		start := time.Now()
		r := m.RunWith(b, RunOptions{Timeout: 15 * time.Minute}, append([]string{"guest-puller", "pull", ref, "--quiet",
			"--policy", "/etc/guest-puller/policy.json", "--insecure-registry", guestReg, "--cache", cache}, extra...)...)
		d := time.Since(start)
		if r.Code != 0 {
			b.Fatalf("pull into %s: exit %d: %s", cache, r.Code, r.Stderr)
		}
		// Empty the cache for the next round.
		m.Sh(b, `guest-puller cache rm "$2" --cache "$1" >/dev/null && guest-puller cache gc --cache "$1" >/dev/null`, cache, ref)
		return d
	}
	// The store is formatted and mounted once, outside the measurement.
	pull("/run/sealed", "--cache-device", "/dev/vda")
	var tmpfs, sealed time.Duration
	b.ResetTimer()
	for range b.N {
		tmpfs += pull("/run/tmpfs-cache")
		sealed += pull("/run/sealed", "--cache-device", "/dev/vda")
	}
	b.StopTimer()
	n := float64(b.N)
	b.ReportMetric(tmpfs.Seconds()/n, "tmpfs-s/pull")
	b.ReportMetric(sealed.Seconds()/n, "sealed-s/pull")
	b.ReportMetric(sealed.Seconds()/tmpfs.Seconds(), "sealed/tmpfs")
	b.ReportMetric(float64(3*64), "MiB/image")
	b.Logf("guest kernel %s; %s", m.Kernel, strings.TrimSpace(m.Sh(b, "nproc; free -m | head -2")))
}
