package compat_test

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// A difference is a verdict of guest-puller's that differs from
// go.podman.io/image/v5's on purpose; docs/policy.md lists each with its
// reason ("Differences from containers/image").
type difference struct {
	file  string // a policy file, or a registries.d directory
	image string // "" for every image (and for a policy's load verdict)
	ours  string // guest-puller's verdict: "allowed", "refused" or "load error"
	why   string
}

var policyDifferences = []difference{
	{"invalid-unknown-transport.json", "", "load error", "a transport containers/image does not know (\"dockr\") is refused as a typo; containers/image accepts its section unchecked"},
	{"extension-encrypted.json", "", "allowed", "the encrypted requirement is guest-puller's extension; containers/image refuses the policy"},
	{"extension-threshold.json", "", "allowed", "the sigstoreThreshold requirement is guest-puller's extension; containers/image refuses the policy"},
	{"invalid-remap-short-prefix.json", "", "load error", "a remapIdentity prefix that is a short name (\"busybox\") can never match a fully expanded reference and is refused; containers/image accepts it"},
	{"scopes-host-spelling.json", "", "refused", "registry hosts are compared in one spelling (lower case, without :443), in scopes as in image names: containers/image compares them as written, so whoever picks the image name could step past a scope by changing case"},
	{"relative-keypath.json", "", "allowed", "a relative key path is relative to the policy file's directory; containers/image reads it relative to the process's working directory"},
}

const attachmentsByDefault = "cosign attachments are read unless registries.d turns them off; containers/image reads them only when use-sigstore-attachments is true"

var registriesDDifferences = []difference{
	{"no-attachments-setting", "docker.io/library/busybox:1", "allowed", attachmentsByDefault},
	{"no-attachments-setting", "quay.example.org/ns/tool:1", "allowed", attachmentsByDefault},
	{"empty-dir", "docker.io/library/busybox:1", "allowed", attachmentsByDefault},
	{"empty-dir", "quay.example.org/ns/tool:1", "allowed", attachmentsByDefault},
	{"broken-namespace-unknown-field", "quay.example.org/ns/tool:1", "allowed", attachmentsByDefault},
	{"broken-file-syntax", "registry.example.com/ns/other:1", "allowed", "a registries.d file that does not parse fails the signature lookups it could configure (all of them), not the pulls that need no signature; containers/image fails every pull"},
	{"broken-namespace-type", "", "allowed", "a namespace with a bad value fails only the lookups in that namespace; containers/image cannot parse the file and fails every pull"},
	{"duplicate-namespace", "", "allowed", "a namespace defined in two files fails only the lookups in that namespace; containers/image fails every pull"},
	{"duplicate-default", "registry.example.com/ns/other:1", "allowed", "default-docker defined in two files fails only the lookups that fall back to it; containers/image fails every pull"},
	{"broken-namespace-unknown-field", "docker.io/library/busybox:1", "refused", "an unknown field breaks its namespace (a misspelt field must not silently change where signatures are read); containers/image ignores the field"},
}

// extensionAllowed lists, for each policy only guest-puller loads, the
// images it allows.
var extensionAllowed = map[string][]string{
	// No image of the corpus has an encrypted layer: only the scope that
	// accepts anything allows.
	"extension-encrypted.json": {
		"registry.example.com/ns/app:1", "registry.example.com/ns/app:2", "registry.example.com/ns/app@${DIGEST_X}",
		"registry.example.com/ns/other:1", "registry.example.com/team/x:1",
	},
	// a and b both signed X; every other image has at most one of them.
	"extension-threshold.json": {
		"registry.example.com/ns/app:1", "registry.example.com/ns/app:2", "registry.example.com/ns/app@${DIGEST_X}",
	},
}

func findDifference(list []difference, file, image string) (difference, bool) {
	for _, d := range list {
		if d.file == file && (d.image == "" || d.image == image) {
			return d, true
		}
	}
	return difference{}, false
}

// compare checks one verdict pair: equal, unless listed. A difference listed
// for one image must occur; one listed for every image ("") may, and must
// occur for some image (checked by the caller through seen).
func compare(t *testing.T, list []difference, seen map[difference]bool, stats map[string]int, file, img string, up, ours verdict) {
	t.Helper()
	d, listed := findDifference(list, file, img)
	switch {
	case listed && up.state != ours.state:
		seen[d] = true
		stats["differ"]++
		if ours.state != d.ours {
			t.Errorf("%s: listed difference (%s): go.podman.io/image/v5 %s; guest-puller %s, want %s", img, d.why, up, ours, d.ours)
		}
	case listed && d.image != "":
		t.Errorf("%s: listed as a difference (%s), but both say %s", img, d.why, ours)
	case up.state != ours.state:
		t.Errorf("%s:\n  go.podman.io/image/v5: %s\n  guest-puller:          %s", img, up, ours)
	default:
		stats["same"]++
		stats[ours.state]++
	}
}

// registriesDPolicy asks, per scope, for the kind of signature each
// registries.d case decides where to find.
const registriesDPolicy = `{
  "default": [{"type": "reject"}],
  "transports": {"docker": {
    "registry.example.com/ns/app": [{"type": "signedBy", "keyType": "GPGKeys", "keyPath": "${KEYS}/g.asc", "signedIdentity": {"type": "matchRepository"}}],
    "registry.example.com/ns/other": [{"type": "insecureAcceptAnything"}],
    "docker.io": [{"type": "sigstoreSigned", "keyPath": "${KEYS}/a.pub"}],
    "quay.example.org": [{"type": "sigstoreSigned", "keyPath": "${KEYS}/b.pub", "signedIdentity": {"type": "matchRepository"}}]
  }}
}`

