package main

import (
	"context"
	"fmt"
	"os"
	"strconv"

	"github.com/guest-puller/guest-puller/decrypt"
	"github.com/guest-puller/guest-puller/internal/config"
	"github.com/guest-puller/guest-puller/internal/encrypt"
	"github.com/guest-puller/guest-puller/internal/errdefs"
	"github.com/guest-puller/guest-puller/internal/registry"
)

// cmdEncrypt encrypts an image's layers: the supported way to make images
// for the attestation-agent key provider where skopeo cannot (Debian's
// 1.9.3 predates ocicrypt's keyprovider protocol).
func cmdEncrypt(ctx context.Context, inv *invocation) error {
	f := inv.flags(`Copy the image SRC to DST with its layers encrypted, in ocicrypt's format
(what skopeo copy --encryption-key writes, and guest-puller, image-rs, the
confidential-data-hub and containerd's imgcrypt decrypt). SRC and DST are
oci:DIR[:TAG] (an OCI layout) or docker://REF (a registry; a bare REF works
too). The image's configuration and diff_ids are unchanged; a Docker image
becomes an OCI one. Prints the manifest digest of the encrypted image (sign
that digest, for example with cosign).

Recipients, each able to decrypt every encrypted layer:

  --encryption-key provider:attestation-agent:keypath=KEK::keyid=kbs:///REPO/TYPE/TAG
      for confidential containers: KEK is a file of exactly 32 random
      bytes, which the KBS serves at REPO/TYPE/TAG to an attested guest
  --encryption-key jwe:PUBLIC-KEY
      an RSA or EC public key (PEM, DER or JWK); decrypt with
      --decryption-key PRIVATE-KEY`)
	var keys, insecure stringList
	var layers intList
	f.fs.Var(&keys, "encryption-key", "recipient `KEY`: jwe:PUBLIC-KEY-FILE or provider:attestation-agent:keypath=KEK-FILE::keyid=kbs:///REPO/TYPE/TAG; repeatable")
	f.fs.Var(&layers, "encrypt-layer", "encrypt only layer `N` (0 the bottom one, -1 the top one), as skopeo; repeatable (default every layer)")
	authFile := f.fs.String("auth-file", "", "registry credentials: a docker config.json or containers auth.json `FILE` (default $REGISTRY_AUTH_FILE, then ~/.docker/config.json)")
	srcCreds := f.fs.String("src-creds", "", "credentials `USER[:PASSWORD]` for SRC's registry; without a password it is asked for on the terminal")
	destCreds := f.fs.String("dest-creds", "", "credentials `USER[:PASSWORD]` for DST's registry; without a password it is asked for on the terminal")
	f.fs.Var(&insecure, "insecure-registry", "allow plain HTTP and unverified TLS to `HOST[:PORT]`; repeatable")
	platform := f.fs.String("platform", "", "`OS/ARCH[/VARIANT]` to take from a multi-platform SRC (default the running platform)")
	pos, err := f.parse(inv.args, 2)
	if err != nil {
		return err
	}
	inv.credsHint = "--src-creds, --dest-creds or --auth-file"
	recipients, err := decrypt.ParseRecipients(keys)
	if err != nil {
		return err
	}
	src, err := encrypt.ParseLocation(pos[0])
	if err != nil {
		return err
	}
	dst, err := encrypt.ParseLocation(pos[1])
	if err != nil {
		return err
	}
	var authData []byte
	if *authFile != "" {
		if authData, err = os.ReadFile(*authFile); err != nil {
			return fmt.Errorf("--auth-file: %w: %w", errdefs.ErrInvalidConfig, err)
		}
	}
	client := func(flag, creds string) (*registry.Client, error) {
		creds, err := askPassword(inv, flag, creds)
		if err != nil {
			return nil, err
		}
		return registry.New(registry.Options{
			Credentials: registry.Credentials{Creds: creds, AuthFile: authData, AuthFileName: *authFile},
			Insecure:    insecure,
			Platform:    *platform,
			// An image is encrypted for the platform it is for, not for
			// the machine that encrypts it.
			AnyPlatform: true,
			UserAgent:   "guest-puller/" + config.Version,
		})
	}
	opts := encrypt.Options{Recipients: recipients, Layers: layers}
	if src.Ref != nil {
		if opts.Source, err = client("src-creds", *srcCreds); err != nil {
			return err
		}
	}
	if dst.Ref != nil {
		if opts.Dest, err = client("dest-creds", *destCreds); err != nil {
			return err
		}
	}
	res, err := encrypt.Image(ctx, src, dst, opts)
	if err != nil {
		return err
	}
	fmt.Fprintln(inv.stdout, res.ManifestDigest)
	return nil
}

// intList is a repeatable integer flag.
type intList []int

func (l *intList) String() string { return fmt.Sprint([]int(*l)) }
func (l *intList) Set(v string) error {
	n, err := strconv.Atoi(v)
	if err != nil {
		return fmt.Errorf("not an integer")
	}
	*l = append(*l, n)
	return nil
}
