package config

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/guest-puller/guest-puller/attest"
	"github.com/guest-puller/guest-puller/internal/errdefs"
	"github.com/guest-puller/guest-puller/internal/lazy"
	"github.com/guest-puller/guest-puller/policy"
)

// LoadPolicy reads the policy at path (a file or a kbs:/// resource) with
// key paths resolved by read, relative ones against the policy's directory.
func LoadPolicy(ctx context.Context, path string, read policy.ReadFunc) (*policy.Policy, error) {
	data, err := read(ctx, path)
	if err != nil {
		if errors.Is(err, errdefs.ErrNotFound) {
			// A policy that does not exist is a configuration problem
			// wherever it was to come from (exit 2), not a refusal to
			// decrypt; a KBS that refuses the attestation stays exit 4.
			return nil, fmt.Errorf("policy %s: %w: it does not exist: %w", path, errdefs.ErrInvalidConfig, err)
		}
		return nil, fmt.Errorf("policy %s: %w", path, err)
	}
	base := ""
	if !isKBS(path) {
		base = filepath.Dir(path)
	}
	return ParsePolicy(ctx, path, data, base, read)
}

// ParsePolicy loads a policy read from where (named in its errors), with
// key paths resolved by read, relative ones against base. A policy without
// a directory of its own (base ""; one from the KBS or inline in a config
// file) refuses a relative key path, which would silently mean one of the
// guest's working directory.
func ParsePolicy(ctx context.Context, where string, data []byte, base string, read policy.ReadFunc) (*policy.Policy, error) {
	if base == "" {
		next := read
		read = func(ctx context.Context, p string) ([]byte, error) {
			if !isKBS(p) && !filepath.IsAbs(p) {
				return nil, fmt.Errorf("%w: key path %q is relative, and a policy from the KBS or a config file has no directory to resolve it against: use an absolute path or kbs:///", errdefs.ErrInvalidConfig, p)
			}
			return next(ctx, p)
		}
	}
	p, err := policy.Load(ctx, data, policy.LoadOptions{BaseDir: base, Read: read})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", where, err)
	}
	return p, nil
}

func isKBS(path string) bool { return strings.HasPrefix(path, "kbs://") }

// resources reads local files and kbs:/// resources. The KBS client, and
// with it attestation, is only set up when a kbs:// resource is first
// needed, so a pull that needs none works without a TEE or TPM; one that
// cannot be set up (no TPM yet) is tried again at the next need.
type resources struct {
	cfg    Config
	client *lazy.Value[*attest.Client]
}

func newResources(cfg Config) *resources {
	r := &resources{cfg: cfg}
	r.client = lazy.New(func(context.Context) (*attest.Client, error) { return r.newClient() }, daemonBuildTimeout)
	return r
}

// read is a policy.ReadFunc: a kbs:/// resource or a local file.
func (r *resources) read(ctx context.Context, path string) ([]byte, error) {
	if isKBS(path) {
		return r.GetResource(ctx, path)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		// A missing or unreadable local file is a configuration problem
		// (exit 2) where it is the policy itself; a key file the policy
		// names refuses only the scopes that use it (exit 3), and its
		// refusal must not also call itself "invalid configuration". So
		// the kind is attached without its words.
		return nil, errdefs.Kind(errdefs.ErrInvalidConfig, err)
	}
	return data, nil
}

// GetResource implements decrypt.ResourceGetter.
func (r *resources) GetResource(ctx context.Context, uri string) ([]byte, error) {
	c, err := r.client.Get(ctx)
	if err != nil {
		return nil, err
	}
	return c.GetResource(ctx, uri)
}

func (r *resources) newClient() (*attest.Client, error) {
	if r.cfg.KBS == "" {
		return nil, fmt.Errorf("%w: a kbs:// resource needs --kbs", errdefs.ErrInvalidConfig)
	}
	kind := r.cfg.Attester
	if kind == "" {
		kind = "auto"
	}
	att, err := attest.NewAttester(kind, attest.AttesterOptions{TPM: r.cfg.TPM})
	if err != nil {
		// No evidence, no KBS resource: exit 4 as when the KBS refuses,
		// unless --attester itself is wrong (exit 2). attest's error
		// names the attester.
		if errors.Is(err, errdefs.ErrInvalidConfig) {
			return nil, err
		}
		return nil, errdefs.Kind(errdefs.ErrDecrypt, err)
	}
	opts := attest.ClientOptions{IdleTimeout: time.Duration(r.cfg.IdleTimeout)}
	if r.cfg.KBSCert != "" {
		if opts.CACert, err = os.ReadFile(r.cfg.KBSCert); err != nil {
			return nil, fmt.Errorf("--kbs-cert: %w: %w", errdefs.ErrInvalidConfig, err)
		}
	}
	return attest.NewClient(r.cfg.KBS, att, opts)
}
