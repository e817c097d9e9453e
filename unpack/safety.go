package unpack

import (
	"archive/tar"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strings"

	securejoin "github.com/cyphar/filepath-securejoin"
	"golang.org/x/sys/unix"
)

// Whiteout names of the OCI layer format.
const (
	whiteoutPrefix = ".wh."
	whiteoutOpaque = ".wh..wh..opq"
)

// errUnsafe marks layer content refused for safety; Apply wraps it in
// errdefs.ErrIntegrity with the layer and entry.
type errUnsafe string

func (e errUnsafe) Error() string { return string(e) }

// cleanName confines a tar path to the layer root, as doc.go describes:
// an absolute path is taken relative to the layer root ("/../x" is "/x"
// there, as it is for the kernel), a relative one that climbs above the
// root is refused.
func cleanName(name string) (string, error) {
	if name == "" {
		return "", errUnsafe("empty path")
	}
	if path.IsAbs(name) {
		p := strings.TrimPrefix(path.Clean(name), "/")
		if p == "" {
			p = "."
		}
		return p, nil
	}
	p := path.Clean(name)
	if p == ".." || strings.HasPrefix(p, "../") {
		return "", errUnsafe("path leaves the layer root")
	}
	return p, nil
}

// checkEntry validates hdr before umoci applies it under root, rewriting
// its names to their confined form. umoci confines paths itself (CleanPath,
// SecureJoin); these checks turn what it would silently clamp or fail on
// obscurely into refusals that name the cause.
func checkEntry(root string, hdr *tar.Header) error {
	name, err := cleanName(hdr.Name)
	if err != nil {
		return err
	}
	hdr.Name = name

	if hdr.Typeflag == tar.TypeGNUSparse {
		// archive/tar has already expanded the sparse map: the entry
		// reads as a regular file.
		hdr.Typeflag = tar.TypeReg
	}
	switch hdr.Typeflag {
	case tar.TypeReg, tar.TypeDir, tar.TypeSymlink, tar.TypeLink, tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
	default:
		return errUnsafe(fmt.Sprintf("unsupported entry type %q", hdr.Typeflag))
	}
	if name == "." && hdr.Typeflag != tar.TypeDir {
		// Anything but a directory at the root would make the layer
		// root itself a symlink or a file.
		return errUnsafe("layer root is not a directory")
	}

	if isWhiteout(name) {
		base := path.Base(name)
		if wo := strings.TrimPrefix(base, whiteoutPrefix); base != whiteoutOpaque && (wo == "" || wo == "." || wo == "..") {
			return errUnsafe("whiteout names no file")
		}
		return nil
	}

	switch hdr.Typeflag {
	case tar.TypeSymlink:
		// A symlink's target is data for the container to resolve in
		// its own root; nothing here ever follows it.
		if hdr.Linkname == "" {
			return errUnsafe("symlink without target")
		}
	case tar.TypeLink:
		target, err := cleanName(hdr.Linkname)
		if err != nil {
			return errUnsafe("hardlink target leaves the layer root")
		}
		if target == "." || target == name {
			return errUnsafe("hardlink to the layer root or to itself")
		}
		if err := checkHardlinkTarget(root, target); err != nil {
			return err
		}
		hdr.Linkname = target
	}
	return nil
}

// isWhiteout reports whether the entry at name is a whiteout, whatever its
// type: the name alone makes it one.
func isWhiteout(name string) bool {
	return strings.HasPrefix(path.Base(name), whiteoutPrefix)
}

// checkHardlinkTarget requires that target, resolved inside root the way
// umoci will (parents through SecureJoin, the last element not followed),
// is a non-directory the layer has already created. A target reached only
// through a symlink pointing elsewhere names nothing in the layer.
func checkHardlinkTarget(root, target string) error {
	dir, err := securejoin.SecureJoin(root, path.Dir(target))
	if err != nil {
		return fmt.Errorf("resolve hardlink target: %w", err)
	}
	fi, err := os.Lstat(filepath.Join(dir, path.Base(target)))
	if errors.Is(err, os.ErrNotExist) || errors.Is(err, unix.ENOTDIR) {
		return errUnsafe("hardlink target is not in the layer")
	}
	if err != nil {
		return fmt.Errorf("hardlink target: %w", err)
	}
	if fi.IsDir() {
		return errUnsafe("hardlink to a directory")
	}
	return nil
}
