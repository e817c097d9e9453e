package policy

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
)

// Requirement type names as they appear in the policy file and in
// RequirementResult.Type.
const (
	TypeInsecureAcceptAnything = "insecureAcceptAnything"
	TypeReject                 = "reject"
	TypeSignedBy               = "signedBy"
	TypeSignedBaseLayer        = "signedBaseLayer"
	TypeSigstoreSigned         = "sigstoreSigned"
	TypeEncrypted              = "encrypted"
	TypeSigstoreThreshold      = "sigstoreThreshold"
)

// requirement is one element of a scope's requirement list.
type requirement interface {
	// evaluate decides the requirement for one image. It reports an
	// Evidence failure as an unmet requirement, never as an error.
	evaluate(ctx context.Context, ev *evaluation) (RequirementResult, []SignatureResult)
}

type (
	acceptAnything struct{}
	reject         struct{}

	// signedBy is a GPG simple-signing requirement. keyType is one of
	// containers/image's four; only GPGKeys is implemented (as there).
	signedBy struct {
		keyType  string
		keyrings []keySource
		identity identityMatcher
	}

	// signedBaseLayer parses as in containers/image, which never
	// implemented it: it always refuses.
	signedBaseLayer struct{}

	// sigstoreSigned accepts an image signed by any one of its signers:
	// one per key, or one keyless identity (fulcio or pki).
	sigstoreSigned struct {
		signers  []signerSpec
		identity identityMatcher
	}

	// encrypted holds when every layer (any: at least one layer) has an
	// ocicrypt "+encrypted" media type.
	encrypted struct{ any bool }

	// sigstoreThreshold holds when at least threshold of its signers (keys
	// or keyless identities, each named) signed the image, each signing
	// key counted once.
	sigstoreThreshold struct {
		threshold int
		signers   []signerSpec
		identity  identityMatcher
	}
)

// parseRequirements reads a non-empty requirement list.
func parseRequirements(raw json.RawMessage, at string) ([]requirement, error) {
	elems, err := decodeArray(raw, at)
	if err != nil {
		return nil, err
	}
	reqs := make([]requirement, len(elems))
	for i, elem := range elems {
		if reqs[i], err = parseRequirement(elem, fmt.Sprintf("%s[%d]", at, i)); err != nil {
			return nil, err
		}
	}
	return reqs, nil
}

func parseRequirement(raw json.RawMessage, at string) (requirement, error) {
	o, err := readObject(raw, at)
	if err != nil {
		return nil, err
	}
	typ, err := o.requiredStr("type")
	if err != nil {
		return nil, err
	}
	var r requirement
	switch typ {
	case TypeInsecureAcceptAnything:
		r = acceptAnything{}
	case TypeReject:
		r = reject{}
	case TypeSignedBy:
		r, err = parseSignedBy(o)
	case TypeSignedBaseLayer:
		r, err = parseSignedBaseLayer(o)
	case TypeSigstoreSigned:
		r, err = parseSigstoreSigned(o)
	case TypeEncrypted:
		r, err = parseEncrypted(o)
	case TypeSigstoreThreshold:
		r, err = parseThreshold(o)
	default:
		return nil, invalidf(o.field("type"), "unknown requirement type %q", typ)
	}
	if err != nil {
		return nil, err
	}
	if err := o.done(); err != nil {
		return nil, err
	}
	return r, nil
}

// identityField reads the optional signedIdentity member.
func identityField(o *object) (identityMatcher, error) {
	raw, ok := o.raw("signedIdentity")
	if !ok {
		return matchRepoDigestOrExact{}, nil
	}
	return parseIdentity(raw, o.field("signedIdentity"))
}

// exactlyOne returns which of names o has, failing unless it has exactly
// one of them.
func exactlyOne(o *object, names ...string) (string, error) {
	var got []string
	for _, n := range names {
		if o.has(n) {
			got = append(got, n)
		}
	}
	if len(got) != 1 {
		return "", invalidf(o.at, "exactly one of %s must be specified, found %d", strings.Join(names, ", "), len(got))
	}
	return got[0], nil
}

