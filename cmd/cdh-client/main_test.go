package main

import (
	"bytes"
	"context"
	"path/filepath"
	"strings"
	"testing"
)

// TestUsage: -h is the usage on stdout, exit 0; a mistake is one line on
// stderr saying what is wrong, exit 2; a daemon that is not there is
// exit 1, naming the socket.
func TestUsage(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		args   []string
		code   int
		stdout string
		stderr string
	}{
		{[]string{"-h"}, 0, "usage: cdh-client [--socket PATH]", ""},
		{[]string{"--sockt", "x", "status"}, 2, "", "cdh-client: flag provided but not defined: -sockt; see 'cdh-client -h'\n"},
		{nil, 2, "", "cdh-client: no command; see 'cdh-client -h'\n"},
		{[]string{"pul-image"}, 2, "", "cdh-client: unknown command \"pul-image\"; see 'cdh-client -h'\n"},
		{[]string{"pull-image", "img"}, 2, "", "cdh-client: usage: cdh-client [flags] pull-image IMAGE BUNDLE\n"},
		{[]string{"remove", dir}, 2, "", "is not a bundle (no config.json)"},
		{[]string{"--socket", filepath.Join(dir, "none.sock"), "status"}, 1, "", "none.sock: connect: no such file or directory (is guest-puller serve running?"},
	} {
		var stdout, stderr bytes.Buffer
		code := run(context.Background(), tc.args, &stdout, &stderr)
		if code != tc.code || !strings.HasPrefix(stdout.String(), tc.stdout) || !strings.Contains(stderr.String(), tc.stderr) ||
			strings.Count(stderr.String(), "\n") > 1 || tc.stdout == "" && stdout.Len() != 0 {
			t.Errorf("cdh-client %q: exit %d, stdout %q, stderr %q; want exit %d, %q, %q", tc.args, code, stdout.String(), stderr.String(), tc.code, tc.stdout, tc.stderr)
		}
	}
}
