package registry

import (
	"errors"
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
blocked = true

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
		"unknown key":        "[[registry]]\nprefix = \"a.io\"\nlocaton = \"b.io\"\n",
		"v1 format":          "[registries.search]\nregistries = ['a.io']\n",
		"broken toml":        "[[registry]\nprefix=",
		"no prefix":          "[[registry]]\ninsecure = true\n",
		"duplicate prefix":   "[[registry]]\nprefix = \"a.io\"\n[[registry]]\nprefix = \"a.io\"\n",
		"bad pull mode":      "[[registry]]\nprefix = \"a.io\"\n[[registry.mirror]]\nlocation = \"m.io\"\npull-from-mirror = \"sometimes\"\n",
		"wildcard location":  "[[registry]]\nprefix = \"*.a.io\"\nlocation = \"b.io\"\n",
		"bad location":       "[[registry]]\nprefix = \"a.io\"\nlocation = \"UPPER CASE/x\"\n",
		"mirror digest only": "[[registry]]\nprefix = \"a.io\"\nmirror-by-digest-only = true\n[[registry.mirror]]\nlocation = \"m.io\"\npull-from-mirror = \"tag-only\"\n",
	} {
		t.Run(name, func(t *testing.T) {
			_, err := ParseConf([]byte(data))
			if !errors.Is(err, errdefs.ErrInvalidConfig) {
				t.Fatalf("ParseConf = %v, want ErrInvalidConfig", err)
			}
		})
	}
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
	if _, err := ParseConf([]byte("[[registry]]\nprefix = \"a.example\"\n[[registry]]\nprefix = \"A.Example:443\"\n")); !errors.Is(err, errdefs.ErrInvalidConfig) {
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
