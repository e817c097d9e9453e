// Package jsonerr turns encoding/json's errors, which count bytes, into
// the line and column a person editing the file looks for.
package jsonerr

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
)

// Describe returns err, an error of decoding data, with the position of a
// syntax or type error as "line L, column C". Other errors are returned as
// they are.
func Describe(data []byte, err error) error {
	var se *json.SyntaxError
	if errors.As(err, &se) {
		// Offset is the number of bytes read when the error was found: the
		// offending byte is the last of them, or, when the input ended too
		// soon, the end itself.
		at := se.Offset - 1
		if se.Offset >= int64(len(data)) {
			at = int64(len(data))
		}
		line, col := Position(data, at)
		return fmt.Errorf("line %d, column %d: %s", line, col, se.Error())
	}
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		// Offset is just after the value.
		line, col := Position(data, te.Offset-1)
		field := ""
		if te.Field != "" {
			field = fmt.Sprintf("%q: ", te.Field)
		}
		return fmt.Errorf("line %d, column %d: %swant %s, not a JSON %s", line, col, field, jsonKind(te.Type), te.Value)
	}
	if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
		line, col := Position(data, int64(len(data)))
		return fmt.Errorf("line %d, column %d: unexpected end of JSON input", line, col)
	}
	return err
}

// jsonKind names what JSON value t takes.
func jsonKind(t reflect.Type) string {
	switch t.Kind() {
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "true or false"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.Slice, reflect.Array:
		return "a list"
	case reflect.Map, reflect.Struct:
		return "an object"
	}
	return "a " + t.String()
}

// Position is the 1-based line and column (in bytes) of offset in data.
func Position(data []byte, offset int64) (line, col int) {
	offset = max(0, min(offset, int64(len(data))))
	before := data[:offset]
	line = bytes.Count(before, []byte("\n")) + 1
	col = int(offset) - (bytes.LastIndexByte(before, '\n') + 1) + 1
	return line, col
}