// keySources returns the keys named by field of o, which is a path
// (keyPath), a list of paths (keyPaths), inline base64 (keyData) or a list
// of it (keyDatas), or the rekorPublicKey… forms of the same. Nothing is
// read: see keySource.
func keySources(o *object, field string) ([]keySource, error) {
	at := o.field(field)
	switch field {
	case "keyPath", "rekorPublicKeyPath":
		p, _, err := o.str(field)
		if err != nil {
			return nil, err
		}
		return []keySource{{name: p, at: at, path: p}}, nil
	case "keyPaths", "rekorPublicKeyPaths":
		paths, _, err := o.strs(field)
		if err != nil {
			return nil, err
		}
		srcs := make([]keySource, len(paths))
		for i, p := range paths {
			srcs[i] = keySource{name: p, at: fmt.Sprintf("%s[%d]", at, i), path: p}
		}
		return srcs, nil
	case "keyData", "rekorPublicKeyData":
		b, _, err := o.bytes(field)
		if err != nil {
			return nil, err
		}
		return []keySource{{name: "keyData[0]", at: at, data: b}}, nil
	case "keyDatas", "rekorPublicKeyDatas":
		datas, _, err := o.bytesList(field)
		if err != nil {
			return nil, err
		}
		srcs := make([]keySource, len(datas))
		for i, b := range datas {
			srcs[i] = keySource{name: fmt.Sprintf("keyData[%d]", i), at: fmt.Sprintf("%s[%d]", at, i), data: b}
		}
		return srcs, nil
	}
	return nil, invalidf(at, "not a key field") // unreachable: callers pass the names above
}

func parseSignedBy(o *object) (requirement, error) {
	keyType, err := o.requiredStr("keyType")
	if err != nil {
		return nil, err
	}
	switch keyType {
	case "GPGKeys", "signedByGPGKeys", "X509Certificates", "signedByX509CAs":
	default:
		return nil, invalidf(o.field("keyType"), "unknown keyType %q", keyType)
	}
	field, err := exactlyOne(o, "keyPath", "keyPaths", "keyData")
	if err != nil {
		return nil, err
	}
	r := &signedBy{keyType: keyType}
	if raw, _ := o.raw(field); field == "keyPaths" && isEmptyArray(raw) {
		// containers/image loads an empty signedBy keyPaths and refuses
		// the scope's images at evaluation; so does keyReader.keyrings.
	} else if r.keyrings, err = keySources(o, field); err != nil {
		return nil, err
	}
	if r.identity, err = identityField(o); err != nil {
		return nil, err
	}
	return r, nil
}

func isEmptyArray(raw json.RawMessage) bool {
	var elems []json.RawMessage
	return kindOf(raw) == "an array" && json.Unmarshal(raw, &elems) == nil && len(elems) == 0
}

func parseSignedBaseLayer(o *object) (requirement, error) {
	raw, ok := o.raw("baseLayerIdentity")
	if !ok {
		return nil, invalidf(o.at, "missing field %q", "baseLayerIdentity")
	}
	if _, err := parseIdentity(raw, o.field("baseLayerIdentity")); err != nil {
		return nil, err
	}
	return signedBaseLayer{}, nil
}

var rekorFields = []string{"rekorPublicKeyPath", "rekorPublicKeyPaths", "rekorPublicKeyData", "rekorPublicKeyDatas"}

func parseSigstoreSigned(o *object) (requirement, error) {
	r := &sigstoreSigned{}
	var err error
	if r.signers, err = parseSigner(o, "keyPath", "keyPaths", "keyData", "keyDatas"); err != nil {
		return nil, err
	}
	if r.identity, err = identityField(o); err != nil {
		return nil, err
	}
	return r, nil
}

