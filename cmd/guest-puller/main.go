// Command guest-puller pulls container images inside a confidential guest:
// policy, signatures, attestation-gated keys, decryption, verified unpack
// into a shared layer cache, and an OCI runtime bundle.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/guest-puller/guest-puller/internal/errdefs"
	"github.com/guest-puller/guest-puller/internal/untrusted"
)

// A command is one thing guest-puller does, named by one or two words
// ("pull", "cache rm"). Its run parses its own flags (inv.flags) and
// returns an error; main reports it.
type command struct {
	name    string
	args    string // positional arguments, as the usage line shows them
	summary string // one line for 'guest-puller -h'
	run     func(ctx context.Context, inv *invocation) error
}

// commands is every command, in the order 'guest-puller -h' lists them.
// Each has a golden help file, testdata/help/<name with dashes>.txt.
func commands() []*command {
	return []*command{
		{name: "pull", args: "IMAGE", summary: "pull, check, decrypt and unpack IMAGE; print the bundle path", run: cmdPull},
		{name: "serve", summary: "the ttrpc daemon kata-agent calls", run: cmdServe},
		{name: "cdh", summary: "serve as the confidential-data-hub kata-agent starts", run: cmdCDH},
		{name: "policy check", args: "IMAGE", summary: "explain what the policy decides for IMAGE, fetching no layer", run: cmdPolicyCheck},
		{name: "cache ls", summary: "list cached images, layers and bundles", run: cmdCacheLs},
		{name: "cache rm", args: "IMAGE", summary: "forget IMAGE; its bundles and layers go at the next gc", run: cmdCacheRm},
		{name: "cache gc", summary: "remove bundles of removed containers, then unused layers", run: cmdCacheGC},
		{name: "encrypt", args: "SRC DST", summary: "copy an image with its layers encrypted (KBS key or JWE recipients)", run: cmdEncrypt},
		{name: "keyprovider", summary: "answer one ocicrypt keyprovider request (wrap side, for skopeo)", run: cmdKeyProvider},
		{name: "attest ak", summary: "print the TPM attestation key's public key (PEM) for the KBS", run: cmdAttestAK},
		{name: "version", summary: "print the version", run: cmdVersion},
	}
}

// groups describes the first word of the two-word commands, for
// 'guest-puller cache -h'.
var groups = map[string]string{
	"policy": "Evaluate the policy without pulling.",
	"cache":  "Inspect and clean the layer cache.",
	"attest": "Attestation helpers.",
}

func main() {
	// Notes from below (a skipped auth file, a device node a rootless
	// unpack cannot make) go to stderr, one line each, without the time a
	// command's user does not need.
	slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{
		ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
			if len(groups) == 0 && a.Key == slog.TimeKey {
				return slog.Attr{}
			}
			return a
		},
	})))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, cdhArgs(os.Args[0], os.Args[1:]), os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// invocation is one run of a command: its arguments and where its output
// goes.
type invocation struct {
	cmd    *command
	args   []string
	stdin  io.Reader
	stdout io.Writer
	stderr io.Writer
	// json is set by a command given --json: a failure is then reported on
	// stdout too, as {"error": {"code", "message"}}.
	json bool
	// credsHint names the flags that give registry credentials, for an
	// authentication failure's message.
	credsHint string
}

// run runs the command args name and reports its failure: one line on
// stderr (and a JSON object on stdout under --json). It returns the exit
// code.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	inv := &invocation{stdin: stdin, stdout: stdout, stderr: stderr, credsHint: "--creds or --auth-file"}
	err := dispatch(ctx, inv, args)
	if err == nil || errors.Is(err, errHelp) {
		return 0
	}
	code := errdefs.ExitCode(err)
	var rep *reportedError
	if errors.As(err, &rep) {
		return code
	}
	msg := oneLine(inv.withHint(err))
	if cause := context.Cause(ctx); cause != nil && cause != context.Canceled && errors.Is(err, context.Canceled) {
		// A signal ended the command (main's signal.NotifyContext gives
		// it as the cause): say so first, where the error from below only
		// knows that its context was cancelled.
		msg = fmt.Sprintf("interrupted (%v): %s", cause, msg)
	}
	fmt.Fprintf(stderr, "guest-puller: %s\n", msg)
	if inv.json {
		out := struct {
			Error struct {
				Code    int    `json:"code"`
				Message string `json:"message"`
			} `json:"error"`
		}{}
		out.Error.Code, out.Error.Message = code, msg
		writeJSON(stdout, out)
	}
	return code
}

