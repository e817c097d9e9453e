package tests

import (
	"crypto/rand"
	"regexp"
	"strings"
	"testing"

	"github.com/guest-puller/guest-puller/internal/devkbs/devkbstest"
	"github.com/guest-puller/guest-puller/internal/testutil"
)

// TestKidMayOnlyNameKeys (issue 8, hole 9): an image chooses the kid of
// its attestation-agent packets. One whose kid names the guest's database
// password (kbs:///default/credential/db-password) makes the pull fail
// with exit 4 before the KBS is asked for that resource: only resource
// types key and image-kek may be named by a kid (--kid-resource-type
// changes that). Where a resource is fetched and is no key, the error says
// so without saying how long the secret is.
func TestKidMayOnlyNameKeys(t *testing.T) {
	testutil.Need(t, "umoci")
	const secretPath = "default/credential/db-password"
	password := []byte("hunter2-correct-horse") // 21 bytes
	kek := make([]byte, 32)
	rand.Read(kek)
	resources := t.TempDir()
	testutil.WriteResource(t, resources, secretPath, password)
	testutil.WriteResource(t, resources, "default/key/1", kek)
	kbs := devkbstest.StartDevKBS(t, bins["dev-kbs"], "--resources", resources, "--allow-sample")
	proxy := testutil.StartKBSProxy(t, kbs.URL, testutil.KBSProxyOptions{})

	reg := testutil.StartRegistry(t, testutil.RegistryOptions{})
	provider := testutil.WriteKeyProviderConfig(t, bins["guest-puller"], "keyprovider")
	src := testutil.BuildImage(t, smallImage(t, "kid"))
	enc := testutil.EncryptLayout(t, src, "thief", provider, []string{"attestation-agent:keypath=" + writeKEK(t, kek) + "::keyid=kbs:///" + secretPath})
	ref := reg.Push(t, enc, "kid/thief:1")

	e := newEnv(t)
	args := []string{"--policy", e.write("policy.json", acceptAll), "--insecure-registry", reg.Host, "--kbs", proxy.URL, "--attester", "sample"}
	size := regexp.MustCompile(`\b21\b|\bbytes?\b`)
	get := "GET /kbs/v0/resource/" + secretPath

	msg := e.pullFails(4, ref, args...)
	if !strings.Contains(msg, "credential") || !strings.Contains(msg, "may only name a key") {
		t.Errorf("refusal does not say the kid names no key: %s", msg)
	}
	if n := proxy.Requests(get); n != 0 {
		t.Errorf("the KBS was asked %d times for the resource the image's kid names", n)
	}
	if size.MatchString(msg) || strings.Contains(msg, string(password)) {
		t.Errorf("the error describes the secret: %s", msg)
	}

	// Allowed by configuration, the resource is fetched, and is no key:
	// still exit 4, and still not a word on its size.
	msg = e.pullFails(4, ref, append(args, "--kid-resource-type", "credential")...)
	if n := proxy.Requests(get); n != 1 {
		t.Errorf("the KBS was asked %d times for the resource once allowed, want 1", n)
	}
	if !strings.Contains(msg, "is not an AES-256 key") {
		t.Errorf("error does not say the resource is no key: %s", msg)
	}
	if size.MatchString(msg) || strings.Contains(msg, string(password)) {
		t.Errorf("the error describes the secret: %s", msg)
	}
}
