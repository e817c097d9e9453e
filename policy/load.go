package policy

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"

	"github.com/guest-puller/guest-puller/internal/jsonerr"
	"github.com/guest-puller/guest-puller/internal/refname"
)

func load(data []byte, opts LoadOptions) (*Policy, error) {
	if err := checkSyntax(data); err != nil {
		return nil, invalid("", err)
	}
	top, err := readObject(data, "")
	if err != nil {
		return nil, err
	}
	// Claim both members first, so that a misspelt top-level field is
	// reported before any key file is read.
	rawDefault, hasDefault := top.raw("default")
	rawTransports, hasTransports := top.raw("transports")
	if err := top.done(); err != nil {
		return nil, err
	}
	if !hasDefault {
		return nil, invalidf("", `missing field "default"`)
	}

	p := &Policy{docker: map[string][]requirement{}, scopeNames: map[string]string{}, keys: newKeyReader(opts)}
	if p.def, err = parseRequirements(rawDefault, "default"); err != nil {
		return nil, err
	}
	if !hasTransports {
		return p, nil
	}
	transports, err := readObject(rawTransports, "transports")
	if err != nil {
		return nil, err
	}
	for _, transport := range transports.names {
		validate, known := transportScopeValidators[transport]
		if !known {
			return nil, invalidf("transports", "unknown transport %q", transport)
		}
		raw, _ := transports.raw(transport)
		scopes, err := readObject(raw, transports.field(transport))
		if err != nil {
			return nil, err
		}
		for _, scope := range scopes.names {
			at := fmt.Sprintf("%s[%q]", scopes.at, scope)
			// Docker scopes are looked up with the image's registry host
			// spelled canonically (lower case, no :443): so is the scope.
			key := scope
			if transport == "docker" {
				key = refname.Scope(scope)
			}
			if scope != "" {
				if err := validate(key); err != nil {
					return nil, invalidf(at, "invalid %s scope: %w", transport, err)
				}
				if transport == "docker" && !dockerScopeCanMatch(key) {
					p.warnings = append(p.warnings, fmt.Sprintf("%s: no image can match this scope: docker scopes are fully expanded names (docker.io/library/busybox, registry.example.com:5000/ns) or *.domain", at))
				}
			}
			if first, dup := p.scopeNames[key]; dup && transport == "docker" {
				return nil, invalidf(at, "scope %q names the same registry and repository as %q", scope, first)
			}
			raw, _ := scopes.raw(scope)
			reqs, err := parseRequirements(raw, at)
			if err != nil {
				return nil, err
			}
			// Other transports are validated as containers/image
			// validates them, but guest-puller only pulls from
			// registries.
			if transport == "docker" {
				p.docker[key] = reqs
				p.scopeNames[key] = scope
			}
		}
	}
	return p, nil
}

// checkSyntax finds a syntax error in the file's JSON value and says where
// it is, by line and column: readObject reads members one by one, and
// would count bytes from the start of the member. What follows the value
// is readObject's to judge.
func checkSyntax(data []byte) error {
	var v json.RawMessage
	err := json.NewDecoder(bytes.NewReader(data)).Decode(&v)
	var se *json.SyntaxError
	if errors.As(err, &se) || errors.Is(err, io.ErrUnexpectedEOF) {
		return jsonerr.Describe(data, err)
	}
	return nil
}
