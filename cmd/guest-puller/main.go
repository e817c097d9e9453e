// Command guest-puller pulls container images inside a confidential guest:
// policy, signatures, attestation-gated keys, decryption, verified unpack
// into a shared layer cache, and an OCI runtime bundle.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/guest-puller/guest-puller/internal/errdefs"
)

const usage = `usage: guest-puller COMMAND [ARGS] [FLAGS]

commands:
  pull IMAGE            pull, check, decrypt, unpack; print the bundle path
  serve                 the ttrpc daemon kata-agent calls
  policy check IMAGE    evaluate the policy without unpacking
  cache ls|rm IMAGE|gc  inspect and clean the layer cache
  keyprovider           ocicrypt keyprovider (stdin/stdout JSON): wrap side
  attest ak             print the TPM attestation key's public key (PEM)
  version               print the version

Run 'guest-puller COMMAND -h' for a command's flags.
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	stop()
	if err != nil {
		if !errors.Is(err, errSilent) {
			fmt.Fprintf(os.Stderr, "guest-puller: %s\n", oneLine(withHint(err)))
		}
		os.Exit(errdefs.ExitCode(err))
	}
}

// errSilent is an error that was already reported (flag parsing).
var errSilent = fmt.Errorf("%w: reported", errdefs.ErrInvalidConfig)

func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return errSilent
	}
	cmd, rest := args[0], args[1:]
	switch cmd {
	case "pull":
		return cmdPull(ctx, rest, stdout, stderr)
	case "serve":
		return cmdServe(ctx, rest, stderr)
	case "policy":
		if len(rest) == 0 || rest[0] != "check" {
			return fmt.Errorf("%w: usage: guest-puller policy check IMAGE [flags]", errdefs.ErrInvalidConfig)
		}
		return cmdPolicyCheck(ctx, rest[1:], stdout, stderr)
	case "cache":
		return cmdCache(ctx, rest, stdout, stderr)
	case "keyprovider":
		return cmdKeyProvider(ctx, rest, stdin, stdout, stderr)
	case "attest":
		if len(rest) == 0 || rest[0] != "ak" {
			return fmt.Errorf("%w: usage: guest-puller attest ak [--tpm PATH]", errdefs.ErrInvalidConfig)
		}
		return cmdAttestAK(ctx, rest[1:], stdout, stderr)
	case "version", "--version":
		fmt.Fprintln(stdout, "guest-puller", version())
		return nil
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	default:
		fmt.Fprint(stderr, usage)
		return fmt.Errorf("%w: unknown command %q", errdefs.ErrInvalidConfig, cmd)
	}
}

// withHint adds to err what the user can do about it, where the error
// alone does not say: the packages below know nothing of flags.
func withHint(err error) error {
	if errors.Is(err, errdefs.ErrUnauthenticated) {
		return fmt.Errorf("%w; check --creds or --auth-file", err)
	}
	return err
}

// oneLine keeps an error on the single line DESIGN.md promises.
func oneLine(err error) string {
	return strings.Join(strings.Fields(strings.ReplaceAll(err.Error(), "\n", "; ")), " ")
}
