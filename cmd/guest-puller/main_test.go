package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/guest-puller/guest-puller/internal/config"
)

// gp runs the command line as main does and returns what the user sees.
func gp(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	var out, errb bytes.Buffer
	code = run(context.Background(), args, strings.NewReader(""), &out, &errb)
	return out.String(), errb.String(), code
}

// oneLineError checks that stderr is one "guest-puller: " line containing
// want.
func oneLineError(t *testing.T, args []string, stderr, want string) {
	t.Helper()
	if strings.Count(stderr, "\n") != 1 || !strings.HasPrefix(stderr, "guest-puller: ") || !strings.Contains(stderr, want) {
		t.Errorf("guest-puller %q: stderr %q, want one line containing %q", args, stderr, want)
	}
}

func TestUsageErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"frobnicate"}, `unknown command "frobnicate"`},
		{[]string{"pul", "img"}, `unknown command "pul" (did you mean pull?)`},
		{[]string{"pull"}, "pull needs IMAGE; usage: guest-puller pull IMAGE [flags]"},
		{[]string{"pull", "a", "b", "--policy", "p"}, `unexpected argument "b"`},
		{[]string{"pull", "img", "--no-such-flag"}, "unknown flag --no-such-flag; see 'guest-puller pull -h'"},
		{[]string{"pull", "img", "--polcy", "p.json"}, "unknown flag --polcy (did you mean --policy?)"},
		{[]string{"pull", "img", "-insecure", "r:5000"}, "unknown flag --insecure (did you mean --insecure-registry?)"},
		{[]string{"pull", "img", "--policy"}, "flag --policy needs a value"},
		{[]string{"pull", "img", "--max-concurrent-downloads", "x", "--policy", "p"}, `invalid value "x" for flag --max-concurrent-downloads`},
		{[]string{"pull", "img", "--max-concurrent-downloads", "0", "--policy", "p"}, "--max-concurrent-downloads must be at least 1"},
		{[]string{"policy", "explain", "img"}, `unknown policy command "explain"`},
		{[]string{"policy", "check", "img", "--cache", "/x"}, "unknown flag --cache"},
		{[]string{"cache", "rm"}, "cache rm needs IMAGE"},
		{[]string{"cache", "ls", "extra"}, `unexpected argument "extra": cache ls takes no arguments`},
		{[]string{"cache", "rm", "img", "--json"}, "unknown flag --json"},
		{[]string{"cache", "lss"}, `unknown cache command "lss" (did you mean ls?)`},
		{[]string{"attest", "quote"}, `unknown attest command "quote"`},
		{[]string{"attest", "ak", "--policy", "p"}, "unknown flag --policy"},
		{[]string{"keyprovider", "extra"}, `unexpected argument "extra"`},
		{[]string{"version", "--json"}, "unknown flag --json"},
	} {
		stdout, stderr, code := gp(t, tc.args...)
		if code != 2 {
			t.Errorf("guest-puller %q: exit %d, want 2 (stderr %q)", tc.args, code, stderr)
		}
		if stdout != "" {
			t.Errorf("guest-puller %q: stdout %q, want nothing", tc.args, stdout)
		}
		oneLineError(t, tc.args, stderr, tc.want)
	}
}

// A command line that names no command gets the list of commands on
// stderr, and exit 2.
func TestNoCommand(t *testing.T) {
	for _, args := range [][]string{nil, {"cache"}, {"policy"}, {"attest"}} {
		stdout, stderr, code := gp(t, args...)
		if code != 2 || stdout != "" || !strings.HasPrefix(stderr, "usage: guest-puller ") || !strings.Contains(stderr, "commands:") {
			t.Errorf("guest-puller %q: exit %d, stdout %q, stderr %q; want the usage on stderr and exit 2", args, code, stdout, stderr)
		}
	}
}

// helpCases are every command line whose help has a golden file: the
// top level, each group and each command. A command added to commands()
// is checked without being listed here.
func helpCases() map[string][]string {
	cases := map[string][]string{"guest-puller": nil}
	for _, c := range commands() {
		cases[strings.ReplaceAll(c.name, " ", "-")] = strings.Fields(c.name)
	}
	for g := range groups {
		cases[g] = []string{g}
	}
	return cases
}

