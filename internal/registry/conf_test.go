package registry

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"

	"github.com/guest-puller/guest-puller/internal/errdefs"
)

const testConf = `
unqualified-search-registries = ["example.com"]
short-name-mode = "enforcing"

[[registry]]
prefix = "example.com/foo"
location = "internal.example.net/bar"

[[registry.mirror]]
location = "mirror-0.local/mirror-for-foo"

[[registry.mirror]]
location = "mirror-1.local:5000/mirrors/foo"
insecure = true

[[registry.mirror]]
location = "digests.local/foo"
pull-from-mirror = "digest-only"

[[registry]]
location = "example.com"
blocked = false

[[registry]]
prefix = "evil.example.org"
location = "evil.example.org"
blocked = true

[[registry]]
prefix = "*.sub.example.org"
location = "flat.example.org/subs"

[[registry]]
prefix = "example.org"
location = "example.org"

[[registry.mirror]]
location = "evil.example.org/mirror"

[[registry]]
prefix = "*.tie.example"
location = "wildcard.local"

[[registry]]
prefix = "a.tie.example"
location = "exact.local"

[[registry]]
prefix = "broken.example"
location = "broken.example/UPPER"

[[registry]]
prefix = "*.wild.example"

[[registry.mirror]]
location = "wildmirror.local"

[[registry]]
prefix = "docker.io/library/busybox"
location = "hub-cache.local/library/busybox"
mirror-by-digest-only = true

[[registry.mirror]]
location = "only-digests.local/bb"
`