// dispatch finds the command args name and runs it.
func dispatch(ctx context.Context, inv *invocation, args []string) error {
	if len(args) == 0 {
		fmt.Fprint(inv.stderr, topUsage())
		return reported(usageError("no command given"))
	}
	switch args[0] {
	case "-h", "-help", "--help":
		fmt.Fprint(inv.stdout, topUsage())
		return nil
	case "help":
		if len(args) == 1 {
			fmt.Fprint(inv.stdout, topUsage())
			return nil
		}
		return dispatch(ctx, inv, append(append([]string{}, args[1:]...), "-h"))
	case "--version":
		args = []string{"version"}
	}
	cmds := commands()
	for _, c := range cmds {
		words := strings.Fields(c.name)
		if len(args) >= len(words) && strings.Join(args[:len(words)], " ") == c.name {
			inv.cmd, inv.args = c, args[len(words):]
			return c.run(ctx, inv)
		}
	}
	if desc, ok := groups[args[0]]; ok {
		return groupCommand(inv, args[0], desc, args[1:])
	}
	var names []string
	for _, c := range cmds {
		names = append(names, strings.Fields(c.name)[0])
	}
	return usageError("unknown command %q%s; see 'guest-puller -h'", args[0], didYouMean(args[0], names, ""))
}

// groupCommand answers "guest-puller cache" without (or with an unknown)
// subcommand.
func groupCommand(inv *invocation, group, desc string, args []string) error {
	var subs []*command
	var names []string
	for _, c := range commands() {
		if first, sub, ok := strings.Cut(c.name, " "); ok && first == group {
			subs = append(subs, c)
			names = append(names, sub)
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "usage: guest-puller %s COMMAND [ARGS] [flags]\n\n%s\n\ncommands:\n", group, desc)
	listCommands(&b, subs, group+" ")
	fmt.Fprintf(&b, "\nRun 'guest-puller %s COMMAND -h' for a command's flags.\n", group)
	if len(args) > 0 && isHelpFlag(args[0]) {
		fmt.Fprint(inv.stdout, b.String())
		return nil
	}
	if len(args) == 0 {
		fmt.Fprint(inv.stderr, b.String())
		return reported(usageError("%s: no command given", group))
	}
	return usageError("unknown %s command %q%s; see 'guest-puller %s -h'", group, args[0], didYouMean(args[0], names, ""), group)
}

func topUsage() string {
	var b strings.Builder
	b.WriteString(`usage: guest-puller COMMAND [ARGS] [flags]

guest-puller pulls container images inside a confidential VM: it decides by
policy whether an image may run, gets the keys of encrypted layers from a Key
Broker Service after attestation, and verifies, decrypts and unpacks the
layers into a layer cache shared by the pod's containers.

commands:
`)
	listCommands(&b, commands(), "")
	b.WriteString("\nRun 'guest-puller COMMAND -h' for a command's arguments and flags.\n")
	return b.String()
}

func listCommands(b *strings.Builder, cmds []*command, trim string) {
	width := 0
	cols := make([]string, len(cmds))
	for i, c := range cmds {
		cols[i] = strings.TrimSpace(strings.TrimPrefix(c.name, trim) + " " + c.args)
		width = max(width, len(cols[i]))
	}
	for i, c := range cmds {
		fmt.Fprintf(b, "  %-*s  %s\n", width, cols[i], c.summary)
	}
}

func isHelpFlag(s string) bool { return s == "-h" || s == "-help" || s == "--help" || s == "--h" }

func cmdVersion(_ context.Context, inv *invocation) error {
	fs := inv.flags("Print guest-puller's version.")
	if _, err := fs.parse(inv.args, 0); err != nil {
		return err
	}
	fmt.Fprintln(inv.stdout, "guest-puller", version())
	return nil
}

// errHelp ends a command after -h printed its help: exit 0.
var errHelp = errors.New("help")

// reportedError is a failure the command already reported on its own
// (usage on stderr, a refusal in policy check's report): main sets the
// exit code and prints nothing more.
type reportedError struct{ err error }

func (e *reportedError) Error() string { return e.err.Error() }
func (e *reportedError) Unwrap() error { return e.err }

func reported(err error) error { return &reportedError{err} }

// usageError is a bad command line: exit 2.
func usageError(format string, args ...any) error {
	return &usageErr{fmt.Sprintf(format, args...)}
}

type usageErr struct{ msg string }

func (e *usageErr) Error() string { return e.msg }
func (e *usageErr) Unwrap() error { return errdefs.ErrInvalidConfig }

// withHint adds to err what the user can do about it, where the error
// alone does not say: the packages below know nothing of flags.
func (inv *invocation) withHint(err error) error {
	if errors.Is(err, errdefs.ErrUnauthenticated) && inv.credsHint != "" {
		return fmt.Errorf("%w; check %s", err, inv.credsHint)
	}
	return err
}

// oneLine keeps an error on the single line DESIGN.md promises, with no
// character left that a terminal would act on: whatever a registry or a
// KBS wrote into it was bounded where it entered, and is escaped here too.
func oneLine(err error) string {
	return untrusted.Escape(strings.Join(strings.Fields(strings.ReplaceAll(err.Error(), "\n", "; ")), " "))
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
