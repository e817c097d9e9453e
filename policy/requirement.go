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
func parseRequirements(ctx context.Context, l *loader, raw json.RawMessage, at string) ([]requirement, error) {
	elems, err := decodeArray(raw, at)
	if err != nil {
		return nil, err
	}
	reqs := make([]requirement, len(elems))
	for i, elem := range elems {
		if reqs[i], err = parseRequirement(ctx, l, elem, fmt.Sprintf("%s[%d]", at, i)); err != nil {
			return nil, err
		}
	}
	return reqs, nil
}

func parseRequirement(ctx context.Context, l *loader, raw json.RawMessage, at string) (requirement, error) {
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
		r, err = parseSignedBy(ctx, l, o)
	case TypeSignedBaseLayer:
		r, err = parseSignedBaseLayer(o)
	case TypeSigstoreSigned:
		r, err = parseSigstoreSigned(ctx, l, o)
	case TypeEncrypted:
		r, err = parseEncrypted(o)
	case TypeSigstoreThreshold:
		r, err = parseThreshold(ctx, l, o)
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

// keyItem is one key (or keyring, or CA bundle) a policy field names.
type keyItem struct {
	name string // for SignatureResult: the path as written, or keyData[i]
	at   string // for errors: where in the file
	data []byte
}

// invalid is a policy error about the key it holds, naming the file (or
// the keyData entry) as well as where the policy names it.
func (it keyItem) invalid(err error) error {
	return invalid(it.at, fmt.Errorf("%w in %q", err, it.name))
}

// keyItems reads the keys named by field of o, which is a path (keyPath),
// a list of paths (keyPaths), inline base64 (keyData) or a list of it
// (keyDatas), or the rekorPublicKey… forms of the same.
func keyItems(ctx context.Context, l *loader, o *object, field string) ([]keyItem, error) {
	at := o.field(field)
	switch field {
	case "keyPath", "rekorPublicKeyPath":
		p, _, err := o.str(field)
		if err != nil {
			return nil, err
		}
		data, err := l.file(ctx, p)
		if err != nil {
			return nil, invalidf(at, "%q: %w", p, err)
		}
		return []keyItem{{name: p, at: at, data: data}}, nil
	case "keyPaths", "rekorPublicKeyPaths":
		paths, _, err := o.strs(field)
		if err != nil {
			return nil, err
		}
		items := make([]keyItem, len(paths))
		for i, p := range paths {
			items[i] = keyItem{name: p, at: fmt.Sprintf("%s[%d]", at, i)}
			if items[i].data, err = l.file(ctx, p); err != nil {
				return nil, invalidf(items[i].at, "%q: %w", p, err)
			}
		}
		return items, nil
	case "keyData", "rekorPublicKeyData":
		b, _, err := o.bytes(field)
		if err != nil {
			return nil, err
		}
		return []keyItem{{name: "keyData[0]", at: at, data: b}}, nil
	case "keyDatas", "rekorPublicKeyDatas":
		datas, _, err := o.bytesList(field)
		if err != nil {
			return nil, err
		}
		items := make([]keyItem, len(datas))
		for i, b := range datas {
			items[i] = keyItem{name: fmt.Sprintf("keyData[%d]", i), at: fmt.Sprintf("%s[%d]", at, i), data: b}
		}
		return items, nil
	}
	return nil, invalidf(at, "not a key field") // unreachable: callers pass the names above
}

func parseSignedBy(ctx context.Context, l *loader, o *object) (requirement, error) {
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
	items, err := keyItems(ctx, l, o, field)
	if err != nil {
		return nil, err
	}
	r := &signedBy{keyType: keyType}
	for _, it := range items {
		kr := gpgKeyring{name: it.name, data: it.data}
		// Keys of the unimplemented types are read (so they cannot go
		// missing later) but not parsed: evaluation refuses them anyway.
		if keyType == "GPGKeys" {
			if kr.fingerprints, err = parseKeyring(it.data); err != nil {
				return nil, it.invalid(err)
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

func parseSigstoreSigned(ctx context.Context, l *loader, o *object) (requirement, error) {
	field, err := exactlyOne(o, "keyPath", "keyPaths", "keyData", "keyDatas", "fulcio", "pki")
	if err != nil {
		return nil, err
	}
	r := &sigstoreSigned{}
	switch field {
	case "fulcio":
		if err := parseFulcio(ctx, l, o); err != nil {
			return nil, err
		}
		r.keyless = "fulcio"
	case "pki":
		if err := parsePKI(ctx, l, o); err != nil {
			return nil, err
		}
		r.keyless = "pki"
	default:
		items, err := keyItems(ctx, l, o, field)
		if err != nil {
			return nil, err
		}
		for _, it := range items {
			pub, id, err := parsePublicKey(it.data)
			if err != nil {
				return nil, it.invalid(err)
			}
			r.keys = append(r.keys, publicKey{name: it.name, id: id, pub: pub})
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
		items, err := keyItems(ctx, l, o, rekorField)
		if err != nil {
			return nil, err
		}
		for _, it := range items {
			if _, _, err := parsePublicKey(it.data); err != nil {
				return nil, it.invalid(err)
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
func caField(ctx context.Context, l *loader, o *object, pathField, dataField string, required bool) error {
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
		if data, err = l.file(ctx, p); err != nil {
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

func parseFulcio(ctx context.Context, l *loader, parent *object) error {
	o, _, err := parent.obj("fulcio")
	if err != nil {
		return err
	}
	if err := caField(ctx, l, o, "caPath", "caData", true); err != nil {
		return err
	}
	for _, f := range []string{"oidcIssuer", "subjectEmail"} {
		if _, err := o.requiredStr(f); err != nil {
			return err
		}
	}
	return o.done()
}

func parsePKI(ctx context.Context, l *loader, parent *object) error {
	o, _, err := parent.obj("pki")
	if err != nil {
		return err
	}
	if err := caField(ctx, l, o, "caRootsPath", "caRootsData", true); err != nil {
		return err
	}
	if err := caField(ctx, l, o, "caIntermediatesPath", "caIntermediatesData", false); err != nil {
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

func parseThreshold(ctx context.Context, l *loader, o *object) (requirement, error) {
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
		k, err := parseThresholdKey(ctx, l, elem, fmt.Sprintf("%s[%d]", o.field("keys"), i))
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

func parseThresholdKey(ctx context.Context, l *loader, raw json.RawMessage, at string) (publicKey, error) {
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
	items, err := keyItems(ctx, l, o, field)
	if err != nil {
		return publicKey{}, err
	}
	pub, id, err := parsePublicKey(items[0].data)
	if err != nil {
		return publicKey{}, items[0].invalid(err)
	}
	if err := o.done(); err != nil {
		return publicKey{}, err
	}
	return publicKey{name: name, id: id, pub: pub}, nil
}
