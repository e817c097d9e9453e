package cdhconfig

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/guest-puller/guest-puller/internal/errdefs"
	"github.com/guest-puller/guest-puller/internal/registry"
)

func testCert(t *testing.T) string {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "kbs"}, NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
}

func writeConfig(t *testing.T, s string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "cdh.toml")
	if err := os.WriteFile(p, []byte(s), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func env(cmdline string, vars ...string) Env {
	m := map[string]string{}
	for i := 0; i+1 < len(vars); i += 2 {
		m[vars[i]] = vars[i+1]
	}
	return Env{Cmdline: cmdline, LookupEnv: func(k string) (string, bool) { v, ok := m[k]; return v, ok }}
}

func TestLoadFullFile(t *testing.T) {
	cert := testCert(t)
	cfg := `socket = "unix:///run/test/cdh.sock"

[aa]
aa_socket = "unix:///run/test/aa.sock"

[kbc]
name = "cc_kbc"
url = "https://kbs.example.com:8080"
kbs_cert = """
` + cert + `"""

[[credentials]]
path = "/run/confidential-containers/cdh/kbs/kms-credential/aliyun/ecsRamRole.json"
resource_uri = "kbs:///default/aliyun/ecs_ram_role"

[image]
max_concurrent_layer_downloads_per_image = 5
sigstore_config_uri = "kbs:///default/sigstore-config/test"
image_security_policy_uri = "file:///etc/image-policy.json"
authenticated_registry_credentials_uri = "kbs:///default/credential/test"
registry_configuration_uri = "/etc/containers/registries.conf"
extra_root_certificates = ["""
` + cert + `"""]
work_dir = "/run/image-rs"

[image.registry_config]
unqualified-search-registries = ["docker.io", "example1.com"]

[[image.registry_config.registry]]
prefix = "example.com/foo"
insecure = false
blocked = false
location = "internal-registry-for-example.com/bar"

[[image.registry_config.registry.mirror]]
location = "example-mirror-0.local/mirror-for-foo"

[image.image_pull_proxy]
https_proxy = "http://127.0.0.1:5432"
http_proxy = "http://127.0.0.1:5433"
no_proxy = "192.168.0.1,localhost"

[log]
level = "debug"
`
	path := writeConfig(t, cfg)
	c, err := Load(path, env("agent.https_proxy=http://ignored:1 cdh.kbs_resources=kbs:///default/test/file::/run/confidential-containers/cdh/kbs/test/file"))
	if err != nil {
		t.Fatal(err)
	}
	want := &Config{
		Source:   path,
		Socket:   "/run/test/cdh.sock",
		KBS:      KBS{URL: "https://kbs.example.com:8080", Cert: []byte(cert)},
		AASocket: "/run/test/aa.sock",
		Credentials: []Credential{
			{ResourceURI: "kbs:///default/aliyun/ecs_ram_role", Path: "/run/confidential-containers/cdh/kbs/kms-credential/aliyun/ecsRamRole.json"},
			{ResourceURI: "kbs:///default/test/file", Path: "/run/confidential-containers/cdh/kbs/test/file"},
		},
		Image: Image{
			Cache:                  "/run/image-rs",
			Policy:                 &URI{Path: "/etc/image-policy.json"},
			SigstoreConfig:         &URI{KBS: "kbs:///default/sigstore-config/test"},
			AuthFile:               &URI{KBS: "kbs:///default/credential/test"},
			RegistriesConf:         &URI{Path: "/etc/containers/registries.conf"},
			MaxConcurrentDownloads: 5,
			Proxy:                  Proxy{HTTPS: "http://127.0.0.1:5432", HTTP: "http://127.0.0.1:5433", NoProxy: "192.168.0.1,localhost"},
			ExtraRootCerts:         [][]byte{[]byte(cert)},
		},
		LogLevel: "debug",
	}
	inline := c.Image.RegistriesConfInline
	c.Image.RegistriesConfInline = nil
	if !reflect.DeepEqual(c, want) {
		t.Errorf("config\n%+v\nwant\n%+v", c, want)
	}
	// The inline table is a registries.conf guest-puller's parser takes.
	rc, err := registry.ParseConf(inline)
	if err != nil {
		t.Fatalf("registry_config re-encoded as\n%s\n: %v", inline, err)
	}
	if hosts := rc.InsecureHosts(); len(hosts) != 0 {
		t.Errorf("insecure hosts %v", hosts)
	}
	for _, s := range []string{"unqualified-search-registries", "internal-registry-for-example.com/bar", "example-mirror-0.local/mirror-for-foo"} {
		if !strings.Contains(string(inline), s) {
			t.Errorf("re-encoded registry_config lacks %q:\n%s", s, inline)
		}
	}
}

func TestLoadDefaults(t *testing.T) {
	// [kbc] alone: CDH's defaults, and [image] from the kernel command
	// line as image-rs reads it.
	path := writeConfig(t, "[kbc]\nname = \"cc_kbc\"\nurl = \"http://10.0.2.2:8080\"\n")
	cmdline := "BOOT_IMAGE=/vmlinuz console=ttyS0 agent.https_proxy=http://1.2.3.4:1234 agent.no_proxy=localhost " +
		"agent.image_registry_auth=kbs:///default/credential/test agent.image_policy_file=file:///etc/image-policy.json"
	c, err := Load(path, env(cmdline))
	if err != nil {
		t.Fatal(err)
	}
	if c.Socket != "/run/confidential-containers/cdh.sock" || c.AASocket != "/run/confidential-containers/attestation-agent/attestation-agent.sock" {
		t.Errorf("sockets %q %q", c.Socket, c.AASocket)
	}
	img := c.Image
	if img.Cache != "/run/kata-containers/image" || img.MaxConcurrentDownloads != 3 || img.Proxy != (Proxy{HTTPS: "http://1.2.3.4:1234", NoProxy: "localhost"}) {
		t.Errorf("image %+v", img)
	}
	if img.AuthFile == nil || img.AuthFile.KBS != "kbs:///default/credential/test" {
		t.Errorf("auth %+v", img.AuthFile)
	}
	// The policy file counts only with signature verification enabled.
	if img.Policy != nil {
		t.Errorf("policy %+v without agent.enable_signature_verification=true", img.Policy)
	}
	if !strings.Contains(strings.Join(c.Notes, "\n"), "every image is accepted") {
		t.Errorf("notes %q do not say that no policy accepts everything", c.Notes)
	}
	c, err = Load(path, env(cmdline+" agent.enable_signature_verification=true"))
	if err != nil {
		t.Fatal(err)
	}
	if c.Image.Policy == nil || c.Image.Policy.Path != "/etc/image-policy.json" {
		t.Errorf("policy %+v", c.Image.Policy)
	}
}

func TestLoadWithoutFile(t *testing.T) {
	c, err := Load("", env("quiet agent.aa_kbc_params=cc_kbc::http://10.0.2.2:8080 agent.http_proxy=http://p:3128"))
	if err != nil {
		t.Fatal(err)
	}
	if c.KBS.URL != "http://10.0.2.2:8080" || c.Image.Proxy.HTTP != "http://p:3128" || c.Socket != "/run/confidential-containers/cdh.sock" {
		t.Errorf("config %+v", c)
	}
	// The environment wins over the command line, as in CDH.
	c, err = Load("", env("agent.aa_kbc_params=cc_kbc::http://10.0.2.2:8080", "AA_KBC_PARAMS", "cc_kbc::https://kbs.internal"))
	if err != nil || c.KBS.URL != "https://kbs.internal" {
		t.Errorf("AA_KBC_PARAMS: %+v %v", c, err)
	}
	// Nothing at all: no KBS, said at start.
	c, err = Load("", env("console=ttyS0"))
	if err != nil || c.KBS.URL != "" || !strings.Contains(strings.Join(c.Notes, "\n"), "no KBS") {
		t.Errorf("no parameters: %+v %v", c, err)
	}
	c, err = Load("", env("agent.aa_kbc_params=offline_fs_kbc::null"))
	if err != nil || c.KBS.URL != "" || !strings.Contains(strings.Join(c.Notes, "\n"), "offline_fs_kbc") {
		t.Errorf("offline_fs_kbc on the command line: %+v %v", c, err)
	}
}

func TestLoadOverrides(t *testing.T) {
	path := writeConfig(t, "[kbc]\nname = \"cc_kbc\"\nurl = \"http://10.0.2.2:8080\"\n[image]\nauthenticated_registry_credentials_uri = \"kbs:///default/auth/1\"\n")
	c, err := Load(path, env("", "CDH_DEFAULT_IMAGE_AUTHENTICATED_REGISTRY_CREDENTIALS", "file:///test/auth.json", "AA_KBC_PARAMS", "cc_kbc::http://127.0.0.1:9"))
	if err != nil {
		t.Fatal(err)
	}
	if c.Image.AuthFile.Path != "/test/auth.json" || c.KBS.URL != "http://127.0.0.1:9" {
		t.Errorf("config %+v, auth %+v", c, c.Image.AuthFile)
	}
	// A KBS at an IPv6 address (CDH splits AA_KBC_PARAMS at "::", but a
	// file's url is taken whole).
	path = writeConfig(t, "[kbc]\nname = \"cc_kbc\"\nurl = \"http://[::1]:8080\"\n")
	if c, err = Load(path, env("")); err != nil || c.KBS.URL != "http://[::1]:8080" {
		t.Errorf("IPv6 KBS: %+v %v", c, err)
	}
	// The older spelling of the proxy.
	path = writeConfig(t, "[kbc]\nname = \"cc_kbc\"\nurl = \"http://10.0.2.2:8080\"\n[image]\nimage_pull_proxy = \"http://proxy:3128\"\nskip_proxy_ips = \"10.0.0.1\"\n")
	if c, err = Load(path, env("")); err != nil || c.Image.Proxy != (Proxy{HTTPS: "http://proxy:3128", HTTP: "http://proxy:3128", NoProxy: "10.0.0.1"}) {
		t.Errorf("older proxy keys: %+v %v", c.Image.Proxy, err)
	}
}

func TestLoadRefusals(t *testing.T) {
	const kbc = "[kbc]\nname = \"cc_kbc\"\nurl = \"http://10.0.2.2:8080\"\n"
	for _, tc := range []struct {
		cfg, cmdline, key string
	}{
		{kbc + "[image]\nsome_undefined_field = \"x\"\n", "", "image.some_undefined_field"},
		{kbc + "[image]\ndefault_snapshot = \"overlay\"\n", "", "image.default_snapshot"},
		{kbc + "[image]\nsigstore_config_uri = \"oss://bucket/x\"\n", "", "image.sigstore_config_uri"},
		{kbc + "[image]\nimage_security_policy_uri = \"etc/policy.json\"\n", "", "image.image_security_policy_uri"},
		{kbc + "[image]\nimage_security_policy_uri = \"kbs:///default/policy\"\n", "", "image.image_security_policy_uri"},
		{kbc + "[image]\nwork_dir = \"image-rs\"\n", "", "image.work_dir"},
		{kbc + "[image]\nmax_concurrent_layer_downloads_per_image = 0\n", "", "image.max_concurrent_layer_downloads_per_image"},
		{kbc + "[image]\nextra_root_certificates = [\"not a cert\"]\n", "", "image.extra_root_certificates[0]"},
		{kbc + "[image.image_pull_proxy]\nhttps_proxy = \"ftp://x\"\n", "", "image.image_pull_proxy"},
		{kbc + "[image.image_pull_proxy]\nftp_proxy = \"http://x:1\"\n", "", "image.image_pull_proxy.ftp_proxy"},
		{kbc + "[log]\nlevel = \"info,hyper=warn\"\n", "", "log.level"},
		{kbc + "[kbc2]\n", "", "kbc2"},
		{kbc + "socket = \"127.0.0.1:50000\"\n", "", "socket"},
		{"socket = \"/run/cdh.sock\"\n" + kbc, "", "socket"},
		{kbc + "[aa]\naa_socket = \"vsock://3:50\"\n", "", "aa.aa_socket"},
		{"[kbc]\nname = \"offline_fs_kbc\"\n", "", "kbc.name"},
		{"[kbc]\nname = \"cc_kbc\"\n", "", "kbc.url"},
		{"[kbc]\nname = \"cc_kbc\"\nurl = \"10.0.2.2:8080\"\n", "", "kbc.url"},
		{kbc + "kbs_cert = \"-----BEGIN CERTIFICATE-----\"\n", "", "kbc.kbs_cert"},
		{"[kbc]\nname = \"cc_kbc\"\nurl = \"http://k\"\nkbs_uri = \"x\"\n", "", "kbc.kbs_uri"},
		{"socket = \"unix:///run/cdh.sock\"\n", "", "kbc.name"},
		{kbc + "[[credentials]]\n", "", "credentials[0]"},
		{kbc + "[[credentials]]\nresource_uri = \"kbs:///a/b/c\"\npath = \"/etc/shadow\"\n", "", "credentials[0]: path"},
		{kbc + "[[credentials]]\nresource_uri = \"kbs:///a/b/c\"\npath = \"/run/confidential-containers/cdh/kbs/../../x\"\n", "", "credentials[0]: path"},
		{kbc + "[[credentials]]\nresource_uri = \"kbs:///a/b\"\npath = \"/run/confidential-containers/cdh/kbs/x\"\n", "", "credentials[0]: resource_uri"},
		{kbc, "cdh.kbs_resources=kbs:///a/b/c:/run/x", "cdh.kbs_resources"},
		{kbc, "agent.image_registry_auth=registry.json", "agent.image_registry_auth"},
		{kbc + "skip_sealed_secret_verification = \"yes\"\n", "", "skip_sealed_secret_verification"},
		{kbc + "[image]\ncache_device = \"vda\"\n", "", "image.cache_device"},
		{kbc + "[image]\ncache_device_key = \"kbs:///default/cache/key\"\n", "", "image.cache_device_key"},
		{kbc + "[image]\ncache_device = \"/dev/vda\"\ncache_device_key = \"key\"\n", "", "image.cache_device_key"},
		{"[kbc\n", "", ""},
	} {
		_, err := Load(writeConfig(t, tc.cfg), env(tc.cmdline))
		if !errors.Is(err, errdefs.ErrInvalidConfig) || !strings.Contains(err.Error(), tc.key) {
			t.Errorf("config\n%s(cmdline %q): %v, want a configuration error naming %q", tc.cfg, tc.cmdline, err, tc.key)
		}
	}
	// guest-puller's own [image] keys: the sealed cache.
	c, err := Load(writeConfig(t, kbc+"[image]\ncache_device = \"/dev/vda\"\ncache_device_key = \"kbs:///default/cache/key\"\n"), env(""))
	if err != nil || c.Image.CacheDevice != "/dev/vda" || c.Image.CacheDeviceKey == nil || c.Image.CacheDeviceKey.KBS != "kbs:///default/cache/key" {
		t.Errorf("cache_device: %+v, %v", c.Image, err)
	}
	// Credentials need a KBS to come from.
	if _, err := Load("", env("cdh.kbs_resources=kbs:///a/b/c::/run/confidential-containers/cdh/kbs/c")); !errors.Is(err, errdefs.ErrInvalidConfig) {
		t.Errorf("credentials without a KBS: %v", err)
	}
	if _, err := Load("", env("agent.aa_kbc_params=sample_kbc::null")); err == nil || !strings.Contains(err.Error(), "agent.aa_kbc_params") {
		t.Errorf("sample_kbc: %v", err)
	}
	if _, err := Load(filepath.Join(t.TempDir(), "missing.toml"), env("")); !errors.Is(err, errdefs.ErrInvalidConfig) {
		t.Errorf("missing file: %v", err)
	}
}

func TestParseURI(t *testing.T) {
	for in, want := range map[string]URI{
		"kbs:///default/key/1":          {KBS: "kbs:///default/key/1"},
		"kbs://kbs.example.com/a/b/c":   {KBS: "kbs:///a/b/c"},
		"file:///etc/policy.json":       {Path: "/etc/policy.json"},
		"file://localhost/etc/x":        {Path: "/etc/x"},
		"/etc/containers/policy.json":   {Path: "/etc/containers/policy.json"},
		"/etc/../etc/containers/x.json": {Path: "/etc/containers/x.json"},
	} {
		got, err := ParseURI(in)
		if err != nil || *got != want {
			t.Errorf("ParseURI(%q) = %+v, %v; want %+v", in, got, err, want)
		}
	}
	for _, in := range []string{"file://host/etc/x", "file:etc", "policy.json", "http://x/policy.json", "kbs:///a/b", "kbs+sev:///a/b/c", "file:///etc/x?y"} {
		if _, err := ParseURI(in); !errors.Is(err, errdefs.ErrInvalidConfig) {
			t.Errorf("ParseURI(%q): %v, want a configuration error", in, err)
		}
	}
}

func FuzzLoad(f *testing.F) {
	f.Add([]byte("[kbc]\nname = \"cc_kbc\"\nurl = \"http://10.0.2.2:8080\"\n[image]\nimage_security_policy_uri = \"kbs:///a/b/c\"\n"), "agent.aa_kbc_params=cc_kbc::http://k cdh.kbs_resources=kbs:///a/b/c::/run/confidential-containers/cdh/kbs/c")
	f.Add([]byte("socket = \"unix:///run/x\"\n[kbc]\nname = \"cc_kbc\"\nurl = \"https://k\"\n[image.registry_config]\n[[image.registry_config.registry]]\nprefix = \"a\"\n"), "")
	f.Fuzz(func(t *testing.T, data []byte, cmdline string) {
		e := env(cmdline)
		c, err := parseFile(data, e)
		if err == nil {
			c, err = finish(c, e)
		}
		if err != nil {
			if !errors.Is(err, errdefs.ErrInvalidConfig) {
				t.Fatalf("error %v is not a configuration error", err)
			}
			return
		}
		if !filepath.IsAbs(c.Socket) || c.KBS.URL == "" || c.Image.MaxConcurrentDownloads < 1 || !filepath.IsAbs(c.Image.Cache) {
			t.Fatalf("accepted %q into %+v", data, c)
		}
		for _, cr := range c.Credentials {
			if !strings.HasPrefix(cr.Path, CredentialDir+"/") || strings.Contains(cr.Path, "/../") {
				t.Fatalf("credential path %q accepted", cr.Path)
			}
		}
	})
}
