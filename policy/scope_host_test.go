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

// TestRejectsOutright: a scope with a reject requirement refuses any image
// under it before the image is looked at; other scopes need the image.
func TestRejectsOutright(t *testing.T) {
	p := mustLoad(t, `{"default":[{"type":"reject"}],"transports":{"docker":{
		"registry.example.com/open":   [{"type":"insecureAcceptAnything"}],
		"registry.example.com/signed": [{"type":"encrypted"}],
		"registry.example.com/mixed":  [{"type":"encrypted"}, {"type":"reject"}],
		"registry.example.com/closed": [{"type":"reject"}]}}}`, "")
	for _, tc := range []struct {
		image, scope string
		rejects      bool
	}{
		{"registry.example.com/open/app:1", "", false},
		{"registry.example.com/signed/app:1", "", false},
		{"registry.example.com/mixed/app:1", "registry.example.com/mixed", true},
		{"Registry.Example.com:443/closed/app:1", "registry.example.com/closed", true},
		{"elsewhere.example.org/app:1", ScopeGlobalDefault, true},
	} {
		d, err := p.RejectsOutright(ref(t, tc.image))
		if err != nil {
			t.Fatal(err)
		}
		if (d != nil) != tc.rejects {
			t.Errorf("%s: RejectsOutright = %+v, want a refusal: %v", tc.image, d, tc.rejects)
			continue
		}
		if d == nil {
			continue
		}
		if d.Allowed || d.Scope != tc.scope || len(d.Requirements) != 1 || d.Requirements[0].Type != TypeReject || d.Signatures == nil {
			t.Errorf("%s: decision %+v, want refused under %q by reject", tc.image, d, tc.scope)
		}
		if err := d.Err(); err == nil || !strings.Contains(err.Error(), "reject") {
			t.Errorf("%s: Err() = %v", tc.image, err)
		}
	}
}