// caField reads one CA bundle given as a path or inline base64 PEM.
func caField(o *object, pathField, dataField string, required bool) ([]keySource, error) {
	hasPath, hasData := o.has(pathField), o.has(dataField)
	switch {
	case hasPath && hasData:
		return nil, invalidf(o.at, "%s and %s cannot be used together", pathField, dataField)
	case !hasPath && !hasData:
		if required {
			return nil, invalidf(o.at, "one of %s and %s must be specified", pathField, dataField)
		}
		return nil, nil
	case hasPath:
		p, _, err := o.str(pathField)
		if err != nil {
			return nil, err
		}
		return []keySource{{name: p, at: o.field(pathField), path: p}}, nil
	default:
		b, _, err := o.bytes(dataField)
		if err != nil {
			return nil, err
		}
		return []keySource{{name: dataField, at: o.field(dataField), data: b}}, nil
	}
}

func parseEncrypted(o *object) (requirement, error) {
	layers, ok, err := o.str("layers")
	if err != nil {
		return nil, err
	}
	switch {
	case !ok, layers == "all":
		return encrypted{}, nil
	case layers == "any":
		return encrypted{any: true}, nil
	default:
		return nil, invalidf(o.field("layers"), `must be "all" or "any", not %q`, layers)
	}
}

func parseThreshold(o *object) (requirement, error) {
	n, ok, err := o.integer("threshold")
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, invalidf(o.at, "missing field %q", "threshold")
	}
	raw, ok := o.raw("keys")
	if !ok {
		return nil, invalidf(o.at, "missing field %q", "keys")
	}
	elems, err := decodeArray(raw, o.field("keys"))
	if err != nil {
		return nil, err
	}
	if n < 1 || n > len(elems) {
		return nil, invalidf(o.field("threshold"), "must be between 1 and the number of keys (%d), not %d", len(elems), n)
	}
	r := &sigstoreThreshold{threshold: n}
	names := map[string]bool{}
	// A keyless signer is its identity: two entries naming the same one
	// would let one person, signing twice (each keyless signature has a
	// key of its own), count twice. Evaluation refuses the same public key
	// under two names; the same identity is refused here.
	identities := map[[3]string]string{}
	for i, elem := range elems {
		at := fmt.Sprintf("%s[%d]", o.field("keys"), i)
		spec, err := parseThresholdKey(elem, at)
		if err != nil {
			return nil, err
		}
		if names[spec.name] {
			return nil, invalidf(at+".name", "duplicate key name %q", spec.name)
		}
		names[spec.name] = true
		if spec.keyless() {
			id := [3]string{spec.issuer, spec.email, spec.hostname}
			if other, dup := identities[id]; dup {
				return nil, invalidf(at, "keys %q and %q name the same identity (%s): each signer must count once", other, spec.name, spec.identity())
			}
			identities[id] = spec.name
		}
		r.signers = append(r.signers, spec)
	}
	if r.identity, err = identityField(o); err != nil {
		return nil, err
	}
	return r, nil
}

// parseThresholdKey reads one named signer of a threshold: {"name",
// "keyPath"|"keyData"} for a public key, or {"name", "fulcio": {…},
// "rekorPublicKey…"} or {"name", "pki": {…}} for a keyless identity; a
// public key may have Rekor keys too.
func parseThresholdKey(raw json.RawMessage, at string) (signerSpec, error) {
	o, err := readObject(raw, at)
	if err != nil {
		return signerSpec{}, err
	}
	name, err := o.requiredStr("name")
	if err != nil {
		return signerSpec{}, err
	}
	specs, err := parseSigner(o, "keyPath", "keyData")
	if err != nil {
		return signerSpec{}, err
	}
	if err := o.done(); err != nil {
		return signerSpec{}, err
	}
	spec := specs[0]
	spec.name = name
	if spec.key != nil {
		// A key's errors name it by the threshold's name for it.
		k := *spec.key
		k.name = name
		spec.key = &k
	}
	return spec, nil
}
