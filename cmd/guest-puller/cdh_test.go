package main

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// TestCDHStartRefusals: a configuration the drop-in cannot honour stops it
// at start, exit 2, with one line naming the key; nothing is served.
func TestCDHStartRefusals(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	sock := filepath.Join(dir, "run", "cdh.sock")
	kbc := "socket = \"unix://" + sock + "\"\n[kbc]\nname = \"cc_kbc\"\nurl = \"http://127.0.0.1:1\"\n"
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"cdh", "-c", write("unknown.toml", kbc+"[image]\ndefault_snapshot = \"overlay\"\n")}, "unknown key image.default_snapshot"},
		{[]string{"cdh", "-c", write("offline.toml", "[kbc]\nname = \"offline_fs_kbc\"\n")}, "kbc.name"},
		{[]string{"cdh", "-c", write("grpc.toml", "socket = \"127.0.0.1:50000\"\n"+kbc[len("socket = \"unix://"+sock+"\"\n"):])}, "socket"},
		{[]string{"cdh", "-c", write("regconf.toml", kbc+"[image.registry_config]\nshort-name-mode = \"nonsense\"\n[[image.registry_config.registry]]\nprefix = \"\"\n")}, "image.registry_config"},
		{[]string{"cdh", "-c", filepath.Join(dir, "missing.toml")}, "missing.toml"},
		{[]string{"cdh", "-c", write("ok.toml", kbc), "--attester", "tdx"}, "--attester"},
		{[]string{"cdh", "-c", write("ok2.toml", kbc), "--initdata", write("initdata.toml", "version = \"0.1.0\"\nalgorithm = \"md5\"\n")}, "algorithm"},
		{[]string{"cdh", "extra"}, "unexpected argument"},
		{[]string{"cdh", "-c", write("pcr17.toml", kbc), "--eventlog-pcr", "17"}, "--eventlog-pcr 17: invalid configuration: a TPM lets only localities 2-4 extend PCRs 17-22"},
		{[]string{"cdh", "-c", write("pcr23.toml", kbc), "--eventlog-pcr", "23"}, "--eventlog-pcr 23: invalid configuration: locality 0 may reset it"},
		{[]string{"cdh", "-c", write("pcr8.toml", kbc), "--eventlog-pcr", "8"}, "init-data binding"},
		{[]string{"cdh", "-c", write("pcr0.toml", kbc), "--eventlog-pcr", "0"}, "firmware"},
	} {
		_, stderr, code := gp(t, tc.args...)
		if code != 2 {
			t.Errorf("guest-puller %q: exit %d, want 2; stderr %q", tc.args, code, stderr)
		}
		oneLineError(t, tc.args, stderr, tc.want)
		if _, err := os.Stat(sock); !os.IsNotExist(err) {
			t.Fatalf("guest-puller %q made the socket", tc.args)
		}
	}
}

func TestCDHArgs(t *testing.T) {
	for _, tc := range []struct {
		argv0 string
		args  []string
		want  []string
	}{
		{"/usr/local/bin/confidential-data-hub", []string{"-c", "/run/confidential-containers/initdata/cdh.toml"}, []string{"cdh", "-c", "/run/confidential-containers/initdata/cdh.toml"}},
		{"confidential-data-hub", nil, []string{"cdh"}},
		{"/usr/bin/guest-puller", []string{"cdh", "-c", "x"}, []string{"cdh", "-c", "x"}},
		{"/usr/bin/guest-puller", []string{"pull", "x"}, []string{"pull", "x"}},
	} {
		if got := cdhArgs(tc.argv0, tc.args); !slices.Equal(got, tc.want) {
			t.Errorf("cdhArgs(%q, %q) = %q, want %q", tc.argv0, tc.args, got, tc.want)
		}
	}
}
