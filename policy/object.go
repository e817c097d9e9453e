package policy

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"strconv"

	"github.com/guest-puller/guest-puller/internal/errdefs"
)

// configError is a Load failure at one place of the policy file. It wraps
// errdefs.ErrInvalidConfig and the underlying error (fs.ErrNotExist, ...).
type configError struct {
	at  string // where in the file: transports.docker["example.com"][0].keyPath
	err error
}

func (e *configError) Error() string {
	if e.at == "" {
		return "policy: " + e.err.Error()
	}
	return "policy: " + e.at + ": " + e.err.Error()
}

func (e *configError) Unwrap() []error { return []error{errdefs.ErrInvalidConfig, e.err} }

func invalidf(at, format string, args ...any) error {
	return &configError{at: at, err: fmt.Errorf(format, args...)}
}

func invalid(at string, err error) error {
	return &configError{at: at, err: err}
}

// object is one JSON object of the policy file, read strictly: duplicate
// members are refused when it is read, and members nobody asked for are
// refused by done. containers/image refuses the same things; a typo in a
// security policy must not silently widen it.
type object struct {
	at      string
	names   []string // in file order, for a stable "unknown field" error
	members map[string]json.RawMessage
	used    map[string]bool
}

// readObject parses data, which must be one JSON object and nothing after
// it.
func readObject(data []byte, at string) (*object, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	tok, err := dec.Token()
	if err != nil {
		return nil, invalid(at, syntaxError(err))
	}
	if tok != json.Delim('{') {
		return nil, invalidf(at, "must be a JSON object, not %s", kindOf(data))
	}
	o := &object{at: at, members: map[string]json.RawMessage{}, used: map[string]bool{}}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, invalid(at, syntaxError(err))
		}
		name, ok := tok.(string)
		if !ok { // the decoder refuses non-string keys; kept for safety
			return nil, invalidf(at, "member name expected, got %v", tok)
		}
		if _, dup := o.members[name]; dup {
			return nil, invalidf(at, "duplicate field %q", name)
		}
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return nil, invalid(o.field(name), syntaxError(err))
		}
		o.names = append(o.names, name)
		o.members[name] = raw
	}
	if _, err := dec.Token(); err != nil { // the closing brace
		return nil, invalid(at, syntaxError(err))
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, invalidf(at, "unexpected data after the JSON object")
	}
	return o, nil
}

func syntaxError(err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return errors.New("unexpected end of JSON input")
	}
	var se *json.SyntaxError
	if errors.As(err, &se) {
		return fmt.Errorf("invalid JSON at byte %d: %s", se.Offset, se.Error())
	}
	return err
}

// field is the location of member name, for error messages.
func (o *object) field(name string) string {
	if o.at == "" {
		return name
	}
	return o.at + "." + name
}

func (o *object) has(name string) bool {
	_, ok := o.members[name]
	return ok
}

// raw returns member name, marking it used; a JSON null counts as a wrong
// type, not as absent.
func (o *object) raw(name string) (json.RawMessage, bool) {
	raw, ok := o.members[name]
	if ok {
		o.used[name] = true
	}
	return raw, ok
}

// done refuses members that no caller asked for.
func (o *object) done() error {
	for _, name := range o.names {
		if !o.used[name] {
			return invalidf(o.at, "unknown field %q", name)
		}
	}
	return nil
}

// str reads a string member; an empty string is refused like a missing one
// would be, since every string of the policy format names something.
func (o *object) str(name string) (string, bool, error) {
	raw, ok := o.raw(name)
	if !ok {
		return "", false, nil
	}
	s, err := decodeString(raw, o.field(name))
	return s, true, err
}

func (o *object) requiredStr(name string) (string, error) {
	s, ok, err := o.str(name)
	if err == nil && !ok {
		err = invalidf(o.at, "missing field %q", name)
	}
	return s, err
}

