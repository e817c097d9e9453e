package testutil

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
)

// Entry is one tar entry of a test layer. Type defaults to a regular file
// (or a directory when Name ends in "/").
type Entry struct {
	Name     string
	Type     byte
	Body     string
	Size     int64 // for large files: Size bytes of a repeating pattern instead of Body
	Link     string
	Mode     int64
	UID, GID int
	Xattrs   map[string]string
	Major    int64
	Minor    int64
}

// Dir, File, Symlink, Hardlink, Whiteout and Opaque make Entries.
func Dir(name string, mode int64) Entry { return Entry{Name: name, Type: tar.TypeDir, Mode: mode} }
func File(name, body string, mode int64) Entry {
	return Entry{Name: name, Type: tar.TypeReg, Body: body, Mode: mode}
}
func Symlink(name, target string) Entry {
	return Entry{Name: name, Type: tar.TypeSymlink, Link: target, Mode: 0o777}
}
func Hardlink(name, target string) Entry {
	return Entry{Name: name, Type: tar.TypeLink, Link: target, Mode: 0o644}
}

// Whiteout deletes path in lower layers; Opaque hides everything lower
// layers have under dir.
func Whiteout(path string) Entry {
	dir, base := filepath.Split(path)
	return Entry{Name: dir + ".wh." + base, Type: tar.TypeReg, Mode: 0o644}
}
func Opaque(dir string) Entry {
	return Entry{Name: strings.TrimSuffix(dir, "/") + "/.wh..wh..opq", Type: tar.TypeReg, Mode: 0o644}
}

// Tar writes entries as an uncompressed tar and returns it.
func Tar(t testing.TB, entries ...Entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	mtime := time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC)
	for _, e := range entries {
		h := &tar.Header{
			Name:     e.Name,
			Typeflag: e.Type,
			Linkname: e.Link,
			Mode:     e.Mode,
			Uid:      e.UID,
			Gid:      e.GID,
			ModTime:  mtime,
			Devmajor: e.Major,
			Devminor: e.Minor,
			Format:   tar.FormatPAX,
		}
		if h.Typeflag == 0 {
			h.Typeflag = tar.TypeReg
			if strings.HasSuffix(e.Name, "/") {
				h.Typeflag = tar.TypeDir
			}
		}
		if h.Mode == 0 {
			h.Mode = 0o644
			if h.Typeflag == tar.TypeDir {
				h.Mode = 0o755
			}
		}
		if len(e.Xattrs) > 0 {
			h.PAXRecords = map[string]string{}
			for k, v := range e.Xattrs {
				h.PAXRecords["SCHILY.xattr."+k] = v
			}
		}
		var body io.Reader
		if h.Typeflag == tar.TypeReg {
			if e.Size > 0 {
				h.Size = e.Size
				body = io.LimitReader(pattern{}, e.Size)
			} else {
				h.Size = int64(len(e.Body))
				body = strings.NewReader(e.Body)
			}
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatalf("tar %s: %v", e.Name, err)
		}
		if body != nil {
			if _, err := io.Copy(tw, body); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// pattern is an endless, poorly compressible but deterministic stream.
type pattern struct{}

func (pattern) Read(p []byte) (int, error) {
	var x uint32 = 2463534242
	for i := range p {
		x ^= x << 13
		x ^= x >> 17
		x ^= x << 5
		p[i] = byte(x)
	}
	return len(p), nil
}

// ImageSpec describes a test image: one layer per tar, bottom first, and
// the config settings `umoci config` takes ("--config.entrypoint=/bin/app").
type ImageSpec struct {
	Layers [][]byte
	Config []string
	// Platform is OS/ARCH; "" leaves umoci's default (the running one).
	Platform string
}

// BuildImage builds spec with umoci into an OCI layout and returns the
// skopeo source "oci:DIR:TAG".
func BuildImage(t testing.TB, spec ImageSpec) string {
	t.Helper()
	Need(t, "umoci")
	dir := filepath.Join(t.TempDir(), "layout")
	img := dir + ":img"
	Run(t, "umoci", "init", "--layout", dir)
	Run(t, "umoci", "new", "--image", img)
	for i, l := range spec.Layers {
		p := filepath.Join(t.TempDir(), fmt.Sprintf("layer%d.tar", i))
		if err := os.WriteFile(p, l, 0o600); err != nil {
			t.Fatal(err)
		}
		Run(t, "umoci", "raw", "add-layer", "--image", img, p)
	}
	args := append([]string{"config", "--image", img}, spec.Config...)
	if spec.Platform != "" {
		os, arch, _ := strings.Cut(spec.Platform, "/")
		args = append(args, "--os="+os, "--architecture="+arch)
	}
	Run(t, "umoci", args...)
	return "oci:" + img
}

// Push copies src (any skopeo source) to repo:tag in r with skopeo, with
// extra skopeo copy arguments (--format v2s2, --dest-compress-format zstd,
// --encryption-key …). It returns the pushed reference host/repo:tag.
func (r *Registry) Push(t testing.TB, src, repoTag string, extra ...string) string {
	t.Helper()
	Need(t, "skopeo")
	ref := r.Host + "/" + repoTag
	args := []string{"copy", "--quiet", "--dest-tls-verify=false"}
	args = append(args, r.credsArgs("--dest-creds")...)
	args = append(args, extra...)
	args = append(args, src, "docker://"+ref)
	Run(t, "skopeo", args...)
	return ref
}

// RawManifest returns the manifest of repo:ref (tag or digest) exactly as
// the registry serves it.
func (r *Registry) RawManifest(t testing.TB, repo, ref string) []byte {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, "http://"+r.Host+"/v2/"+repo+"/manifests/"+ref, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Accept", strings.Join([]string{
		"application/vnd.oci.image.manifest.v1+json",
		"application/vnd.oci.image.index.v1+json",
		"application/vnd.docker.distribution.manifest.v2+json",
		"application/vnd.docker.distribution.manifest.list.v2+json",
	}, ", "))
	if r.User != "" {
		req.SetBasicAuth(r.User, r.Password)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("manifest %s:%s: %s %v %s", repo, ref, resp.Status, err, body)
	}
	return body
}

// Manifest is the part of an image manifest tests look at.
type Manifest struct {
	MediaType string `json:"mediaType"`
	Config    struct {
		Digest string `json:"digest"`
	} `json:"config"`
	Layers []struct {
		MediaType   string            `json:"mediaType"`
		Digest      string            `json:"digest"`
		Size        int64             `json:"size"`
		Annotations map[string]string `json:"annotations"`
	} `json:"layers"`
	Manifests []struct {
		Digest string `json:"digest"`
	} `json:"manifests"`
}

// ParseManifest parses raw and also returns its digest.
func ParseManifest(t testing.TB, raw []byte) (Manifest, string) {
	t.Helper()
	var m Manifest
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatalf("manifest: %v\n%s", err, raw)
	}
	return m, fmt.Sprintf("sha256:%x", sha256.Sum256(raw))
}

// LinuxAMD64 returns img with its config naming linux/amd64, which
// go-containerregistry's random and empty images leave out and a pull
// refuses as another platform's.
func LinuxAMD64(t testing.TB, img v1.Image) v1.Image {
	t.Helper()
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", "amd64"
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		t.Fatal(err)
	}
	return img
}
