package compat_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.podman.io/image/v5/docker/reference"
	"go.podman.io/image/v5/pkg/shortnames"
	"go.podman.io/image/v5/pkg/sysregistriesv2"
	"go.podman.io/image/v5/types"

	"github.com/guest-puller/guest-puller/internal/refname"
	"github.com/guest-puller/guest-puller/internal/registry"
)

// confInputs are the image names every registries.conf of the corpus is
// asked about: short names (bare, with a namespace, tagged, digested),
// Docker Hub spellings, hosts with and without ports, names under the
// corpus's prefixes, wildcards, blocked registries and mirrors.
var confInputs = []string{
	"busybox",
	"busybox:1.36",
	"busybox@" + digestA,
	"library/busybox",
	"team/tool:2",
	"unset",
	"app",
	"docker.io/library/busybox:1",
	"docker.io/busybox",
	"registry.example.com/ns/app:1",
	"registry.example.com/ns/app@" + digestA,
	"registry.example.com/ns/other:1",
	"registry.example.com/else:1",
	"registry.example.com:5000/ns/app",
	"registry-a.com/foo/image:latest",
	"registry-a.com/foo/image@" + digestA,
	"registry-a.com/foobar:1",
	"registry-b.com/foo/image:1",
	"registry-b.com/foo/image@" + digestA,
	"quay.io/team/app:2",
	"a.sub.example.org/x/y:1",
	"deep.a.sub.example.org/x:1",
	"sub.example.org/x:1",
	"www.example.org:5000/x:1",
	"host.internal.example.com/x:1",
	"a.b.example/app:1",
	"blocked.example.com/app:1",
	"evil.example.com/app:1",
	"mirror-blocked.example.com/app:1",
	"x.blocked.example.org/app:1",
	"localhost/app:1",
	"localhost:5000/app:1",
	"127.0.0.1:5000/app:1",
}

const digestA = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

// A confDifference is a verdict of guest-puller's that differs from
// go.podman.io/image/v5's on purpose; docs/policy.md lists each, with its reason
// ("Differences from containers/image"). The test fails if a listed
// difference disappears, so that the list stays true.
type confDifference struct {
	file   string // in testdata/registries.conf, or "(none)" for no file
	input  string // "" for every input
	ours   string // a substring of guest-puller's verdict
	reason string
}

var confDifferences = []confDifference{
	{"(none)", "", "", "without a registries.conf a short name is a Docker Hub name, as Docker and image-rs read it; containers/image refuses it"},
	{"unknown-key.conf", "", "load error: invalid configuration: unknown keys registry.blokced", "an unknown key is an error: containers/image ignores it, and a misspelt blocked or insecure would silently change where images come from"},
	{"unknown-top-level-key.conf", "", "load error: invalid configuration: unknown keys unqualified-search-registry", "as unknown-key.conf"},
	{"duplicate-prefix.conf", "", `load error: invalid configuration: [[registry]] prefix "registry-a.com" is defined twice`, "containers/image keeps the first table of a prefix and ignores the second; which was meant cannot be known"},
	{"namespace-proxy.conf", "", "load error: invalid configuration: [[registry]] \"registry-a.com\": namespace-proxy is not supported", "guest-puller cannot honour namespace-proxy (the ns query parameter) and refuses it rather than pulling from the proxy without it"},
	{"layer-store-helper.conf", "", "load error: invalid configuration: additional-layer-store-auth-helper is not supported", "guest-puller has no additional layer store"},
	{"blocked.conf", "evil.example.com/app:1", "blocked", "a blocked prefix refuses its images whatever location it names; containers/image checks blocked only for the hosts it connects to, so a blocked prefix with another location is not blocked there"},
}

func TestRegistriesConfCorpus(t *testing.T) {
	noTTY(t)
	files, err := filepath.Glob("testdata/registries.conf/*.conf")
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < 40 {
		t.Fatalf("corpus has %d files", len(files))
	}
	files = append(files, "(none)")
	seen := map[confDifference]bool{}
	same, ran := 0, 0
	for _, file := range files {
		t.Run(filepath.Base(file), func(t *testing.T) {
			ran++
			for _, input := range confInputs {
				up := upstreamConfVerdict(t, file, input)
				ours, why := ourConfVerdict(file, input)
				d, listed := findConfDifference(filepath.Base(file), input)
				switch {
				case listed:
					seen[d] = true
					if up == ours {
						t.Errorf("%s: listed as a difference (%s) but both say %q", input, d.reason, ours)
					} else if !strings.Contains(ours+": "+why, d.ours) {
						t.Errorf("%s: listed difference: ours is %q (%s), want it to contain %q (upstream: %q)", input, ours, why, d.ours, up)
					}
				case up != ours:
					t.Errorf("%s:\n  go.podman.io/image/v5: %s\n  guest-puller:          %s", input, up, ours)
				default:
					same++
				}
			}
		})
	}
	for _, d := range confDifferences {
		if ran == len(files) && !seen[d] {
			t.Errorf("listed difference %s %q never occurred", d.file, d.input)
		}
	}
	t.Logf("%d files × %d names: %d verdicts the same, %d listed differences", len(files), len(confInputs), same, len(files)*len(confInputs)-same)
}

