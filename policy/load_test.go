package policy

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"sync"
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
			"docker-daemon":{"":[{"type":"insecureAcceptAnything"}],"busybox:latest":[{"type":"reject"}]},
			"containers-storage":{"[overlay@/var/lib/containers/storage]":[{"type":"insecureAcceptAnything"}],
				"[overlay@/var/lib/containers/storage+/run/containers/storage]docker.io/library/busybox:latest":[{"type":"insecureAcceptAnything"}],
				"[/var/lib/containers/storage]@0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef":[{"type":"insecureAcceptAnything"}]},
			"ostree":{"/ostree/repo:busybox":[{"type":"insecureAcceptAnything"}],"/ostree/repo":[{"type":"reject"}],"anything at all":[{"type":"reject"}]},
			"atomic":{"registry.example.com/ns/stream:tag":[{"type":"insecureAcceptAnything"}]},
			"sif":{"":[{"type":"reject"}],"/srv/images/app.sif":[{"type":"insecureAcceptAnything"}]},
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
		{"dir relative scope", `{"default":[{"type":"reject"}],"transports":{"dir":{"images":[{"type":"reject"}]}}}`, `transports.dir["images"]: invalid dir scope: must be an absolute path`},
		{"dir root scope", `{"default":[{"type":"reject"}],"transports":{"dir":{"/":[{"type":"reject"}]}}}`, `would shadow the transport default`},
		{"dir unclean scope", `{"default":[{"type":"reject"}],"transports":{"oci":{"/a/../b":[{"type":"reject"}]}}}`, `not canonical, use "/b"`},
		{"containers-storage scope", `{"default":[{"type":"reject"}],"transports":{"containers-storage":{"busybox":[{"type":"reject"}]}}}`, "must start with [STORE]"},
		{"containers-storage relative root", `{"default":[{"type":"reject"}],"transports":{"containers-storage":{"[overlay@var/lib]":[{"type":"reject"}]}}}`, "absolute path"},

		// signedBy
		{"signedBy without keyType", docker("example.com", `[{"type":"signedBy","keyPath":"keys/alice.asc"}]`), `missing field "keyType"`},
		{"signedBy unknown keyType", docker("example.com", `[{"type":"signedBy","keyType":"PGPKeys","keyPath":"keys/alice.asc"}]`), `keyType: unknown keyType "PGPKeys"`},
		{"signedBy without key", docker("example.com", `[{"type":"signedBy","keyType":"GPGKeys"}]`), "exactly one of keyPath, keyPaths, keyData must be specified, found 0"},
		{"signedBy two key sources", docker("example.com", `[{"type":"signedBy","keyType":"GPGKeys","keyPath":"keys/alice.asc","keyData":"$GPGDATA"}]`), "found 2"},
		{"signedBy keyDatas is not a field", docker("example.com", `[{"type":"signedBy","keyType":"GPGKeys","keyPath":"keys/alice.asc","keyDatas":["$GPGDATA"]}]`), `unknown field "keyDatas"`},
		{"signedBy keyData not base64", docker("example.com", `[{"type":"signedBy","keyType":"GPGKeys","keyData":"!!"}]`), "keyData: invalid base64"},
		{"signedBy keyPath null", docker("example.com", `[{"type":"signedBy","keyType":"GPGKeys","keyPath":null}]`), "keyPath: must be a string, not null"},
		{"signedBy keyPath empty", docker("example.com", `[{"type":"signedBy","keyType":"GPGKeys","keyPath":""}]`), "keyPath: must not be empty"},
		{"signedBaseLayer without identity", docker("example.com", `[{"type":"signedBaseLayer"}]`), `missing field "baseLayerIdentity"`},

		// sigstoreSigned
		{"sigstore without key", docker("example.com", `[{`+sig+`}]`), "exactly one of keyPath, keyPaths, keyData, keyDatas, fulcio, pki must be specified, found 0"},
		{"sigstore two key sources", docker("example.com", `[{`+sig+`,"keyPath":"keys/p256.pub","keyData":"$P256DATA"}]`), "found 2"},
		{"sigstore key and fulcio", docker("example.com", `[{`+sig+`,"keyPath":"keys/p256.pub","fulcio":{"caPath":"keys/ca.pem","oidcIssuer":"i","subjectEmail":"e"},"rekorPublicKeyPath":"keys/rekor.pub"}]`), "found 2"},
		{"sigstore misspelt field", docker("example.com", `[{`+sig+`,"keyPaht":"keys/p256.pub"}]`), "found 0"},
		{"sigstore unknown field", docker("example.com", `[{`+sig+`,"keyPath":"keys/p256.pub","keyId":"x"}]`), `unknown field "keyId"`},
		{"sigstore keyData not a string", docker("example.com", `[{`+sig+`,"keyData":["$P256DATA"]}]`), "keyData: must be a base64 string, not an array"},
		{"sigstore empty keyPaths", docker("example.com", `[{`+sig+`,"keyPaths":[]}]`), "keyPaths: must not be empty"},
		{"sigstore empty keyDatas", docker("example.com", `[{`+sig+`,"keyDatas":[]}]`), "keyDatas: must not be empty"},
		{"sigstore keyPaths not strings", docker("example.com", `[{`+sig+`,"keyPaths":[1]}]`), "keyPaths[0]: must be a string, not a number"},
		{"sigstore two rekor fields", docker("example.com", `[{`+sig+`,"keyPath":"keys/p256.pub","rekorPublicKeyPath":"keys/rekor.pub","rekorPublicKeyData":"$P256DATA"}]`), "at most one of rekorPublicKeyPath"},
		{"fulcio without rekor", docker("example.com", `[{`+sig+`,"fulcio":{"caPath":"keys/ca.pem","oidcIssuer":"i","subjectEmail":"e"}}]`), "fulcio needs one of rekorPublicKeyPath"},
		{"fulcio without oidcIssuer", docker("example.com", `[{`+sig+`,"fulcio":{"caPath":"keys/ca.pem","subjectEmail":"e"},"rekorPublicKeyPath":"keys/rekor.pub"}]`), `fulcio: missing field "oidcIssuer"`},
		{"fulcio without subjectEmail", docker("example.com", `[{`+sig+`,"fulcio":{"caPath":"keys/ca.pem","oidcIssuer":"i"},"rekorPublicKeyPath":"keys/rekor.pub"}]`), `fulcio: missing field "subjectEmail"`},
		{"fulcio without CA", docker("example.com", `[{`+sig+`,"fulcio":{"oidcIssuer":"i","subjectEmail":"e"},"rekorPublicKeyPath":"keys/rekor.pub"}]`), "one of caPath and caData must be specified"},
		{"fulcio caPath and caData", docker("example.com", `[{`+sig+`,"fulcio":{"caPath":"keys/ca.pem","caData":"$CADATA","oidcIssuer":"i","subjectEmail":"e"},"rekorPublicKeyPath":"keys/rekor.pub"}]`), "caPath and caData cannot be used together"},
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
		{"threshold same identity twice", docker("example.com", `[{"type":"sigstoreThreshold","threshold":2,"keys":[{"name":"bot","fulcio":{"caPath":"keys/ca.pem","oidcIssuer":"i","subjectEmail":"e"},"rekorPublicKeyPath":"keys/rekor.pub"},{"name":"bot2","fulcio":{"caData":"$CADATA","oidcIssuer":"i","subjectEmail":"e"},"rekorPublicKeyPath":"keys/rekor.pub"}]}]`), `keys[1]: keys "bot" and "bot2" name the same identity (oidcIssuer "i", subjectEmail "e"): each signer must count once`},
		{"threshold same pki identity twice", docker("example.com", `[{"type":"sigstoreThreshold","threshold":1,"keys":[{"name":"a","pki":{"caRootsPath":"keys/ca.pem","subjectHostname":"h"}},{"name":"b","pki":{"caRootsPath":"keys/ca.pem","subjectHostname":"h"}}]}]`), `keys "a" and "b" name the same identity (subjectHostname "h")`},
		{"threshold empty name", docker("example.com", `[{"type":"sigstoreThreshold","threshold":1,"keys":[{"name":"","keyPath":"keys/p256.pub"}]}]`), "keys[0].name: must not be empty"},
		{"threshold missing name", docker("example.com", `[{"type":"sigstoreThreshold","threshold":1,"keys":[{"keyPath":"keys/p256.pub"}]}]`), `keys[0]: missing field "name"`},
		{"threshold key without source", docker("example.com", `[{"type":"sigstoreThreshold","threshold":1,"keys":[{"name":"a"}]}]`), "keys[0]: exactly one of keyPath, keyData, fulcio, pki must be specified, found 0"},
		{"threshold key with two sources", docker("example.com", `[{"type":"sigstoreThreshold","threshold":1,"keys":[{"name":"a","keyPath":"keys/p256.pub","keyData":"$P256DATA"}]}]`), "found 2"},
		{"threshold key unknown field", docker("example.com", `[{"type":"sigstoreThreshold","threshold":1,"keys":[{"name":"a","keyPath":"keys/p256.pub","weight":2}]}]`), `keys[0]: unknown field "weight"`},
		{"threshold key keyPaths", docker("example.com", `[{"type":"sigstoreThreshold","threshold":1,"keys":[{"name":"a","keyPaths":["keys/p256.pub"]}]}]`), "found 0"},
		{"threshold key not an object", docker("example.com", `[{"type":"sigstoreThreshold","threshold":1,"keys":["keys/p256.pub"]}]`), "keys[0]: must be a JSON object, not a string"},
		{"threshold unknown field", docker("example.com", `[{"type":"sigstoreThreshold","threshold":1,"keys":[{"name":"a","keyPath":"keys/p256.pub"}],"quorum":1}]`), `unknown field "quorum"`},

		// kbs:// needs a reader
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

