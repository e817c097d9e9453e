package unpack

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
)

// A helper is this test binary run again as another process on the same
// cache, selected by helperEnv with its arguments in helperArgsEnv.
const (
	helperEnv     = "UNPACK_TEST_HELPER"
	helperArgsEnv = "UNPACK_TEST_HELPER_ARGS"
)

// helperCmd returns the command for helper name; exe is the binary to run
// ("" for this one).
func helperCmd(t *testing.T, exe, name string, args ...string) *exec.Cmd {
	t.Helper()
	if exe == "" {
		var err error
		if exe, err = os.Executable(); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command(exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"="+name, helperArgsEnv+"="+strings.Join(args, "\x1f"))
	return cmd
}

// startHelper starts a helper and returns a reader of its stdout lines and
// its stdin; the helper is killed at cleanup if still running.
func startHelper(t *testing.T, cmd *exec.Cmd) (*bufio.Scanner, io.WriteCloser, *bytes.Buffer) {
	t.Helper()
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("start helper: %v", err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
	})
	return bufio.NewScanner(stdout), stdin, &stderr
}

func expectLine(t *testing.T, sc *bufio.Scanner, stderr *bytes.Buffer) string {
	t.Helper()
	if !sc.Scan() {
		t.Fatalf("helper ended early: %v; stderr: %s", sc.Err(), stderr)
	}
	return sc.Text()
}

func runHelper(name string, args []string) int {
	ctx := context.Background()
	fail := func(err error) int {
		fmt.Fprintf(os.Stderr, "helper %s: %v\n", name, err)
		return 1
	}
	switch name {
	case "locklayer": // root diffID log who
		c, err := Open(ctx, args[0])
		if err != nil {
			return fail(err)
		}
		fmt.Println("waiting")
		release, err := c.LockLayer(ctx, digest.Digest(args[1]))
		if err != nil {
			return fail(err)
		}
		appendLine(args[2], "start "+args[3])
		appendLine(args[2], "end "+args[3])
		release()
		return 0

	case "stage": // root diffID crash|hold
		c, err := Open(ctx, args[0])
		if err != nil {
			return fail(err)
		}
		d := digest.Digest(args[1])
		if _, err := c.LockLayer(ctx, d); err != nil {
			return fail(err)
		}
		s, err := c.Stage(d)
		if err != nil {
			return fail(err)
		}
		layer := tarLayer(&helperTB{}, fileE("half-applied", "partial content", 0o644))
		if err := s.Apply(ctx, bytes.NewReader(layer)); err != nil {
			return fail(err)
		}
		fmt.Println(s.dir())
		if args[2] == "hold" {
			io.Copy(io.Discard, os.Stdin)
		}
		// Exit without Commit or Abort, as a killed process would.
		return 0

	case "gc": // root
		c, err := Open(ctx, args[0])
		if err != nil {
			return fail(err)
		}
		r, err := c.GC(ctx)
		if err != nil {
			return fail(err)
		}
		fmt.Println(gcSummary(r))
		return 0

	case "rootless": // root
		out, err := rootlessScenario(ctx, args[0])
		if err != nil {
			return fail(err)
		}
		json.NewEncoder(os.Stdout).Encode(out)
		return 0
	}
	return fail(fmt.Errorf("unknown helper"))
}

func appendLine(path, line string) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		panic(err)
	}
	fmt.Fprintln(f, line)
	f.Close()
}

// helperTB lets test helpers that take a testing.TB run in a helper
// process.
type helperTB struct{ testing.TB }

func (*helperTB) Helper() {}
func (*helperTB) Fatalf(format string, args ...any) {
	panic(fmt.Sprintf(format, args...))
}
func (h *helperTB) Fatal(args ...any) { panic(fmt.Sprint(args...)) }
