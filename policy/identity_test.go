package policy

import (
	"strings"
	"testing"
)

// TestSignedIdentity evaluates a sigstoreSigned requirement whose key made
// one signature over the image's digest claiming the identity signed, and
// checks that each signedIdentity type accepts or refuses it as
// containers/image does. Image references go through
// go-containerregistry's parser, as pull/ hands them over.
func TestSignedIdentity(t *testing.T) {
	key := newKey(t, "p256")
	d := hash('d')
	at := "@" + d.String()
	const (
		exact       = `{"type":"matchExact"}`
		repoDigest  = `{"type":"matchRepoDigestOrExact"}`
		repository  = `{"type":"matchRepository"}`
		exactRef    = `{"type":"exactReference","dockerReference":"example.com/app:release"}`
		exactRepo   = `{"type":"exactRepository","dockerRepository":"example.com/app"}`
		remapNS     = `{"type":"remapIdentity","prefix":"mirror.example.com/ns","signedPrefix":"example.com/upstream"}`
		remapHost   = `{"type":"remapIdentity","prefix":"mirror.example.com","signedPrefix":"docker.io"}`
		defaultType = ``
	)
	for _, tc := range []struct {
		name, identity, image, signed string
		want                          bool
	}{
		{"matchExact same tag", exact, "example.com/app:v1", "example.com/app:v1", true},
		{"matchExact other tag", exact, "example.com/app:v1", "example.com/app:v2", false},
		{"matchExact name only", exact, "example.com/app:v1", "example.com/app", false},
		{"matchExact other repository", exact, "example.com/app:v1", "example.com/other:v1", false},
		{"matchExact digest", exact, "example.com/app" + at, "example.com/app" + at, true},
		{"matchExact digest vs tag", exact, "example.com/app" + at, "example.com/app:v1", false},
		{"matchExact docker hub normalized", exact, "busybox", "docker.io/library/busybox:latest", true},
		{"matchExact docker hub short claim", exact, "docker.io/library/busybox:latest", "busybox:latest", true},
		{"matchExact docker hub legacy host claim", exact, "busybox:1.36", "index.docker.io/library/busybox:1.36", true},
		{"matchExact docker hub other tag", exact, "busybox", "busybox:1.36", false},
		{"matchExact unparseable claim", exact, "example.com/app:v1", "Example.com/App:v1 ", false},

		{"matchRepoDigestOrExact same tag", repoDigest, "example.com/app:v1", "example.com/app:v1", true},
		{"matchRepoDigestOrExact other tag", repoDigest, "example.com/app:v1", "example.com/app:v2", false},
		{"matchRepoDigestOrExact tag vs name only", repoDigest, "example.com/app:v1", "example.com/app", false},
		{"matchRepoDigestOrExact digest vs tag", repoDigest, "example.com/app" + at, "example.com/app:v1", true},
		{"matchRepoDigestOrExact digest vs digest", repoDigest, "example.com/app" + at, "example.com/app" + at, true},
		{"matchRepoDigestOrExact digest vs name only", repoDigest, "example.com/app" + at, "example.com/app", false},
		{"matchRepoDigestOrExact digest other repository", repoDigest, "example.com/app" + at, "example.com/other:v1", false},
		{"default is matchRepoDigestOrExact (accept)", defaultType, "example.com/app:v1", "example.com/app:v1", true},
		{"default is matchRepoDigestOrExact (refuse)", defaultType, "example.com/app:v1", "example.com/app", false},

		{"matchRepository other tag", repository, "example.com/app:v1", "example.com/app:v2", true},
		{"matchRepository name only", repository, "example.com/app:v1", "example.com/app", true},
		{"matchRepository digest image", repository, "example.com/app" + at, "example.com/app", true},
		{"matchRepository other repository", repository, "example.com/app:v1", "example.com/other", false},
		{"matchRepository other registry", repository, "example.com/app:v1", "mirror.example.com/app", false},
		{"matchRepository parent namespace", repository, "example.com/team/app:v1", "example.com/team", false},
		{"matchRepository cosign docker hub claim", repository, "busybox:1.36", "index.docker.io/library/busybox", true},

		{"exactReference match", exactRef, "mirror.example.com/x:1", "example.com/app:release", true},
		{"exactReference other tag", exactRef, "example.com/app:release", "example.com/app:v1", false},
		{"exactReference name only", exactRef, "example.com/app:release", "example.com/app", false},

		{"exactRepository tagged claim", exactRepo, "mirror.example.com/x:1", "example.com/app:v9", true},
		{"exactRepository name only claim", exactRepo, "mirror.example.com/x:1", "example.com/app", true},
		{"exactRepository other repository", exactRepo, "example.com/app:v1", "example.com/other:v1", false},

		{"remapIdentity remapped", remapNS, "mirror.example.com/ns/app:v1", "example.com/upstream/app:v1", true},
		{"remapIdentity nested", remapNS, "mirror.example.com/ns/team/app:v1", "example.com/upstream/team/app:v1", true},
		{"remapIdentity claim of the mirror", remapNS, "mirror.example.com/ns/app:v1", "mirror.example.com/ns/app:v1", false},
		{"remapIdentity other tag", remapNS, "mirror.example.com/ns/app:v1", "example.com/upstream/app:v2", false},
		{"remapIdentity digest image", remapNS, "mirror.example.com/ns/app" + at, "example.com/upstream/app:v1", true},
		{"remapIdentity prefix ends at a slash", remapNS, "mirror.example.com/nsx/app:v1", "example.com/upstreamx/app:v1", false},
		{"remapIdentity outside prefix unchanged", remapNS, "mirror.example.com/nsx/app:v1", "mirror.example.com/nsx/app:v1", true},
		{"remapIdentity host to docker hub", remapHost, "mirror.example.com/library/busybox:1", "busybox:1", true},
		{"remapIdentity host to docker hub, other image", remapHost, "mirror.example.com/library/busybox:1", "alpine:1", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req := `{"type":"sigstoreSigned","keyData":"` + key.b64() + `"`
			if tc.identity != "" {
				req += `,"signedIdentity":` + tc.identity
			}
			p := mustLoad(t, `{"default":[`+req+`}]}`, "")
			ev := (&memEvidence{}).sign(t, key, tc.signed, d)
			dec := mustEvaluate(t, p, Image{Ref: ref(t, tc.image), ManifestDigest: d, Evidence: ev})
			if dec.Allowed != tc.want {
				t.Fatalf("image %s, signed %q: allowed = %v, want %v (%s)", tc.image, tc.signed, dec.Allowed, tc.want, firstFailure(dec))
			}
			if !tc.want {
				r := dec.Signatures[0].Reason
				if !strings.Contains(r, "signed identity") || !strings.Contains(r, "is not accepted by") {
					t.Errorf("reason %q does not explain the identity mismatch", r)
				}
			}
		})
	}
}
