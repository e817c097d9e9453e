package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/guest-puller/guest-puller/api"
	"github.com/guest-puller/guest-puller/attest"
	"github.com/guest-puller/guest-puller/internal/cdh"
	"github.com/guest-puller/guest-puller/internal/cdhconfig"
	"github.com/guest-puller/guest-puller/internal/errdefs"
)

// cdhName is the name kata-agent runs the confidential-data-hub by
// (/usr/local/bin/confidential-data-hub): guest-puller installed, or
// symlinked, under it is `guest-puller cdh`.
const cdhName = "confidential-data-hub"

// DefaultInitData is where kata-agent writes the guest's init-data.
const DefaultInitData = "/run/confidential-containers/initdata/initdata.toml"

// cmdCDH is guest-puller as a drop-in for the confidential-data-hub:
// CDH's configuration and its four ttrpc services on its socket.
func cmdCDH(ctx context.Context, inv *invocation) error {
	f := inv.flags(`Be the confidential-data-hub that kata-agent starts: the same binary run as
confidential-data-hub (kata-agent runs /usr/local/bin/confidential-data-hub,
with -c /run/confidential-containers/initdata/cdh.toml when that file
exists). It reads CDH's TOML configuration, or without one CDH's defaults and
the kernel command line (agent.aa_kbc_params, agent.image_policy_file, …),
opens the socket (default unix:///run/confidential-containers/cdh.sock) at
once, and serves CDH's ImagePullService, GetResourceService,
SealedSecretService and SecureMountService. The policy, registry files and
the KBS are loaded or contacted at the first request that needs them; a
failure there fails that request, not the daemon. Evidence comes from the
attestation-agent when its socket exists, else from configfs-tsm or the TPM.
Each pull is recorded as CDH records it (a PullImage event in the
attestation-agent's event log, or in guest-puller's own with its TPM).
SIGTERM or SIGINT stops the daemon and removes the socket.`)
	cfgFile := f.fs.String("c", "", "the confidential-data-hub's TOML config `FILE` (default: CDH's defaults and the kernel command line)")
	attester := f.fs.String("attester", "auto", "evidence `KIND`: auto (the attestation-agent if its socket exists, else configfs-tsm, then TPM), aa, tpm, tsm or sample (development only)")
	tpm := f.fs.String("tpm", "", "TPM `PATH` (a device) or mssim://HOST:PORT (a simulator such as swtpm) (default /dev/tpmrm0)")
	initData := f.fs.String("initdata", "", "the guest's init-data `FILE`, sent to the KBS and, with the TPM, bound into PCR 8 (default "+DefaultInitData+" if it exists)")
	eventLog := f.fs.String("eventlog", cdh.DefaultEventLog, "`FILE` of the event log of pulls, when guest-puller attests with its own TPM")
	eventLogPCR := f.fs.Int("eventlog-pcr", attest.DefaultTPMEventLogPCR, "the `PCR` the event log's entries are extended into: one an operating system may extend but not reset, 1-15 but 8 (init-data's); a TPM keeps 17-22, the attestation-agent's 17 among them, for a higher locality than an operating system's")
	gcEvery := f.fs.Duration("gc-interval", DefaultGCInterval, "every `DURATION`, reclaim what containers left once their bundle directory is gone, and layers nothing uses any more; 0 turns it off")
	if _, err := f.parse(inv.args, 0); err != nil {
		return err
	}
	inv.credsHint = ""
	if err := checkEventLogPCR(*eventLogPCR); err != nil {
		return err
	}
	cfg, err := cdhconfig.Load(*cfgFile, cdhconfig.SystemEnv())
	if err != nil {
		return err
	}
	id, err := loadInitData(*initData)
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(inv.stderr, &slog.HandlerOptions{Level: logLevel(cfg.LogLevel)}))
	hub, err := cdh.New(ctx, cdh.Options{
		Config:      cfg,
		Attester:    *attester,
		TPM:         *tpm,
		InitData:    id,
		EventLog:    *eventLog,
		EventLogPCR: *eventLogPCR,
		Log:         log,
		Version:     version(),
	})
	if err != nil {
		return err
	}
	defer hub.Close()
	hub.LogStart(cfg.Socket)
	if len(cfg.Credentials) > 0 {
		go hub.FetchCredentials(ctx)
	}
	opts := hub.ServiceOptions()
	opts.GCInterval = *gcEvery
	return api.Serve(ctx, api.New(opts), cfg.Socket)
}

// loadInitData reads the init-data file: the one named, or kata-agent's
// when it exists.
func loadInitData(path string) (*attest.InitData, error) {
	if path == "" {
		if _, err := os.Stat(DefaultInitData); errors.Is(err, os.ErrNotExist) {
			return nil, nil
		}
		path = DefaultInitData
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("--initdata: %w: %w", errdefs.ErrInvalidConfig, err)
	}
	d, err := attest.ParseInitData(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return d, nil
}

// checkEventLogPCR refuses, at start, a PCR the event log of pulls cannot
// use; otherwise every request would fail at the first attestation, or
// the log would prove nothing.
func checkEventLogPCR(pcr int) error {
	var why string
	switch {
	case pcr >= 17 && pcr <= 22:
		// TCG PC Client Platform TPM Profile: PCRs 17-22 belong to the
		// dynamic root of trust. Linux reaches its TPM at locality 0
		// (tpm_request_locality), and so does every process in the
		// guest; the TPM answers TPM_RC_LOCALITY.
		why = "a TPM lets only localities 2-4 extend PCRs 17-22 (the dynamic root of trust's), and an operating system reaches its TPM at locality 0, so the attestation-agent's PCR 17 is out of reach (docs/cdh.md, measured pulls)"
	case pcr == 16 || pcr == 23:
		why = "locality 0 may reset it, so any root process could erase the log's history"
	case pcr == attest.InitDataPCR:
		why = "it holds the init-data binding"
	case pcr == 0:
		why = "it holds the firmware's own measurements"
	case pcr < 0 || pcr > 23:
		why = "a TPM has PCRs 0-23"
	default:
		return nil
	}
	return fmt.Errorf("--eventlog-pcr %d: %w: %s; want 1-15 but 8", pcr, errdefs.ErrInvalidConfig, why)
}

func logLevel(s string) slog.Level {
	switch s {
	case "trace", "debug":
		return slog.LevelDebug
	case "warn":
		return slog.LevelWarn
	case "error":
		return slog.LevelError
	}
	return slog.LevelInfo
}

// cdhArgs turns a run under the confidential-data-hub's name into
// `guest-puller cdh ARGS`.
func cdhArgs(argv0 string, args []string) []string {
	if filepath.Base(argv0) == cdhName {
		return append([]string{"cdh"}, args...)
	}
	return args
}
