package main

import (
	"fmt"
	"os"
	"strings"

	"golang.org/x/term"
)

// askPassword completes credentials given as USER, without a password, to
// the flag name: on a terminal the password is asked for, not echoed (as
// podman login and skopeo do); anywhere else it is refused. An empty
// password is never sent without the user having typed "USER:".
func askPassword(inv *invocation, flag, creds string) (string, error) {
	if creds == "" || strings.Contains(creds, ":") {
		return creds, nil
	}
	f, ok := inv.stdin.(*os.File)
	if !ok || !term.IsTerminal(int(f.Fd())) {
		return "", usageError("--%s has a user name but no password, and there is no terminal to ask for it on: give USER:PASSWORD, or use --auth-file", flag)
	}
	fmt.Fprintf(inv.stderr, "Password for %s: ", creds)
	pw, err := term.ReadPassword(int(f.Fd()))
	fmt.Fprintln(inv.stderr)
	if err != nil {
		return "", fmt.Errorf("--%s: reading the password from the terminal: %w", flag, err)
	}
	return creds + ":" + string(pw), nil
}
