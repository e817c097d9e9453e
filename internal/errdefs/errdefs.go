// Package errdefs holds the error kinds that the command line maps to exit
// codes (see DESIGN.md, "Exit codes") and the daemon to gRPC status codes.
// Packages wrap one of these sentinels into the error they return, with the
// context of what failed:
//
//	fmt.Errorf("layer %s: %w: blob digest is %s", d, errdefs.ErrIntegrity, got)
//
// and callers test with errors.Is. An error that wraps none of them is a
// plain failure (network, I/O): exit 1, gRPC Internal.
//
// ExitCode and GRPCCode are the only two mappings; both read the kinds
// table, so a new sentinel is one new row.
package errdefs

import (
	"context"
	"errors"

	"google.golang.org/grpc/codes"
)

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
	// ErrUnauthenticated: a registry refused the credentials this pull
	// presented (or their absence): 401 or 403. Exit 1, as DESIGN.md's
	// exit codes have no own code for it; gRPC Unauthenticated, so that a
	// caller of the daemon can tell wrong source_creds from a failure.
	ErrUnauthenticated = errors.New("authentication failed")
	// ErrNotFound: the image, bundle or resource asked for does not exist.
	// Exit 1; gRPC NotFound.
	ErrNotFound = errors.New("not found")
	// ErrAlreadyExists: what a request would create is already there and
	// is not what it asks for: a container id that has a bundle elsewhere
	// or of another image, a bundle directory that holds other files, a
	// socket another daemon serves. Never resolved by deleting what is
	// there. Exit 2 (the caller must change its request); gRPC
	// AlreadyExists.
	ErrAlreadyExists = errors.New("already exists")
)

// Kind returns err classified as kind (errors.Is(Kind(kind, err), kind)
// holds) without kind's text in its message. A package whose failures have
// an exit code of their own, but whose callers say in their words what
// failed (decrypt's "layer …: cannot decrypt: …" around attest's "kbs
// resource …: …"), classifies with it, so that the kind is named once.
func Kind(kind, err error) error {
	if err == nil || errors.Is(err, kind) {
		return err
	}
	return &kindError{kind: kind, err: err}
}

type kindError struct{ kind, err error }

func (e *kindError) Error() string   { return e.err.Error() }
func (e *kindError) Unwrap() []error { return []error{e.err, e.kind} }

// kinds maps each sentinel to its exit code and gRPC code. The first row
// an error wraps decides: an error that is both a configuration problem
// and a decryption failure (a policy named by a kbs:// URI that does not
// exist) is a configuration problem.
var kinds = []struct {
	err  error
	exit int
	code codes.Code
}{
	{ErrInvalidConfig, 2, codes.InvalidArgument},
	{ErrRefused, 3, codes.PermissionDenied},
	{ErrDecrypt, 4, codes.FailedPrecondition},
	{ErrIntegrity, 5, codes.DataLoss},
	{ErrUnauthenticated, 1, codes.Unauthenticated},
	{ErrNotFound, 1, codes.NotFound},
	{ErrAlreadyExists, 2, codes.AlreadyExists},
	{context.Canceled, 1, codes.Canceled},
	{context.DeadlineExceeded, 1, codes.DeadlineExceeded},
}

// ExitCode maps err to the exit codes of DESIGN.md.
func ExitCode(err error) int {
	if err == nil {
		return 0
	}
	for _, k := range kinds {
		if errors.Is(err, k.err) {
			return k.exit
		}
	}
	return 1
}

// FromGRPC is the kind of error a daemon's gRPC status code says, read
// from the same table as GRPCCode (the first kind with that code), for a
// client that reports a daemon's answer with the command line's exit
// codes; nil for a code of no kind of its own.
func FromGRPC(code codes.Code) error {
	for _, k := range kinds {
		if k.code == code {
			return k.err
		}
	}
	return nil
}

// GRPCCode maps err to the gRPC status code the daemon answers with, so a
// caller can tell a refusal from a failure without parsing the message.
func GRPCCode(err error) codes.Code {
	if err == nil {
		return codes.OK
	}
	for _, k := range kinds {
		if errors.Is(err, k.err) {
			return k.code
		}
	}
	return codes.Internal
}