// TestHelpGolden checks every command's -h against
// testdata/help/<command, words joined by dashes>.txt. The test only reads
// those files: after changing a command's flags or text, regenerate the
// file by hand with the command its failure prints, and review the diff.
func TestHelpGolden(t *testing.T) {
	cases := helpCases()
	for file, words := range cases {
		t.Run(file, func(t *testing.T) {
			path := filepath.Join("testdata", "help", file+".txt")
			args := append(slices.Clone(words), "-h")
			regen := "go run ./cmd/guest-puller " + strings.Join(args, " ") + " > cmd/guest-puller/" + path
			stdout, stderr, code := gp(t, args...)
			if code != 0 || stderr != "" {
				t.Fatalf("guest-puller %s: exit %d, stderr %q; want the help on stdout and exit 0", strings.Join(args, " "), code, stderr)
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("no golden help file for 'guest-puller %s': %v\ncreate it, from the module root, with\n    %s", strings.Join(words, " "), err, regen)
			}
			if stdout != string(want) {
				t.Errorf("'guest-puller %s' help differs from cmd/guest-puller/%s:\n%s\n"+
					"If the new help is what you meant (you added or changed a flag or a command), update the file by hand\n"+
					"or, from the module root, regenerate it and review the diff:\n    %s",
					strings.Join(args, " "), path, lineDiff(string(want), stdout), regen)
			}
		})
	}
	// A file for a command that no longer exists is stale.
	files, err := filepath.Glob(filepath.Join("testdata", "help", "*"))
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		if _, ok := cases[strings.TrimSuffix(filepath.Base(f), ".txt")]; !ok {
			t.Errorf("cmd/guest-puller/%s is the help of no command: remove it", f)
		}
	}
}

// lineDiff shows the lines of want and got that differ, "-" for the file's
// and "+" for the command's.
func lineDiff(want, got string) string {
	w, g := strings.Split(want, "\n"), strings.Split(got, "\n")
	var b strings.Builder
	for i := 0; i < max(len(w), len(g)); i++ {
		var wl, gl string
		if i < len(w) {
			wl = w[i]
		}
		if i < len(g) {
			gl = g[i]
		}
		if wl != gl {
			b.WriteString("  line " + strconv.Itoa(i+1) + ":\n    - " + wl + "\n    + " + gl + "\n")
		}
	}
	return b.String()
}

// TestHelpStyle checks what the golden files alone would not: one style
// for every command, whatever it adds later.
func TestHelpStyle(t *testing.T) {
	flagLine := regexp.MustCompile(`^  (--[a-z0-9-]{2,}|-[a-z0-9])( [A-Z][A-Za-z0-9_:/\[\]. ]*)?$`)
	for file, words := range helpCases() {
		stdout, _, _ := gp(t, append(slices.Clone(words), "-h")...)
		if !strings.HasPrefix(stdout, "usage: guest-puller") {
			t.Errorf("%s: help does not start with 'usage: guest-puller': %q", file, stdout)
		}
		inFlags := false
		for _, line := range strings.Split(stdout, "\n") {
			if len(line) > 90 {
				t.Errorf("%s: line longer than 90 columns: %q", file, line)
			}
			if line == "flags:" {
				inFlags = true
				continue
			}
			if inFlags && strings.HasPrefix(line, "  -") && !flagLine.MatchString(line) {
				t.Errorf("%s: flag line %q is not '  --name VALUE' (or '  -c VALUE') with an upper-case value name", file, line)
			}
		}
	}
}

// Every config file key is a flag and every setting flag a config key:
// the README's promise that the config file takes the flags' names.
func TestSettingsAreConfigKeys(t *testing.T) {
	var keys []string
	for name := range configFields() {
		keys = append(keys, name)
	}
	slices.Sort(keys)
	if !slices.Equal(keys, settingNames()) {
		t.Errorf("config.Config keys %q, settings %q: add a setting (flags.go) for every config.Config field", keys, settingNames())
	}
	inv := &invocation{cmd: &command{name: "pull"}, stdout: &bytes.Buffer{}, stderr: &bytes.Buffer{}}
	f := inv.flags("")
	f.settings(nil)
	for _, name := range settingNames() {
		if f.fs.Lookup(name) == nil {
			t.Errorf("setting %s is no flag of pull", name)
		}
	}
}

func writeFile(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "config.json")
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestConfigFile(t *testing.T) {
	for _, tc := range []struct {
		name, content, want string
	}{
		{"no policy", `{"cache":"/x"}`, "no policy"},
		{"unknown setting", `{"policy":"p.json","polcy":"q.json"}`, `unknown setting "polcy"`},
		{"per-run flag", `{"policy":"p.json","quiet":true}`, `unknown setting "quiet": --quiet chooses one run's output, so it is given on the command line only`},
		{"per-pull flag", `{"policy":"p.json","bundle":"/b"}`, `--bundle names one pull's bundle`},
		{"syntax", "{\n  \"policy\": \"p.json\",\n}\n", "line 3, column 1: invalid character '}'"},
		{"type", "{\n  \"max-concurrent-downloads\": \"3\"\n}", `line 2, column 33: "max-concurrent-downloads": want a number, not a JSON string`},
		{"trailing data", `{"policy":"p.json"} {}`, "line 1, column 21: data after the JSON object"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := []string{"pull", "registry.example.com/a:1", "--config", writeFile(t, tc.content)}
			stdout, stderr, code := gp(t, args...)
			if code != 2 || stdout != "" {
				t.Errorf("exit %d, stdout %q; want 2 and nothing", code, stdout)
			}
			oneLineError(t, args, stderr, tc.want)
		})
	}
	t.Run("missing file", func(t *testing.T) {
		args := []string{"pull", "registry.example.com/a:1", "--config", filepath.Join(t.TempDir(), "none.json")}
		_, stderr, code := gp(t, args...)
		if code != 2 {
			t.Errorf("exit %d, want 2", code)
		}
		oneLineError(t, args, stderr, "no such file")
	})
}

