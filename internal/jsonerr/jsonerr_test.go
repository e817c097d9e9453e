package jsonerr

import (
	"encoding/json"
	"testing"
)

func TestDescribe(t *testing.T) {
	for _, tc := range []struct {
		name, data, want string
	}{
		{"trailing comma", "{\n  \"a\": 1,\n}\n", "line 3, column 1: invalid character '}' looking for beginning of object key string"},
		{"missing colon", "{\"a\" 1}", "line 1, column 6: invalid character '1' after object key"},
		{"cut short", "{\n  \"a\": [1,", "line 2, column 11: unexpected end of JSON input"},
		{"wrong type", "{\n  \"n\": \"three\"\n}", `line 2, column 14: "n": want a number, not a JSON string`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var v struct {
				A any `json:"a"`
				N int `json:"n"`
			}
			err := json.Unmarshal([]byte(tc.data), &v)
			if err == nil {
				t.Fatal("no error")
			}
			if got := Describe([]byte(tc.data), err).Error(); got != tc.want {
				t.Errorf("Describe = %q\nwant       %q", got, tc.want)
			}
		})
	}
}
