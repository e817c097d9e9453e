package untrusted

import (
	"errors"
	"fmt"
	"io/fs"
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"
)

func TestEscape(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"plain text, with spaces", "plain text, with spaces"},
		{`back\slash "quoted"`, `back\slash "quoted"`},
		{"héllo wörld ✓", "héllo wörld ✓"},
		{"red \x1b[31mALERT\x1b[0m", `red \x1b[31mALERT\x1b[0m`},
		{"bell\a", `bell\x07`},
		{"two\nlines\r\n", `two\nlines\r\n`},
		{"tab\there", `tab\there`},
		{"del\x7f", `del\x7f`},
		{"c1 \u009b2J", `c1 \u009b2J`},
		{"bidi \u202egnp.exe", `bidi \u202egnp.exe`},
		{"bad utf-8 \xff\xfe", `bad utf-8 \xff\xfe`},
		{"real replacement char \ufffd", "real replacement char \ufffd"},
		{"nul\x00", `nul\x00`},
		{"tag \U000e0041", `tag \U000e0041`},
	} {
		if got := Escape(tc.in); got != tc.want {
			t.Errorf("Escape(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestText(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"manifest unknown", "manifest unknown"},
		{"first line\nsecond line\r\n", "first line second line"},
		{"Caused by:\n\t0: policy denied", "Caused by: 0: policy denied"},
		{"\x1b]0;owned\a title", `\x1b]0;owned\x07 title`},
	} {
		if got := Text(tc.in); got != tc.want {
			t.Errorf("Text(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestQuote(t *testing.T) {
	if got, want := Quote("a/b\x1b"), `"a/b\x1b"`; got != want {
		t.Errorf("Quote = %s, want %s", got, want)
	}
	long := "usr/" + strings.Repeat("a", 5000) + "/evil.py"
	got := Quote(long)
	if !strings.HasPrefix(got, `"usr/aaa`) || !strings.HasSuffix(got, `/evil.py" (5012 bytes)`) || !strings.Contains(got, "…") {
		t.Errorf("Quote(long) = %s", got)
	}
	if len(got) > MaxName+40 {
		t.Errorf("Quote(long) is %d bytes, want about %d", len(got), MaxName)
	}
}

func TestTextBounds(t *testing.T) {
	for _, in := range []string{
		strings.Repeat("x", 1<<20),
		strings.Repeat("\x1b", 1<<20),   // every byte escapes to 4
		strings.Repeat("€", 1<<18),      // 3-byte runes: cuts land mid-rune
		strings.Repeat("\u202e", 1<<18), // 3 bytes each, escaped to 6
		strings.Repeat("a\xff", 1<<18),  // invalid UTF-8 throughout
	} {
		got := Text(in)
		if len(got) > 6*MaxMessage+40 {
			t.Errorf("Text of %d bytes is %d bytes", len(in), len(got))
		}
		if !utf8.ValidString(got) {
			t.Errorf("Text of %q… is not valid UTF-8", in[:8])
		}
		for _, r := range got {
			if r != ' ' && !unicode.IsPrint(r) {
				t.Fatalf("Text output holds %U", r)
			}
		}
		if !strings.HasSuffix(got, fmt.Sprintf("(%d bytes)", len(in))) {
			t.Errorf("Text of %d bytes does not say how long it was: ...%s", len(in), got[len(got)-30:])
		}
	}
	if got := Text(strings.Repeat("y", MaxMessage)); got != strings.Repeat("y", MaxMessage) {
		t.Errorf("Text cut a string of exactly MaxMessage bytes")
	}
}

func TestError(t *testing.T) {
	if Error(nil) != nil {
		t.Fatal("Error(nil) is not nil")
	}
	base := &fs.PathError{Op: "open", Path: "/x\x1b]0;pwned\a" + strings.Repeat("p", 4000), Err: fs.ErrNotExist}
	err := fmt.Errorf("layer x: %w", Error(base))
	if !errors.Is(err, fs.ErrNotExist) {
		t.Error("errors.Is lost the wrapped sentinel")
	}
	var pe *fs.PathError
	if !errors.As(err, &pe) || pe != base {
		t.Error("errors.As lost the wrapped error")
	}
	msg := err.Error()
	if strings.ContainsAny(msg, "\x1b\a") || len(msg) > MaxMessage+100 {
		t.Errorf("message not made safe (%d bytes): %q", len(msg), msg[:80])
	}
}

func FuzzText(f *testing.F) {
	for _, s := range []string{"", "a", "\x1b[2J", "\xff", strings.Repeat("é", 300), "\u202e"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		for _, out := range []string{Text(s), Quote(s), Escape(s)} {
			if !utf8.ValidString(out) {
				t.Fatalf("output of %q is not valid UTF-8: %q", s, out)
			}
			for _, r := range out {
				if r != ' ' && !unicode.IsPrint(r) {
					t.Fatalf("output of %q holds %U", s, r)
				}
			}
		}
		if len(Text(s)) > 6*MaxMessage+40 || len(Quote(s)) > 6*MaxName+40 {
			t.Fatalf("output of %d bytes not bounded", len(s))
		}
	})
}