// TestScopeSpellings: every docker scope containers/image accepts loads;
// the ones no reference can match load with a warning naming them.
func TestScopeSpellings(t *testing.T) {
	digest := "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	for _, tc := range []struct {
		scope string
		warn  bool
	}{
		{"docker.io/library/busybox:latest", false},
		{"docker.io/library/busybox@" + digest, false},
		{"docker.io/someuser", false},
		{"docker.io/busybox", false}, // the namespace of docker.io/busybox/*
		{"Registry.Example.com/app", false},
		{"localhost", false},
		{"[::1]:5000/x", false},
		{"*.example.com", false},
		{"busybox", true},
		{"library/busybox", true},
		{"bogus/key-data-example", true},
		{"docker.io/busybox:latest", true},
		{"index.docker.io/library/busybox", true},
		{"example.com/a:1@" + digest, true},
		{"example.com/a@sha256:xyz", true},
		{"example.com@" + digest, true},
		{"example.com/Team/app", true},
		{"example.com/app:-x", true},
		{"example.com/app/", true},
		{"*.example.com:5000", true},
		{"*.example.com/ns", true},
		{"registry.*.com", true},
		{"*", true},
	} {
		t.Run(tc.scope, func(t *testing.T) {
			p, err := Load(context.Background(), []byte(docker(tc.scope, `[{"type":"reject"}]`)), LoadOptions{})
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			w := p.Warnings()
			if !tc.warn {
				if len(w) != 0 {
					t.Fatalf("warnings %q, want none", w)
				}
				return
			}
			if len(w) != 1 || !strings.Contains(w[0], fmt.Sprintf("transports.docker[%q]: no image can match this scope", tc.scope)) {
				t.Fatalf("warnings %q, want one naming the scope", w)
			}
		})
	}
}