var registriesDImages = []string{
	"registry.example.com/ns/app:1",
	"registry.example.com/ns/app:2",
	"registry.example.com/ns/other:1",
	"docker.io/library/busybox:1",
	"quay.example.org/ns/tool:1",
}

// TestSignedImageCorpus runs the policy corpus (testdata/policy) and the
// registries.d corpus (testdata/registries.d) over the same signed images.
func TestSignedImageCorpus(t *testing.T) {
	c := newCorpus(t)
	ctx := t.Context()
	stats := map[string]int{}

	t.Run("policy", func(t *testing.T) {
		files, err := filepath.Glob("testdata/policy/*.json")
		if err != nil || len(files) < 80 {
			t.Fatalf("policy corpus: %d files, %v", len(files), err)
		}
		regD := filepath.Join(c.scratch, "registries.d")
		writeFile(t, filepath.Join(regD, "default.yaml"), c.expand(t, "default-docker:\n  lookaside: file://${LOOKASIDE}\n  use-sigstore-attachments: true\n"))
		seen := map[difference]bool{}
		ran := 0
		for _, file := range files {
			name := filepath.Base(file)
			t.Run(name, func(t *testing.T) {
				ran++
				raw, err := os.ReadFile(file)
				if err != nil {
					t.Fatal(err)
				}
				data := c.expand(t, string(raw))
				// The policy lives with the keys, so that a relative
				// key path names them (relative-keypath.json).
				path := filepath.Join(c.keys, name)
				writeFile(t, path, data)

				upPol, upErr := upstreamLoad([]byte(data))
				p, ourErr := c.checker(ctx, path, regD)
				d, listed := findDifference(policyDifferences, name, "")
				if listed {
					seen[d] = true
				}
				switch {
				case (upErr != nil) != (ourErr != nil):
					if !listed || (d.ours == "load error") != (ourErr != nil) {
						t.Fatalf("load: go.podman.io/image/v5: %v; guest-puller: %v", upErr, ourErr)
					}
					stats["differ"]++
					if ourErr != nil {
						return
					}
					// Only guest-puller loads it (an extension): its
					// verdicts are checked against what the extension
					// means.
					allowed, ok := extensionAllowed[name]
					if !ok {
						t.Fatalf("guest-puller loads a policy go.podman.io/image/v5 refuses (%v); extensionAllowed has no verdicts for it", upErr)
					}
					for _, img := range policyImages {
						img := c.expand(t, img)
						want := "refused"
						if slices.ContainsFunc(allowed, func(a string) bool { return c.expand(t, a) == img }) {
							want = "allowed"
						}
						if v := c.ourVerdict(ctx, p, img); v.state != want {
							t.Errorf("%s: guest-puller %s, want %s", img, v, want)
						}
					}
					return
				case upErr != nil:
					stats["same"]++
					if listed {
						t.Errorf("listed as a difference but neither loads")
					}
					return
				}
				for _, img := range policyImages {
					img := c.expand(t, img)
					compare(t, policyDifferences, seen, stats, name, img,
						c.upstreamVerdict(ctx, t, upPol, regD, img), c.ourVerdict(ctx, p, img))
				}
			})
		}
		for _, d := range policyDifferences {
			if ran == len(files) && !seen[d] {
				t.Errorf("listed difference %s never occurred", d.file)
			}
		}
	})

	t.Run("registries.d", func(t *testing.T) {
		dirs, err := filepath.Glob("testdata/registries.d/*")
		if err != nil || len(dirs) < 20 {
			t.Fatalf("registries.d corpus: %d directories, %v", len(dirs), err)
		}
		polPath := filepath.Join(c.keys, "registries-d-policy.json")
		writeFile(t, polPath, c.expand(t, registriesDPolicy))
		upPol, err := upstreamLoad([]byte(c.expand(t, registriesDPolicy)))
		if err != nil {
			t.Fatal(err)
		}
		seen := map[difference]bool{}
		ran := 0
		for _, dir := range dirs {
			name := filepath.Base(dir)
			t.Run(name, func(t *testing.T) {
				ran++
				regD := filepath.Join(c.scratch, "registries.d-"+name)
				entries, err := os.ReadDir(dir)
				if err != nil {
					t.Fatal(err)
				}
				for _, e := range entries {
					raw, err := os.ReadFile(filepath.Join(dir, e.Name()))
					if err != nil {
						t.Fatal(err)
					}
					writeFile(t, filepath.Join(regD, e.Name()), c.expand(t, string(raw)))
				}
				p, err := c.checker(ctx, polPath, regD)
				if err != nil {
					t.Fatalf("guest-puller does not start with this registries.d: %v", err)
				}
				for _, img := range registriesDImages {
					compare(t, registriesDDifferences, seen, stats, name, img,
						c.upstreamVerdict(ctx, t, upPol, regD, img), c.ourVerdict(ctx, p, img))
				}
			})
		}
		for _, d := range registriesDDifferences {
			if ran == len(dirs) && !seen[d] {
				t.Errorf("listed difference %s %s never occurred", d.file, d.image)
			}
		}
	})
	t.Logf("verdicts: %d the same (%d allowed, %d refused), %d listed differences", stats["same"], stats["allowed"], stats["refused"], stats["differ"])
}
