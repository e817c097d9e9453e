package registry

import "testing"

// FuzzConf feeds a registries.conf and an image name, both of which a
// confidential guest may get from outside (a KBS resource, a pod spec), to
// the parser, short-name resolution and source selection: they must
// refuse or answer, never panic.
func FuzzConf(f *testing.F) {
	f.Add([]byte(testConf), "example.com/foo/image:latest")
	f.Add([]byte("unqualified-search-registries = [\"a.io\", \"b.io:5000\"]\n[aliases]\nbusybox = \"quay.io/team/busybox\"\n"), "busybox:1")
	f.Add([]byte("short-name-mode = \"enforcing\"\nunqualified-search-registries = [\"a.io\", \"b.io\"]\n"), "team/app@sha256:0123456789012345678901234567890123456789012345678901234567890123")
	f.Add([]byte("[[registry]]\nprefix = \"*.example.org\"\nlocation = \"wild.example.net/org\"\n"), "www.example.org:5000/x:1")
	f.Fuzz(func(t *testing.T, conf []byte, image string) {
		c, err := ParseConf(conf)
		if err != nil {
			return
		}
		res, err := c.Resolve(image)
		if err != nil {
			return
		}
		if len(res.Candidates) == 0 {
			t.Fatal("a resolution without candidates")
		}
		for _, ref := range res.Candidates {
			c.Sources(ref)
		}
	})
}
