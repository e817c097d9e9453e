package pull

import (
	"encoding/json"
	"fmt"
	"reflect"
	"strings"
	"testing"

	ispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// TestParseConfig: a pull keeps all of a config but its history, the same
// as encoding/json would decode it, and refuses a list or map past
// maxConfigEntries at the first entry beyond.
func TestParseConfig(t *testing.T) {
	genuine := `{"created":"2026-11-29T10:00:00Z","author":"a","architecture":"amd64","variant":"v3","os":"linux",
		"config":{"User":"1000:1000","ExposedPorts":{"80/tcp":{}},"Env":["PATH=/bin","A=b"],"Entrypoint":["/app"],
		"Cmd":["-v"],"Volumes":{"/data":{}},"WorkingDir":"/w","Labels":{"k":"v"},"StopSignal":"SIGTERM","ArgsEscaped":true},
		"rootfs":{"type":"layers","diff_ids":["sha256:` + strings.Repeat("a", 64) + `"]},
		"history":[{"created_by":"RUN x"},{"empty_layer":true}]}`
	var want ispec.Image
	if err := json.Unmarshal([]byte(genuine), &want); err != nil {
		t.Fatal(err)
	}
	want.History = nil
	got, err := parseConfig("img", []byte(genuine))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("parseConfig =\n%+v\nwant\n%+v", got, want)
	}
	if got, err := parseConfig("img", []byte(`{"config":{"Env":null,"Labels":null},"rootfs":{"diff_ids":null}}`)); err != nil ||
		got.Config.Env != nil || got.Config.Labels != nil || got.RootFS.DiffIDs != nil {
		t.Errorf("nulls: %+v, %v", got, err)
	}

	list := func(n int) string { return "[" + strings.TrimSuffix(strings.Repeat(`"x=",`, n), ",") + "]" }
	object := func(n int) string {
		var b strings.Builder
		for i := range n {
			if i > 0 {
				b.WriteByte(',')
			}
			fmt.Fprintf(&b, `"%d":{}`, i)
		}
		return "{" + b.String() + "}"
	}
	for _, tc := range []struct {
		name, cfg string
		ok        bool
	}{
		{"Env at the bound", `{"config":{"Env":` + list(maxConfigEntries) + `}}`, true},
		{"Env past it", `{"config":{"Env":` + list(maxConfigEntries+1) + `}}`, false},
		{"env, spelled in lower case", `{"config":{"env":` + list(maxConfigEntries+1) + `}}`, false},
		{"Cmd past it", `{"config":{"Cmd":` + list(maxConfigEntries+1) + `}}`, false},
		{"Entrypoint past it", `{"config":{"Entrypoint":` + list(maxConfigEntries+1) + `}}`, false},
		{"diff_ids past it", `{"rootfs":{"diff_ids":` + list(maxConfigEntries+1) + `}}`, false},
		{"Volumes at the bound", `{"config":{"Volumes":` + object(maxConfigEntries) + `}}`, true},
		{"Volumes past it", `{"config":{"Volumes":` + object(maxConfigEntries+1) + `}}`, false},
		{"ExposedPorts past it", `{"config":{"ExposedPorts":` + object(maxConfigEntries+1) + `}}`, false},
		{"Labels past it", `{"config":{"Labels":` + strings.ReplaceAll(object(maxConfigEntries+1), "{}", `""`) + `}}`, false},
		{"history is not kept, however long", `{"history":` + strings.Repeat("[", 1) + strings.TrimSuffix(strings.Repeat("{},", 100_000), ",") + `]}`, true},
		{"Env of another type", `{"config":{"Env":"PATH=/bin"}}`, false},
		{"Labels of another type", `{"config":{"Labels":["k"]}}`, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseConfig("img", []byte(tc.cfg))
			if tc.ok != (err == nil) {
				t.Fatalf("parseConfig: %v, want ok %v", err, tc.ok)
			}
			if err != nil && !tc.ok && strings.Contains(tc.name, "past it") && !strings.Contains(err.Error(), "more than 4096 entries") {
				t.Errorf("error does not name the bound: %v", err)
			}
		})
	}
}

// FuzzParseConfig: whatever a registry serves as a config, parseConfig
// returns an error or a config whose lists are within the bound.
func FuzzParseConfig(f *testing.F) {
	f.Add([]byte(`{"architecture":"amd64","os":"linux","config":{"Env":["A=b"],"Labels":{"k":"v"},"Volumes":{"/v":{}},"ExposedPorts":{"80/tcp":{}}},"rootfs":{"type":"layers","diff_ids":[]},"history":[{}]}`))
	f.Add([]byte(`{"config":{"Env":null,"Cmd":[],"Entrypoint":["a"]},"rootfs":{"diff_ids":null}}`))
	f.Add([]byte(`{"config":{"env":["x"],"labels":{"a":"b","a":"c"}}}`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		img, err := parseConfig("img", raw)
		if err != nil {
			return
		}
		c := img.Config
		for _, n := range []int{len(c.Env), len(c.Cmd), len(c.Entrypoint), len(c.Labels), len(c.Volumes), len(c.ExposedPorts), len(img.RootFS.DiffIDs)} {
			if n > maxConfigEntries {
				t.Fatalf("a list of %d entries passed", n)
			}
		}
		if img.History != nil {
			t.Fatal("history kept")
		}
	})
}
