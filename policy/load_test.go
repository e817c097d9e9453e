package policy

import (
	"context"
	"encoding/base64"
	"errors"
	"io/fs"
	"strings"
	"testing"

	"github.com/guest-puller/guest-puller/internal/errdefs"
)

// fixtures are real key files in a temporary directory, with the policy
// snippets that name them.
type fixtures struct {
	dir  string
	vars *strings.Replacer // $P256DATA etc. → base64 of a file
}

func newFixtures(t *testing.T) fixtures {
	t.Helper()
	dir := t.TempDir()
	p256, p384, ed, rsa := newKey(t, "p256"), newKey(t, "p384"), newKey(t, "ed25519"), newKey(t, "rsa2048")
	weak := newKey(t, "rsa1024")
	gpg := newGPGKey(t, "alice")
	gpg2 := newGPGKey(t, "bob")
	ca := newCACert(t)
	files := map[string][]byte{
		"keys/p256.pub":     p256.pem,
		"keys/p384.pub":     p384.pem,
		"keys/ed25519.pub":  ed.pem,
		"keys/rsa.pub":      rsa.pem,
		"keys/weak.pub":     weak.pem,
		"keys/two.pub":      append(append([]byte{}, p256.pem...), p384.pem...),
		"keys/garbage.pub":  []byte("not a key\n"),
		"keys/private.pem":  []byte("-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIA==\n-----END PRIVATE KEY-----\n"),
		"keys/ca.pem":       ca,
		"keys/alice.asc":    gpg.armored,
		"keys/alice.gpg":    gpg.binary,
		"keys/both.asc":     append(append([]byte{}, gpg.armored...), gpg2.armored...),
		"keys/secret.asc":   gpg.private,
		"keys/empty.gpg":    {},
		"keys/x509-ca.pem":  ca,
		"keys/rekor.pub":    p256.pem,
		"keys/rekor2.pub":   p384.pem,
		"keys/other-p.pub":  ed.pem,
		"keys/gpg-as.pub":   gpg.armored,
		"keys/sub/deep.pub": p384.pem,
	}
	for name, data := range files {
		writeFile(t, dir, name, data)
	}
	b64 := func(b []byte) string { return base64.StdEncoding.EncodeToString(b) }
	return fixtures{
		dir: dir,
		vars: strings.NewReplacer(
			"$P256DATA", b64(p256.pem),
			"$P384DATA", b64(p384.pem),
			"$EDDATA", b64(ed.pem),
			"$GPGDATA", b64(gpg.armored),
			"$GPGBINDATA", b64(gpg.binary),
			"$CADATA", b64(ca),
			"$GARBAGEDATA", b64([]byte("garbage")),
		),
	}
}

func (f fixtures) load(policy string) (*Policy, error) {
	return Load(context.Background(), []byte(f.vars.Replace(policy)), LoadOptions{BaseDir: f.dir})
}

// docker wraps requirements into a policy with one docker scope.
func docker(scope, reqs string) string {
	return `{"default":[{"type":"reject"}],"transports":{"docker":{"` + scope + `":` + reqs + `}}}`
}