func TestSources(t *testing.T) {
	conf, err := ParseConf([]byte(testConf))
	if err != nil {
		t.Fatal(err)
	}
	const dgst = "@sha256:0123456789012345678901234567890123456789012345678901234567890123"
	for _, tc := range []struct {
		ref     string
		want    []string
		blocked bool
	}{
		{ref: "example.com/foo/image:latest", want: []string{
			"mirror-0.local/mirror-for-foo/image:latest",
			"mirror-1.local:5000/mirrors/foo/image:latest",
			"internal.example.net/bar/image:latest",
		}},
		{ref: "example.com/foo/image" + dgst, want: []string{
			"mirror-0.local/mirror-for-foo/image" + dgst,
			"mirror-1.local:5000/mirrors/foo/image" + dgst,
			"digests.local/foo/image" + dgst,
			"internal.example.net/bar/image" + dgst,
		}},
		// "example.com/foobar" must not match the "example.com/foo" prefix.
		{ref: "example.com/foobar:1", want: []string{"example.com/foobar:1"}},
		{ref: "evil.example.org/x/y:1", blocked: true},
		{ref: "unrelated.io/a:1", want: []string{"unrelated.io/a:1"}},
		{ref: "registry.wild.example/ns/app:2", want: []string{
			"wildmirror.local/ns/app:2",
			"registry.wild.example/ns/app:2",
		}},
		{ref: "busybox:1.36", want: []string{"hub-cache.local/library/busybox:1.36"}},
		// A wildcard prefix with a location replaces the whole host.
		{ref: "a.sub.example.org/x/y:1", want: []string{"flat.example.org/subs/x/y:1"}},
		// A mirror under a blocked prefix is skipped.
		{ref: "example.org/app:1", want: []string{"example.org/app:1"}},
		// Prefixes of the same length: the first in sorted order wins,
		// and "*" sorts before letters.
		{ref: "a.tie.example/app:1", want: []string{"wildcard.local/app:1"}},
		{ref: "busybox" + dgst, want: []string{"only-digests.local/bb" + dgst, "hub-cache.local/library/busybox" + dgst}},
	} {
		t.Run(tc.ref, func(t *testing.T) {
			ref, err := name.ParseReference(tc.ref)
			if err != nil {
				t.Fatal(err)
			}
			srcs, err := conf.Sources(ref)
			if tc.blocked {
				if !errors.Is(err, ErrBlocked) || errdefs.ExitCode(err) != 3 {
					t.Fatalf("Sources = %v, %v; want blocked (exit 3)", srcs, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, s := range srcs {
				got = append(got, s.Ref.String())
			}
			if len(got) != len(tc.want) {
				t.Fatalf("sources %q, want %q", got, tc.want)
			}
			for i := range got {
				if got[i] != tc.want[i] {
					t.Errorf("source %d = %q, want %q", i, got[i], tc.want[i])
				}
			}
			if last := srcs[len(srcs)-1]; last.Mirror {
				t.Errorf("last source %v should be the primary location", last)
			}
		})
	}
	hosts := conf.InsecureHosts()
	if len(hosts) != 1 || hosts[0] != "mirror-1.local:5000" {
		t.Errorf("InsecureHosts = %v", hosts)
	}
}

func TestParseConfErrors(t *testing.T) {
	for name, data := range map[string]string{
		"unknown key":                      "[[registry]]\nprefix = \"a.io\"\nlocation = \"a.io\"\nblokced = true\n",
		"v1 format":                        "[registries.search]\nregistries = ['a.io']\n",
		"broken toml":                      "[[registry]\nprefix=",
		"no prefix":                        "[[registry]]\ninsecure = true\n",
		"duplicate prefix":                 "[[registry]]\nprefix = \"a.io\"\nlocation = \"a.io\"\n[[registry]]\nprefix = \"a.io/\"\nlocation = \"a.io\"\n",
		"bad pull mode":                    "[[registry]]\nprefix = \"a.io\"\nlocation = \"a.io\"\n[[registry.mirror]]\nlocation = \"m.io\"\npull-from-mirror = \"sometimes\"\n",
		"no location":                      "[[registry]]\nprefix = \"a.io\"\n",
		"wildcard with path":               "[[registry]]\nprefix = \"*.a.io/x\"\nlocation = \"b.io\"\n",
		"URL location":                     "[[registry]]\nprefix = \"a.io\"\nlocation = \"https://b.io\"\n",
		"pull-from-mirror on the registry": "[[registry]]\nprefix = \"a.io\"\nlocation = \"a.io\"\npull-from-mirror = \"all\"\n",
		"mirror without location":          "[[registry]]\nprefix = \"a.io\"\nlocation = \"a.io\"\n[[registry.mirror]]\ninsecure = true\n",
		"conflicting insecure":             "[[registry]]\nprefix = \"a.io\"\nlocation = \"c.io\"\ninsecure = true\n[[registry]]\nprefix = \"b.io\"\nlocation = \"c.io\"\n",
		"conflicting blocked":              "[[registry]]\nprefix = \"a.io\"\nlocation = \"c.io\"\nblocked = true\n[[registry]]\nprefix = \"b.io\"\nlocation = \"c.io\"\n",
		"search registry URL":              "unqualified-search-registries = [\"https://a.io\"]\n",
		"search registry path":             "unqualified-search-registries = [\"a.io/ns\"]\n",
		"short-name-mode":                  "short-name-mode = \"strict\"\n",
		"alias with tag":                   "[aliases]\nbusybox = \"docker.io/library/busybox:1\"\n",
		"alias short value":                "[aliases]\nbusybox = \"library/busybox\"\n",
		"alias qualified name":             "[aliases]\n\"quay.io/app\" = \"quay.io/team/app\"\n",
		"namespace-proxy":                  "[[registry]]\nprefix = \"a.io\"\nlocation = \"a.io\"\nnamespace-proxy = \"x\"\n",
		"layer store helper":               "additional-layer-store-auth-helper = \"helper\"\n",
		"mirror digest only":               "[[registry]]\nprefix = \"a.io\"\nlocation = \"a.io\"\nmirror-by-digest-only = true\n[[registry.mirror]]\nlocation = \"m.io\"\npull-from-mirror = \"tag-only\"\n",
	} {
		t.Run(name, func(t *testing.T) {
			_, err := ParseConf([]byte(data))
			if !errors.Is(err, errdefs.ErrInvalidConfig) {
				t.Fatalf("ParseConf = %v, want ErrInvalidConfig", err)
			}
		})
	}
}

// TestSourcesBadLocation: a location that does not make a valid reference
// fails the images of its prefix only, as a configuration error.
func TestSourcesBadLocation(t *testing.T) {
	conf, err := ParseConf([]byte(testConf))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conf.Sources(name.MustParseReference("broken.example/app:1")); !errors.Is(err, errdefs.ErrInvalidConfig) {
		t.Fatalf("Sources = %v, want ErrInvalidConfig", err)
	}
	if _, err := conf.Sources(name.MustParseReference("unrelated.io/app:1")); err != nil {
		t.Fatalf("another prefix: %v", err)
	}
}

func TestResolve(t *testing.T) {
	const aliases = `
[aliases]
busybox = "quay.io/team/busybox"
"team/tool" = "registry.example.com:5000/tools/tool"
unset = ""
`
	for _, tc := range []struct {
		name, conf, image string
		want              []string // candidates; nil means an error
		errHas            string
	}{
		{"fully qualified", `unqualified-search-registries = ["a.io", "b.io"]`, "registry.example.com/app", []string{"registry.example.com/app:latest"}, ""},
		{"localhost", `short-name-mode = "enforcing"`, "localhost/app:1", []string{"localhost/app:1"}, ""},
		{"port", ``, "127.0.0.1:5000/app", []string{"127.0.0.1:5000/app:latest"}, ""},
		{"docker.io normalized", ``, "docker.io/busybox:1", []string{"docker.io/library/busybox:1"}, ""},
		{"alias", aliases, "busybox", []string{"quay.io/team/busybox:latest"}, ""},
		{"alias keeps the tag", aliases, "busybox:1.36", []string{"quay.io/team/busybox:1.36"}, ""},
		{"alias keeps the digest", aliases, "busybox@sha256:" + strings.Repeat("a", 64), []string{"quay.io/team/busybox@sha256:" + strings.Repeat("a", 64)}, ""},
		{"alias of a two-component name", aliases, "team/tool:2", []string{"registry.example.com:5000/tools/tool:2"}, ""},
		{"alias wins over search", "unqualified-search-registries = [\"a.io\", \"b.io\"]\n" + aliases, "busybox", []string{"quay.io/team/busybox:latest"}, ""},
		{"unset alias falls to search", `unqualified-search-registries = ["a.io"]` + "\n" + aliases, "unset", []string{"a.io/unset:latest"}, ""},
		{"one search registry", `unqualified-search-registries = ["a.io"]`, "app:1", []string{"a.io/app:1"}, ""},
		{"docker.io search registry", `unqualified-search-registries = ["docker.io"]`, "busybox", []string{"docker.io/library/busybox:latest"}, ""},
		{"permissive by default", `unqualified-search-registries = ["a.io", "b.io:5000"]`, "app", []string{"a.io/app:latest", "b.io:5000/app:latest"}, ""},
		{"disabled tries them all", "short-name-mode = \"disabled\"\nunqualified-search-registries = [\"a.io\", \"b.io\"]", "app", []string{"a.io/app:latest", "b.io/app:latest"}, ""},
		{"enforcing with one", "short-name-mode = \"enforcing\"\nunqualified-search-registries = [\"a.io\"]", "app", []string{"a.io/app:latest"}, ""},
		{"enforcing with two", "short-name-mode = \"enforcing\"\nunqualified-search-registries = [\"a.io\", \"b.io\"]", "app", nil, "short-name-mode is enforcing"},
		{"no search registries", `short-name-mode = "permissive"`, "app", nil, "needs unqualified-search-registries"},
		{"empty search registries", `unqualified-search-registries = []`, "app", nil, "needs unqualified-search-registries"},
		{"invalid name", `unqualified-search-registries = ["a.io"]`, "App", nil, "invalid"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			conf, err := ParseConf([]byte(tc.conf))
			if err != nil {
				t.Fatal(err)
			}
			res, err := conf.Resolve(tc.image)
			if tc.want == nil {
				if !errors.Is(err, errdefs.ErrInvalidConfig) || !strings.Contains(err.Error(), tc.errHas) {
					t.Fatalf("Resolve = %v, %v; want an ErrInvalidConfig containing %q", res, err, tc.errHas)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, c := range res.Candidates {
				got = append(got, c.String())
			}
			if !slices.Equal(got, tc.want) {
				t.Fatalf("candidates %q, want %q", got, tc.want)
			}
			if (len(got) > 1 || strings.Contains(tc.name, "alias")) && res.How == "" {
				t.Error("How does not say how the short name was resolved")
			}
		})
	}

	t.Run("no registries.conf", func(t *testing.T) {
		var conf *Conf
		res, err := conf.Resolve("busybox")
		if err != nil || len(res.Candidates) != 1 || res.Candidates[0].String() != "docker.io/library/busybox:latest" {
			t.Fatalf("Resolve = %+v, %v", res, err)
		}
	})
}

// TestSourcesHostSpellings: a registries.conf prefix applies to every
// spelling of its host (case, an explicit :443), as policy scopes do.
func TestSourcesHostSpellings(t *testing.T) {
	conf, err := ParseConf([]byte(`
[[registry]]
prefix = "Registry.Example.COM:443/team"
location = "internal.example.net/team"

[[registry]]
prefix = "Blocked.Example.org"
location = "blocked.example.org"
blocked = true

[[registry]]
prefix = "*.Wild.Example"
insecure = true
`))
	if err != nil {
		t.Fatal(err)
	}
	for _, in := range []string{"registry.example.com/team/app:1", "Registry.example.com:443/team/app:1", "REGISTRY.EXAMPLE.COM/team/app:1"} {
		srcs, err := conf.Sources(mustParse(t, in))
		if err != nil {
			t.Fatal(err)
		}
		if len(srcs) != 1 || srcs[0].Ref.String() != "internal.example.net/team/app:1" {
			t.Errorf("%s: sources %v, want the configured location", in, srcs)
		}
	}
	if _, err := conf.Sources(mustParse(t, "BLOCKED.example.org:443/x:1")); !errors.Is(err, ErrBlocked) {
		t.Errorf("another spelling of a blocked host: %v, want blocked", err)
	}
	if !conf.insecureWildcard("Registry.WILD.example:5000") {
		t.Errorf("an insecure wildcard does not cover an upper-case host")
	}
	if _, err := ParseConf([]byte("[[registry]]\nprefix = \"a.example\"\nlocation = \"a.example\"\n[[registry]]\nprefix = \"A.Example:443\"\nlocation = \"a.example\"\n")); !errors.Is(err, errdefs.ErrInvalidConfig) {
		t.Errorf("two spellings of one prefix: %v, want a configuration error", err)
	}
}

func mustParse(t *testing.T, s string) name.Reference {
	t.Helper()
	ref, err := name.ParseReference(s)
	if err != nil {
		t.Fatal(err)
	}
	return ref
}
