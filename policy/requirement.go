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
		keyrings []gpgKeyring
		identity identityMatcher
	}

	// signedBaseLayer parses as in containers/image, which never
	// implemented it: it always refuses.
	signedBaseLayer struct{}

	// sigstoreSigned accepts an image signed by any one of keys. keyless
	// is set for fulcio, pki or rekor configurations, which parse but are
	// refused at evaluation: their checks need data (certificate chains,
	// transparency-log entries) that Evidence does not carry.
	sigstoreSigned struct {
		keys     []publicKey
		keyless  string
		identity identityMatcher
	}

	// encrypted holds when every layer (any: at least one layer) has an
	// ocicrypt "+encrypted" media type.
	encrypted struct{ any bool }

	// sigstoreThreshold holds when at least threshold distinct keys of
	// keys signed the image.
	sigstoreThreshold struct {
		threshold int
		keys      []publicKey
		identity  identityMatcher
	}
)

// parseRequirements reads a non-empty requirement list.
func parseRequirements(l *loader, raw json.RawMessage, at string) ([]requirement, error) {
	elems, err := decodeArray(raw, at)
	if err != nil {
		return nil, err
	}
	reqs := make([]requirement, len(elems))
	for i, elem := range elems {
		if reqs[i], err = parseRequirement(l, elem, fmt.Sprintf("%s[%d]", at, i)); err != nil {
			return nil, err
		}
	}
	return reqs, nil
}

