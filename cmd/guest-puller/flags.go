package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"strings"

	"github.com/guest-puller/guest-puller/internal/errdefs"
	"github.com/guest-puller/guest-puller/pull"
)

// DefaultConfigFile is read when it exists and --config is not given.
const DefaultConfigFile = "/etc/guest-puller/config.json"

type stringList []string

func (s *stringList) String() string     { return strings.Join(*s, ",") }
func (s *stringList) Set(v string) error { *s = append(*s, v); return nil }

// pullFlags are the flags shared by pull and policy check (and serve's
// defaults): every field of pull.Config, plus --config.
type pullFlags struct {
	fs         *flag.FlagSet
	configFile string
	cfg        pull.Config
	keys       stringList
	insecure   stringList
}

func newPullFlags(name string, stderr io.Writer) *pullFlags {
	f := &pullFlags{fs: flag.NewFlagSet(name, flag.ContinueOnError)}
	fs := f.fs
	fs.SetOutput(stderr)
	c := &f.cfg
	fs.StringVar(&f.configFile, "config", "", "config file (JSON, keys named as these flags; default "+DefaultConfigFile+" if it exists)")
	fs.StringVar(&c.Policy, "policy", "", "policy file or kbs:///repo/type/tag (required)")
	fs.StringVar(&c.Cache, "cache", "", "layer cache root (default /run/guest-puller)")
	fs.StringVar(&c.AuthFile, "auth-file", "", "docker config.json / containers auth.json, or kbs:///… (default $REGISTRY_AUTH_FILE, then ~/.docker/config.json)")
	fs.StringVar(&c.Creds, "creds", "", "registry credentials USER[:PASS] for this pull")
	fs.Var(&f.keys, "decryption-key", "private key PATH[:PASS] or kbs:///… (repeatable)")
	fs.StringVar(&c.KeyDir, "key-dir", "", "directory of private keys")
	fs.StringVar(&c.KBS, "kbs", "", "Key Broker Service base URL")
	fs.StringVar(&c.KBSCert, "kbs-cert", "", "CA or certificate the KBS's TLS must chain to")
	fs.StringVar(&c.Attester, "attester", "", "evidence source: auto, tpm, tsm, sample (default auto)")
	fs.StringVar(&c.TPM, "tpm", "", "TPM device or mssim://HOST:PORT (default /dev/tpmrm0)")
	fs.IntVar(&c.MaxConcurrentDownloads, "max-concurrent-downloads", 0, "layers fetched at once (default 3)")
	fs.Var(&f.insecure, "insecure-registry", "allow plain http to HOST[:PORT] (repeatable)")
	fs.StringVar(&c.RegistriesConf, "registries-conf", "", "containers-registries.conf v2 (mirrors, blocked, insecure)")
	fs.StringVar(&c.RegistriesD, "registries-d", "", "containers-registries.d directory (lookaside, sigstore attachments)")
	fs.StringVar(&c.Platform, "platform", "", "OS/ARCH[/VARIANT] (default the running platform)")
	return f
}

// parse parses args, which may mix flags and positional arguments
// ("pull IMAGE --policy p.json"), and returns the positional ones.
func parseInterleaved(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, errHelp
			}
			return nil, errSilent
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		if args[0] == "--" {
			return append(pos, args[1:]...), nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

// printFlags is flag.PrintDefaults with the double dashes DESIGN.md and
// the README use (Go's flag package accepts both).
func printFlags(fs *flag.FlagSet, w io.Writer) {
	var b strings.Builder
	fs.SetOutput(&b)
	fs.PrintDefaults()
	fs.SetOutput(w)
	io.WriteString(w, strings.ReplaceAll("\n"+b.String(), "\n  -", "\n  --")[1:])
}

// errHelp ends a command after -h printed its usage: exit 0.
var errHelp = errors.New("help")

// config merges the config file (if any) under the flags that were set.
func (f *pullFlags) config() (pull.Config, error) {
	path := f.configFile
	if path == "" {
		if _, err := os.Stat(DefaultConfigFile); err == nil {
			path = DefaultConfigFile
		}
	}
	var cfg pull.Config
	if path != "" {
		var err error
		if cfg, err = pull.LoadConfig(path); err != nil {
			return cfg, err
		}
	}
	var bad error
	f.fs.Visit(func(fl *flag.Flag) {
		c := &f.cfg
		switch fl.Name {
		case "policy":
			cfg.Policy = c.Policy
		case "cache":
			cfg.Cache = c.Cache
		case "auth-file":
			cfg.AuthFile = c.AuthFile
		case "creds":
			cfg.Creds = c.Creds
		case "decryption-key":
			cfg.DecryptionKeys = f.keys
		case "key-dir":
			cfg.KeyDir = c.KeyDir
		case "kbs":
			cfg.KBS = c.KBS
		case "kbs-cert":
			cfg.KBSCert = c.KBSCert
		case "attester":
			cfg.Attester = c.Attester
		case "tpm":
			cfg.TPM = c.TPM
		case "max-concurrent-downloads":
			if c.MaxConcurrentDownloads < 1 {
				bad = fmt.Errorf("%w: --max-concurrent-downloads must be at least 1", errdefs.ErrInvalidConfig)
			}
			cfg.MaxConcurrentDownloads = c.MaxConcurrentDownloads
		case "insecure-registry":
			cfg.InsecureRegistries = f.insecure
		case "registries-conf":
			cfg.RegistriesConf = c.RegistriesConf
		case "registries-d":
			cfg.RegistriesD = c.RegistriesD
		case "platform":
			cfg.Platform = c.Platform
		}
	})
	return cfg, bad
}

func version() string {
	v := pull.Version
	if bi, ok := debug.ReadBuildInfo(); ok && v == "dev" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		v = bi.Main.Version
	}
	return v
}
