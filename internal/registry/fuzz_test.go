package registry

import (
	"fmt"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
)

// FuzzParseContentRange: a registry's Content-Range header is parsed
// strictly: what parses describes a range that starts before it ends and
// ends within the size, and prints back to what parses the same.
func FuzzParseContentRange(f *testing.F) {
	for _, s := range []string{
		"bytes 0-0/1", "bytes 100-199/200", "bytes 100-199/*", "bytes 5-4/10", "bytes 0-10/10",
		"bytes -5/10", "bytes 1-2", "items 0-1/2", "bytes +1-2/3", "bytes 1- 2/3", "bytes 9223372036854775806-9223372036854775807/*",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		cr, err := ParseContentRange(v)
		if err != nil {
			return
		}
		if cr.First < 0 || cr.Last < cr.First || cr.Size < -1 || (cr.Size >= 0 && cr.Last >= cr.Size) {
			t.Fatalf("%q parsed to an impossible range %+v", v, cr)
		}
		size := "*"
		if cr.Size >= 0 {
			size = fmt.Sprint(cr.Size)
		}
		again, err := ParseContentRange(fmt.Sprintf("bytes %d-%d/%s", cr.First, cr.Last, size))
		if err != nil || again != cr {
			t.Fatalf("%q: %+v does not print back (%+v, %v)", v, cr, again, err)
		}
	})
}

// FuzzParseConf: registries.conf from a file guest-puller is given, maybe
// from the KBS or a host-provided path. Whatever parses gives sources for
// any reference without panicking, and never an empty list.
func FuzzParseConf(f *testing.F) {
	f.Add([]byte(testConf))
	f.Add([]byte("[[registry]]\nprefix = \"Registry.Example.COM:443/team\"\nlocation = \"internal.example.net/team\"\n"))
	f.Add([]byte("unqualified-search-registries = [\"docker.io\"]\n[aliases]\n\"app\" = \"registry.example.com/team/app\"\n"))
	f.Add([]byte("[[registry]]\nprefix = \"*.example.com\"\ninsecure = true\n[[registry.mirror]]\nlocation = \"mirror.local\"\n"))
	refs := []string{"registry.example.com/team/app:1", "example.com/foo/image@sha256:0123456789012345678901234567890123456789012345678901234567890123", "a.wild.example/x:y", "busybox"}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := ParseConf(data)
		if err != nil {
			return
		}
		c.InsecureHosts()
		for _, s := range refs {
			ref, err := name.ParseReference(s)
			if err != nil {
				t.Fatal(err)
			}
			srcs, err := c.Sources(ref)
			if err == nil && len(srcs) == 0 {
				t.Fatalf("no source and no error for %s", s)
			}
			c.insecureWildcard(ref.Context().RegistryStr())
		}
	})
}
