package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"

	"golang.org/x/term"

	"github.com/guest-puller/guest-puller/attest"
	"github.com/guest-puller/guest-puller/internal/config"
	"github.com/guest-puller/guest-puller/internal/errdefs"
	"github.com/guest-puller/guest-puller/internal/untrusted"
	"github.com/guest-puller/guest-puller/policy"
	"github.com/guest-puller/guest-puller/pull"
	"github.com/guest-puller/guest-puller/unpack"
)

func cmdPull(ctx context.Context, inv *invocation) error {
	f := inv.flags(`Pull IMAGE: resolve it, check it against the policy (signatures,
encryption), unwrap the keys of its encrypted layers (from local keys or a
KBS after attestation), then fetch, verify, decrypt and unpack every layer
not already in the cache, and make an OCI runtime bundle. Prints the bundle
directory (config.json and rootfs/), or with --json the whole result.

Every setting can also come from the config file; flags win over it.
Exit codes: 0 pulled, 1 other failure (network, I/O, registry
authentication), 2 usage or bad configuration, 3 refused by policy, 4 cannot
decrypt (no key, attestation refused, KBS error), 5 integrity failure.`)
	s := f.settings(nil)
	bundle := f.fs.String("bundle", "", "bundle `DIR` where config.json and rootfs/ go (default under the cache, by container id)")
	containerID := f.fs.String("container-id", "", "`ID` naming the bundle (default derived from the image)")
	asJSON := f.fs.Bool("json", false, "print the result as JSON on stdout; a failure as {\"error\": {\"code\", \"message\"}}")
	quiet := f.fs.Bool("quiet", false, "no progress on stderr")
	pos, err := f.parse(inv.args, 1)
	if err != nil {
		return err
	}
	inv.json = *asJSON
	cfg, err := s.config()
	if err != nil {
		return err
	}
	var prog pull.Progress
	var done func()
	if !*quiet {
		prog, done = newProgress(inv.stderr, isTerminal(inv.stderr))
		defer done()
	}
	root := cfg.Cache
	if root == "" {
		root = unpack.DefaultRoot
	}
	_, statErr := os.Lstat(root)
	created := errors.Is(statErr, fs.ErrNotExist)
	p, err := config.Open(ctx, cfg, prog)
	if err != nil {
		return err
	}
	defer p.Close()
	res, err := p.Pull(ctx, pull.Request{Image: pos[0], ContainerID: *containerID, BundleDir: *bundle})
	if done != nil {
		done()
	}
	if err != nil {
		if created {
			// A first pull that failed (a typo, a refusal) leaves no
			// empty cache behind. Interrupted or not, clean up.
			p.Cache().RemoveIfEmpty(context.WithoutCancel(ctx))
		}
		if errors.Is(err, errdefs.ErrDecrypt) && len(cfg.DecryptionKeys) == 0 && cfg.KeyDir == "" && cfg.KBS == "" {
			// An encrypted layer and no key source at all: the packages
			// below know no flags, so say here which ones give a key.
			err = fmt.Errorf("%w; give --decryption-key, or --kbs for a key a KBS releases after attestation", err)
		}
		return err
	}
	if *asJSON {
		return writeJSON(inv.stdout, res)
	}
	fmt.Fprintln(inv.stdout, res.Bundle)
	return nil
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// checkSkips are the settings policy check has no use for: it fetches no
// layer, so it unpacks and decrypts nothing.
var checkSkips = map[string]bool{"cache": true, "cache-device": true, "cache-device-key": true, "decryption-key": true, "key-dir": true, "kid-resource-type": true, "max-concurrent-downloads": true}

func cmdPolicyCheck(ctx context.Context, inv *invocation) error {
	f := inv.flags(`Resolve IMAGE and evaluate the policy over it and its signatures, without
fetching any layer; print which scope decided, how each requirement fared and
which signature keys verified. Exits 0 when the image is allowed, 3 when the
policy refuses it (the report says why), like pull for other failures.`)
	s := f.settings(func(name string) bool { return !checkSkips[name] })
	asJSON := f.fs.Bool("json", false, "print the decision as JSON on stdout; a failure as {\"error\": {\"code\", \"message\"}}")
	pos, err := f.parse(inv.args, 1)
	if err != nil {
		return err
	}
	inv.json = *asJSON
	cfg, err := s.config()
	if err != nil {
		return err
	}
	p, err := config.OpenChecker(ctx, cfg)
	if err != nil {
		return err
	}
	defer p.Close()
	for _, w := range p.PolicyWarnings() {
		fmt.Fprintf(inv.stderr, "guest-puller: warning: policy %s: %s\n", cfg.Policy, w)
	}
	img, d, err := p.Check(ctx, pos[0])
	if err != nil {
		return err
	}
	// A scope that rejects every image decides without the registry: no
	// manifest was fetched.
	manifest, manifestText := "", "(not fetched: the scope rejects every image)"
	if img != nil {
		manifest, manifestText = img.Digest.String(), img.Digest.String()
	}
	stdout := inv.stdout
	if *asJSON {
		out := struct {
			Image          string `json:"image"`
			ManifestDigest string `json:"manifestDigest"`
			Allowed        bool   `json:"allowed"`
			pull.PolicyResult
			Signatures any      `json:"signatures"`
			Notes      []string `json:"notes,omitempty"`
		}{d.Image, manifest, d.Allowed, pull.PolicyResult{Scope: d.Scope, Requirements: d.Requirements}, d.Signatures, policyNotes(d.Requirements)}
		if err := writeJSON(stdout, out); err != nil {
			return err
		}
	} else {
		verdict := "allowed"
		if !d.Allowed {
			verdict = "refused"
		}
		fmt.Fprintf(stdout, "image:     %s\nmanifest:  %s\nscope:     %s\ndecision:  %s\n", d.Image, manifestText, scopeName(d.Scope), verdict)
		for _, r := range d.Requirements {
			mark := "ok  "
			if !r.OK {
				mark = "FAIL"
			}
			fmt.Fprintf(stdout, "  [%s] %s", mark, r.Type)
			if r.Reason != "" {
				fmt.Fprintf(stdout, ": %s", untrusted.Escape(r.Reason))
			}
			fmt.Fprintln(stdout)
		}
		for _, s := range d.Signatures {
			state := "verified"
			if !s.Verified {
				state = "not verified"
				if s.Reason != "" {
					state += ": " + untrusted.Escape(s.Reason)
				}
			}
			if s.Signer != nil {
				// Keyless: who the certificate says signed.
				state += fmt.Sprintf(" (issuer %s, subject %s, certificate serial %s)",
					untrusted.Escape(s.Signer.Issuer), untrusted.Escape(s.Signer.Subject), untrusted.Escape(s.Signer.Serial))
			}
			fmt.Fprintf(stdout, "  signature key %s (%s): %s\n", s.KeyName, shortID(s.KeyID), state)
		}
		for _, n := range policyNotes(d.Requirements) {
			fmt.Fprintf(stdout, "note: %s\n", n)
		}
	}
	if err := d.Err(); err != nil {
		// The report above is the answer, on stdout; the exit code says
		// refused. Saying it again on stderr would only repeat it.
		return reported(err)
	}
	return nil
}

// encryptedOnlyNote is what policy check says of a scope that requires
// encryption and no signature (issue 15, item 7).
const encryptedOnlyNote = "this scope requires encrypted layers but no signature. Encryption alone binds neither " +
	"the image config (entrypoint, env, user) nor the set of layers to the encrypted content: genuine encrypted layers " +
	"can be re-served with another config, and anyone with a public-key recipient (JWE, PKCS7, PGP) can make layers " +
	"that count as encrypted. For a confidential workload require [sigstoreSigned, encrypted]."

// signatureRequirements are the requirement types that bind a manifest
// digest (and so its config and layers) to a signer.
var signatureRequirements = map[string]bool{"signedBy": true, "sigstoreSigned": true, "sigstoreThreshold": true}

// policyNotes are what a user should know about the scope that decided,
// beyond each requirement's verdict.
func policyNotes(reqs []policy.RequirementResult) []string {
	encrypted, signed := false, false
	for _, r := range reqs {
		encrypted = encrypted || r.Type == "encrypted"
		signed = signed || signatureRequirements[r.Type]
	}
	if encrypted && !signed {
		return []string{encryptedOnlyNote}
	}
	return nil
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

func cmdAttestAK(ctx context.Context, inv *invocation) error {
	f := inv.flags(`Print the public key (PEM) of the TPM's attestation key, to register with
a KBS (dev-kbs --tpm-ak FILE). The key is an RSA-2048 signing key kept
persistent in the TPM at handle 0x81010002; it is created there on first
use, so later quotes are signed by the same key.`)
	s := f.settings(func(name string) bool { return name == "tpm" })
	if _, err := f.parse(inv.args, 0); err != nil {
		return err
	}
	cfg, err := s.config()
	if err != nil {
		return err
	}
	pem, err := attest.AKPublicPEM(ctx, cfg.TPM)
	if err != nil {
		return err
	}
	_, err = io.WriteString(inv.stdout, strings.TrimRight(string(pem), "\n")+"\n")
	return err
}
