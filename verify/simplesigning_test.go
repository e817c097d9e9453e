package verify

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/guest-puller/guest-puller/internal/errdefs"
	"github.com/guest-puller/guest-puller/internal/testutil"
	"github.com/guest-puller/guest-puller/policy"
)

// lookasideConfig writes a registries.d directory with one file and loads it.
func lookasideConfig(t *testing.T, yaml string) *RegistriesD {
	t.Helper()
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "lookaside.yaml"), yaml)
	rd, err := LoadRegistriesD(dir)
	if err != nil {
		t.Fatal(err)
	}
	return rd
}

func TestSimpleSigning(t *testing.T) {
	ctx := context.Background()
	reg := startRegistry(t, false)
	gpg := newGPGHome(t)
	fpr1 := gpg.newKey(t, "Signer One <one@example.com>")
	fpr2 := gpg.newKey(t, "Signer Two <two@example.com>")
	fpr3 := gpg.newKey(t, "Never Signs <three@example.com>")

	// skopeo writes to the staging location and reads back over HTTP, the
	// way a CI signer publishes to a web server.
	sigDir := t.TempDir()
	web := httptest.NewServer(http.FileServer(http.Dir(sigDir)))
	t.Cleanup(web.Close)
	signerRD := t.TempDir()
	writeFile(t, filepath.Join(signerRD, "sign.yaml"), fmt.Sprintf(
		"docker:\n  %s:\n    lookaside-staging: file://%s\n    lookaside: %s\n", reg, sigDir, web.URL))
	skopeoSign := func(src, dst, fpr string) v1.Hash {
		t.Helper()
		t.Setenv("GNUPGHOME", gpg.dir)
		return push(t, src, dst, "--registries.d", signerRD, "--sign-by", fpr)
	}

	imgA := buildImage(t, "simple signing A")
	imgB := buildImage(t, "simple signing B")

	// Two signatures: skopeo signs with key 1, then a second copy keeps
	// signature-1 and adds key 2's signature-2.
	signedRepo := reg + "/signed"
	dA := skopeoSign(imgA, signedRepo+":v1", fpr1)
	if dA2 := skopeoSign("docker://"+signedRepo+":v1", signedRepo+":v1", fpr2); dA2 != dA {
		t.Fatalf("re-signing changed the digest: %s, %s", dA, dA2)
	}
	if _, err := os.Stat(filepath.Join(sigDir, "signed@sha256="+dA.Hex, "signature-2")); err != nil {
		t.Fatalf("skopeo did not write a second signature: %v", err)
	}

	// A key that signs with a subkey: the claim names the primary key.
	fpr4 := gpg.newKey(t, "Subkey Signer <four@example.com>")
	testutil.Output(t, gpg.env(), "gpg", "--batch", "--passphrase", "", "--quick-add-key", fpr4, "default", "sign", "never")
	subkeyRepo := reg + "/subkey"
	dSubkey := skopeoSign(imgB, subkeyRepo+":v1", fpr4)
	var fprs []string
	for _, line := range strings.Split(testutil.Output(t, gpg.env(), "gpg", "--with-colons", "--list-keys", fpr4), "\n") {
		if f := strings.Split(line, ":"); f[0] == "fpr" {
			fprs = append(fprs, f[9])
		}
	}
	packets := testutil.Output(t, gpg.env(), "gpg", "--list-packets", filepath.Join(sigDir, "subkey@sha256="+dSubkey.Hex, "signature-1"))
	if len(fprs) != 3 || !strings.Contains(packets, "keyid "+fprs[2][24:]) {
		t.Fatalf("signature is not by the new signing subkey of %v:\n%s", fprs, packets)
	}

	unsignedRepo := reg + "/unsigned"
	dUnsigned := push(t, imgB, unsignedRepo+":v1")

	// A valid signature of A, copied to where B's would be.
	copiedRepo := reg + "/copied"
	dB := push(t, imgB, copiedRepo+":v1")
	sigA, err := os.ReadFile(filepath.Join(sigDir, "signed@sha256="+dA.Hex, "signature-1"))
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(sigDir, "copied@sha256="+dB.Hex, "signature-1"), string(sigA))

	// An index over A, signed at the index digest with skopeo standalone-sign.
	idxRepo := reg + "/index"
	dPlatform := push(t, imgA, idxRepo+":platform")
	platformImg, err := remote.Image(mustRef(t, idxRepo+"@"+dPlatform.String()))
	if err != nil {
		t.Fatal(err)
	}
	idx := mutate.AppendManifests(mutate.IndexMediaType(empty.Index, types.OCIImageIndex), mutate.IndexAddendum{Add: platformImg})
	if err := remote.WriteIndex(mustRepo(t, idxRepo).Tag("v1"), idx); err != nil {
		t.Fatal(err)
	}
	dIdx, err := idx.Digest()
	if err != nil {
		t.Fatal(err)
	}
	rawIdx, err := idx.RawManifest()
	if err != nil {
		t.Fatal(err)
	}
	idxFile := filepath.Join(t.TempDir(), "index.json")
	writeFile(t, idxFile, string(rawIdx))
	idxSig := filepath.Join(sigDir, "index@sha256="+dIdx.Hex, "signature-1")
	writeFile(t, idxSig, "")
	testutil.Output(t, gpg.env(), "skopeo", "standalone-sign", idxFile, idxRepo+":v1", fpr1, "--output", idxSig)

	fileRD := lookasideConfig(t, fmt.Sprintf("docker:\n  %s:\n    lookaside: file://%s\n", reg, sigDir))
	// default-docker, and the old key name "sigstore".
	httpRD := lookasideConfig(t, fmt.Sprintf("default-docker:\n  sigstore: %s\n", web.URL))
	failing := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "storage backend down", http.StatusInternalServerError)
	}))
	t.Cleanup(failing.Close)
	failingRD := lookasideConfig(t, fmt.Sprintf("default-docker:\n  lookaside: %s\n", failing.URL))
	unreachableRD := lookasideConfig(t, fmt.Sprintf("default-docker:\n  lookaside: http://%s/sigs\n", closedAddr(t)))

	key1 := gpg.export(t, fpr1, false)
	key1Armored := gpg.export(t, fpr1, true)
	key2Armored := gpg.export(t, fpr2, true)
	key3 := gpg.export(t, fpr3, false)
	both := append(append([]byte{}, key2Armored...), key1Armored...)

	target := func(repo string, digests ...v1.Hash) Target {
		return Target{Repo: mustRepo(t, repo), Identity: mustRef(t, repo+":v1"), Digests: digests}
	}
	sig1 := policy.Claim{DockerReference: signedRepo + ":v1", ManifestDigest: dA, KeyID: fpr1}
	sig2 := policy.Claim{DockerReference: signedRepo + ":v1", ManifestDigest: dA, KeyID: fpr2}

	for _, tc := range []struct {
		name    string
		rd      *RegistriesD
		target  Target
		keyring []byte
		want    []policy.Claim
		wantErr error
	}{
		{name: "file, binary key", rd: fileRD, target: target(signedRepo, dA), keyring: key1, want: []policy.Claim{sig1}},
		{name: "http, armored key", rd: httpRD, target: target(signedRepo, dA), keyring: key1Armored, want: []policy.Claim{sig1}},
		{name: "second signature", rd: fileRD, target: target(signedRepo, dA), keyring: key2Armored, want: []policy.Claim{sig2}},
		{name: "concatenated armored keys", rd: httpRD, target: target(signedRepo, dA), keyring: both, want: []policy.Claim{sig1, sig2}},
		{name: "signing subkey", rd: fileRD, target: target(subkeyRepo, dSubkey), keyring: gpg.export(t, fpr4, true),
			want: []policy.Claim{{DockerReference: subkeyRepo + ":v1", ManifestDigest: dSubkey, KeyID: fpr4}}},
		{name: "wrong key", rd: fileRD, target: target(signedRepo, dA), keyring: key3},
		{name: "unsigned, file", rd: fileRD, target: target(unsignedRepo, dUnsigned), keyring: key1},
		{name: "unsigned, http", rd: httpRD, target: target(unsignedRepo, dUnsigned), keyring: key1},
		{name: "signature of another digest is dropped", rd: fileRD, target: target(copiedRepo, dB), keyring: key1},
		{name: "index digest", rd: httpRD, target: target(idxRepo, dPlatform, dIdx), keyring: key1,
			want: []policy.Claim{{DockerReference: idxRepo + ":v1", ManifestDigest: dIdx, KeyID: fpr1}}},
		{name: "no lookaside configured", target: target(signedRepo, dA), keyring: key1},
		{name: "lookaside server error", rd: failingRD, target: target(signedRepo, dA), keyring: key1, wantErr: errAny},
		{name: "unreachable lookaside", rd: unreachableRD, target: target(signedRepo, dA), keyring: key1, wantErr: errAny},
		{name: "not a keyring", rd: fileRD, target: target(signedRepo, dA), keyring: []byte("not a key"), wantErr: errdefs.ErrInvalidConfig},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := New(Options{RegistriesD: tc.rd}).Evidence(tc.target).SimpleSigning(ctx, tc.keyring)
			if err != nil {
				t.Logf("error: %v", err)
			}
			checkErr(t, err, tc.wantErr)
			checkClaims(t, got, tc.want)
		})
	}

	// Signatures are verified as they arrive and not kept (issue 15,
	// item 3): the store is walked once per keyring asked about.
	t.Run("lazy, once per keyring", func(t *testing.T) {
		ct := &countingTransport{base: http.DefaultTransport}
		ev := New(Options{RegistriesD: httpRD, HTTPClient: &http.Client{Transport: ct}}).Evidence(target(signedRepo, dA))
		if n := ct.n.Load(); n != 0 {
			t.Fatalf("Evidence made %d requests before a method call", n)
		}
		if got, err := ev.SimpleSigning(ctx, key1); err != nil || len(got) != 1 {
			t.Fatalf("SimpleSigning = %v, %v; want one claim", got, err)
		}
		// signature-1, signature-2, and the 404 of signature-3.
		if n := ct.n.Load(); n != 3 {
			t.Fatalf("first call made %d requests, want 3", n)
		}
		if got, err := ev.SimpleSigning(ctx, key1); err != nil || len(got) != 1 {
			t.Fatalf("SimpleSigning = %v, %v; want one claim", got, err)
		}
		if n := ct.n.Load(); n != 3 {
			t.Fatalf("second call with the same keyring made %d more requests", n-3)
		}
		if got, err := ev.SimpleSigning(ctx, key2Armored); err != nil || len(got) != 1 {
			t.Fatalf("SimpleSigning = %v, %v; want one claim", got, err)
		}
		if n := ct.n.Load(); n != 6 {
			t.Fatalf("a call with another keyring made %d more requests, want 3", n-3)
		}
	})
}
