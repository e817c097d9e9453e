package verify

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// BenchmarkSigstore measures checking an image's cosign signatures with one
// key once they are fetched: the per-requirement cost of a policy decision.
func BenchmarkSigstore(b *testing.B) {
	ctx := context.Background()
	reg := startRegistry(b, false)
	repo := reg + "/bench"
	d, err := v1.NewHash("sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef")
	if err != nil {
		b.Fatal(err)
	}
	var layers []sigLayer
	var keys []*ecdsa.PrivateKey
	for range 8 {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			b.Fatal(err)
		}
		keys = append(keys, k)
		p := containersImagePayload(repo+":v1", d)
		layers = append(layers, sigLayer{payload: p, sig: signLikeContainersImage(b, k, p)})
	}
	repoName := mustRepo(b, repo)
	writeSigManifest(b, repoName.Tag("sha256-"+d.Hex+".sig"), layers)
	ev := New(Options{}).Evidence(Target{Repo: repoName, Identity: repoName.Tag("v1"), Digests: []v1.Hash{d}})
	// The last key signed last: every signature is tried.
	pub := keys[len(keys)-1].Public()
	if got, err := byKey(ctx, ev, pub); err != nil || len(got) != 1 {
		b.Fatalf("Sigstore = %v, %v", got, err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := byKey(ctx, ev, pub); err != nil {
			b.Fatal(err)
		}
	}
}