func TestFlagsOverConfigFile(t *testing.T) {
	cfgPath := writeFile(t, `{"policy":"/etc/p.json","cache":"/from/file","decryption-key":["/file.key"],"platform":"linux/arm64","max-concurrent-downloads":5}`)
	inv := &invocation{cmd: &command{name: "pull", args: "IMAGE"}, stdin: strings.NewReader(""), stdout: &bytes.Buffer{}, stderr: &bytes.Buffer{}}
	f := inv.flags("")
	s := f.settings(nil)
	pos, err := f.parse([]string{"img:1", "--config", cfgPath, "--cache", "/from/flag", "--decryption-key", "/a.key", "--decryption-key", "/b.key:pw", "--insecure-registry", "r:5000"}, 1)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(pos, []string{"img:1"}) {
		t.Fatalf("positional %q", pos)
	}
	cfg, err := s.config()
	if err != nil {
		t.Fatal(err)
	}
	want := config.Config{
		Policy:                 "/etc/p.json",
		Cache:                  "/from/flag",
		DecryptionKeys:         []string{"/a.key", "/b.key:pw"},
		InsecureRegistries:     []string{"r:5000"},
		Platform:               "linux/arm64",
		MaxConcurrentDownloads: 5,
	}
	if !reflect.DeepEqual(cfg, want) {
		t.Errorf("merged config\n%+v\nwant\n%+v", cfg, want)
	}
}

// --creds USER with no terminal to ask on is refused before anything is
// contacted; an explicit empty password ("USER:") is the user's choice.
func TestCredsWithoutPassword(t *testing.T) {
	args := []string{"pull", "registry.example.com/a:1", "--policy", writeFile(t, `{"default":[{"type":"reject"}]}`), "--creds", "alice", "--cache", filepath.Join(t.TempDir(), "c")}
	stdout, stderr, code := gp(t, args...)
	if code != 2 || stdout != "" {
		t.Errorf("exit %d, stdout %q; want 2", code, stdout)
	}
	oneLineError(t, args, stderr, "--creds has a user name but no password, and there is no terminal to ask for it on")
}

// A failed command given --json says so on stdout too, as JSON.
func TestJSONError(t *testing.T) {
	cache := filepath.Join(t.TempDir(), "cache")
	for _, args := range [][]string{
		{"pull", "registry.example.com/a:1", "--json", "--policy", filepath.Join(t.TempDir(), "missing.json"), "--cache", cache},
		{"policy", "check", "registry.example.com/a:1", "--json", "--policy", filepath.Join(t.TempDir(), "missing.json")},
	} {
		stdout, stderr, code := gp(t, args...)
		if code != 2 {
			t.Errorf("%q: exit %d, want 2", args, code)
		}
		oneLineError(t, args, stderr, "missing.json")
		var out struct {
			Error *struct {
				Code    int    `json:"code"`
				Message string `json:"message"`
			} `json:"error"`
		}
		dec := json.NewDecoder(strings.NewReader(stdout))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&out); err != nil || out.Error == nil {
			t.Fatalf("%q: stdout %q is not {\"error\": …}: %v", args, stdout, err)
		}
		if out.Error.Code != 2 || "guest-puller: "+out.Error.Message+"\n" != stderr {
			t.Errorf("%q: error object %+v, want code 2 and the message printed on stderr (%q)", args, *out.Error, stderr)
		}
	}
}

func TestOneLine(t *testing.T) {
	err := errorString("first\nsecond\n  third")
	if got := oneLine(err); got != "first; second; third" {
		t.Errorf("oneLine = %q", got)
	}
}

type errorString string

func (e errorString) Error() string { return string(e) }

func TestVersion(t *testing.T) {
	for _, args := range [][]string{{"version"}, {"--version"}} {
		stdout, stderr, code := gp(t, args...)
		if code != 0 || stderr != "" || !strings.HasPrefix(stdout, "guest-puller ") {
			t.Errorf("%q: exit %d, stdout %q, stderr %q", args, code, stdout, stderr)
		}
	}
	// "help CMD" is "CMD -h".
	a, _, _ := gp(t, "help", "cache", "rm")
	b, _, _ := gp(t, "cache", "rm", "-h")
	if a != b || a == "" {
		t.Errorf("help cache rm: %q, want cache rm -h's %q", a, b)
	}
}
