// Command dev-kbs is a development Key Broker Service for tests and demos.
// It speaks Trustee's KBS protocol (kbs-types 0.4.0), verifies TPM evidence
// against registered attestation keys and PCR reference values, and serves
// resources from a directory as JWEs encrypted to the attested tee key.
// It is not for production and never ships into the guest.
package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/guest-puller/guest-puller/internal/devkbs"
)

const usage = `usage: dev-kbs --resources DIR [flags]

A development KBS speaking Trustee's protocol (POST /kbs/v0/auth,
POST /kbs/v0/attest, GET /kbs/v0/resource/<repo>/<type>/<tag>).
Resources are the files DIR/<repo>/<type>/<tag>, sent as a JWE encrypted to
the tee key the guest attested with.

Evidence: tpm is verified (quote signed by a registered AK, nonce and tee key
bound in extraData, PCRs hash to the quoted digest and match --pcrs). sample
is refused unless --allow-sample. tdx and snp are refused: dev-kbs has no
verifier for them.

Measured state: init-data sent in the attest request ({"format": "toml",
"body": …}) must match its binding in the quoted PCR 8 (SHA-256 of 32 zero
bytes and the document's digest); an event log sent with TPM evidence
(aa_eventlog: the attestation-agent's raw AAEL, INIT entry first) must
replay to the quoted --eventlog-pcr. The events it proves are logged.

Flags:
  --listen ADDR        address to serve on (default 127.0.0.1:8080; port 0
                       picks a free port). Once serving, dev-kbs prints
                       "dev-kbs listening on URL" to stderr.
  --resources DIR      resource directory (required)
  --tpm-ak FILE        PEM public key of a trusted TPM attestation key, as
                       "guest-puller attest ak" prints it; repeatable
  --pcrs FILE          PCR reference values: {"<index>": ["<sha256 hex>", …]};
                       PCRs not listed are unconstrained
  --allow-sample       accept sample evidence (proves nothing; development only)
  --rules FILE         which tee types may read which resources:
                       {"rules": [{"tee": ["tpm"], "resources": ["default/key/*"]}]}
                       (path.Match patterns over repo/type/tag; "*" matches
                       any tee). Default: any verified evidence reads everything.
  --eventlog-pcr N     the PCR a TPM guest's event log replays to (default 14,
                       where guest-puller logs image pulls on a TPM)
  --session-ttl DUR    lifetime of a challenge and its session (default 5m)
  --token-ttl DUR      lifetime of an attestation token (default 5m)
  --tls-cert FILE      serve HTTPS with this certificate chain (PEM) ...
  --tls-key FILE       ... and this private key (PEM); both or neither
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

// stringList is a repeatable flag.
type stringList []string

func (l *stringList) String() string     { return strings.Join(*l, ",") }
func (l *stringList) Set(v string) error { *l = append(*l, v); return nil }

type options struct {
	listen, resources, pcrs, rules, tlsCert, tlsKey string
	aks                                             stringList
	allowSample                                     bool
	eventLogPCR                                     int
	sessionTTL, tokenTTL                            time.Duration
}

func parseFlags(args []string, stdout io.Writer) (*options, error) {
	var o options
	fs := flag.NewFlagSet("dev-kbs", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.StringVar(&o.listen, "listen", "127.0.0.1:8080", "")
	fs.StringVar(&o.resources, "resources", "", "")
	fs.Var(&o.aks, "tpm-ak", "")
	fs.StringVar(&o.pcrs, "pcrs", "", "")
	fs.BoolVar(&o.allowSample, "allow-sample", false, "")
	fs.StringVar(&o.rules, "rules", "", "")
	fs.IntVar(&o.eventLogPCR, "eventlog-pcr", devkbs.DefaultEventLogPCR, "")
	fs.DurationVar(&o.sessionTTL, "session-ttl", 5*time.Minute, "")
	fs.DurationVar(&o.tokenTTL, "token-ttl", 5*time.Minute, "")
	fs.StringVar(&o.tlsCert, "tls-cert", "", "")
	fs.StringVar(&o.tlsKey, "tls-key", "", "")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(stdout, usage)
		}
		return nil, err
	}
	switch {
	case fs.NArg() != 0:
		return nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	case o.resources == "":
		return nil, errors.New("--resources is required")
	case (o.tlsCert == "") != (o.tlsKey == ""):
		return nil, errors.New("--tls-cert and --tls-key go together")
	case o.sessionTTL <= 0 || o.tokenTTL <= 0:
		return nil, errors.New("--session-ttl and --token-ttl must be positive")
	case o.eventLogPCR < 1 || o.eventLogPCR > 23:
		return nil, errors.New("--eventlog-pcr must be a PCR 1-23 (PCR 0 holds the firmware's own measurements)")
	}
	return &o, nil
}

func config(o *options, log *slog.Logger) (devkbs.Config, error) {
	cfg := devkbs.Config{
		Resources:   o.resources,
		AllowSample: o.allowSample,
		EventLogPCR: o.eventLogPCR,
		SessionTTL:  o.sessionTTL,
		TokenTTL:    o.tokenTTL,
		Logger:      log,
	}
	for _, f := range o.aks {
		der, err := devkbs.LoadAK(f)
		if err != nil {
			return cfg, err
		}
		cfg.TrustedAKs = append(cfg.TrustedAKs, der)
	}
	if o.pcrs != "" {
		ref, err := devkbs.LoadPCRReference(o.pcrs)
		if err != nil {
			return cfg, err
		}
		cfg.PCRs = ref
	}
	if o.rules != "" {
		rules, err := devkbs.LoadRules(o.rules)
		if err != nil {
			return cfg, err
		}
		cfg.Rules = rules
	}
	return cfg, nil
}

// run serves until ctx ends. It returns the exit code: 2 for bad usage or
// configuration, 1 for a failure while serving.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	o, err := parseFlags(args, stdout)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "dev-kbs: %v (see dev-kbs --help)\n", err)
		return 2
	}
	log := slog.New(slog.NewTextHandler(stderr, nil))
	cfg, err := config(o, log)
	if err != nil {
		fmt.Fprintf(stderr, "dev-kbs: %v\n", err)
		return 2
	}
	if len(cfg.TrustedAKs) == 0 && !cfg.AllowSample {
		log.Warn("no --tpm-ak and no --allow-sample: every attestation will be refused")
	}
	kbs, err := devkbs.New(cfg)
	if err != nil {
		fmt.Fprintf(stderr, "dev-kbs: %v\n", err)
		return 2
	}
	defer kbs.Close()

	srv := &http.Server{
		Handler:           kbs,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	scheme := "http"
	if o.tlsCert != "" {
		cert, err := tls.LoadX509KeyPair(o.tlsCert, o.tlsKey)
		if err != nil {
			fmt.Fprintf(stderr, "dev-kbs: TLS: %v\n", err)
			return 2
		}
		srv.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}}
		scheme = "https"
	}
	l, err := net.Listen("tcp", o.listen)
	if err != nil {
		fmt.Fprintf(stderr, "dev-kbs: %v\n", err)
		return 1
	}
	fmt.Fprintf(stderr, "dev-kbs listening on %s://%s\n", scheme, l.Addr())

	errc := make(chan error, 1)
	go func() {
		if srv.TLSConfig != nil {
			errc <- srv.ServeTLS(l, "", "")
		} else {
			errc <- srv.Serve(l)
		}
	}()
	select {
	case err := <-errc:
		fmt.Fprintf(stderr, "dev-kbs: %v\n", err)
		return 1
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		fmt.Fprintf(stderr, "dev-kbs: shutdown: %v\n", err)
		return 1
	}
	return 0
}
