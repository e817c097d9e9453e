package unpack

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/umoci/oci/layer"
	"golang.org/x/sys/unix"

	"github.com/guest-puller/guest-puller/internal/errdefs"
	"github.com/guest-puller/guest-puller/internal/untrusted"
)

// layerMeta is layers/<name>/layer.json.
type layerMeta struct {
	DiffID    digest.Digest `json:"diffID"`
	Size      int64         `json:"size"`
	Committed time.Time     `json:"committed"`
	// Provenance lists the blobs verified to yield this layer, each
	// marked plain or decrypted: what Lease.Layer decides reuse by.
	Provenance []Source `json:"provenance,omitempty"`
	// The form of layers committed before provenance was recorded per
	// source: read (see provenance), never written.
	LegacyConfidential bool            `json:"confidential,omitempty"`
	LegacySources      []digest.Digest `json:"sources,omitempty"`
}

type stagingState int

const (
	stagingOpen    stagingState = iota // Apply not called yet
	stagingApplied                     // Apply succeeded
	stagingFailed                      // Apply failed: only Abort is left
	stagingDone                        // committed or aborted
)

// Staging is a layer being applied. Exactly one of Commit or Abort ends it.
// A Staging is used by one goroutine at a time. Its errors (and Stage's)
// do not name the layer: the caller that staged it does, with the blob it
// came from.
type Staging struct {
	c        *Cache
	diffID   digest.Digest
	layer    string // layer directory name
	name     string // staging directory name
	lock     *os.File
	state    stagingState
	stats    ApplyStats
	lockPath string
	sparse   int64 // the sizes the layer's sparse files declared so far

	// lease and source are set by Lease.Stage: Commit records the source
	// as the layer's provenance and pins the layer under the lease.
	lease  *Lease
	source Source
}

// Stage starts applying the layer diffID into a fresh staging directory.
// The caller holds LockLayer.
func (c *Cache) Stage(diffID digest.Digest) (*Staging, error) {
	name, err := layerName(diffID)
	if err != nil {
		return nil, err
	}
	var rnd [8]byte
	rand.Read(rnd[:])
	s := &Staging{c: c, diffID: diffID, layer: name, name: name[:min(12, len(name))] + "-" + hex.EncodeToString(rnd[:])}
	s.lockPath = c.stagingLock(s.name)
	// The lock comes first: a staging directory whose lock is free is
	// stale (see removeStaleStaging).
	if s.lock, err = tryLock(s.lockPath, unix.LOCK_EX); err != nil {
		return nil, fmt.Errorf("stage: %w", err)
	}
	if err := os.Mkdir(s.dir(), 0o700); err != nil {
		unlockAndRemove(s.lock, s.lockPath)
		return nil, fmt.Errorf("stage: %w", err)
	}
	if err := os.Mkdir(s.diffDir(), 0o755); err != nil {
		s.Abort()
		return nil, fmt.Errorf("stage: %w", err)
	}
	return s, nil
}

func (s *Staging) dir() string     { return s.c.path(dirStaging, s.name) }
func (s *Staging) diffDir() string { return filepath.Join(s.dir(), layerDiffDir) }

