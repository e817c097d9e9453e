// Package errdefs holds the error kinds that the command line maps to exit
// codes (see DESIGN.md, "Exit codes"). Packages wrap one of these sentinels
// into the error they return, with the context of what failed:
//
//	fmt.Errorf("layer %s: %w: blob digest is %s", d, errdefs.ErrIntegrity, got)
//
// and callers test with errors.Is. An error that wraps none of them is a
// plain failure (network, I/O): exit 1.
package errdefs

import "errors"

var (
	// ErrInvalidConfig: usage or bad configuration (policy file, flags,
	// config file, registries.conf). Exit 2.
	ErrInvalidConfig = errors.New("invalid configuration")
	// ErrRefused: the policy refused the image, including a missing or bad
	// signature and an unreachable signature store. Exit 3.
	ErrRefused = errors.New("refused by policy")
	// ErrDecrypt: a layer cannot be decrypted: no key, a wrong key,
	// attestation refused, a KBS error. Exit 4.
	ErrDecrypt = errors.New("cannot decrypt")
	// ErrIntegrity: digest, diff_id or HMAC mismatch, or unsafe layer
	// content. Exit 5.
	ErrIntegrity = errors.New("integrity failure")
)

// ExitCode maps err to the exit codes of DESIGN.md.
func ExitCode(err error) int {
	switch {
	case err == nil:
		return 0
	case errors.Is(err, ErrInvalidConfig):
		return 2
	case errors.Is(err, ErrRefused):
		return 3
	case errors.Is(err, ErrDecrypt):
		return 4
	case errors.Is(err, ErrIntegrity):
		return 5
	default:
		return 1
	}
}
