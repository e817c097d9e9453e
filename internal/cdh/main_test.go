package cdh

import (
	"os"
	"testing"

	"github.com/guest-puller/guest-puller/internal/testutil/isolate"
)

// TestMain runs the tests in a mount namespace of their own: they mount a
// tmpfs over a cache and overlays for bundles, and none may outlive a
// binary killed midway.
func TestMain(m *testing.M) {
	if code, ran := isolate.OwnMountNamespace(); ran {
		os.Exit(code)
	}
	os.Exit(m.Run())
}