// Apply unpacks the tar stream r (uncompressed, plaintext) into the staging
// directory in OverlayfsRootfs format, reading until the tar end-of-archive
// marker. Content that would create, change or link to anything outside
// the layer's own directory is an error wrapping errdefs.ErrIntegrity.
// Device nodes are kept when this process may create them, and otherwise
// skipped and listed in Stats (see doc.go).
func (s *Staging) Apply(ctx context.Context, r io.Reader) error {
	if s.state != stagingOpen {
		return errors.New("apply: staging already used")
	}
	s.state = stagingFailed
	te := layer.NewTarExtractor(&layer.UnpackOptions{
		OnDiskFormat: layer.OverlayfsRootfs{
			UserXattr:  s.c.userXattrs,
			MapOptions: layer.MapOptions{Rootless: s.c.rootless},
		},
	})
	root := s.diffDir()
	tr := tar.NewReader(ctxReader{ctx: ctx, r: r})
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if errors.Is(err, tar.ErrHeader) || errors.Is(err, tar.ErrFieldTooLong) {
				return fmt.Errorf("%w: malformed tar: %w", errdefs.ErrIntegrity, err)
			}
			return fmt.Errorf("read tar: %w", err)
		}
		// Names are the layer's: bounded and escaped in messages, and
		// errors that repeat them (the filesystem's) are too.
		entry := untrusted.Quote(hdr.Name)
		sparse := isSparse(hdr)
		if err := checkEntry(root, hdr); err != nil {
			var unsafe errUnsafe
			if errors.As(err, &unsafe) {
				return fmt.Errorf("entry %s: %w: %w", entry, errdefs.ErrIntegrity, err)
			}
			return fmt.Errorf("entry %s: %w", entry, untrusted.Error(err))
		}
		if (hdr.Typeflag == tar.TypeChar || hdr.Typeflag == tar.TypeBlock) && !isWhiteout(hdr.Name) && !s.c.canMknod(s.dir()) {
			s.stats.SkippedDevices = append(s.stats.SkippedDevices, hdr.Name)
			s.c.log.WarnContext(ctx, "skipping device node: this process cannot create devices", "layer", s.diffID, "entry", untrusted.Text(hdr.Name))
			continue
		}
		if sparse {
			// A sparse entry's holes cost no space, but reading them
			// costs time (archive/tar reads them as zeros; about a
			// second per 4 GiB): a few bytes could declare exabytes.
			if s.sparse += hdr.Size; hdr.Size < 0 || s.sparse > s.c.sparseLimit() {
				return fmt.Errorf("entry %s: %w: %w", entry, errdefs.ErrIntegrity,
					errUnsafe(fmt.Sprintf("the layer's sparse files declare more than %d GiB", s.c.sparseLimit()>>30)))
			}
		}
		var data io.Reader = tr
		switch {
		case sparse:
			// Holes stay holes: archive/tar's WriteTo seeks over them
			// when it writes to a file. Read through Read, they would be
			// written as zeros, in full, before any digest of the layer
			// is known: a few bytes of tar declaring gigabytes would fill
			// the guest's memory (tmpfs) even for a signed image whose
			// blob was swapped on the wire.
			data = sparseReader{tr}
		case hdr.Typeflag == tar.TypeReg:
			// Sized reads let the copy buffers fit small files instead
			// of taking 32 KiB each.
			data = io.LimitReader(tr, hdr.Size)
		}
		if err := te.UnpackEntry(root, hdr, data); err != nil {
			return fmt.Errorf("entry %s: %w", entry, storageError(untrusted.Error(err)))
		}
		s.stats.Entries++
		if hdr.Typeflag == tar.TypeReg {
			s.stats.Size += hdr.Size
		}
	}
	s.state = stagingApplied
	return nil
}

// Stats reports what Apply did.
func (s *Staging) Stats() ApplyStats { return s.stats }

// Commit atomically moves the staged layer into the cache. Call it only
// once every check on the layer's bytes has passed. A Commit that fails
// ends the Staging as Abort does: the layer is not in the cache, and its
// staging directory is gone. An I/O error of the cache's storage while
// committing (writing the layer out, the rename) is an integrity failure,
// as it is when a layer is read (see storageError).
func (s *Staging) Commit() error {
	if s.state != stagingApplied {
		return errors.New("commit: nothing successfully applied")
	}
	if err := s.commit(); err != nil {
		if aerr := s.Abort(); aerr != nil {
			s.c.log.Warn("cannot remove a layer that failed to commit", "layer", s.diffID, "err", aerr)
		}
		return fmt.Errorf("commit: %w", storageError(err))
	}
	return nil
}

func (s *Staging) commit() error {
	meta := layerMeta{DiffID: s.diffID, Size: s.stats.Size, Committed: time.Now().UTC()}
	if s.source.Blob != "" {
		meta.Provenance = []Source{s.source}
	}
	if err := writeJSONAtomic(filepath.Join(s.dir(), layerMetaFile), meta); err != nil {
		return err
	}
	// One syncfs instead of an fsync per file: the layer's content must
	// be on disk before the rename makes it visible.
	if err := syncFS(s.dir()); err != nil {
		return err
	}
	// Pinned before it appears, so that GC cannot take it between the
	// rename and the pull's image record.
	pinned := s.lease != nil && s.lease.pin(s.layer)
	dst := s.c.layerDir(s.layer)
	if err := os.Rename(s.dir(), dst); err != nil {
		if errors.Is(err, unix.EEXIST) || errors.Is(err, unix.ENOTEMPTY) {
			// Committed meanwhile by a caller that did not hold
			// LockLayer; same diff_id, same content, but this source
			// is not recorded: the next pull verifies it again.
			return s.Abort()
		}
		if pinned {
			s.lease.unpin(s.layer)
		}
		return err
	}
	if err := syncDir(s.c.path(dirLayers)); err != nil {
		// The layer is in place, but whether its entry is on disk is not
		// known: take it out again, so that a failed Commit never leaves
		// a layer behind. It goes back under staging/, which Abort (and
		// the next Open, if this process dies first) removes.
		if pinned {
			s.lease.unpin(s.layer)
		}
		if rerr := os.Rename(dst, s.dir()); rerr != nil {
			if t, terr := s.c.trash(dst); terr == nil && t != "" {
				removeAll(t)
			}
		}
		return err
	}
	s.state = stagingDone
	unlockAndRemove(s.lock, s.lockPath)
	return nil
}