func parseRequirement(l *loader, raw json.RawMessage, at string) (requirement, error) {
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
		r, err = parseSignedBy(l, o)
	case TypeSignedBaseLayer:
		r, err = parseSignedBaseLayer(o)
	case TypeSigstoreSigned:
		r, err = parseSigstoreSigned(l, o)
	case TypeEncrypted:
		r, err = parseEncrypted(o)
	case TypeSigstoreThreshold:
		r, err = parseThreshold(l, o)
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

// keyFiles reads the key material named by field of o, which is a path
// (keyPath), a list of paths (keyPaths), inline base64 (keyData) or a list
// of it (keyDatas). It returns each item with the name a SignatureResult
// uses for it.
func keyFiles(l *loader, o *object, field string) (names []string, datas [][]byte, ats []string, err error) {
	at := o.field(field)
	var paths []string
	switch field {
	case "keyPath", "rekorPublicKeyPath":
		var p string
		p, _, err = o.str(field)
		paths = []string{p}
		ats = []string{at}
	case "keyPaths", "rekorPublicKeyPaths":
		paths, _, err = o.strs(field)
		for i := range paths {
			ats = append(ats, fmt.Sprintf("%s[%d]", at, i))
		}
	case "keyData", "rekorPublicKeyData":
		var b []byte
		b, _, err = o.bytes(field)
		datas = [][]byte{b}
		ats = []string{at}
	case "keyDatas", "rekorPublicKeyDatas":
		datas, _, err = o.bytesList(field)
		for i := range datas {
			ats = append(ats, fmt.Sprintf("%s[%d]", at, i))
		}
	}
	if err != nil {
		return nil, nil, nil, err
	}
	if paths != nil {
		for i, p := range paths {
			data, err := l.file(p)
			if err != nil {
				return nil, nil, nil, invalidf(ats[i], "%q: %w", p, err)
			}
			names = append(names, p)
			datas = append(datas, data)
		}
		return names, datas, ats, nil
	}
	for i := range datas {
		names = append(names, fmt.Sprintf("keyData[%d]", i))
	}
	return names, datas, ats, nil
}

func parseSignedBy(l *loader, o *object) (requirement, error) {
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
	names, datas, ats, err := keyFiles(l, o, field)
	if err != nil {
		return nil, err
	}
	r := &signedBy{keyType: keyType}
	for i, data := range datas {
		kr := gpgKeyring{name: names[i], data: data}
		// Keys of the unimplemented types are read (so they cannot go
		// missing later) but not parsed: evaluation refuses them anyway.
		if keyType == "GPGKeys" {
			if kr.fingerprints, err = parseKeyring(data); err != nil {
				return nil, invalid(ats[i], err)
			}
		}
		r.keyrings = append(r.keyrings, kr)
	}
	if r.identity, err = identityField(o); err != nil {
		return nil, err
	}
	return r, nil
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

func parseSigstoreSigned(l *loader, o *object) (requirement, error) {
	field, err := exactlyOne(o, "keyPath", "keyPaths", "keyData", "keyDatas", "fulcio", "pki")
	if err != nil {
		return nil, err
	}
	r := &sigstoreSigned{}
	switch field {
	case "fulcio":
		if err := parseFulcio(l, o); err != nil {
			return nil, err
		}
		r.keyless = "fulcio"
	case "pki":
		if err := parsePKI(l, o); err != nil {
			return nil, err
		}
		r.keyless = "pki"
	default:
		names, datas, ats, err := keyFiles(l, o, field)
		if err != nil {
			return nil, err
		}
		for i, data := range datas {
			pub, id, err := parsePublicKey(data)
			if err != nil {
				return nil, invalid(ats[i], err)
			}
			r.keys = append(r.keys, publicKey{name: names[i], id: id, pub: pub})
		}
	}

	rekor := []string{"rekorPublicKeyPath", "rekorPublicKeyPaths", "rekorPublicKeyData", "rekorPublicKeyDatas"}
	var rekorField string
	for _, f := range rekor {
		if o.has(f) {
			if rekorField != "" {
				return nil, invalidf(o.at, "at most one of %s may be specified", strings.Join(rekor, ", "))
			}
			rekorField = f
		}
	}
	if field == "fulcio" && rekorField == "" {
		return nil, invalidf(o.at, "fulcio needs one of %s", strings.Join(rekor, ", "))
	}
	if rekorField != "" {
		_, datas, ats, err := keyFiles(l, o, rekorField)
		if err != nil {
			return nil, err
		}
		for i, data := range datas {
			if _, _, err := parsePublicKey(data); err != nil {
				return nil, invalid(ats[i], err)
			}
		}
		if r.keyless == "" {
			r.keyless = "rekor"
		}
	}
	if r.identity, err = identityField(o); err != nil {
		return nil, err
	}
	return r, nil
}

// caField reads one CA bundle given as a path or inline base64 PEM.
func caField(l *loader, o *object, pathField, dataField string, required bool) error {
	hasPath, hasData := o.has(pathField), o.has(dataField)
	switch {
	case hasPath && hasData:
		return invalidf(o.at, "%s and %s cannot be used together", pathField, dataField)
	case !hasPath && !hasData:
		if required {
			return invalidf(o.at, "one of %s and %s must be specified", pathField, dataField)
		}
		return nil
	}
	var (
		data []byte
		err  error
		at   string
	)
	if hasPath {
		at = o.field(pathField)
		var p string
		if p, _, err = o.str(pathField); err != nil {
			return err
		}
		if data, err = l.file(p); err != nil {
			return invalidf(at, "%q: %w", p, err)
		}
	} else {
		at = o.field(dataField)
		if data, _, err = o.bytes(dataField); err != nil {
			return err
		}
	}
	if _, err := parseCertificates(data); err != nil {
		return invalid(at, err)
	}
	return nil
}

func parseFulcio(l *loader, parent *object) error {
	o, _, err := parent.obj("fulcio")
	if err != nil {
		return err
	}
	if err := caField(l, o, "caPath", "caData", true); err != nil {
		return err
	}
	for _, f := range []string{"oidcIssuer", "subjectEmail"} {
		if _, err := o.requiredStr(f); err != nil {
			return err
		}
	}
	return o.done()
}

func parsePKI(l *loader, parent *object) error {
	o, _, err := parent.obj("pki")
	if err != nil {
		return err
	}
	if err := caField(l, o, "caRootsPath", "caRootsData", true); err != nil {
		return err
	}
	if err := caField(l, o, "caIntermediatesPath", "caIntermediatesData", false); err != nil {
		return err
	}
	_, hasEmail, err := o.str("subjectEmail")
	if err != nil {
		return err
	}
	_, hasHost, err := o.str("subjectHostname")
	if err != nil {
		return err
	}
	if !hasEmail && !hasHost {
		return invalidf(o.at, "at least one of subjectEmail and subjectHostname must be specified")
	}
	return o.done()
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

func parseThreshold(l *loader, o *object) (requirement, error) {
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
	ids := map[string]string{}
	for i, elem := range elems {
		k, err := parseThresholdKey(l, elem, fmt.Sprintf("%s[%d]", o.field("keys"), i))
		if err != nil {
			return nil, err
		}
		if names[k.name] {
			return nil, invalidf(fmt.Sprintf("%s[%d].name", o.field("keys"), i), "duplicate key name %q", k.name)
		}
		// The same key under two names would count twice toward the
		// threshold.
		if other, dup := ids[k.id]; dup {
			return nil, invalidf(fmt.Sprintf("%s[%d]", o.field("keys"), i), "key %q is the same public key as %q", k.name, other)
		}
		names[k.name], ids[k.id] = true, k.name
		r.keys = append(r.keys, k)
	}
	if r.identity, err = identityField(o); err != nil {
		return nil, err
	}
	return r, nil
}

func parseThresholdKey(l *loader, raw json.RawMessage, at string) (publicKey, error) {
	o, err := readObject(raw, at)
	if err != nil {
		return publicKey{}, err
	}
	name, err := o.requiredStr("name")
	if err != nil {
		return publicKey{}, err
	}
	field, err := exactlyOne(o, "keyPath", "keyData")
	if err != nil {
		return publicKey{}, err
	}
	_, datas, ats, err := keyFiles(l, o, field)
	if err != nil {
		return publicKey{}, err
	}
	pub, id, err := parsePublicKey(datas[0])
	if err != nil {
		return publicKey{}, invalid(ats[0], err)
	}
	if err := o.done(); err != nil {
		return publicKey{}, err
	}
	return publicKey{name: name, id: id, pub: pub}, nil
}
