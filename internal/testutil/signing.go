package testutil

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// Cosign returns the path of the cosign binary: on PATH, or else in
// GOPATH/bin where `go install` (scripts/setup) puts it. A missing cosign
// fails the test.
func Cosign(t testing.TB) string {
	t.Helper()
	if p, err := exec.LookPath("cosign"); err == nil {
		return p
	}
	gopath := os.Getenv("GOPATH")
	if gopath == "" {
		if out, err := exec.Command("go", "env", "GOPATH").Output(); err == nil {
			gopath = strings.TrimSpace(string(out))
		}
	}
	for _, dir := range filepath.SplitList(gopath) {
		p := filepath.Join(dir, "bin", "cosign")
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() {
			return p
		}
	}
	t.Fatalf("cosign is not installed, neither on PATH nor in GOPATH/bin (run scripts/setup)")
	return ""
}

// CosignKey is a cosign key pair on disk: Key is cosign's encrypted private
// key (empty password), Pub the PKIX PEM public key a policy's keyPath
// takes.
type CosignKey struct {
	Key, Pub string
}

// cosignEnv is the environment cosign runs in: an empty key password, no
// prompts, and its caches under the test's temporary directory.
func cosignEnv(t testing.TB) []string {
	home := t.TempDir()
	return []string{"COSIGN_PASSWORD=", "COSIGN_YES=true", "HOME=" + home, "TUF_ROOT=" + filepath.Join(home, "tuf")}
}

// NewCosignKey makes a key pair with `cosign generate-key-pair`.
func NewCosignKey(t testing.TB) CosignKey {
	t.Helper()
	dir := t.TempDir()
	prefix := filepath.Join(dir, "cosign")
	RunEnv(t, cosignEnv(t), Cosign(t), "generate-key-pair", "--output-key-prefix", prefix)
	return CosignKey{Key: prefix + ".key", Pub: prefix + ".pub"}
}

// ImportCosignKey converts a PKCS#8 PEM private key (examples/keys/*.key)
// into cosign's format with `cosign import-key-pair`.
func ImportCosignKey(t testing.TB, pkcs8 string) CosignKey {
	t.Helper()
	dir := t.TempDir()
	prefix := filepath.Join(dir, strings.TrimSuffix(filepath.Base(pkcs8), filepath.Ext(pkcs8)))
	RunEnv(t, cosignEnv(t), Cosign(t), "import-key-pair", "--key", pkcs8, "--output-key-prefix", prefix, "-y")
	return CosignKey{Key: prefix + ".key", Pub: prefix + ".pub"}
}

// Sign signs ref (host/repo@sha256:…) with `cosign sign`, without the
// transparency log: the signature is pushed as the sha256-<hex>.sig
// attachment of the image's repository. A loopback registry is plain
// http to cosign.
// Extra arguments go to cosign sign (-a key=value annotations, ...).
func (k CosignKey) Sign(t testing.TB, ref string, extra ...string) {
	t.Helper()
	env := cosignEnv(t)
	for _, a := range extra {
		if strings.HasPrefix(a, "--registry-referrers-mode") {
			env = append(env, "COSIGN_EXPERIMENTAL=1") // cosign gates the flag
		}
	}
	args := append([]string{"sign", "--key", k.Key, "--tlog-upload=false", "--yes"}, extra...)
	RunEnv(t, env, Cosign(t), append(args, ref)...)
}

// SignIn is Sign for an image of reg, with reg's credentials when it
// requires them (given to cosign as a docker config.json).
func (k CosignKey) SignIn(t testing.TB, reg *Registry, ref string) {
	t.Helper()
	env := cosignEnv(t)
	if reg.User != "" {
		dir := t.TempDir()
		auth := base64.StdEncoding.EncodeToString([]byte(reg.User + ":" + reg.Password))
		conf := `{"auths":{"` + reg.Host + `":{"auth":"` + auth + `"}}}`
		if err := os.WriteFile(filepath.Join(dir, "config.json"), []byte(conf), 0o600); err != nil {
			t.Fatal(err)
		}
		env = append(env, "DOCKER_CONFIG="+dir)
	}
	RunEnv(t, env, Cosign(t), "sign", "--key", k.Key, "--tlog-upload=false", "--yes", ref)
}

