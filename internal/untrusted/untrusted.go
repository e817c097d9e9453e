package untrusted

import (
	"fmt"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Bounds on how much of one remote string a message keeps, in bytes of the
// input (escaping can lengthen what is kept, at most sixfold). A name is
// what Quote renders: a path, a media type, a key ID. A message is what Text
// and Error render: an error a server wrote, which may name a repository
// and a reference itself.
const (
	MaxName    = 256
	MaxMessage = 512
)

// ellipsis marks where a bounded string was cut.
const ellipsis = "…"

// Quote renders s as a double-quoted Go string: control characters,
// invalid UTF-8 and runes that do not print are escaped. When s is longer
// than MaxName bytes it keeps its head and tail, cut at rune boundaries
// around an ellipsis, and says how long s was:
//
//	"usr/lib/aaaa…aaaa/x.py" (5000 bytes)
func Quote(s string) string {
	head, tail, cut := bound(s, MaxName)
	if !cut {
		return strconv.Quote(s)
	}
	q := strconv.Quote(head)
	t := strconv.Quote(tail)
	return q[:len(q)-1] + ellipsis + t[1:] + " (" + strconv.Itoa(len(s)) + " bytes)"
}

// Text renders s for use inside a message without quotes: line breaks and
// tabs become single spaces (a server's multi-line error reads as one
// line), what else does not print is escaped (\x1b, \u202e), and s is
// bounded to MaxMessage bytes as Quote bounds it.
func Text(s string) string {
	head, tail, cut := bound(s, MaxMessage)
	if !cut {
		return Escape(foldSpace(s))
	}
	return Escape(foldSpace(head)) + ellipsis + Escape(foldSpace(tail)) + " (" + strconv.Itoa(len(s)) + " bytes)"
}

// foldSpace turns every run of line breaks and tabs into one space, and
// drops those at either end.
func foldSpace(s string) string {
	if !strings.ContainsAny(s, "\n\r\t\v\f") {
		return s
	}
	return strings.Join(strings.FieldsFunc(s, func(r rune) bool {
		return r == '\n' || r == '\r' || r == '\t' || r == '\v' || r == '\f'
	}), " ")
}

// Escape renders s with every character that does not print escaped, and
// nothing cut: for a whole message on its way to a terminal or a log, whose
// remote parts were bounded where they entered it. Printable text,
// including spaces and backslashes, is kept as it is.
func Escape(s string) string {
	if printable(s) {
		return s
	}
	var b strings.Builder
	b.Grow(len(s) + 16)
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size <= 1:
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case r == ' ' || unicode.IsPrint(r):
			b.WriteString(s[i : i+size])
		case r == '\n':
			b.WriteString(`\n`)
		case r == '\r':
			b.WriteString(`\r`)
		case r == '\t':
			b.WriteString(`\t`)
		case r < utf8.RuneSelf:
			fmt.Fprintf(&b, `\x%02x`, r)
		case r <= 0xffff:
			fmt.Fprintf(&b, `\u%04x`, r)
		default:
			fmt.Fprintf(&b, `\U%08x`, r)
		}
		i += size
	}
	return b.String()
}

// Error returns err with its message rendered by Text; errors.Is and
// errors.As still see err and what it wraps. Nil stays nil.
func Error(err error) error {
	if err == nil {
		return nil
	}
	return &textError{err: err}
}

type textError struct{ err error }

func (e *textError) Error() string { return Text(e.err.Error()) }
func (e *textError) Unwrap() error { return e.err }

// printable reports whether Escape would return s unchanged.
func printable(s string) bool {
	if !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if r != ' ' && !unicode.IsPrint(r) {
			return false
		}
	}
	return true
}

// bound splits s, when it is longer than n bytes, into a head of about
// two thirds of n and a tail of the rest, both cut at rune boundaries: the
// head of a path says where it is, the tail which file.
func bound(s string, n int) (head, tail string, cut bool) {
	if len(s) <= n {
		return s, "", false
	}
	h := n * 2 / 3
	for h > 0 && !utf8.RuneStart(s[h]) {
		h--
	}
	t := len(s) - (n - h)
	for t < len(s) && !utf8.RuneStart(s[t]) {
		t++
	}
	return s[:h], s[t:], true
}
