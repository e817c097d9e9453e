package policy

import (
	"context"
	"crypto/ecdsa"
	"crypto/x509"
	"errors"
	"strconv"
	"strings"
)

// signerSpec is one signer a sigstore requirement trusts, as the policy
// names it: a public key, or a certificate identity (keyless: Fulcio's, or
// a private CA's with pki), and the Rekor keys its signatures' SETs must
// verify with. Nothing is read until the requirement is evaluated.
type signerSpec struct {
	name string // SignatureResult.KeyName: the threshold key's name, the key path, keyData[i], "fulcio" or "pki"
	at   string // where the policy names it

	key *keySource // a public key, or nil for keyless

	kind                    string      // "fulcio" or "pki" for keyless
	roots, intermediates    []keySource // keyless: CA certificates
	issuer, email, hostname string      // keyless: what the certificate must say

	rekor []keySource // Rekor public keys; required with fulcio, refused with pki
}

// signer is a signerSpec with its files read and parsed.
type signer struct {
	name  string
	id    string // the public key's ID (Claim.KeyID); "" for keyless
	trust SigstoreTrust
	// cache identifies the Evidence lookup: the same key with the same
	// Rekor keys is looked up once per evaluation.
	cache string
}

// keyless reports whether spec names a certificate identity.
func (s *signerSpec) keyless() bool { return s.key == nil }

// identity says which certificate identity a keyless spec names.
func (s *signerSpec) identity() string {
	var parts []string
	for _, f := range []struct{ name, v string }{{"oidcIssuer", s.issuer}, {"subjectEmail", s.email}, {"subjectHostname", s.hostname}} {
		if f.v != "" {
			parts = append(parts, f.name+" "+strconv.Quote(f.v))
		}
	}
	return strings.Join(parts, ", ")
}

// load reads and parses what spec names. Any file that cannot be read or
// parsed is an error naming it: a signer is not trusted on part of what
// the policy says about it.
func (r *keyReader) signer(ctx context.Context, spec signerSpec) (signer, error) {
	s := signer{name: spec.name}
	if spec.key != nil {
		keys, err := r.publicKeys(ctx, []keySource{*spec.key})
		if err != nil {
			return s, err
		}
		s.id, s.trust.PublicKey = keys[0].id, keys[0].pub
		s.cache = "key:" + s.id
	} else {
		var err error
		if s.trust.Roots, err = r.certificates(ctx, spec.roots); err != nil {
			return s, err
		}
		if s.trust.Intermediates, err = r.certificates(ctx, spec.intermediates); err != nil {
			return s, err
		}
		s.trust.OIDCIssuer, s.trust.SubjectEmail, s.trust.SubjectHostname = spec.issuer, spec.email, spec.hostname
		s.cache = "keyless:" + spec.at
	}
	rekor, err := r.rekorKeys(ctx, spec.rekor)
	if err != nil {
		return s, err
	}
	s.trust.RekorKeys = rekor
	if len(rekor) > 0 {
		// The Rekor keys are the requirement's: where the policy names
		// them tells them apart.
		s.cache += "|rekor@" + spec.rekor[0].at
	}
	return s, nil
}

// signers loads every spec, failing on the first that cannot be used.
func (r *keyReader) signers(ctx context.Context, specs []signerSpec) ([]signer, error) {
	out := make([]signer, 0, len(specs))
	for _, spec := range specs {
		s, err := r.signer(ctx, spec)
		if err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	return out, nil
}

// certificates reads and parses CA bundles (fulcio's CA, pki's roots and
// intermediates).
func (r *keyReader) certificates(ctx context.Context, srcs []keySource) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for _, src := range srcs {
		data, err := r.bytes(ctx, src)
		if err != nil {
			return nil, err
		}
		certs, err := parseCertificates(data)
		if err != nil {
			return nil, &keyError{src, err}
		}
		out = append(out, certs...)
	}
	return out, nil
}

