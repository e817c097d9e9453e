// Command cdh-client does from a shell what kata-agent does over the
// confidential-data-hub socket that `guest-puller serve` (or `guest-puller
// cdh`) serves: ask api.ImagePullService for a container's bundle, and,
// when the container ends, unmount its rootfs (never lazily) and delete the
// bundle directory. It is for trying the daemon out and for scripts; in a
// guest, kata-agent is the client. Like dev-kbs, it does not go into a
// guest image.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/containerd/ttrpc"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/status"

	"github.com/guest-puller/guest-puller/api/cdhpb"
	guestpullerv1 "github.com/guest-puller/guest-puller/api/v1"
	"github.com/guest-puller/guest-puller/internal/errdefs"
)

const defaultSocket = "/run/confidential-containers/cdh.sock"

const usage = `usage: cdh-client [--socket PATH] [--timeout DURATION] COMMAND [ARGS]

Call the daemon (guest-puller serve, or guest-puller as the
confidential-data-hub) the way kata-agent does.

commands:
  pull-image IMAGE BUNDLE  make the empty directory BUNDLE (as kata-agent
                           does) and call api.ImagePullService/PullImage;
                           prints the manifest digest
  remove BUNDLE            kata-agent's cleanup of a container that ended:
                           umount BUNDLE/rootfs (not lazily), delete BUNDLE
  status                   the daemon's cache: images, layers, bundles
  gc                       reclaim now what removed containers left and the
                           layers nothing uses (the daemon also does this
                           every --gc-interval)

Exit codes are guest-puller pull's: 0 done, 1 other failure, 2 usage or
bad configuration, 3 refused by policy, 4 cannot decrypt, 5 integrity.

flags:
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("cdh-client", flag.ContinueOnError)
	fs.SetOutput(io.Discard) // a mistake is one line below, not the usage
	socket := fs.String("socket", defaultSocket, "the daemon's unix socket `PATH`")
	timeout := fs.Duration("timeout", 10*time.Minute, "give up a call after `DURATION`, as kata-agent's own timeout does")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), usage)
		fs.VisitAll(func(f *flag.Flag) {
			name, help := flag.UnquoteUsage(f)
			fmt.Fprintf(fs.Output(), "  --%s %s\n        %s (default %s)\n", f.Name, name, help, f.DefValue)
		})
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(stdout)
			fs.Usage()
			return 0
		}
		fmt.Fprintf(stderr, "cdh-client: %v; see 'cdh-client -h'\n", err)
		return 2
	}
	err := call(ctx, *socket, *timeout, fs.Args(), stdout)
	if err != nil {
		fmt.Fprintf(stderr, "cdh-client: %v\n", err)
	}
	return errdefs.ExitCode(err)
}

// usageError is a command line that is wrong: exit 2, said as it is.
type usageError string

func (e usageError) Error() string { return string(e) }
func (usageError) Unwrap() error   { return errdefs.ErrInvalidConfig }

// want checks a command's arguments.
func want(args []string, n int, usage string) error {
	if len(args) != n {
		return usageError("usage: cdh-client [flags] " + usage)
	}
	return nil
}

func call(ctx context.Context, socket string, timeout time.Duration, args []string, out io.Writer) error {
	if len(args) == 0 {
		return usageError("no command; see 'cdh-client -h'")
	}
	cmd, args := args[0], args[1:]
	if cmd == "remove" {
		// kata-agent's own work: the daemon is not asked.
		if err := want(args, 1, "remove BUNDLE"); err != nil {
			return err
		}
		return remove(args[0])
	}
	switch cmd {
	case "pull-image":
		if err := want(args, 2, "pull-image IMAGE BUNDLE"); err != nil {
			return err
		}
	case "status", "gc":
		if err := want(args, 0, cmd); err != nil {
			return err
		}
	default:
		return usageError(fmt.Sprintf("unknown command %q; see 'cdh-client -h'", cmd))
	}

	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", socket)
	if err != nil {
		return fmt.Errorf("the daemon's socket: %w (is guest-puller serve running? --socket names another)", err)
	}
	client := ttrpc.NewClient(conn)
	defer client.Close()

	switch cmd {
	case "pull-image":
		bundle, err := filepath.Abs(args[1])
		if err != nil {
			return err
		}
		// kata-agent makes the container's directory, empty, and names the
		// container after it; when the pull fails, it removes it again.
		made := false
		if _, err := os.Lstat(bundle); errors.Is(err, os.ErrNotExist) {
			if err := os.MkdirAll(bundle, 0o700); err != nil {
				return err
			}
			made = true
		}
		resp, err := cdhpb.NewImagePullServiceClient(client).PullImage(ctx, &cdhpb.ImagePullRequest{ImageUrl: args[0], BundlePath: bundle})
		if err != nil {
			if made {
				os.Remove(bundle)
			}
			return daemonError(err)
		}
		fmt.Fprintln(out, resp.ManifestDigest)
	case "status":
		st, err := guestpullerv1.NewGuestPullerClient(client).Status(ctx, &guestpullerv1.StatusRequest{})
		if err != nil {
			return daemonError(err)
		}
		fmt.Fprintf(out, "guest-puller %s, cache %s: %d images, %d layers (%d bytes), %d bundles\n",
			st.Version, st.CacheRoot, st.Images, st.Layers, st.LayerBytes, st.Bundles)
	case "gc":
		r, err := guestpullerv1.NewGuestPullerClient(client).GC(ctx, &guestpullerv1.GCRequest{})
		if err != nil {
			return daemonError(err)
		}
		fmt.Fprintf(out, "reclaimed %d bundles and %d layers, %d bytes\n", len(r.Bundles), len(r.Layers), r.FreedBytes)
	}
	return nil
}

// daemonError is the daemon's answer as one line, of the kind its status
// code says, so the exit code is the one `guest-puller pull` would give.
func daemonError(err error) error {
	st, ok := status.FromError(err)
	if !ok {
		return err
	}
	return &answer{
		msg:  fmt.Sprintf("%s (%v)", strings.Join(strings.Fields(st.Message()), " "), st.Code()),
		kind: errdefs.FromGRPC(st.Code()),
	}
}

// answer is a failed call: the daemon's message, and the kind of error its
// code says (nil for none).
type answer struct {
	msg  string
	kind error
}

func (a *answer) Error() string { return a.msg }
func (a *answer) Unwrap() error { return a.kind }

// remove is kata-agent's cleanup of a container that ended: umount(2) of
// the rootfs without MNT_DETACH (a busy rootfs is an error, not something
// to leave behind), then the bundle directory goes. A rootfs that is no
// mount (a copy, made without the privilege to mount overlay) is deleted
// with the directory.
func remove(bundle string) error {
	if fi, err := os.Stat(filepath.Join(bundle, "config.json")); err != nil || !fi.Mode().IsRegular() {
		return fmt.Errorf("%w: %s is not a bundle (no config.json)", errdefs.ErrInvalidConfig, bundle)
	}
	rootfs := filepath.Join(bundle, "rootfs")
	if err := unix.Unmount(rootfs, 0); err != nil && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("umount %s: %w", rootfs, err)
	}
	return os.RemoveAll(bundle)
}
