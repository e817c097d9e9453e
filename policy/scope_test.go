package policy

import (
	"slices"
	"strings"
	"testing"
)

func TestDockerScopes(t *testing.T) {
	for _, tc := range []struct {
		ref  string
		want []string
	}{
		{"registry.example.com:5000/ns/app:v1", []string{
			"registry.example.com:5000/ns/app:v1",
			"registry.example.com:5000/ns/app",
			"registry.example.com:5000/ns",
			"registry.example.com:5000",
			"*.example.com",
			"*.com",
		}},
		{"busybox", []string{
			"docker.io/library/busybox:latest",
			"docker.io/library/busybox",
			"docker.io/library",
			"docker.io",
			"*.io",
		}},
		{"localhost:5000/app@sha256:" + strings.Repeat("a", 64), []string{
			"localhost:5000/app@sha256:" + strings.Repeat("a", 64),
			"localhost:5000/app",
			"localhost:5000",
		}},
	} {
		t.Run(tc.ref, func(t *testing.T) {
			named, err := dockerReference(ref(t, tc.ref))
			if err != nil {
				t.Fatal(err)
			}
			if got := dockerScopes(named); !slices.Equal(got, tc.want) {
				t.Errorf("got  %q\nwant %q", got, tc.want)
			}
		})
	}
}

// TestScopePrecedence evaluates images against a policy whose every scope
// is a different one-element requirement list, and checks which scope
// Decision.Scope names. The scopes are listed least specific first, so
// file order cannot be what decides.
func TestScopePrecedence(t *testing.T) {
	digestA := "sha256:" + strings.Repeat("a", 64)
	digestB := "sha256:" + strings.Repeat("b", 64)
	scopes := []string{
		"",
		"*.org",
		"*.example.com",
		"registry.example.com:5000",
		"registry.example.com",
		"registry.example.com/team",
		"registry.example.com/team/app",
		"registry.example.com/team/app@" + digestA,
		"registry.example.com/team/app:v1",
		"docker.io/library/busybox",
		"localhost:5000",
	}
	var b strings.Builder
	b.WriteString(`{"default":[{"type":"reject"}],"transports":{"docker":{`)
	for i, s := range scopes {
		if i > 0 {
			b.WriteString(",")
		}
		b.WriteString(`"` + s + `":[{"type":"insecureAcceptAnything"}]`)
	}
	b.WriteString(`}}}`)
	withDefault := mustLoad(t, b.String(), "")
	noDefault := mustLoad(t, `{"default":[{"type":"reject"}],"transports":{"docker":{"registry.example.com":[{"type":"insecureAcceptAnything"}]}}}`, "")

	for _, tc := range []struct {
		name, ref, want string
		p               *Policy
	}{
		{"exact tag", "registry.example.com/team/app:v1", "registry.example.com/team/app:v1", withDefault},
		{"exact digest", "registry.example.com/team/app@" + digestA, "registry.example.com/team/app@" + digestA, withDefault},
		{"repository, other tag", "registry.example.com/team/app:v2", "registry.example.com/team/app", withDefault},
		{"repository, other digest", "registry.example.com/team/app@" + digestB, "registry.example.com/team/app", withDefault},
		{"repository, default tag", "registry.example.com/team/app", "registry.example.com/team/app", withDefault},
		{"namespace", "registry.example.com/team/other:v1", "registry.example.com/team", withDefault},
		{"nested namespace", "registry.example.com/team/sub/app:v1", "registry.example.com/team", withDefault},
		{"host", "registry.example.com/solo:v1", "registry.example.com", withDefault},
		{"host with port", "registry.example.com:5000/team/app:v1", "registry.example.com:5000", withDefault},
		{"port-only host", "localhost:5000/app:v1", "localhost:5000", withDefault},
		{"wildcard domain", "mirror.example.com/team/app:v1", "*.example.com", withDefault},
		{"wildcard deeper subdomain", "a.b.example.com/x:1", "*.example.com", withDefault},
		{"wildcard ignores port", "mirror.example.com:443/x:1", "*.example.com", withDefault},
		{"wildcard tld", "registry.example.org/x:1", "*.org", withDefault},
		{"wildcard does not cover its own domain", "example.com/x:1", "", withDefault},
		{"docker hub short name", "busybox", "docker.io/library/busybox", withDefault},
		{"docker hub spelled out", "docker.io/library/busybox:1.36", "docker.io/library/busybox", withDefault},
		{"docker hub legacy host", "index.docker.io/library/busybox:1.36", "docker.io/library/busybox", withDefault},
		{"transport default", "quay.io/team/app:v1", "", withDefault},
		{"global default", "quay.io/team/app:v1", "default", noDefault},
		{"global default, docker hub", "alpine", "default", noDefault},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := mustEvaluate(t, tc.p, Image{Ref: ref(t, tc.ref), ManifestDigest: hash('a')})
			if d.Scope != tc.want {
				t.Errorf("%s: scope %q, want %q", tc.ref, d.Scope, tc.want)
			}
			// Only the global default rejects in these policies.
			if d.Allowed != (tc.want != "default") {
				t.Errorf("%s: allowed = %v", tc.ref, d.Allowed)
			}
		})
	}
}