// Abort removes the staging directory. It is a no-op after Commit.
func (s *Staging) Abort() error {
	if s.state == stagingDone {
		return nil
	}
	err := removeAll(s.dir())
	if err != nil {
		// Leave the lock file: the next Open sees a free lock and
		// retries the removal.
		s.lock.Close()
	} else {
		unlockAndRemove(s.lock, s.lockPath)
	}
	s.state = stagingDone
	if err != nil {
		return fmt.Errorf("abort: %w", err)
	}
	return nil
}

func syncFS(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	return unix.Syncfs(int(f.Fd()))
}

// ctxReader ends a read of the layer stream once ctx is done.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (r ctxReader) Read(p []byte) (int, error) {
	if err := r.ctx.Err(); err != nil {
		return 0, err
	}
	return r.r.Read(p)
}

// defaultMaxSparse is the total size the sparse files of one layer may
// declare: generous for sparse files in images (a database's preallocated
// file, /var/log/lastlog of a few users), and bounding the time their holes
// take to read to seconds.
const defaultMaxSparse = 64 << 30

func (c *Cache) sparseLimit() int64 {
	if c.maxSparse > 0 {
		return c.maxSparse
	}
	return defaultMaxSparse
}

// isSparse reports a sparse file entry, in any of the formats archive/tar
// expands: old GNU ('S' type) or PAX (GNU.sparse.* records, versions 0.0,
// 0.1 and 1.0).
func isSparse(hdr *tar.Header) bool {
	if hdr.Typeflag == tar.TypeGNUSparse {
		return true
	}
	for k := range hdr.PAXRecords {
		if strings.HasPrefix(k, "GNU.sparse.") {
			return true
		}
	}
	return false
}

// sparseReader is a sparse entry's data for umoci, which copies with
// io.CopyBuffer and so calls WriteTo when there is one: into a file,
// WriteTo seeks over every block of zeros instead of writing it, so the
// entry's holes (which archive/tar reads back as zeros; it does not
// export its own hole-skipping WriteTo) stay holes.
type sparseReader struct{ tr *tar.Reader }

func (r sparseReader) Read(p []byte) (int, error) { return r.tr.Read(p) }

// sparseBlock is the granularity of holes: a page, a filesystem block.
const sparseBlock = 4 << 10

// zeros is what a hole reads as, to compare with (never written).
var zeros [1 << 20]byte

func (r sparseReader) WriteTo(w io.Writer) (int64, error) {
	f, ok := w.(interface {
		io.WriteSeeker
		Truncate(size int64) error
	})
	if !ok {
		return io.Copy(w, r.tr)
	}
	buf := make([]byte, len(zeros))
	var off int64
	for {
		n, rerr := io.ReadFull(r.tr, buf)
		if bytes.Equal(buf[:n], zeros[:n]) {
			// The common case of a sparse file's bulk: one compare.
			if _, err := f.Seek(int64(n), io.SeekCurrent); err != nil {
				return off, err
			}
			off += int64(n)
		} else {
			for b := 0; b < n; b += sparseBlock {
				blk := buf[b:min(b+sparseBlock, n)]
				var err error
				if bytes.Equal(blk, zeros[:len(blk)]) {
					_, err = f.Seek(int64(len(blk)), io.SeekCurrent)
				} else {
					_, err = f.Write(blk)
				}
				if err != nil {
					return off, err
				}
				off += int64(len(blk))
			}
		}
		if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
			// A trailing hole leaves the size short of the last seek.
			return off, f.Truncate(off)
		}
		if rerr != nil {
			return off, rerr
		}
	}
}