// rekorKeys reads and parses Rekor public keys, which containers/image
// requires to be ECDSA.
func (r *keyReader) rekorKeys(ctx context.Context, srcs []keySource) ([]*ecdsa.PublicKey, error) {
	keys, err := r.publicKeys(ctx, srcs)
	if err != nil {
		return nil, err
	}
	out := make([]*ecdsa.PublicKey, len(keys))
	for i, k := range keys {
		ec, ok := k.pub.(*ecdsa.PublicKey)
		if !ok {
			return nil, &keyError{srcs[i], errors.New("a Rekor public key must be ECDSA")}
		}
		out[i] = ec
	}
	return out, nil
}

// parseSigner reads the signer fields of o: exactly one of the key fields
// allowed (keyPath, keyPaths, keyData, keyDatas, as given), fulcio or pki,
// and the rekorPublicKey… fields, with containers/image's rules: fulcio
// needs a Rekor key, pki takes none. It returns one spec per key, or one
// keyless spec.
func parseSigner(o *object, keyFields ...string) ([]signerSpec, error) {
	field, err := exactlyOne(o, append(keyFields, "fulcio", "pki")...)
	if err != nil {
		return nil, err
	}
	var rekorField string
	for _, f := range rekorFields {
		if o.has(f) {
			if rekorField != "" {
				return nil, invalidf(o.at, "at most one of %s may be specified", strings.Join(rekorFields, ", "))
			}
			rekorField = f
		}
	}
	switch {
	case field == "fulcio" && rekorField == "":
		return nil, invalidf(o.at, "fulcio needs one of %s", strings.Join(rekorFields, ", "))
	case field == "pki" && rekorField != "":
		return nil, invalidf(o.field(rekorField), "pki does not take a Rekor key (as in containers/image)")
	}
	var rekor []keySource
	if rekorField != "" {
		if rekor, err = keySources(o, rekorField); err != nil {
			return nil, err
		}
	}
	switch field {
	case "fulcio":
		spec, err := parseFulcio(o)
		if err != nil {
			return nil, err
		}
		spec.rekor = rekor
		return []signerSpec{spec}, nil
	case "pki":
		spec, err := parsePKI(o)
		if err != nil {
			return nil, err
		}
		return []signerSpec{spec}, nil
	}
	keys, err := keySources(o, field)
	if err != nil {
		return nil, err
	}
	specs := make([]signerSpec, len(keys))
	for i := range keys {
		specs[i] = signerSpec{name: keys[i].name, at: keys[i].at, key: &keys[i], rekor: rekor}
	}
	return specs, nil
}

func parseFulcio(parent *object) (signerSpec, error) {
	o, _, err := parent.obj("fulcio")
	if err != nil {
		return signerSpec{}, err
	}
	spec := signerSpec{name: "fulcio", at: o.at, kind: "fulcio"}
	if spec.roots, err = caField(o, "caPath", "caData", true); err != nil {
		return spec, err
	}
	if spec.issuer, err = o.requiredStr("oidcIssuer"); err != nil {
		return spec, err
	}
	if spec.email, err = o.requiredStr("subjectEmail"); err != nil {
		return spec, err
	}
	return spec, o.done()
}

func parsePKI(parent *object) (signerSpec, error) {
	o, _, err := parent.obj("pki")
	if err != nil {
		return signerSpec{}, err
	}
	spec := signerSpec{name: "pki", at: o.at, kind: "pki"}
	if spec.roots, err = caField(o, "caRootsPath", "caRootsData", true); err != nil {
		return spec, err
	}
	if spec.intermediates, err = caField(o, "caIntermediatesPath", "caIntermediatesData", false); err != nil {
		return spec, err
	}
	if spec.email, _, err = o.str("subjectEmail"); err != nil {
		return spec, err
	}
	if spec.hostname, _, err = o.str("subjectHostname"); err != nil {
		return spec, err
	}
	if spec.email == "" && spec.hostname == "" {
		return spec, invalidf(o.at, "at least one of subjectEmail and subjectHostname must be specified")
	}
	return spec, o.done()
}