func TestLoadValid(t *testing.T) {
	f := newFixtures(t)
	for _, tc := range []struct {
		name, policy string
	}{
		{"accept anything", `{"default":[{"type":"insecureAcceptAnything"}]}`},
		{"reject", `{"default":[{"type":"reject"}]}`},
		{"empty transports", `{"default":[{"type":"reject"}],"transports":{}}`},
		{"empty docker section", `{"default":[{"type":"reject"}],"transports":{"docker":{}}}`},
		{"whitespace around", " \n{\"default\":[{\"type\":\"reject\"}]}\n\t "},
		{"docker scopes", `{"default":[{"type":"reject"}],"transports":{"docker":{
			"":[{"type":"reject"}],
			"docker.io/library/busybox:latest":[{"type":"insecureAcceptAnything"}],
			"docker.io/library/busybox@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef":[{"type":"insecureAcceptAnything"}],
			"docker.io/library/busybox":[{"type":"insecureAcceptAnything"}],
			"docker.io/library":[{"type":"insecureAcceptAnything"}],
			"docker.io/someuser":[{"type":"insecureAcceptAnything"}],
			"docker.io":[{"type":"insecureAcceptAnything"}],
			"localhost":[{"type":"insecureAcceptAnything"}],
			"localhost:5000/team/app":[{"type":"insecureAcceptAnything"}],
			"registry.example.com:5000":[{"type":"insecureAcceptAnything"}],
			"127.0.0.1:5000/x":[{"type":"insecureAcceptAnything"}],
			"[::1]:5000/x":[{"type":"insecureAcceptAnything"}],
			"*.example.com":[{"type":"insecureAcceptAnything"}],
			"*.com":[{"type":"insecureAcceptAnything"}]}}}`},
		{"other transports", `{"default":[{"type":"reject"}],"transports":{
			"dir":{"":[{"type":"reject"}],"/var/lib/images":[{"type":"insecureAcceptAnything"}]},
			"oci":{"/srv/oci":[{"type":"insecureAcceptAnything"}]},
			"oci-archive":{"/srv/a.tar":[{"type":"insecureAcceptAnything"}]},
			"docker-archive":{"":[{"type":"insecureAcceptAnything"}]},
			"docker-daemon":{"":[{"type":"insecureAcceptAnything"}]},
			"containers-storage":{"[overlay@/var/lib/containers/storage]":[{"type":"insecureAcceptAnything"}],
				"[overlay@/var/lib/containers/storage+/run/containers/storage]docker.io/library/busybox:latest":[{"type":"insecureAcceptAnything"}],
				"[/var/lib/containers/storage]@0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef":[{"type":"insecureAcceptAnything"}]},
			"ostree":{"/ostree/repo:busybox":[{"type":"insecureAcceptAnything"}]},
			"atomic":{"registry.example.com/ns/stream:tag":[{"type":"insecureAcceptAnything"}]},
			"sif":{"":[{"type":"reject"}]},
			"tarball":{"":[{"type":"reject"}]}}}`},
		{"signedBy keyPath armored", docker("example.com", `[{"type":"signedBy","keyType":"GPGKeys","keyPath":"keys/alice.asc"}]`)},
		{"signedBy keyPath binary", docker("example.com", `[{"type":"signedBy","keyType":"GPGKeys","keyPath":"keys/alice.gpg"}]`)},
		{"signedBy two armored blocks", docker("example.com", `[{"type":"signedBy","keyType":"GPGKeys","keyPath":"keys/both.asc"}]`)},
		{"signedBy keyPaths", docker("example.com", `[{"type":"signedBy","keyType":"GPGKeys","keyPaths":["keys/alice.asc","keys/alice.gpg"]}]`)},
		{"signedBy keyData", docker("example.com", `[{"type":"signedBy","keyType":"GPGKeys","keyData":"$GPGDATA"}]`)},
		{"signedBy keyData binary", docker("example.com", `[{"type":"signedBy","keyType":"GPGKeys","keyData":"$GPGBINDATA"}]`)},
		{"signedBy unimplemented keyType", docker("example.com", `[{"type":"signedBy","keyType":"X509Certificates","keyPath":"keys/x509-ca.pem"}]`)},
		{"signedBy signedByGPGKeys", docker("example.com", `[{"type":"signedBy","keyType":"signedByGPGKeys","keyPath":"keys/alice.asc"}]`)},
		{"signedBaseLayer", docker("example.com", `[{"type":"signedBaseLayer","baseLayerIdentity":{"type":"exactRepository","dockerRepository":"example.com/base"}}]`)},
		{"sigstore keyPath P-256", docker("example.com", `[{"type":"sigstoreSigned","keyPath":"keys/p256.pub"}]`)},
		{"sigstore absolute keyPath", docker("example.com", `[{"type":"sigstoreSigned","keyPath":"`+f.dir+`/keys/p384.pub"}]`)},
		{"sigstore keyPath in subdirectory", docker("example.com", `[{"type":"sigstoreSigned","keyPath":"keys/sub/deep.pub"}]`)},
		{"sigstore keyPaths of every key type", docker("example.com", `[{"type":"sigstoreSigned","keyPaths":["keys/p256.pub","keys/p384.pub","keys/ed25519.pub","keys/rsa.pub"]}]`)},
		{"sigstore keyData", docker("example.com", `[{"type":"sigstoreSigned","keyData":"$P256DATA"}]`)},
		{"sigstore keyDatas", docker("example.com", `[{"type":"sigstoreSigned","keyDatas":["$P256DATA","$EDDATA"]}]`)},
		{"sigstore key with rekorPublicKeyPath", docker("example.com", `[{"type":"sigstoreSigned","keyPath":"keys/p256.pub","rekorPublicKeyPath":"keys/rekor.pub"}]`)},
		{"sigstore key with rekorPublicKeyPaths", docker("example.com", `[{"type":"sigstoreSigned","keyPath":"keys/p256.pub","rekorPublicKeyPaths":["keys/rekor.pub","keys/rekor2.pub"]}]`)},
		{"sigstore key with rekorPublicKeyDatas", docker("example.com", `[{"type":"sigstoreSigned","keyPath":"keys/p256.pub","rekorPublicKeyDatas":["$P256DATA"]}]`)},
		{"sigstore fulcio", docker("example.com", `[{"type":"sigstoreSigned","fulcio":{"caPath":"keys/ca.pem","oidcIssuer":"https://issuer.example.com","subjectEmail":"dev@example.com"},"rekorPublicKeyPath":"keys/rekor.pub"}]`)},
		{"sigstore fulcio caData", docker("example.com", `[{"type":"sigstoreSigned","fulcio":{"caData":"$CADATA","oidcIssuer":"https://issuer.example.com","subjectEmail":"dev@example.com"},"rekorPublicKeyData":"$P256DATA"}]`)},
		{"sigstore pki", docker("example.com", `[{"type":"sigstoreSigned","pki":{"caRootsPath":"keys/ca.pem","subjectEmail":"dev@example.com"}}]`)},
		{"sigstore pki with intermediates", docker("example.com", `[{"type":"sigstoreSigned","pki":{"caRootsData":"$CADATA","caIntermediatesPath":"keys/ca.pem","subjectHostname":"build.example.com"}}]`)},
		{"signedIdentity matchExact", docker("example.com", `[{"type":"sigstoreSigned","keyPath":"keys/p256.pub","signedIdentity":{"type":"matchExact"}}]`)},
		{"signedIdentity matchRepoDigestOrExact", docker("example.com", `[{"type":"sigstoreSigned","keyPath":"keys/p256.pub","signedIdentity":{"type":"matchRepoDigestOrExact"}}]`)},
		{"signedIdentity matchRepository", docker("example.com", `[{"type":"sigstoreSigned","keyPath":"keys/p256.pub","signedIdentity":{"type":"matchRepository"}}]`)},
		{"signedIdentity exactReference", docker("example.com", `[{"type":"sigstoreSigned","keyPath":"keys/p256.pub","signedIdentity":{"type":"exactReference","dockerReference":"busybox:1.36"}}]`)},
		{"signedIdentity exactRepository", docker("example.com", `[{"type":"sigstoreSigned","keyPath":"keys/p256.pub","signedIdentity":{"type":"exactRepository","dockerRepository":"quay.io/team/app"}}]`)},
		{"signedIdentity remapIdentity localhost", docker("example.com", `[{"type":"sigstoreSigned","keyPath":"keys/p256.pub","signedIdentity":{"type":"remapIdentity","prefix":"localhost:5000/ns","signedPrefix":"localhost"}}]`)},
		{"signedIdentity remapIdentity", docker("example.com", `[{"type":"signedBy","keyType":"GPGKeys","keyPath":"keys/alice.asc","signedIdentity":{"type":"remapIdentity","prefix":"mirror.example.com/ns","signedPrefix":"docker.io"}}]`)},
		{"encrypted", docker("example.com", `[{"type":"encrypted"}]`)},
		{"encrypted all", docker("example.com", `[{"type":"encrypted","layers":"all"}]`)},
		{"encrypted any", docker("example.com", `[{"type":"encrypted","layers":"any"}]`)},
		{"threshold 2 of 3", docker("example.com", `[{"type":"sigstoreThreshold","threshold":2,"keys":[
			{"name":"ci","keyPath":"keys/p256.pub"},{"name":"qa","keyData":"$P384DATA"},{"name":"release","keyPath":"keys/ed25519.pub"}],
			"signedIdentity":{"type":"matchRepository"}}]`)},
		{"threshold 1 of 1", docker("example.com", `[{"type":"sigstoreThreshold","threshold":1,"keys":[{"name":"ci","keyPath":"keys/p256.pub"}]}]`)},
		{"threshold n of n", docker("example.com", `[{"type":"sigstoreThreshold","threshold":2,"keys":[{"name":"a","keyPath":"keys/p256.pub"},{"name":"b","keyPath":"keys/rsa.pub"}]}]`)},
		{"two threshold groups and more", docker("example.com", `[
			{"type":"sigstoreThreshold","threshold":1,"keys":[{"name":"a","keyPath":"keys/p256.pub"}]},
			{"type":"sigstoreThreshold","threshold":1,"keys":[{"name":"a","keyPath":"keys/p256.pub"},{"name":"b","keyPath":"keys/p384.pub"}]},
			{"type":"sigstoreSigned","keyPath":"keys/p256.pub"},{"type":"encrypted"}]`)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := f.load(tc.policy); err != nil {
				t.Fatalf("Load: %v", err)
			}
		})
	}
}