// TestKeyFailures: a key that cannot be read or used does not fail Load;
// it refuses the images of the scope that names it (exit 3) with a reason
// naming the key and where the policy names it, and leaves every other
// scope as it was.
func TestKeyFailures(t *testing.T) {
	f := newFixtures(t)
	const sig = `"type":"sigstoreSigned"`
	const at = `transports.docker["example.com"][0]`
	for _, tc := range []struct {
		name, reqs string
		want       []string // in the first requirement's reason
	}{
		{"signedBy missing key file", `[{"type":"signedBy","keyType":"GPGKeys","keyPath":"keys/nope.asc"}]`, []string{`key file "keys/nope.asc" (` + at + `.keyPath): open ` + f.dir + `/keys/nope.asc: no such file or directory`}},
		{"signedBy not a keyring", `[{"type":"signedBy","keyType":"GPGKeys","keyPath":"keys/garbage.pub"}]`, []string{`key file "keys/garbage.pub"`, "keyring"}},
		{"signedBy sigstore key as keyring", `[{"type":"signedBy","keyType":"GPGKeys","keyPath":"keys/p256.pub"}]`, []string{`key file "keys/p256.pub"`, "keyring"}},
		{"signedBy empty keyring", `[{"type":"signedBy","keyType":"GPGKeys","keyPath":"keys/empty.gpg"}]`, []string{"keyring holds no public key"}},
		{"signedBy private keyring", `[{"type":"signedBy","keyType":"GPGKeys","keyPath":"keys/secret.asc"}]`, []string{"keyring holds a private key"}},
		{"signedBy keyPaths with a bad file", `[{"type":"signedBy","keyType":"GPGKeys","keyPaths":["keys/alice.asc","keys/garbage.pub"]}]`, []string{`key file "keys/garbage.pub" (` + at + `.keyPaths[1])`}},
		{"signedBy keyData garbage", `[{"type":"signedBy","keyType":"GPGKeys","keyData":"$GARBAGEDATA"}]`, []string{"key keyData[0] (" + at + ".keyData): keyring"}},
		{"sigstore missing key file", `[{` + sig + `,"keyPath":"keys/missing.pub"}]`, []string{`key file "keys/missing.pub" (` + at + `.keyPath): open ` + f.dir + "/keys/missing.pub"}},
		{"sigstore absolute missing key file", `[{` + sig + `,"keyPath":"/nonexistent/ci.pub"}]`, []string{`key file "/nonexistent/ci.pub"`, "open /nonexistent/ci.pub: no such file or directory"}},
		{"sigstore garbage key", `[{` + sig + `,"keyPath":"keys/garbage.pub"}]`, []string{"no PEM public key found"}},
		{"sigstore private key", `[{` + sig + `,"keyPath":"keys/private.pem"}]`, []string{"unknown Public key PEM file type: PRIVATE KEY"}},
		{"sigstore certificate as key", `[{` + sig + `,"keyPath":"keys/ca.pem"}]`, []string{"unknown Public key PEM file type: CERTIFICATE"}},
		{"sigstore GPG key as key", `[{` + sig + `,"keyPath":"keys/gpg-as.pub"}]`, []string{`key file "keys/gpg-as.pub"`}},
		{"sigstore two keys in one file", `[{` + sig + `,"keyPath":"keys/two.pub"}]`, []string{"more than one PEM block"}},
		{"sigstore weak RSA key", `[{` + sig + `,"keyPath":"keys/weak.pub"}]`, []string{"rsa key size 1024"}},
		{"sigstore garbage keyData", `[{` + sig + `,"keyData":"$GARBAGEDATA"}]`, []string{"key keyData[0] (" + at + ".keyData): no PEM public key found"}},
		{"sigstore keyDatas with a bad key", `[{` + sig + `,"keyDatas":["$P256DATA","$GARBAGEDATA"]}]`, []string{"key keyData[1] (" + at + ".keyDatas[1]): no PEM public key found"}},
		{"sigstore keyPaths with a missing key", `[{` + sig + `,"keyPaths":["keys/p256.pub","keys/gone.pub"]}]`, []string{`key file "keys/gone.pub" (` + at + `.keyPaths[1])`}},
		{"sigstore bad rekor key", `[{` + sig + `,"keyPath":"keys/p256.pub","rekorPublicKeyPath":"keys/garbage.pub"}]`, []string{`key file "keys/garbage.pub" (` + at + `.rekorPublicKeyPath): no PEM public key found`}},
		{"sigstore rekor key not ECDSA", `[{` + sig + `,"keyPath":"keys/p256.pub","rekorPublicKeyPath":"keys/ed25519.pub"}]`, []string{"a Rekor public key must be ECDSA"}},
		{"sigstore missing rekor key", `[{` + sig + `,"keyPath":"keys/p256.pub","rekorPublicKeyPaths":["keys/rekor.pub","keys/gone.pub"]}]`, []string{`key file "keys/gone.pub" (` + at + `.rekorPublicKeyPaths[1]): open`}},
		{"fulcio CA not a certificate", `[{` + sig + `,"fulcio":{"caPath":"keys/p256.pub","oidcIssuer":"i","subjectEmail":"e"},"rekorPublicKeyPath":"keys/rekor.pub"}]`, []string{`key file "keys/p256.pub" (` + at + `.fulcio.caPath)`}},
		{"fulcio missing CA file", `[{` + sig + `,"fulcio":{"caPath":"keys/nope.pem","oidcIssuer":"i","subjectEmail":"e"},"rekorPublicKeyPath":"keys/rekor.pub"}]`, []string{`key file "keys/nope.pem" (` + at + `.fulcio.caPath): open`}},
		{"threshold same key twice", `[{"type":"sigstoreThreshold","threshold":2,"keys":[{"name":"ci","keyPath":"keys/p256.pub"},{"name":"qa","keyData":"$P256DATA"}]}]`, []string{`keys "ci" and "qa" are the same public key`}},
		{"threshold key missing file", `[{"type":"sigstoreThreshold","threshold":1,"keys":[{"name":"a","keyPath":"keys/gone.pub"}]}]`, []string{`key "a", file "keys/gone.pub" (` + at + `.keys[0].keyPath): open`}},
		{"threshold key unparseable", `[{"type":"sigstoreThreshold","threshold":1,"keys":[{"name":"a","keyPath":"keys/garbage.pub"}]}]`, []string{`key "a", file "keys/garbage.pub"`, "no PEM public key found"}},
		{"kbs key without reader", `[{` + sig + `,"keyPath":"kbs:///default/keys/ci"}]`, []string{`key file "kbs:///default/keys/ci"`, "kbs:// key paths need a KBS client"}},
		{"signedBy empty keyPaths", `[{"type":"signedBy","keyType":"GPGKeys","keyPaths":[]}]`, []string{"the requirement lists no keyring"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := f.load(`{"default":[{"type":"reject"}],"transports":{"docker":{
				"example.com":` + tc.reqs + `,
				"other.example.com":[{"type":"insecureAcceptAnything"}]}}}`)
			if err != nil {
				t.Fatalf("Load: %v (a bad key must not fail the whole policy)", err)
			}
			d := mustEvaluate(t, p, Image{Ref: ref(t, "example.com/app:1"), ManifestDigest: hash('a')})
			if d.Allowed {
				t.Fatal("allowed with a key that cannot be used")
			}
			reason := d.Requirements[0].Reason
			for _, w := range tc.want {
				if !strings.Contains(reason, w) {
					t.Errorf("reason %q\ndoes not contain %q", reason, w)
				}
			}
			if errdefs.ExitCode(d.Err()) != 3 {
				t.Errorf("exit code %d, want 3: %v", errdefs.ExitCode(d.Err()), d.Err())
			}
			if other := mustEvaluate(t, p, Image{Ref: ref(t, "other.example.com/app:1"), ManifestDigest: hash('a')}); !other.Allowed {
				t.Errorf("a scope that names no bad key is refused: %s", firstFailure(other))
			}
		})
	}
}

