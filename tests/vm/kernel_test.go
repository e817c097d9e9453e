package vm

import (
	"path/filepath"
	"slices"
	"testing"
)

// TestModulesOrder checks the module resolver on the real kernel package:
// every module comes after the modules it depends on, each once.
func TestModulesOrder(t *testing.T) {
	mods, err := kernel.Modules(GuestModules...)
	if err != nil {
		t.Fatal(err)
	}
	pos := map[string]int{}
	for i, p := range mods {
		name := moduleName(filepath.Base(p[:len(p)-len(".ko")]))
		if _, dup := pos[name]; dup {
			t.Errorf("%s listed twice", name)
		}
		pos[name] = i
	}
	for _, want := range GuestModules {
		if _, ok := pos[moduleName(want)]; !ok {
			t.Errorf("%s is not loaded", want)
		}
	}
	for _, p := range mods {
		deps, err := moduleDepends(p)
		if err != nil {
			t.Fatal(err)
		}
		name := moduleName(filepath.Base(p[:len(p)-len(".ko")]))
		for _, d := range deps {
			if pos[moduleName(d)] >= pos[name] {
				t.Errorf("%s is loaded before %s, which it depends on", name, d)
			}
		}
	}
	// dm-crypt needs device-mapper: the resolver must have found that.
	if !slices.ContainsFunc(mods, func(p string) bool { return filepath.Base(p) == "dm-mod.ko" }) {
		t.Error("dm-mod is missing")
	}
	if _, err := kernel.Modules("no_such_module"); err == nil {
		t.Error("an unknown module resolved")
	}
}
