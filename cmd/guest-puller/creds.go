package main

import (
	"fmt"
	"os"
	"strings"

	"golang.org/x/term"

	"github.com/guest-puller/guest-puller/pull"
)

// askPassword completes --creds USER, given without a password: on a
// terminal the password is asked for, not echoed (as podman login and
// skopeo do); anywhere else it is refused. An empty password is never sent
// without the user having typed "USER:".
func askPassword(inv *invocation, cfg *pull.Config) error {
	if cfg.Creds == "" || strings.Contains(cfg.Creds, ":") {
		return nil
	}
	user := cfg.Creds
	f, ok := inv.stdin.(*os.File)
	if !ok || !term.IsTerminal(int(f.Fd())) {
		return usageError("--creds has a user name but no password, and there is no terminal to ask for it on: give USER:PASSWORD, or use --auth-file")
	}
	fmt.Fprintf(inv.stderr, "Password for %s: ", user)
	pw, err := term.ReadPassword(int(f.Fd()))
	fmt.Fprintln(inv.stderr)
	if err != nil {
		return fmt.Errorf("--creds: reading the password from the terminal: %w", err)
	}
	cfg.Creds = user + ":" + string(pw)
	return nil
}