// TestKeyReads: keys go through LoadOptions.Read when a requirement that
// names them is evaluated, never at Load: relative paths joined to BaseDir,
// kbs:// paths passed as they are. A kbs:// key is read once per policy;
// a local file on every evaluation (a replaced key takes effect at once);
// a failed read is tried again next time.
func TestKeyReads(t *testing.T) {
	ci, qa := newKey(t, "p256"), newKey(t, "p384")
	var mu sync.Mutex
	files := map[string][]byte{
		"/etc/policy/keys/ci.pub": ci.pem,
		"/elsewhere/release.pub":  newKey(t, "ed25519").pem,
	}
	reads := map[string]int{}
	read := func(ctx context.Context, path string) ([]byte, error) {
		mu.Lock()
		defer mu.Unlock()
		reads[path]++
		data, ok := files[path]
		if !ok {
			return nil, errors.New("resource not found")
		}
		return data, nil
	}
	policy := `{"default":[{"type":"reject"}],"transports":{"docker":{
		"example.com/a":[{"type":"sigstoreThreshold","threshold":2,"keys":[
			{"name":"ci","keyPath":"keys/ci.pub"},
			{"name":"qa","keyPath":"kbs:///default/keys/qa"},
			{"name":"release","keyPath":"/elsewhere/release.pub"}]}],
		"example.com/b":[{"type":"sigstoreSigned","keyPath":"keys/never.pub"}],
		"example.com/c":[{"type":"insecureAcceptAnything"}]}}}`
	p, err := Load(context.Background(), []byte(policy), LoadOptions{BaseDir: "/etc/policy", Read: read})
	if err != nil {
		t.Fatal(err)
	}
	if len(reads) != 0 {
		t.Fatalf("Load read %v", reads)
	}
	ev := (&memEvidence{}).sign(t, ci, "example.com/a:1", hash('a')).sign(t, qa, "example.com/a:1", hash('a'))
	img := Image{Ref: ref(t, "example.com/a:1"), ManifestDigest: hash('a'), Evidence: ev}

	// The KBS does not have qa yet: refused, naming it.
	d := mustEvaluate(t, p, img)
	if d.Allowed || !strings.Contains(d.Requirements[0].Reason, `key "qa", file "kbs:///default/keys/qa"`) || !strings.Contains(d.Requirements[0].Reason, "resource not found") {
		t.Fatalf("without qa: allowed=%v, %s", d.Allowed, firstFailure(d))
	}
	mu.Lock()
	files["kbs:///default/keys/qa"] = qa.pem
	mu.Unlock()
	for i := 0; i < 2; i++ {
		if d := mustEvaluate(t, p, img); !d.Allowed {
			t.Fatalf("evaluation %d: %s", i, firstFailure(d))
		}
	}
	// Images of other scopes read nothing.
	mustEvaluate(t, p, Image{Ref: ref(t, "example.com/c:1"), ManifestDigest: hash('a')})

	// The first evaluation stopped at qa: a requirement is not decided on
	// part of its keys.
	want := map[string]int{"/etc/policy/keys/ci.pub": 3, "kbs:///default/keys/qa": 2, "/elsewhere/release.pub": 2}
	mu.Lock()
	for path, n := range want {
		if reads[path] != n {
			t.Errorf("%s read %d times, want %d (all reads: %v)", path, reads[path], n, reads)
		}
	}
	if len(reads) != len(want) {
		t.Errorf("reads %v, want exactly %v", reads, want)
	}
	// ci's key file is replaced by another key: its signature no longer
	// counts, at once.
	files["/etc/policy/keys/ci.pub"] = newKey(t, "p256").pem
	mu.Unlock()
	if d := mustEvaluate(t, p, img); d.Allowed {
		t.Fatal("allowed after ci's key was replaced")
	}
}

func TestKeyReadCanceled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	read := func(ctx context.Context, path string) ([]byte, error) {
		cancel()
		return nil, ctx.Err()
	}
	p, err := Load(ctx, []byte(docker("example.com", `[{"type":"sigstoreSigned","keyPath":"k.pub"}]`)), LoadOptions{Read: read})
	if err != nil {
		t.Fatal(err)
	}
	_, err = p.Evaluate(ctx, Image{Ref: ref(t, "example.com/app:1"), ManifestDigest: hash('a')})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v, want context.Canceled", err)
	}
	if _, err := Load(ctx, []byte(`{"default":[{"type":"reject"}]}`), LoadOptions{}); !errors.Is(err, context.Canceled) {
		t.Fatalf("Load with a canceled context: %v", err)
	}
}