// KeyID is the SHA-256 of the public key's DER (hex), the keyID a
// sigstore signature of the key is reported with.
func (k CosignKey) KeyID(t testing.TB) string {
	t.Helper()
	return PEMKeyID(t, k.Pub)
}

// PEMKeyID is the hex SHA-256 of the DER in the PEM file at path.
func PEMKeyID(t testing.TB, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(data)
	if block == nil {
		t.Fatalf("%s: no PEM block", path)
	}
	sum := sha256.Sum256(block.Bytes)
	return hex.EncodeToString(sum[:])
}

// GPGKey is a GPG signing key in a keyring of its own (a temporary
// GNUPGHOME, its agent stopped when the test ends).
type GPGKey struct {
	Home        string
	Fingerprint string
	// Pub is the armored public key, what a signedBy keyPath takes.
	Pub string
}

// NewGPGKey makes an Ed25519 signing key without passphrase for uid
// ("Name <mail@example.com>").
func NewGPGKey(t testing.TB, uid string) GPGKey {
	t.Helper()
	Need(t, "gpg", "gpgconf")
	dir := t.TempDir()
	k := GPGKey{Home: filepath.Join(dir, "gnupg"), Pub: filepath.Join(dir, "pub.asc")}
	if err := os.Mkdir(k.Home, 0o700); err != nil {
		t.Fatal(err)
	}
	env := k.env()
	t.Cleanup(func() {
		exec.Command("gpgconf", "--homedir", k.Home, "--kill", "all").Run()
	})
	RunEnv(t, env, "gpg", "--batch", "--pinentry-mode", "loopback", "--passphrase", "", "--quick-gen-key", uid, "ed25519", "sign", "never")
	for _, line := range strings.Split(RunEnv(t, env, "gpg", "--batch", "--with-colons", "--list-keys", uid), "\n") {
		f := strings.Split(line, ":")
		if len(f) > 9 && f[0] == "fpr" {
			k.Fingerprint = f[9]
			break
		}
	}
	if k.Fingerprint == "" {
		t.Fatalf("gpg: no fingerprint for %s", uid)
	}
	pub := Output(t, env, "gpg", "--batch", "--armor", "--export", k.Fingerprint)
	if err := os.WriteFile(k.Pub, []byte(pub), 0o644); err != nil {
		t.Fatal(err)
	}
	return k
}

func (k GPGKey) env() []string { return []string{"GNUPGHOME=" + k.Home} }

// SignCopy copies src to dst (skopeo transports, plain-http registries) with
// `skopeo copy --sign-by`: the simple-signing signature is written to the
// lookaside directory staging (containers-registries.d's lookaside-staging,
// laid out as <repo>@sha256=<hex>/signature-N). Extra arguments go to
// skopeo copy.
func (k GPGKey) SignCopy(t testing.TB, src, dst, staging string, extra ...string) {
	t.Helper()
	Need(t, "skopeo")
	regD := t.TempDir()
	conf := "default-docker:\n  lookaside-staging: file://" + staging + "\n"
	if err := os.WriteFile(filepath.Join(regD, "staging.yaml"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	args := []string{"--registries.d", regD, "copy", "--quiet", "--src-tls-verify=false", "--dest-tls-verify=false", "--sign-by", k.Fingerprint}
	args = append(args, extra...)
	RunEnv(t, k.env(), "skopeo", append(args, src, dst)...)
}

// Output runs a command with extra environment variables and returns its
// standard output alone (what a test parses: gpg's key listings and
// exports), failing the test with its stderr if it fails.
func Output(t testing.TB, env []string, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), env...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, stderr.String())
	}
	return string(out)
}
