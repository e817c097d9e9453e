package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"reflect"
	"runtime/debug"
	"sort"
	"strings"
	"time"

	"github.com/guest-puller/guest-puller/internal/config"
)

// flags is one command's flag set and help. Every command builds one, so
// that -h, unknown flags and bad arguments read the same everywhere.
type flags struct {
	inv  *invocation
	fs   *flag.FlagSet
	help string
}

// flags starts the command's flag set; help is the text under its usage
// line.
func (inv *invocation) flags(help string) *flags {
	fs := flag.NewFlagSet(inv.cmd.name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	return &flags{inv: inv, fs: fs, help: help}
}

// parse parses args, which may mix flags and positional arguments
// ("pull IMAGE --policy p.json"), and returns the positional ones, of which
// there must be nargs (-1: any number). -h prints the help on stdout and
// returns errHelp.
func (f *flags) parse(args []string, nargs int) ([]string, error) {
	var pos []string
	for {
		if err := f.fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				f.printHelp(f.inv.stdout)
				return nil, errHelp
			}
			return nil, f.flagError(err)
		}
		args = f.fs.Args()
		if len(args) == 0 {
			break
		}
		if args[0] == "--" {
			pos = append(pos, args[1:]...)
			break
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
	if nargs >= 0 && len(pos) != nargs {
		what := "no arguments"
		if f.inv.cmd.args != "" {
			what = f.inv.cmd.args
		}
		if len(pos) > nargs && nargs > 0 {
			return nil, usageError("unexpected argument %q: %s takes %s; usage: %s", pos[nargs], f.inv.cmd.name, what, f.usageLine())
		}
		if len(pos) > nargs {
			return nil, usageError("unexpected argument %q: %s takes %s", pos[0], f.inv.cmd.name, what)
		}
		return nil, usageError("%s needs %s; usage: %s", f.inv.cmd.name, what, f.usageLine())
	}
	return pos, nil
}

// flagError rewrites the flag package's messages in the --flag spelling,
// on one line, with the closest known flag for a misspelt one.
func (f *flags) flagError(err error) error {
	msg := err.Error()
	see := fmt.Sprintf("; see 'guest-puller %s -h'", f.inv.cmd.name)
	if name, ok := strings.CutPrefix(msg, "flag provided but not defined: "); ok {
		name = strings.TrimLeft(name, "-")
		var known []string
		f.fs.VisitAll(func(fl *flag.Flag) { known = append(known, fl.Name) })
		return usageError("unknown flag %s%s%s", dashed(name), didYouMean(name, known, "--"), see)
	}
	if name, ok := strings.CutPrefix(msg, "flag needs an argument: "); ok {
		return usageError("flag %s needs a value%s", dashed(strings.TrimLeft(name, "-")), see)
	}
	// "invalid value "x" for flag -name: reason"
	if before, after, ok := strings.Cut(msg, " for flag -"); ok {
		name, reason, _ := strings.Cut(after, ": ")
		msg = before + " for flag " + dashed(name) + ": " + reason
	}
	return usageError("%s%s", msg, see)
}

// dashed spells a flag as the help does: --name, or -c for a one-letter
// flag (the confidential-data-hub's -c).
func dashed(name string) string {
	if len(name) == 1 {
		return "-" + name
	}
	return "--" + name
}

func (f *flags) usageLine() string {
	line := "guest-puller " + f.inv.cmd.name
	if f.inv.cmd.args != "" {
		line += " " + f.inv.cmd.args
	}
	n := 0
	f.fs.VisitAll(func(*flag.Flag) { n++ })
	if n > 0 {
		line += " [flags]"
	}
	return line
}

// printHelp writes the command's help: usage line, description, flags in
// the --flag spelling, each with its value's name and a wrapped
// description.
func (f *flags) printHelp(w io.Writer) {
	var b strings.Builder
	fmt.Fprintf(&b, "usage: %s\n", f.usageLine())
	if f.help != "" {
		fmt.Fprintf(&b, "\n%s\n", strings.TrimSpace(f.help))
	}
	first := true
	f.fs.VisitAll(func(fl *flag.Flag) {
		if first {
			b.WriteString("\nflags:\n")
			first = false
		}
		value, usage := flag.UnquoteUsage(fl)
		if isBool(fl) {
			value = ""
		}
		fmt.Fprintf(&b, "  %s", dashed(fl.Name))
		if value != "" {
			fmt.Fprintf(&b, " %s", value)
		}
		b.WriteString("\n")
		if !isZeroDefault(fl) && !strings.Contains(usage, "(default") {
			usage += fmt.Sprintf(" (default %s)", fl.DefValue)
		}
		b.WriteString(wrap(usage, "        ", 80))
	})
	io.WriteString(w, b.String())
}

func isBool(fl *flag.Flag) bool {
	b, ok := fl.Value.(interface{ IsBoolFlag() bool })
	return ok && b.IsBoolFlag()
}

func isZeroDefault(fl *flag.Flag) bool {
	switch fl.DefValue {
	case "", "0", "false", "0s", "[]":
		return true
	}
	return false
}

// wrap breaks text into lines of at most width columns, each starting
// with indent.
func wrap(text, indent string, width int) string {
	var b strings.Builder
	line := indent
	for _, word := range strings.Fields(text) {
		if line != indent && len(line)+1+len(word) > width {
			b.WriteString(line + "\n")
			line = indent
		}
		if line != indent {
			line += " "
		}
		line += word
	}
	b.WriteString(line + "\n")
	return b.String()
}

// didYouMean suggests the candidate closest to s, when one is close.
func didYouMean(s string, candidates []string, prefix string) string {
	best, bestD := "", len(s)/2+1
	if bestD > 3 {
		bestD = 3
	}
	for _, c := range candidates {
		d := editDistance(s, c)
		if strings.HasPrefix(c, s) && len(s) >= 3 {
			d = min(d, 1)
		}
		if d < bestD || d == bestD && best == "" && d < len(s)/2+1 {
			best, bestD = c, d
		}
	}
	if best == "" || best == s {
		return ""
	}
	return fmt.Sprintf(" (did you mean %s%s?)", prefix, best)
}

// editDistance is the Levenshtein distance of a and b.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// DefaultConfigFile is read when it exists and --config is not given.
const DefaultConfigFile = "/etc/guest-puller/config.json"

// A setting is a flag that sets a field of config.Config. The config file
// takes the same names as keys, so every setting is both; flags win over
// the file. The field is found by its json tag.
type setting struct {
	name  string
	usage string // the flag's description; `NAME` is its value's name
	// serve, if set, is the description under 'guest-puller serve', whose
	// settings are the defaults of every request.
	serve string
}

var settings = []setting{
	{name: "policy", usage: "the policy: a containers-policy.json `FILE` or kbs:///repo/type/tag (required: there is no accept-all default)"},
	{name: "cache", usage: "layer cache root `DIR` (default /run/guest-puller)"},
	{name: "cache-device", usage: "seal the cache on block device `DEV`: LUKS2 with dm-integrity, ext4 on top, mounted as the cache; formatted with a fresh key that lives only in memory unless --cache-device-key is given"},
	{name: "cache-device-key", usage: "the sealed cache's key (at least 32 bytes): a `FILE` or kbs:///repo/type/tag; the store already on --cache-device is then opened, not formatted, so the cache survives a restart"},
	{name: "auth-file", usage: "registry credentials: a docker config.json or containers auth.json `FILE`, or kbs:///repo/type/tag (default $REGISTRY_AUTH_FILE, then ~/.docker/config.json, each skipped when unreadable)"},
	{name: "creds", usage: "registry credentials `USER[:PASSWORD]` for the image's own registry, sent to no other; without a password it is asked for on the terminal"},
	{name: "decryption-key", usage: "private key `PATH[:PASSWORD]` (JWE RSA/EC, PKCS7 key+certificate, PGP) or kbs:///repo/type/tag, as skopeo takes them; repeatable"},
	{name: "key-dir", usage: "`DIR` whose every file is a private key without password"},
	{name: "kid-resource-type", usage: "KBS resource `TYPE` a layer's attestation-agent kid may name (kbs:///repo/TYPE/tag); repeatable (default key and image-kek): the KBS is never asked for other resources on an image's word"},
	{name: "kbs", usage: "Key Broker Service base `URL`, for attestation-agent layer keys and kbs:/// resources"},
	{name: "kbs-cert", usage: "CA or certificate `FILE` (PEM) the KBS's TLS certificate must chain to"},
	{name: "attester", usage: "evidence `KIND` for the KBS: auto (configfs-tsm, then TPM), tpm, tsm or sample (development only) (default auto)"},
	{name: "tpm", usage: "TPM `PATH` (a device) or mssim://HOST:PORT (a simulator such as swtpm: its server port, not its control port) (default /dev/tpmrm0)"},
	{name: "max-concurrent-downloads", usage: "layers fetched at once, `N` ≥ 1 (default 3)"},
	{name: "insecure-registry", usage: "allow plain HTTP and unverified TLS to `HOST[:PORT]`; repeatable"},
	{name: "registries-conf", usage: "containers-registries.conf v2 `FILE` (mirrors, blocked, insecure)"},
	{name: "registries-d", usage: "containers-registries.d `DIR` (lookaside, sigstore attachments) (default /etc/containers/registries.d if it exists)"},
	{name: "idle-timeout", usage: "give up a registry or KBS request when the server sends nothing for `DURATION`, waiting for its answer or in the middle of it, then retry it (a blob resumes where it stopped) (default 30s)"},
	{name: "platform", usage: "`OS/ARCH[/VARIANT]` to pull (default the running platform; an image for another platform is refused unless asked for here)"},
}

// perRunFlags are flags about one run, not settings: the config file
// refuses them with this reason.
var perRunFlags = map[string]string{
	"bundle":       "names one pull's bundle",
	"container-id": "names one pull's bundle",
	"json":         "chooses one run's output",
	"quiet":        "chooses one run's output",
	"config":       "names the config file itself",
	"socket":       "is serve's command line",
	"gc-interval":  "is serve's command line",
}

// pullSettings are the settings bound to a command's flag set.
type pullSettings struct {
	f          *flags
	configFile string
	cfg        config.Config // the values given as flags
	index      map[string][]int
}

// settings binds --config and the settings for which keep is true (nil:
// all) to the command's flags.
func (f *flags) settings(keep func(name string) bool) *pullSettings {
	s := &pullSettings{f: f, index: map[string][]int{}}
	f.fs.StringVar(&s.configFile, "config", "", "config `FILE` (JSON; keys are the settings' flag names) (default "+DefaultConfigFile+" if it exists)")
	v := reflect.ValueOf(&s.cfg).Elem()
	fields := configFields()
	for _, st := range settings {
		if keep != nil && !keep(st.name) {
			continue
		}
		idx, ok := fields[st.name]
		if !ok {
			panic("setting " + st.name + " is no field of config.Config")
		}
		usage := st.usage
		if f.inv.cmd.name == "serve" && st.serve != "" {
			usage = st.serve
		}
		s.index[st.name] = idx
		switch p := v.FieldByIndex(idx).Addr().Interface().(type) {
		case *string:
			f.fs.StringVar(p, st.name, "", usage)
		case *int:
			f.fs.IntVar(p, st.name, 0, usage)
		case *bool:
			f.fs.BoolVar(p, st.name, false, usage)
		case *time.Duration:
			f.fs.DurationVar(p, st.name, 0, usage)
		case *[]string:
			f.fs.Var((*stringList)(p), st.name, usage)
		case flag.Value:
			f.fs.Var(p, st.name, usage)
		default:
			panic(fmt.Sprintf("setting %s: unsupported type %T", st.name, p))
		}
	}
	return s
}

// configFields maps config.Config's json names to their fields.
func configFields() map[string][]int {
	out := map[string][]int{}
	t := reflect.TypeFor[config.Config]()
	for i := range t.NumField() {
		name, _, _ := strings.Cut(t.Field(i).Tag.Get("json"), ",")
		if name != "" && name != "-" {
			out[name] = t.Field(i).Index
		}
	}
	return out
}

// config reads the config file (--config, or the default one if it
// exists) and sets over it the settings given as flags.
func (s *pullSettings) config() (config.Config, error) {
	path := s.configFile
	if path == "" {
		if _, err := os.Stat(DefaultConfigFile); err == nil {
			path = DefaultConfigFile
		}
	}
	var cfg config.Config
	if path != "" {
		var err error
		if cfg, err = config.LoadConfig(path); err != nil {
			var use *config.UnknownSettingError
			if errors.As(err, &use) {
				if why, ok := perRunFlags[use.Key]; ok {
					return cfg, fmt.Errorf("%w: --%s %s, so it is given on the command line only", err, use.Key, why)
				}
			}
			return cfg, err
		}
	}
	dst, src := reflect.ValueOf(&cfg).Elem(), reflect.ValueOf(&s.cfg).Elem()
	var bad error
	s.f.fs.Visit(func(fl *flag.Flag) {
		idx, ok := s.index[fl.Name]
		if !ok {
			return
		}
		dst.FieldByIndex(idx).Set(src.FieldByIndex(idx))
		if fl.Name == "max-concurrent-downloads" && s.cfg.MaxConcurrentDownloads < 1 {
			bad = usageError("--max-concurrent-downloads must be at least 1")
		}
	})
	if bad != nil {
		return cfg, bad
	}
	var err error
	cfg.Creds, err = askPassword(s.f.inv, "creds", cfg.Creds)
	return cfg, err
}

// stringList is a repeatable flag. A flag given replaces the config file's
// list as a whole.
type stringList []string

func (s *stringList) String() string     { return strings.Join(*s, ",") }
func (s *stringList) Set(v string) error { *s = append(*s, v); return nil }

// settingNames are the names of every setting, sorted (tests).
func settingNames() []string {
	var out []string
	for _, s := range settings {
		out = append(out, s.name)
	}
	sort.Strings(out)
	return out
}

func version() string {
	v := config.Version
	if bi, ok := debug.ReadBuildInfo(); ok && v == "dev" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		v = bi.Main.Version
	}
	return v
}
