package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"golang.org/x/term"

	"github.com/guest-puller/guest-puller/internal/errdefs"
	"github.com/guest-puller/guest-puller/pull"
)

func cmdPull(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	f := newPullFlags("pull", stderr)
	bundle := f.fs.String("bundle", "", "bundle directory (default under the cache, by container id)")
	containerID := f.fs.String("container-id", "", "names the bundle (default derived from the image)")
	asJSON := f.fs.Bool("json", false, "print the result as JSON on stdout")
	quiet := f.fs.Bool("quiet", false, "no progress on stderr")
	f.fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: guest-puller pull IMAGE [flags]")
		printFlags(f.fs, stderr)
	}
	pos, err := parseInterleaved(f.fs, args)
	if err != nil {
		return helpOK(err)
	}
	if len(pos) != 1 {
		return fmt.Errorf("%w: usage: guest-puller pull IMAGE [flags]", errdefs.ErrInvalidConfig)
	}
	cfg, err := f.config()
	if err != nil {
		return err
	}
	var prog pull.Progress
	var done func()
	if !*quiet {
		prog, done = newProgress(stderr, isTerminal(stderr))
		defer done()
	}
	p, err := pull.Open(ctx, cfg, prog)
	if err != nil {
		return err
	}
	defer p.Close()
	res, err := p.Pull(ctx, pull.Request{Image: pos[0], ContainerID: *containerID, BundleDir: *bundle})
	if done != nil {
		done()
	}
	if err != nil {
		return err
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(res)
	}
	fmt.Fprintln(stdout, res.Bundle)
	return nil
}

func helpOK(err error) error {
	if errors.Is(err, errHelp) {
		return nil
	}
	return err
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

func cmdPolicyCheck(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	f := newPullFlags("policy check", stderr)
	asJSON := f.fs.Bool("json", false, "print the decision as JSON on stdout")
	f.fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: guest-puller policy check IMAGE [flags]")
		printFlags(f.fs, stderr)
	}
	pos, err := parseInterleaved(f.fs, args)
	if err != nil {
		return helpOK(err)
	}
	if len(pos) != 1 {
		return fmt.Errorf("%w: usage: guest-puller policy check IMAGE [flags]", errdefs.ErrInvalidConfig)
	}
	cfg, err := f.config()
	if err != nil {
		return err
	}
	p, err := pull.OpenChecker(ctx, cfg)
	if err != nil {
		return err
	}
	defer p.Close()
	img, d, err := p.Check(ctx, pos[0])
	if err != nil {
		return err
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		out := struct {
			Image          string `json:"image"`
			ManifestDigest string `json:"manifestDigest"`
			Allowed        bool   `json:"allowed"`
			pull.PolicyResult
			Signatures any `json:"signatures"`
		}{d.Image, img.Digest.String(), d.Allowed, pull.PolicyResult{Scope: d.Scope, Requirements: d.Requirements}, d.Signatures}
		if err := enc.Encode(out); err != nil {
			return err
		}
	} else {
		verdict := "allowed"
		if !d.Allowed {
			verdict = "refused"
		}
		fmt.Fprintf(stdout, "image:     %s\nmanifest:  %s\nscope:     %s\ndecision:  %s\n", d.Image, img.Digest, scopeName(d.Scope), verdict)
		for _, r := range d.Requirements {
			mark := "ok  "
			if !r.OK {
				mark = "FAIL"
			}
			fmt.Fprintf(stdout, "  [%s] %s", mark, r.Type)
			if r.Reason != "" {
				fmt.Fprintf(stdout, ": %s", r.Reason)
			}
			fmt.Fprintln(stdout)
		}
		for _, s := range d.Signatures {
			state := "verified"
			if !s.Verified {
				state = "not verified"
				if s.Reason != "" {
					state += ": " + s.Reason
				}
			}
			fmt.Fprintf(stdout, "  signature key %s (%s): %s\n", s.KeyName, shortID(s.KeyID), state)
		}
	}
	return d.Err()
}

func scopeName(s string) string {
	switch s {
	case "":
		return `"" (the docker transport's default)`
	case "default":
		return "default (the policy's global default)"
	}
	return s
}

func shortID(id string) string {
	if id == "" {
		return "no key id"
	}
	if len(id) > 16 {
		return id[:16]
	}
	return id
}

func cmdAttestAK(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	f := newPullFlags("attest ak", stderr)
	pos, err := parseInterleaved(f.fs, args)
	if err != nil {
		return helpOK(err)
	}
	if len(pos) != 0 {
		return fmt.Errorf("%w: usage: guest-puller attest ak [--tpm PATH]", errdefs.ErrInvalidConfig)
	}
	cfg, err := f.config()
	if err != nil {
		return err
	}
	pem, err := attestAKPEM(ctx, cfg.TPM)
	if err != nil {
		return err
	}
	_, err = io.WriteString(stdout, strings.TrimRight(string(pem), "\n")+"\n")
	return err
}
