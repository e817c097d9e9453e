// Package untrusted renders text that someone outside the guest controls
// (a registry's error message, a tar entry name, a KBS problem detail, an
// annotation value, a lookaside server's answer) into messages and logs.
//
// Such text can carry terminal control sequences (ESC, BEL, CR; Unicode
// bidirectional overrides) that rewrite what an operator sees, newlines
// that forge log lines, and megabytes that drown the message. Every
// function here escapes what does not print and bounds what it keeps, so a
// message stays one honest line whatever the input. Use Quote for a name or
// value (it is quoted, so its bounds are visible), Text for a free-form
// message, Error to wrap an error whose message such text may fill, and
// Escape at the last step before a terminal or log, where nothing may be
// cut but nothing may slip through.
//
// The package is a leaf: every other package may use it.
package untrusted
