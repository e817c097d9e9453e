package policy

import (
	"context"
	"strings"
	"testing"
)

// TestScopeHostSpellings: a scope applies to every spelling of its
// registry host (case, an explicit :443), whichever way the policy or the
// image reference writes it; the decision names the scope as written.
func TestScopeHostSpellings(t *testing.T) {
	p := mustLoad(t, `{"default":[{"type":"insecureAcceptAnything"}],"transports":{"docker":{
		"registry.example.com/locked":     [{"type":"reject"}],
		"Mirror.Example.COM:443/locked":   [{"type":"reject"}],
		"*.Wild.Example":                  [{"type":"reject"}],
		"registry.example.com:8443/other": [{"type":"reject"}]}}}`, "")
	for _, tc := range []struct {
		image, scope string
	}{
		{"registry.example.com/locked/app:1", "registry.example.com/locked"},
		{"Registry.Example.com/locked/app:1", "registry.example.com/locked"},
		{"REGISTRY.EXAMPLE.COM:443/locked/app:1", "registry.example.com/locked"},
		{"mirror.example.com/locked/app:1", "Mirror.Example.COM:443/locked"},
		{"Mirror.example.com:443/locked/app:1", "Mirror.Example.COM:443/locked"},
		{"x.WILD.example/app:1", "*.Wild.Example"},
		{"Registry.Example.com:8443/other/app:1", "registry.example.com:8443/other"},
		// A port other than 443 is another registry.
		{"registry.example.com:8443/locked/app:1", ScopeGlobalDefault},
	} {
		d := mustEvaluate(t, p, Image{Ref: ref(t, tc.image), ManifestDigest: hash('a')})
		if d.Scope != tc.scope {
			t.Errorf("%s: decided by scope %q, want %q", tc.image, d.Scope, tc.scope)
		}
		if want := tc.scope == ScopeGlobalDefault; d.Allowed != want {
			t.Errorf("%s: allowed = %v, want %v", tc.image, d.Allowed, want)
		}
	}

	_, err := Load(context.Background(), []byte(`{"default":[{"type":"reject"}],"transports":{"docker":{
		"registry.example.com/app": [{"type":"insecureAcceptAnything"}],
		"Registry.Example.com:443/app": [{"type":"reject"}]}}}`), LoadOptions{})
	if err == nil || !strings.Contains(err.Error(), "names the same registry") {
		t.Errorf("two spellings of one scope: %v, want an error", err)
	}
}