func findConfDifference(file, input string) (confDifference, bool) {
	for _, d := range confDifferences {
		if d.file == file && (d.input == "" || d.input == input) {
			return d, true
		}
	}
	return confDifference{}, false
}

// noTTY makes the process look like one without a terminal, as a daemon
// is: containers/image's short-name resolution would otherwise prompt.
func noTTY(t *testing.T) {
	devNull, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	stdin := os.Stdin
	os.Stdin = devNull
	t.Cleanup(func() {
		os.Stdin = stdin
		devNull.Close()
	})
}

// upstreamConfVerdict is what go.podman.io/image/v5 makes of input under
// file: a load error, a resolution error, or each candidate's sources.
func upstreamConfVerdict(t *testing.T, file, input string) string {
	dir := t.TempDir()
	sys := &types.SystemContext{
		SystemRegistriesConfPath:    file,
		SystemRegistriesConfDirPath: filepath.Join(dir, "registries.conf.d"),
		UserShortNameAliasConfPath:  filepath.Join(dir, "short-name-aliases.conf"),
	}
	if file == "(none)" {
		sys.SystemRegistriesConfPath = filepath.Join(dir, "absent.conf")
	}
	sysregistriesv2.InvalidateCache()
	if _, err := sysregistriesv2.GetRegistries(sys); err != nil {
		return "load error"
	}
	res, err := shortnames.Resolve(sys, input)
	if err != nil {
		return "resolve error"
	}
	var cands []string
	for _, c := range res.PullCandidates {
		cands = append(cands, c.Value.String()+" → "+upstreamSources(sys, c.Value))
	}
	return strings.Join(cands, "; ")
}

func upstreamSources(sys *types.SystemContext, ref reference.Named) string {
	reg, err := sysregistriesv2.FindRegistry(sys, ref.Name())
	if err != nil {
		return "error"
	}
	if reg == nil {
		return "[" + ref.String() + "]"
	}
	srcs, err := reg.PullSourcesFromReference(ref)
	if err != nil {
		return "error"
	}
	var out []string
	for _, s := range srcs {
		// Each source's connection is refused when its own host's
		// table is blocked (docker_client.go newDockerClient).
		if r, err := sysregistriesv2.FindRegistry(sys, s.Reference.Name()); err == nil && r != nil && r.Blocked {
			continue
		}
		out = append(out, sourceString(s.Reference.String(), s.Endpoint.Insecure))
	}
	if len(out) == 0 {
		return "blocked"
	}
	return "[" + strings.Join(out, ", ") + "]"
}

func sourceString(ref string, insecure bool) string {
	if insecure {
		return ref + " (insecure)"
	}
	return ref
}

// ourConfVerdict is the same for guest-puller's registry.Conf, with the
// error message behind an error verdict.
func ourConfVerdict(file, input string) (verdict, why string) {
	var conf *registry.Conf
	if file != "(none)" {
		var err error
		if conf, err = registry.LoadConf(file); err != nil {
			_, msg, _ := strings.Cut(err.Error(), file+": ")
			return "load error", msg
		}
	}
	res, err := conf.Resolve(input)
	if err != nil {
		return "resolve error", err.Error()
	}
	var cands []string
	for _, c := range res.Candidates {
		var srcs string
		sources, err := conf.Sources(c)
		switch {
		case err != nil && strings.Contains(err.Error(), "blocked"):
			srcs = "blocked"
		case err != nil:
			srcs = "error"
		default:
			var out []string
			for _, s := range sources {
				out = append(out, sourceString(refname.Reference(s.Ref), s.Insecure))
			}
			srcs = "[" + strings.Join(out, ", ") + "]"
		}
		cands = append(cands, refname.Reference(c)+" → "+srcs)
	}
	return strings.Join(cands, "; "), ""
}
