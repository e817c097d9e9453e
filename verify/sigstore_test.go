package verify

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/sigstore/sigstore/pkg/cryptoutils"
	"github.com/sigstore/sigstore/pkg/signature"

	"github.com/guest-puller/guest-puller/internal/errdefs"
	"github.com/guest-puller/guest-puller/policy"
)

// sigLayer is one signature of a hand-written cosign signature manifest.
type sigLayer struct {
	payload []byte
	sig     string // base64, as in the annotation
	// more are further annotations: a keyless signature's certificate and
	// chain, a Rekor SET.
	more map[string]string
}

// writeSigManifest stores a cosign-format signature manifest at tag, as
// cosign and containers/image lay it out.
func writeSigManifest(t testing.TB, tag name.Tag, layers []sigLayer) {
	t.Helper()
	img := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
	for _, l := range layers {
		var err error
		ann := map[string]string{signatureAnnotation: l.sig}
		maps.Copy(ann, l.more)
		img, err = mutate.Append(img, mutate.Addendum{
			Layer:       static.NewLayer(l.payload, simpleSigningMediaType),
			Annotations: ann,
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := remote.Write(tag, img); err != nil {
		t.Fatal(err)
	}
}

// containersImagePayload is the payload containers/image's sigstore signer
// (skopeo --sign-by-sigstore-private-key) writes: cosign's type, with
// creator and timestamp in optional.
func containersImagePayload(ref string, d v1.Hash) []byte {
	return fmt.Appendf(nil, `{"critical":{"identity":{"docker-reference":%q},"image":{"docker-manifest-digest":%q},"type":"cosign container image signature"},"optional":{"creator":"containers/image 5.23.1","timestamp":%d}}`,
		ref, d.String(), time.Now().Unix())
}

// signLikeContainersImage signs payload as containers/image does: SHA-256
// for every key, pure Ed25519.
func signLikeContainersImage(t testing.TB, priv crypto.Signer, payload []byte) string {
	t.Helper()
	sv, err := signature.LoadSignerVerifier(priv, crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	sig, err := sv.SignMessage(bytes.NewReader(payload))
	if err != nil {
		t.Fatal(err)
	}
	return base64.StdEncoding.EncodeToString(sig)
}

func keyID(t *testing.T, pub crypto.PublicKey) string {
	t.Helper()
	der, err := cryptoutils.MarshalPublicKeyToDER(pub)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:])
}

func TestSigstore(t *testing.T) {
	ctx := context.Background()
	reg := startRegistry(t, true)
	regNoReferrers := startRegistry(t, false)

	p256 := generateCosignKey(t)
	p384 := importCosignKey(t, "p384")
	ed := importCosignKey(t, "ed25519")
	rsaKey := importCosignKey(t, "rsa2048")
	unused := generateCosignKey(t)

	imgA := buildImage(t, "image A")
	imgB := buildImage(t, "image B")

	// Signed by cosign with four kinds of key.
	signedRepo := reg + "/signed"
	dA := push(t, imgA, signedRepo+":v1")
	for _, k := range []cosignKey{p256, p384, ed, rsaKey} {
		cosignSign(t, k, signedRepo+"@"+dA.String())
	}

	unsignedRepo := reg + "/unsigned"
	dUnsigned := push(t, imgB, unsignedRepo+":v1")

	// A valid signature of A, copied onto B's attachment tag.
	copiedRepo := reg + "/copied"
	dB := push(t, imgB, copiedRepo+":v1")
	sigOfA, err := remote.Image(mustRef(t, fmt.Sprintf("%s:sha256-%s.sig", signedRepo, dA.Hex)))
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(mustRepo(t, copiedRepo).Tag("sha256-"+dB.Hex+".sig"), sigOfA); err != nil {
		t.Fatal(err)
	}

	// OCI 1.1 referrers, through the referrers API and through its tag
	// schema on a registry without the API.
	refRepo := reg + "/referrers"
	dRef := push(t, imgA, refRepo+":v1")
	cosignSign(t, p256, refRepo+"@"+dRef.String(), "--registry-referrers-mode=oci-1-1")
	refTagRepo := regNoReferrers + "/referrers"
	dRefTag := push(t, imgA, refTagRepo+":v1")
	cosignSign(t, p256, refTagRepo+"@"+dRefTag.String(), "--registry-referrers-mode=oci-1-1")
	for _, r := range []string{refRepo, refTagRepo} {
		// The claim must come from the referrer, not from an attachment.
		if _, err := remote.Head(mustRef(t, fmt.Sprintf("%s:sha256-%s.sig", r, dA.Hex))); !isNotFound(err) {
			t.Fatalf("%s: cosign wrote an attachment tag in referrers mode (err %v)", r, err)
		}
	}

	// An index over A, signed at the index digest only.
	idxRepo := reg + "/index"
	dIdxManifest := push(t, imgA, idxRepo+":platform")
	platformImg, err := remote.Image(mustRef(t, idxRepo+"@"+dIdxManifest.String()))
	if err != nil {
		t.Fatal(err)
	}
	idx := mutate.AppendManifests(mutate.IndexMediaType(empty.Index, types.OCIImageIndex), mutate.IndexAddendum{
		Add:        platformImg,
		Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "amd64"}},
	})
	if err := remote.WriteIndex(mustRepo(t, idxRepo).Tag("v1"), idx); err != nil {
		t.Fatal(err)
	}
	dIdx, err := idx.Digest()
	if err != nil {
		t.Fatal(err)
	}
	cosignSign(t, p256, idxRepo+"@"+dIdx.String())

	// containers/image's format and hash choice. Debian's skopeo is built
	// without sigstore signing ("sigstore disabled"), so the signatures
	// skopeo --sign-by-sigstore-private-key would write are made here with
	// the same signer calls.
	ciRepo := reg + "/containers-image"
	dCI := push(t, imgA, ciRepo+":v1")
	ciP384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	_, ciEd, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ciPayload := containersImagePayload(ciRepo+":v1", dCI)
	writeSigManifest(t, mustRepo(t, ciRepo).Tag("sha256-"+dCI.Hex+".sig"), []sigLayer{
		{payload: ciPayload, sig: signLikeContainersImage(t, ciP384, ciPayload)},
		{payload: ciPayload, sig: signLikeContainersImage(t, ciEd, ciPayload)},
	})

	// A signature store too large to be honest: a 2 MiB payload.
	bigRepo := reg + "/big"
	dBig := push(t, imgA, bigRepo+":v1")
	bigPayload := make([]byte, 2<<20)
	writeSigManifest(t, mustRepo(t, bigRepo).Tag("sha256-"+dBig.Hex+".sig"), []sigLayer{{payload: bigPayload, sig: "AAAA"}})

	// More signatures than anyone signs an image with.
	manyRepo := reg + "/many"
	dMany := push(t, imgA, manyRepo+":v1")
	manyPayload := containersImagePayload(manyRepo+":v1", dMany)
	many := make([]sigLayer, maxSignatures+1)
	for i := range many {
		many[i] = sigLayer{payload: manyPayload, sig: signLikeContainersImage(t, ciP384, manyPayload)}
	}
	writeSigManifest(t, mustRepo(t, manyRepo).Tag("sha256-"+dMany.Hex+".sig"), many)

	// An index where a signature manifest belongs.
	notManifestRepo := reg + "/not-a-manifest"
	dNotManifest := push(t, imgA, notManifestRepo+":v1")
	if err := remote.WriteIndex(mustRepo(t, notManifestRepo).Tag("sha256-"+dNotManifest.Hex+".sig"), idx); err != nil {
		t.Fatal(err)
	}

	attachmentsOff := t.TempDir()
	writeFile(t, filepath.Join(attachmentsOff, "off.yaml"), fmt.Sprintf("docker:\n  %s/signed:\n    use-sigstore-attachments: false\n", reg))
	rdOff, err := LoadRegistriesD(attachmentsOff)
	if err != nil {
		t.Fatal(err)
	}

	unreachable := closedAddr(t) + "/signed"

	// Signed through an honest endpoint, read through one that alters blobs.
	honest, tampering := startTamperingRegistry(t)
	dTampered := push(t, imgA, honest+"/signed:v1")
	cosignSign(t, p256, honest+"/signed@"+dTampered.String())
	tamperedRepo := tampering + "/signed"

	target := func(repo string, digests ...v1.Hash) Target {
		return Target{Repo: mustRepo(t, repo), Identity: mustRef(t, repo+":v1"), Digests: digests}
	}
	claim := func(ref string, d v1.Hash, pub crypto.PublicKey) policy.Claim {
		return policy.Claim{DockerReference: ref, ManifestDigest: d, KeyID: keyID(t, pub)}
	}

	for _, tc := range []struct {
		name    string
		rd      *RegistriesD
		target  Target
		key     crypto.PublicKey
		want    []policy.Claim
		wantErr error // nil: no error; errAny: any error
	}{
		{name: "cosign P-256", target: target(signedRepo, dA), key: p256.pub, want: []policy.Claim{claim(signedRepo, dA, p256.pub)}},
		{name: "cosign P-384 (SHA-384)", target: target(signedRepo, dA), key: p384.pub, want: []policy.Claim{claim(signedRepo, dA, p384.pub)}},
		{name: "cosign Ed25519 (pre-hashed)", target: target(signedRepo, dA), key: ed.pub, want: []policy.Claim{claim(signedRepo, dA, ed.pub)}},
		{name: "cosign RSA", target: target(signedRepo, dA), key: rsaKey.pub, want: []policy.Claim{claim(signedRepo, dA, rsaKey.pub)}},
		{name: "wrong key", target: target(signedRepo, dA), key: unused.pub},
		{name: "unsigned", target: target(unsignedRepo, dUnsigned), key: p256.pub},
		{name: "signature of another digest is dropped", target: target(copiedRepo, dB), key: p256.pub},
		{name: "referrers API", target: target(refRepo, dRef), key: p256.pub, want: []policy.Claim{claim(refRepo, dRef, p256.pub)}},
		{name: "referrers tag schema", target: target(refTagRepo, dRefTag), key: p256.pub, want: []policy.Claim{claim(refTagRepo, dRefTag, p256.pub)}},
		{name: "index digest", target: target(idxRepo, dIdxManifest, dIdx), key: p256.pub, want: []policy.Claim{claim(idxRepo, dIdx, p256.pub)}},
		{name: "index signature needs the index digest", target: target(idxRepo, dIdxManifest), key: p256.pub},
		{name: "containers/image P-384 (SHA-256)", target: target(ciRepo, dCI), key: ciP384.Public(), want: []policy.Claim{claim(ciRepo+":v1", dCI, ciP384.Public())}},
		{name: "containers/image Ed25519 (pure)", target: target(ciRepo, dCI), key: ciEd.Public(), want: []policy.Claim{claim(ciRepo+":v1", dCI, ciEd.Public())}},
		{name: "attachments turned off", rd: rdOff, target: target(signedRepo, dA), key: p256.pub},
		{name: "oversized payload", target: target(bigRepo, dBig), key: p256.pub, wantErr: errAny},
		{name: "too many signatures", target: target(manyRepo, dMany), key: ciP384.Public(), wantErr: errAny},
		{name: "index at the signature tag", target: target(notManifestRepo, dNotManifest), key: p256.pub, wantErr: errAny},
		{name: "payload altered in transit", target: target(tamperedRepo, dTampered), key: p256.pub, wantErr: errAny},
		{name: "unreachable registry", target: target(unreachable, dA), key: p256.pub, wantErr: errAny},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ev := New(Options{RegistriesD: tc.rd}).Evidence(tc.target)
			got, err := byKey(ctx, ev, tc.key)
			if err != nil {
				t.Logf("error: %v", err)
			}
			checkErr(t, err, tc.wantErr)
			checkClaims(t, got, tc.want)
		})
	}

	t.Run("unsupported key", func(t *testing.T) {
		weak, err := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		_, err = byKey(ctx, New(Options{}).Evidence(target(signedRepo, dA)), weak.Public())
		checkErr(t, err, errdefs.ErrInvalidConfig)
	})

	t.Run("lazy and shared", func(t *testing.T) {
		ct := &countingTransport{base: http.DefaultTransport}
		v := New(Options{Remote: []remote.Option{remote.WithTransport(ct)}})
		ev := v.Evidence(target(signedRepo, dA))
		if n := ct.n.Load(); n != 0 {
			t.Fatalf("Evidence made %d requests before a method call", n)
		}
		if _, err := ev.SimpleSigning(ctx, nil); err == nil {
			t.Fatal("SimpleSigning with an empty keyring: no error")
		}
		if n := ct.n.Load(); n != 0 {
			t.Fatalf("SimpleSigning made %d registry requests", n)
		}
		got, err := byKey(ctx, ev, p256.pub)
		if err != nil || len(got) != 1 {
			t.Fatalf("Sigstore = %v, %v; want one claim", got, err)
		}
		first := ct.n.Load()
		if first == 0 {
			t.Fatal("Sigstore made no request through the configured transport")
		}
		// Other keys and concurrent callers share the first fetch.
		var wg sync.WaitGroup
		for _, k := range []cosignKey{p384, ed, rsaKey, unused, p256, p384, ed, rsaKey} {
			wg.Go(func() {
				if _, err := byKey(ctx, ev, k.pub); err != nil {
					t.Error(err)
				}
			})
		}
		wg.Wait()
		if n := ct.n.Load(); n != first {
			t.Fatalf("later calls made %d more requests", n-first)
		}

		// Concurrent first callers fetch once too.
		ct2 := &countingTransport{base: http.DefaultTransport}
		ev2 := New(Options{Remote: []remote.Option{remote.WithTransport(ct2)}}).Evidence(target(signedRepo, dA))
		for range 4 {
			wg.Go(func() {
				if got, err := byKey(ctx, ev2, p256.pub); err != nil || len(got) != 1 {
					t.Errorf("Sigstore = %v, %v; want one claim", got, err)
				}
			})
		}
		wg.Wait()
		if n := ct2.n.Load(); n != first {
			t.Fatalf("4 concurrent first calls made %d requests, one call makes %d", n, first)
		}
	})

	t.Run("canceled fetch is not kept", func(t *testing.T) {
		ev := New(Options{}).Evidence(target(signedRepo, dA))
		canceled, cancel := context.WithCancel(ctx)
		cancel()
		if _, err := byKey(canceled, ev, p256.pub); !errors.Is(err, context.Canceled) {
			t.Fatalf("Sigstore with a canceled context: %v", err)
		}
		if got, err := byKey(ctx, ev, p256.pub); err != nil || len(got) != 1 {
			t.Fatalf("Sigstore after a canceled call = %v, %v; want one claim", got, err)
		}
	})
}

// errAny stands for "some error" in test tables.
var errAny = errors.New("any error")

func checkErr(t *testing.T, err, want error) {
	t.Helper()
	switch {
	case want == nil && err != nil:
		t.Fatalf("unexpected error: %v", err)
	case want != nil && err == nil:
		t.Fatal("no error")
	case want != nil && want != errAny && !errors.Is(err, want):
		t.Fatalf("error %v does not wrap %v", err, want)
	}
}

func checkClaims(t *testing.T, got, want []policy.Claim) {
	t.Helper()
	g, _ := json.Marshal(got)
	w, _ := json.Marshal(want)
	if string(g) != string(w) {
		t.Fatalf("claims:\n got %s\nwant %s", g, w)
	}
}