func TestLoadInvalid(t *testing.T) {
	f := newFixtures(t)
	const sig = `"type":"sigstoreSigned"`
	for _, tc := range []struct {
		name, policy string
		want         string // in the error message
	}{
		// JSON itself
		{"empty input", ``, "unexpected end of JSON input"},
		{"broken JSON", `{"default":[{"type":"reject"}`, "unexpected end of JSON input"},
		{"syntax error", `{"default":[{"type":"reject"},]}`, "line 1, column 31: invalid character ']' looking for beginning of value"},
		{"syntax error on line 3", "{\n  \"default\": [\n    {\"type\": \"reject\"}\n    {\"type\": \"reject\"}\n  ]\n}", "line 4, column 5: invalid character '{' after array element"},
		{"trailing garbage", `{"default":[{"type":"reject"}]} x`, "unexpected data after the JSON object"},
		{"two objects", `{"default":[{"type":"reject"}]}{}`, "unexpected data after the JSON object"},
		{"not an object", `[{"type":"reject"}]`, "must be a JSON object, not an array"},
		{"missing default", `{"transports":{}}`, `missing field "default"`},
		{"empty default", `{"default":[]}`, "default: must not be empty"},
		{"default not a list", `{"default":{"type":"reject"}}`, "default: must be an array, not an object"},
		{"default null", `{"default":null}`, "default: must be an array, not null"},
		{"unknown top-level field", `{"default":[{"type":"reject"}],"defualt":[]}`, `unknown field "defualt"`},
		{"duplicate top-level field", `{"default":[{"type":"reject"}],"default":[{"type":"insecureAcceptAnything"}]}`, `duplicate field "default"`},
		{"duplicate field in a requirement", `{"default":[{"type":"reject","type":"insecureAcceptAnything"}]}`, `default[0]: duplicate field "type"`},
		{"requirement not an object", `{"default":["reject"]}`, "default[0]: must be a JSON object, not a string"},

		// requirement types
		{"unknown type", `{"default":[{"type":"acceptAll"}]}`, `default[0].type: unknown requirement type "acceptAll"`},
		{"missing type", `{"default":[{}]}`, `default[0]: missing field "type"`},
		{"type not a string", `{"default":[{"type":1}]}`, "default[0].type: must be a string, not a number"},
		{"type in wrong case", `{"default":[{"type":"Reject"}]}`, `unknown requirement type "Reject"`},
		{"field in wrong case", `{"default":[{"Type":"reject"}]}`, `missing field "type"`},
		{"extra field on reject", `{"default":[{"type":"reject","keyPath":"x"}]}`, `default[0]: unknown field "keyPath"`},
		{"extra field on insecureAcceptAnything", `{"default":[{"type":"insecureAcceptAnything","why":"x"}]}`, `unknown field "why"`},

		// transports and scopes
		{"transports not an object", `{"default":[{"type":"reject"}],"transports":[]}`, "transports: must be a JSON object"},
		{"unknown transport", `{"default":[{"type":"reject"}],"transports":{"dockr":{}}}`, `transports: unknown transport "dockr"`},
		{"duplicate transport", `{"default":[{"type":"reject"}],"transports":{"docker":{},"docker":{}}}`, `duplicate field "docker"`},
		{"duplicate scope", `{"default":[{"type":"reject"}],"transports":{"docker":{"example.com":[{"type":"reject"}],"example.com":[{"type":"reject"}]}}}`, `transports.docker: duplicate field "example.com"`},
		{"empty scope requirements", docker("example.com", `[]`), `transports.docker["example.com"]: must not be empty`},
		{"scope requirements not a list", docker("example.com", `{"type":"reject"}`), `transports.docker["example.com"]: must be an array`},
		{"short name scope", docker("busybox", `[{"type":"reject"}]`), `transports.docker["busybox"]: invalid docker scope`},
		{"short repository scope", docker("library/busybox", `[{"type":"reject"}]`), `invalid docker scope`},
		{"docker hub short tag scope", docker("docker.io/busybox:latest", `[{"type":"reject"}]`), `write docker.io/library/busybox:latest`},
		{"index.docker.io scope", docker("index.docker.io/library/busybox", `[{"type":"reject"}]`), `instead of index.docker.io`},
		{"tag and digest scope", docker("example.com/a:1@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", `[{"type":"reject"}]`), "both a tag and a digest"},
		{"bad digest scope", docker("example.com/a@sha256:xyz", `[{"type":"reject"}]`), "invalid digest"},
		{"host digest scope", docker("example.com@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", `[{"type":"reject"}]`), "a digest needs a repository"},
		{"uppercase repository scope", docker("example.com/Team/app", `[{"type":"reject"}]`), `invalid repository path component "Team"`},
		{"bad tag scope", docker("example.com/app:-x", `[{"type":"reject"}]`), `invalid tag "-x"`},
		{"trailing slash scope", docker("example.com/app/", `[{"type":"reject"}]`), `invalid repository path component ""`},
		{"wildcard with port", docker("*.example.com:5000", `[{"type":"reject"}]`), "wildcard scope"},
		{"wildcard with path", docker("*.example.com/ns", `[{"type":"reject"}]`), "wildcard scope"},
		{"wildcard in the middle", docker("registry.*.com", `[{"type":"reject"}]`), "not a registry host name"},
		{"bare wildcard", docker("*", `[{"type":"reject"}]`), "not a registry host name"},
		{"dir relative scope", `{"default":[{"type":"reject"}],"transports":{"dir":{"images":[{"type":"reject"}]}}}`, `transports.dir["images"]: invalid dir scope: must be an absolute path`},
		{"dir root scope", `{"default":[{"type":"reject"}],"transports":{"dir":{"/":[{"type":"reject"}]}}}`, `would shadow the transport default`},
		{"dir unclean scope", `{"default":[{"type":"reject"}],"transports":{"oci":{"/a/../b":[{"type":"reject"}]}}}`, `not canonical, use "/b"`},
		{"docker-daemon scope", `{"default":[{"type":"reject"}],"transports":{"docker-daemon":{"busybox:latest":[{"type":"reject"}]}}}`, `supports only the default "" scope`},
		{"containers-storage scope", `{"default":[{"type":"reject"}],"transports":{"containers-storage":{"busybox":[{"type":"reject"}]}}}`, "must start with [STORE]"},
		{"containers-storage relative root", `{"default":[{"type":"reject"}],"transports":{"containers-storage":{"[overlay@var/lib]":[{"type":"reject"}]}}}`, "absolute path"},
		{"ostree scope without image", `{"default":[{"type":"reject"}],"transports":{"ostree":{"/ostree/repo":[{"type":"reject"}]}}}`, "must be REPO:IMAGE"},
		{"other transport's requirements are validated", `{"default":[{"type":"reject"}],"transports":{"dir":{"":[{"type":"sigstoreSigned","keyPath":"keys/missing.pub"}]}}}`, `transports.dir[""][0].keyPath: "keys/missing.pub"`},

		// signedBy
		{"signedBy without keyType", docker("example.com", `[{"type":"signedBy","keyPath":"keys/alice.asc"}]`), `missing field "keyType"`},
		{"signedBy unknown keyType", docker("example.com", `[{"type":"signedBy","keyType":"PGPKeys","keyPath":"keys/alice.asc"}]`), `keyType: unknown keyType "PGPKeys"`},
		{"signedBy without key", docker("example.com", `[{"type":"signedBy","keyType":"GPGKeys"}]`), "exactly one of keyPath, keyPaths, keyData must be specified, found 0"},
		{"signedBy two key sources", docker("example.com", `[{"type":"signedBy","keyType":"GPGKeys","keyPath":"keys/alice.asc","keyData":"$GPGDATA"}]`), "found 2"},
		{"signedBy keyDatas is not a field", docker("example.com", `[{"type":"signedBy","keyType":"GPGKeys","keyPath":"keys/alice.asc","keyDatas":["$GPGDATA"]}]`), `unknown field "keyDatas"`},
		{"signedBy missing key file", docker("example.com", `[{"type":"signedBy","keyType":"GPGKeys","keyPath":"keys/nope.asc"}]`), `[0].keyPath: "keys/nope.asc": open`},
		{"signedBy not a keyring", docker("example.com", `[{"type":"signedBy","keyType":"GPGKeys","keyPath":"keys/garbage.pub"}]`), `[0].keyPath: keyring`},
		{"signedBy sigstore key as keyring", docker("example.com", `[{"type":"signedBy","keyType":"GPGKeys","keyPath":"keys/p256.pub"}]`), `[0].keyPath: keyring`},
		{"signedBy empty keyring", docker("example.com", `[{"type":"signedBy","keyType":"GPGKeys","keyPath":"keys/empty.gpg"}]`), "keyring holds no public key"},
		{"signedBy private keyring", docker("example.com", `[{"type":"signedBy","keyType":"GPGKeys","keyPath":"keys/secret.asc"}]`), "keyring holds a private key"},
		{"signedBy empty keyPaths", docker("example.com", `[{"type":"signedBy","keyType":"GPGKeys","keyPaths":[]}]`), "keyPaths: must not be empty"},
		{"signedBy keyPaths with a bad file", docker("example.com", `[{"type":"signedBy","keyType":"GPGKeys","keyPaths":["keys/alice.asc","keys/garbage.pub"]}]`), "[0].keyPaths[1]: keyring"},
		{"signedBy keyData not base64", docker("example.com", `[{"type":"signedBy","keyType":"GPGKeys","keyData":"!!"}]`), "keyData: invalid base64"},
		{"signedBy keyData garbage", docker("example.com", `[{"type":"signedBy","keyType":"GPGKeys","keyData":"$GARBAGEDATA"}]`), "keyData: keyring"},
		{"signedBy keyPath null", docker("example.com", `[{"type":"signedBy","keyType":"GPGKeys","keyPath":null}]`), "keyPath: must be a string, not null"},
		{"signedBy keyPath empty", docker("example.com", `[{"type":"signedBy","keyType":"GPGKeys","keyPath":""}]`), "keyPath: must not be empty"},
		{"signedBy unimplemented keyType missing file", docker("example.com", `[{"type":"signedBy","keyType":"X509Certificates","keyPath":"keys/none.pem"}]`), `"keys/none.pem": open`},
		{"signedBaseLayer without identity", docker("example.com", `[{"type":"signedBaseLayer"}]`), `missing field "baseLayerIdentity"`},

		// sigstoreSigned
		{"sigstore without key", docker("example.com", `[{`+sig+`}]`), "exactly one of keyPath, keyPaths, keyData, keyDatas, fulcio, pki must be specified, found 0"},
		{"sigstore two key sources", docker("example.com", `[{`+sig+`,"keyPath":"keys/p256.pub","keyData":"$P256DATA"}]`), "found 2"},
		{"sigstore key and fulcio", docker("example.com", `[{`+sig+`,"keyPath":"keys/p256.pub","fulcio":{"caPath":"keys/ca.pem","oidcIssuer":"i","subjectEmail":"e"},"rekorPublicKeyPath":"keys/rekor.pub"}]`), "found 2"},
		{"sigstore misspelt field", docker("example.com", `[{`+sig+`,"keyPaht":"keys/p256.pub"}]`), "found 0"},
		{"sigstore unknown field", docker("example.com", `[{`+sig+`,"keyPath":"keys/p256.pub","keyId":"x"}]`), `unknown field "keyId"`},
		{"sigstore missing key file", docker("example.com", `[{`+sig+`,"keyPath":"keys/missing.pub"}]`), `transports.docker["example.com"][0].keyPath: "keys/missing.pub": open`},
		{"sigstore garbage key", docker("example.com", `[{`+sig+`,"keyPath":"keys/garbage.pub"}]`), "keyPath: no PEM public key found"},
		{"sigstore private key", docker("example.com", `[{`+sig+`,"keyPath":"keys/private.pem"}]`), "unknown Public key PEM file type: PRIVATE KEY"},
		{"sigstore certificate as key", docker("example.com", `[{`+sig+`,"keyPath":"keys/ca.pem"}]`), "unknown Public key PEM file type: CERTIFICATE"},
		{"sigstore GPG key as key", docker("example.com", `[{`+sig+`,"keyPath":"keys/gpg-as.pub"}]`), "keyPath:"},
		{"sigstore two keys in one file", docker("example.com", `[{`+sig+`,"keyPath":"keys/two.pub"}]`), "more than one PEM block"},
		{"sigstore weak RSA key", docker("example.com", `[{`+sig+`,"keyPath":"keys/weak.pub"}]`), "rsa key size 1024"},
		{"sigstore garbage keyData", docker("example.com", `[{`+sig+`,"keyData":"$GARBAGEDATA"}]`), "keyData: no PEM public key found"},
		{"sigstore keyData not a string", docker("example.com", `[{`+sig+`,"keyData":["$P256DATA"]}]`), "keyData: must be a base64 string, not an array"},
		{"sigstore empty keyPaths", docker("example.com", `[{`+sig+`,"keyPaths":[]}]`), "keyPaths: must not be empty"},
		{"sigstore empty keyDatas", docker("example.com", `[{`+sig+`,"keyDatas":[]}]`), "keyDatas: must not be empty"},
		{"sigstore keyDatas with a bad key", docker("example.com", `[{`+sig+`,"keyDatas":["$P256DATA","$GARBAGEDATA"]}]`), "keyDatas[1]: no PEM public key found"},
		{"sigstore keyPaths not strings", docker("example.com", `[{`+sig+`,"keyPaths":[1]}]`), "keyPaths[0]: must be a string, not a number"},
		{"sigstore two rekor fields", docker("example.com", `[{`+sig+`,"keyPath":"keys/p256.pub","rekorPublicKeyPath":"keys/rekor.pub","rekorPublicKeyData":"$P256DATA"}]`), "at most one of rekorPublicKeyPath"},
		{"sigstore bad rekor key", docker("example.com", `[{`+sig+`,"keyPath":"keys/p256.pub","rekorPublicKeyPath":"keys/garbage.pub"}]`), "rekorPublicKeyPath: no PEM public key found"},
		{"sigstore missing rekor key", docker("example.com", `[{`+sig+`,"keyPath":"keys/p256.pub","rekorPublicKeyPaths":["keys/rekor.pub","keys/gone.pub"]}]`), `rekorPublicKeyPaths[1]: "keys/gone.pub": open`},
		{"fulcio without rekor", docker("example.com", `[{`+sig+`,"fulcio":{"caPath":"keys/ca.pem","oidcIssuer":"i","subjectEmail":"e"}}]`), "fulcio needs one of rekorPublicKeyPath"},
		{"fulcio without oidcIssuer", docker("example.com", `[{`+sig+`,"fulcio":{"caPath":"keys/ca.pem","subjectEmail":"e"},"rekorPublicKeyPath":"keys/rekor.pub"}]`), `fulcio: missing field "oidcIssuer"`},
		{"fulcio without subjectEmail", docker("example.com", `[{`+sig+`,"fulcio":{"caPath":"keys/ca.pem","oidcIssuer":"i"},"rekorPublicKeyPath":"keys/rekor.pub"}]`), `fulcio: missing field "subjectEmail"`},
		{"fulcio without CA", docker("example.com", `[{`+sig+`,"fulcio":{"oidcIssuer":"i","subjectEmail":"e"},"rekorPublicKeyPath":"keys/rekor.pub"}]`), "one of caPath and caData must be specified"},
		{"fulcio caPath and caData", docker("example.com", `[{`+sig+`,"fulcio":{"caPath":"keys/ca.pem","caData":"$CADATA","oidcIssuer":"i","subjectEmail":"e"},"rekorPublicKeyPath":"keys/rekor.pub"}]`), "caPath and caData cannot be used together"},
		{"fulcio CA not a certificate", docker("example.com", `[{`+sig+`,"fulcio":{"caPath":"keys/p256.pub","oidcIssuer":"i","subjectEmail":"e"},"rekorPublicKeyPath":"keys/rekor.pub"}]`), "fulcio.caPath:"},
		{"fulcio missing CA file", docker("example.com", `[{`+sig+`,"fulcio":{"caPath":"keys/nope.pem","oidcIssuer":"i","subjectEmail":"e"},"rekorPublicKeyPath":"keys/rekor.pub"}]`), `fulcio.caPath: "keys/nope.pem": open`},
		{"fulcio unknown field", docker("example.com", `[{`+sig+`,"fulcio":{"caPath":"keys/ca.pem","oidcIssuer":"i","subjectEmail":"e","subject":"x"},"rekorPublicKeyPath":"keys/rekor.pub"}]`), `fulcio: unknown field "subject"`},
		{"fulcio not an object", docker("example.com", `[{`+sig+`,"fulcio":"keys/ca.pem","rekorPublicKeyPath":"keys/rekor.pub"}]`), "fulcio: must be a JSON object, not a string"},
		{"pki without subject", docker("example.com", `[{`+sig+`,"pki":{"caRootsPath":"keys/ca.pem"}}]`), "at least one of subjectEmail and subjectHostname"},
		{"pki without roots", docker("example.com", `[{`+sig+`,"pki":{"subjectEmail":"e"}}]`), "one of caRootsPath and caRootsData must be specified"},
		{"pki intermediates twice", docker("example.com", `[{`+sig+`,"pki":{"caRootsPath":"keys/ca.pem","caIntermediatesPath":"keys/ca.pem","caIntermediatesData":"$CADATA","subjectEmail":"e"}}]`), "caIntermediatesPath and caIntermediatesData cannot be used together"},

		// signedIdentity
		{"identity unknown type", docker("example.com", `[{`+sig+`,"keyPath":"keys/p256.pub","signedIdentity":{"type":"matchAnything"}}]`), `signedIdentity.type: unknown signedIdentity type "matchAnything"`},
		{"identity not an object", docker("example.com", `[{`+sig+`,"keyPath":"keys/p256.pub","signedIdentity":"matchExact"}]`), "signedIdentity: must be a JSON object, not a string"},
		{"identity extra field", docker("example.com", `[{`+sig+`,"keyPath":"keys/p256.pub","signedIdentity":{"type":"matchExact","dockerReference":"a:b"}}]`), `signedIdentity: unknown field "dockerReference"`},
		{"exactReference without reference", docker("example.com", `[{`+sig+`,"keyPath":"keys/p256.pub","signedIdentity":{"type":"exactReference"}}]`), `missing field "dockerReference"`},
		{"exactReference without tag", docker("example.com", `[{`+sig+`,"keyPath":"keys/p256.pub","signedIdentity":{"type":"exactReference","dockerReference":"example.com/app"}}]`), "has neither a tag nor a digest"},
		{"exactReference invalid", docker("example.com", `[{`+sig+`,"keyPath":"keys/p256.pub","signedIdentity":{"type":"exactReference","dockerReference":"Example/App:1"}}]`), "signedIdentity.dockerReference:"},
		{"exactRepository invalid", docker("example.com", `[{`+sig+`,"keyPath":"keys/p256.pub","signedIdentity":{"type":"exactRepository","dockerRepository":"a//b"}}]`), "signedIdentity.dockerRepository:"},
		{"exactRepository missing", docker("example.com", `[{`+sig+`,"keyPath":"keys/p256.pub","signedIdentity":{"type":"exactRepository"}}]`), `missing field "dockerRepository"`},
		{"remapIdentity short prefix", docker("example.com", `[{`+sig+`,"keyPath":"keys/p256.pub","signedIdentity":{"type":"remapIdentity","prefix":"busybox","signedPrefix":"docker.io"}}]`), `signedIdentity.prefix: prefix "busybox"`},
		{"remapIdentity short namespace prefix", docker("example.com", `[{`+sig+`,"keyPath":"keys/p256.pub","signedIdentity":{"type":"remapIdentity","prefix":"library/busybox","signedPrefix":"docker.io"}}]`), `signedIdentity.prefix: prefix "library/busybox"`},
		{"remapIdentity bad signedPrefix", docker("example.com", `[{`+sig+`,"keyPath":"keys/p256.pub","signedIdentity":{"type":"remapIdentity","prefix":"example.com","signedPrefix":"example.com/Ns"}}]`), `signedIdentity.signedPrefix: prefix "example.com/Ns"`},
		{"remapIdentity with tag", docker("example.com", `[{`+sig+`,"keyPath":"keys/p256.pub","signedIdentity":{"type":"remapIdentity","prefix":"example.com/app:1","signedPrefix":"docker.io"}}]`), `prefix "example.com/app:1"`},
		{"remapIdentity missing signedPrefix", docker("example.com", `[{`+sig+`,"keyPath":"keys/p256.pub","signedIdentity":{"type":"remapIdentity","prefix":"example.com"}}]`), `missing field "signedPrefix"`},

		// encrypted
		{"encrypted bad layers", docker("example.com", `[{"type":"encrypted","layers":"some"}]`), `layers: must be "all" or "any", not "some"`},
		{"encrypted layers not a string", docker("example.com", `[{"type":"encrypted","layers":1}]`), "layers: must be a string, not a number"},
		{"encrypted unknown field", docker("example.com", `[{"type":"encrypted","layer":"any"}]`), `unknown field "layer"`},

		// sigstoreThreshold
		{"threshold 0", docker("example.com", `[{"type":"sigstoreThreshold","threshold":0,"keys":[{"name":"a","keyPath":"keys/p256.pub"}]}]`), "threshold: must be between 1 and the number of keys (1), not 0"},
		{"threshold negative", docker("example.com", `[{"type":"sigstoreThreshold","threshold":-1,"keys":[{"name":"a","keyPath":"keys/p256.pub"}]}]`), "not -1"},
		{"threshold above keys", docker("example.com", `[{"type":"sigstoreThreshold","threshold":3,"keys":[{"name":"a","keyPath":"keys/p256.pub"},{"name":"b","keyPath":"keys/p384.pub"}]}]`), "threshold: must be between 1 and the number of keys (2), not 3"},
		{"threshold fraction", docker("example.com", `[{"type":"sigstoreThreshold","threshold":1.5,"keys":[{"name":"a","keyPath":"keys/p256.pub"}]}]`), "threshold: must be an integer, not 1.5"},
		{"threshold string", docker("example.com", `[{"type":"sigstoreThreshold","threshold":"1","keys":[{"name":"a","keyPath":"keys/p256.pub"}]}]`), "threshold: must be an integer, not a string"},
		{"threshold huge", docker("example.com", `[{"type":"sigstoreThreshold","threshold":99999999999999999999,"keys":[{"name":"a","keyPath":"keys/p256.pub"}]}]`), "threshold: must be an integer"},
		{"threshold missing", docker("example.com", `[{"type":"sigstoreThreshold","keys":[{"name":"a","keyPath":"keys/p256.pub"}]}]`), `missing field "threshold"`},
		{"threshold keys missing", docker("example.com", `[{"type":"sigstoreThreshold","threshold":1}]`), `missing field "keys"`},
		{"threshold keys empty", docker("example.com", `[{"type":"sigstoreThreshold","threshold":1,"keys":[]}]`), "keys: must not be empty"},
		{"threshold duplicate names", docker("example.com", `[{"type":"sigstoreThreshold","threshold":1,"keys":[{"name":"ci","keyPath":"keys/p256.pub"},{"name":"ci","keyPath":"keys/p384.pub"}]}]`), `keys[1].name: duplicate key name "ci"`},
		{"threshold same key twice", docker("example.com", `[{"type":"sigstoreThreshold","threshold":2,"keys":[{"name":"ci","keyPath":"keys/p256.pub"},{"name":"qa","keyData":"$P256DATA"}]}]`), `key "qa" is the same public key as "ci"`},
		{"threshold empty name", docker("example.com", `[{"type":"sigstoreThreshold","threshold":1,"keys":[{"name":"","keyPath":"keys/p256.pub"}]}]`), "keys[0].name: must not be empty"},
		{"threshold missing name", docker("example.com", `[{"type":"sigstoreThreshold","threshold":1,"keys":[{"keyPath":"keys/p256.pub"}]}]`), `keys[0]: missing field "name"`},
		{"threshold key without source", docker("example.com", `[{"type":"sigstoreThreshold","threshold":1,"keys":[{"name":"a"}]}]`), "keys[0]: exactly one of keyPath, keyData must be specified, found 0"},
		{"threshold key with two sources", docker("example.com", `[{"type":"sigstoreThreshold","threshold":1,"keys":[{"name":"a","keyPath":"keys/p256.pub","keyData":"$P256DATA"}]}]`), "found 2"},
		{"threshold key missing file", docker("example.com", `[{"type":"sigstoreThreshold","threshold":1,"keys":[{"name":"a","keyPath":"keys/gone.pub"}]}]`), `keys[0].keyPath: "keys/gone.pub": open`},
		{"threshold key unparseable", docker("example.com", `[{"type":"sigstoreThreshold","threshold":1,"keys":[{"name":"a","keyPath":"keys/garbage.pub"}]}]`), "keys[0].keyPath: no PEM public key found"},
		{"threshold key unknown field", docker("example.com", `[{"type":"sigstoreThreshold","threshold":1,"keys":[{"name":"a","keyPath":"keys/p256.pub","weight":2}]}]`), `keys[0]: unknown field "weight"`},
		{"threshold key keyPaths", docker("example.com", `[{"type":"sigstoreThreshold","threshold":1,"keys":[{"name":"a","keyPaths":["keys/p256.pub"]}]}]`), "found 0"},
		{"threshold key not an object", docker("example.com", `[{"type":"sigstoreThreshold","threshold":1,"keys":["keys/p256.pub"]}]`), "keys[0]: must be a JSON object, not a string"},
		{"threshold unknown field", docker("example.com", `[{"type":"sigstoreThreshold","threshold":1,"keys":[{"name":"a","keyPath":"keys/p256.pub"}],"quorum":1}]`), `unknown field "quorum"`},

		// kbs:// needs a reader
		{"kbs key without reader", docker("example.com", `[{`+sig+`,"keyPath":"kbs:///default/keys/ci"}]`), "kbs:// key paths need a KBS client"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := f.load(tc.policy)
			if err == nil {
				t.Fatalf("Load succeeded (%v), want an error containing %q", p, tc.want)
			}
			if !errors.Is(err, errdefs.ErrInvalidConfig) {
				t.Errorf("error %q does not wrap ErrInvalidConfig", err)
			}
			if errdefs.ExitCode(err) != 2 {
				t.Errorf("exit code %d, want 2", errdefs.ExitCode(err))
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q\ndoes not contain %q", err, tc.want)
			}
			if strings.ContainsAny(err.Error(), "\n\r") {
				t.Errorf("error is not one line: %q", err)
			}
		})
	}
}