// strs reads a non-empty array of non-empty strings.
func (o *object) strs(name string) ([]string, bool, error) {
	raws, ok, err := o.array(name)
	if !ok || err != nil {
		return nil, ok, err
	}
	out := make([]string, len(raws))
	for i, raw := range raws {
		if out[i], err = decodeString(raw, fmt.Sprintf("%s[%d]", o.field(name), i)); err != nil {
			return nil, true, err
		}
	}
	return out, true, nil
}

// bytes reads a base64 string (how containers/image's keyData fields are
// written).
func (o *object) bytes(name string) ([]byte, bool, error) {
	raw, ok := o.raw(name)
	if !ok {
		return nil, false, nil
	}
	b, err := decodeBase64(raw, o.field(name))
	return b, true, err
}

// bytesList reads a non-empty array of base64 strings.
func (o *object) bytesList(name string) ([][]byte, bool, error) {
	raws, ok, err := o.array(name)
	if !ok || err != nil {
		return nil, ok, err
	}
	out := make([][]byte, len(raws))
	for i, raw := range raws {
		if out[i], err = decodeBase64(raw, fmt.Sprintf("%s[%d]", o.field(name), i)); err != nil {
			return nil, true, err
		}
	}
	return out, true, nil
}

// array reads a non-empty JSON array member, returning its elements.
func (o *object) array(name string) ([]json.RawMessage, bool, error) {
	raw, ok := o.raw(name)
	if !ok {
		return nil, false, nil
	}
	elems, err := decodeArray(raw, o.field(name))
	return elems, true, err
}

// integer reads a JSON number that is a whole number.
func (o *object) integer(name string) (int, bool, error) {
	raw, ok := o.raw(name)
	if !ok {
		return 0, false, nil
	}
	at := o.field(name)
	if k := kindOf(raw); k != "a number" {
		return 0, true, invalidf(at, "must be an integer, not %s", k)
	}
	n, err := strconv.ParseInt(string(raw), 10, 64)
	if err != nil || n > math.MaxInt32 || n < math.MinInt32 {
		return 0, true, invalidf(at, "must be an integer, not %s", raw)
	}
	return int(n), true, nil
}

// obj reads an object member.
func (o *object) obj(name string) (*object, bool, error) {
	raw, ok := o.raw(name)
	if !ok {
		return nil, false, nil
	}
	sub, err := readObject(raw, o.field(name))
	return sub, true, err
}

func decodeString(raw json.RawMessage, at string) (string, error) {
	if k := kindOf(raw); k != "a string" {
		return "", invalidf(at, "must be a string, not %s", k)
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return "", invalid(at, err)
	}
	if s == "" {
		return "", invalidf(at, "must not be empty")
	}
	return s, nil
}

func decodeBase64(raw json.RawMessage, at string) ([]byte, error) {
	if k := kindOf(raw); k != "a string" {
		return nil, invalidf(at, "must be a base64 string, not %s", k)
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return nil, invalid(at, err)
	}
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return nil, invalidf(at, "invalid base64: %v", err)
	}
	if len(b) == 0 {
		return nil, invalidf(at, "must not be empty")
	}
	return b, nil
}

func decodeArray(raw json.RawMessage, at string) ([]json.RawMessage, error) {
	if k := kindOf(raw); k != "an array" {
		return nil, invalidf(at, "must be an array, not %s", k)
	}
	var elems []json.RawMessage
	if err := json.Unmarshal(raw, &elems); err != nil {
		return nil, invalid(at, err)
	}
	if len(elems) == 0 {
		return nil, invalidf(at, "must not be empty")
	}
	return elems, nil
}

// kindOf names the JSON type of a syntactically valid value.
func kindOf(raw []byte) string {
	raw = bytes.TrimLeft(raw, " \t\r\n")
	if len(raw) == 0 {
		return "nothing"
	}
	switch raw[0] {
	case '{':
		return "an object"
	case '[':
		return "an array"
	case '"':
		return "a string"
	case 't', 'f':
		return "a boolean"
	case 'n':
		return "null"
	default:
		return "a number"
	}
}
