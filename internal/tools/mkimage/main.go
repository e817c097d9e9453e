// Command mkimage writes the benchmark's layer tarballs: LAYERS tar files of
// about SIZE MiB each, holding FILES files of mixed sizes and content that
// compresses like real binaries and text (about 2:1 with gzip). The bench
// adds them to an image with `umoci raw add-layer`.
package main

import (
	"archive/tar"
	"bufio"
	"flag"
	"fmt"
	"log"
	"math/rand/v2"
	"os"
	"path/filepath"
)

func main() {
	out := flag.String("out", ".", "directory for layerN.tar")
	layers := flag.Int("layers", 4, "number of layers")
	sizeMiB := flag.Int("size", 100, "approximate uncompressed MiB per layer")
	files := flag.Int("files", 2000, "files per layer")
	flag.Parse()
	for i := 0; i < *layers; i++ {
		p := filepath.Join(*out, fmt.Sprintf("layer%d.tar", i))
		if err := writeLayer(p, i, int64(*sizeMiB)<<20, *files); err != nil {
			log.Fatal(err)
		}
		fmt.Println(p)
	}
}

func writeLayer(path string, n int, size int64, files int) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	bw := bufio.NewWriterSize(f, 1<<20)
	tw := tar.NewWriter(bw)
	rng := rand.New(rand.NewPCG(uint64(n), 42))
	per := size / int64(files)
	for i := 0; i < files; i++ {
		if i%100 == 0 {
			if err := tw.WriteHeader(&tar.Header{Name: fmt.Sprintf("l%d/d%03d/", n, i/100), Typeflag: tar.TypeDir, Mode: 0o755}); err != nil {
				return err
			}
		}
		// Sizes spread around the mean, from tiny to 4x.
		sz := per/4 + rng.Int64N(per*2)
		if err := tw.WriteHeader(&tar.Header{Name: fmt.Sprintf("l%d/d%03d/f%05d", n, i/100, i), Typeflag: tar.TypeReg, Mode: 0o644, Size: sz}); err != nil {
			return err
		}
		buf := make([]byte, sz)
		// Half random bytes, half a repeating text: about 2:1 under gzip.
		for j := range buf {
			if (j/4096)%2 == 0 {
				buf[j] = byte(rng.Uint32())
			} else {
				buf[j] = "the quick brown fox jumps over the lazy dog\n"[j%44]
			}
		}
		if _, err := tw.Write(buf); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	return bw.Flush()
}