func TestLoadMissingKeyIsNotExist(t *testing.T) {
	f := newFixtures(t)
	_, err := f.load(docker("example.com", `[{"type":"sigstoreSigned","keyPath":"keys/missing.pub"}]`))
	if !errors.Is(err, fs.ErrNotExist) || !errors.Is(err, errdefs.ErrInvalidConfig) {
		t.Fatalf("error %v: want both fs.ErrNotExist and ErrInvalidConfig", err)
	}
}

// TestLoadRead checks that key files go through LoadOptions.Read: relative
// paths joined to BaseDir, kbs:// paths passed as they are, each file read
// once however often the policy names it.
func TestLoadRead(t *testing.T) {
	k := newKey(t, "p256")
	files := map[string][]byte{
		"/etc/policy/keys/ci.pub":  k.pem,
		"kbs:///default/keys/qa":   newKey(t, "p384").pem,
		"/elsewhere/release.pub":   newKey(t, "ed25519").pem,
		"kbs:///default/keys/down": nil,
	}
	reads := map[string]int{}
	read := func(ctx context.Context, path string) ([]byte, error) {
		reads[path]++
		data, ok := files[path]
		if !ok || data == nil {
			return nil, errors.New("resource not found")
		}
		return data, nil
	}
	policy := docker("example.com", `[
		{"type":"sigstoreSigned","keyPath":"keys/ci.pub"},
		{"type":"sigstoreThreshold","threshold":3,"keys":[
			{"name":"ci","keyPath":"keys/ci.pub"},
			{"name":"qa","keyPath":"kbs:///default/keys/qa"},
			{"name":"release","keyPath":"/elsewhere/release.pub"}]}]`)
	if _, err := Load(context.Background(), []byte(policy), LoadOptions{BaseDir: "/etc/policy", Read: read}); err != nil {
		t.Fatal(err)
	}
	want := map[string]int{"/etc/policy/keys/ci.pub": 1, "kbs:///default/keys/qa": 1, "/elsewhere/release.pub": 1}
	for p, n := range want {
		if reads[p] != n {
			t.Errorf("%s read %d times, want %d (all reads: %v)", p, reads[p], n, reads)
		}
	}
	if len(reads) != len(want) {
		t.Errorf("reads %v, want exactly %v", reads, want)
	}

	_, err := Load(context.Background(), []byte(docker("example.com", `[{"type":"sigstoreSigned","keyPath":"kbs:///default/keys/down"}]`)), LoadOptions{Read: read})
	if !errors.Is(err, errdefs.ErrInvalidConfig) || !strings.Contains(err.Error(), `keyPath: "kbs:///default/keys/down": resource not found`) {
		t.Errorf("failing read: got %v", err)
	}
}

func TestLoadCanceled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	read := func(ctx context.Context, path string) ([]byte, error) {
		cancel()
		return nil, ctx.Err()
	}
	_, err := Load(ctx, []byte(docker("example.com", `[{"type":"sigstoreSigned","keyPath":"k.pub"}]`)), LoadOptions{Read: read})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v, want context.Canceled", err)
	}
	if errors.Is(err, errdefs.ErrInvalidConfig) {
		t.Errorf("a canceled load is not a bad configuration: %v", err)
	}
}
