package unpack

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	pathrs "github.com/cyphar/filepath-securejoin/pathrs-lite"
	ispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/opencontainers/umoci/oci/config/convert"
	"golang.org/x/sys/unix"

	"github.com/guest-puller/guest-puller/internal/untrusted"
)

// maxUserDB bounds the /etc/passwd and /etc/group read from an image.
const maxUserDB = 8 << 20

// writeRuntimeSpec writes bundleDir/config.json: the runtime spec `umoci
// unpack` makes from the image config, with User names resolved through
// the image's /etc/passwd and /etc/group, and the image's Env taken
// verbatim (see runtimeEnv).
//
// umoci opens <rootfs>/etc/passwd by path, which follows a symlink in the
// image (say /etc/passwd -> /host/secret) out of the rootfs. So the two
// files are first read with every symlink resolved inside rootfs, into a
// private directory under scratch that umoci reads instead.
func writeRuntimeSpec(bundleDir, rootfs, scratch string, img ispec.Image) error {
	tmp, err := os.MkdirTemp(scratch, "userdb-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	view := filepath.Join(tmp, rootfsDir)
	if err := os.MkdirAll(filepath.Join(view, "etc"), 0o700); err != nil {
		return err
	}
	for _, name := range []string{"etc/passwd", "etc/group"} {
		if err := copyConfined(rootfs, name, filepath.Join(view, name)); err != nil {
			return fmt.Errorf("image /%s: %w", name, err)
		}
	}
	spec, err := convert.ToRuntimeSpec(view, img)
	if err != nil {
		// umoci names the config's user and group in its errors.
		return fmt.Errorf("runtime spec from image config: %w", untrusted.Error(err))
	}
	spec.Root.Path = rootfsDir
	spec.Process.Env = runtimeEnv(img.Config.Env, spec.Process.Env)
	data, err := json.MarshalIndent(spec, "", "\t")
	if err != nil {
		return err
	}
	return writeFileAtomic(filepath.Join(bundleDir, configFile), append(data, '\n'), 0o600)
}

// copyConfined copies the regular file name, resolved inside root as if
// root were "/", to dst. A missing or non-regular file is left out, as
// user lookup treats an absent file.
func copyConfined(root, name, dst string) error {
	h, err := pathrs.OpenInRoot(root, name)
	if errors.Is(err, os.ErrNotExist) || errors.Is(err, unix.ENOTDIR) {
		return nil
	}
	if err != nil {
		return err
	}
	defer h.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(h.Fd()), &st); err != nil {
		return err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return nil
	}
	in, err := pathrs.Reopen(h, unix.O_RDONLY|unix.O_CLOEXEC)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	n, err := io.Copy(out, io.LimitReader(in, maxUserDB+1))
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err == nil && n > maxUserDB {
		err = fmt.Errorf("larger than %d bytes", maxUserDB)
	}
	return err
}

// runtimeEnv is the process environment of the bundle: the image's Env
// verbatim, as the image spec's conversion rules require (Config.Env is a
// verbatim field; a converter "SHOULD NOT add entries that have variable
// names present in Config.Env"), followed by the entries umoci generated
// for names the image does not set: its default PATH and TERM, and HOME
// from the user's passwd entry. umoci itself lets the passwd entry replace
// an image's HOME and drops duplicate names; image-rs, which kata-agent
// runs today, keeps the image's list as it is.
func runtimeEnv(image, generated []string) []string {
	set := make(map[string]bool, len(image))
	env := make([]string, 0, len(image)+len(generated))
	for _, e := range image {
		name, _, _ := strings.Cut(e, "=")
		set[name] = true
		env = append(env, e)
	}
	for _, e := range generated {
		name, _, _ := strings.Cut(e, "=")
		if !set[name] {
			set[name] = true
			env = append(env, e)
		}
	}
	return env
}
