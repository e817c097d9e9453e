// Command vmguest runs inside a VM test's guest (see package vm). As
// `vmguest agent DEVICE` it is the host's hands in the guest: it answers
// each command request (wire.Request) arriving on a serial port with the
// command's result. As `vmguest pull-image SOCKET IMAGE BUNDLE` it makes
// the call kata-agent makes to the confidential-data-hub to pull an image.
// As `vmguest tpm-hierarchies DEVICE` it checks that the firmware left the
// TPM's owner and endorsement hierarchies enabled.
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/containerd/ttrpc"
	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport/linuxtpm"
	"golang.org/x/sys/unix"

	"github.com/guest-puller/guest-puller/api/cdhpb"
	"github.com/guest-puller/guest-puller/tests/vm/wire"
)

func main() {
	var err error
	switch {
	case len(os.Args) == 3 && os.Args[1] == "agent":
		err = agent(os.Args[2])
	case len(os.Args) == 5 && os.Args[1] == "pull-image":
		err = pullImage(os.Args[2], os.Args[3], os.Args[4])
	case len(os.Args) >= 5 && os.Args[1] == "secure-mount":
		err = secureMount(os.Args[2], os.Args[3], os.Args[4], os.Args[5:])
	case len(os.Args) == 3 && os.Args[1] == "tpm-hierarchies":
		err = tpmHierarchies(os.Args[2])
	default:
		err = errors.New("usage: vmguest agent DEVICE | pull-image SOCKET IMAGE BUNDLE | secure-mount SOCKET VOLUME_TYPE MOUNT_POINT [KEY=VALUE]… | tpm-hierarchies DEVICE")
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "vmguest:", err)
		os.Exit(1)
	}
}

// agent serves requests on the serial port dev until it closes.
func agent(dev string) error {
	f, err := os.OpenFile(dev, os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := makeRaw(int(f.Fd())); err != nil {
		return fmt.Errorf("%s: %w", dev, err)
	}
	enc := json.NewEncoder(f)
	var uts unix.Utsname
	unix.Uname(&uts)
	if err := enc.Encode(wire.Hello{Ready: true, Kernel: unix.ByteSliceToString(uts.Release[:])}); err != nil {
		return err
	}
	r := bufio.NewReaderSize(f, 1<<20)
	for {
		line, err := r.ReadBytes('\n')
		if err != nil {
			return err
		}
		line = bytes.TrimSpace(line)
		if len(line) == 0 {
			continue
		}
		var req wire.Request
		if err := json.Unmarshal(line, &req); err != nil {
			// Keep going: the host sees no answer and says so.
			fmt.Fprintf(os.Stderr, "vmguest: bad request %q: %v\n", line, err)
			continue
		}
		if err := enc.Encode(run(req)); err != nil {
			return err
		}
	}
}

// makeRaw puts the tty in raw mode: no echo, no line editing, no newline
// translation, 8-bit clean.
func makeRaw(fd int) error {
	t, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if err != nil {
		return err
	}
	t.Iflag &^= unix.IGNBRK | unix.BRKINT | unix.PARMRK | unix.ISTRIP | unix.INLCR | unix.IGNCR | unix.ICRNL | unix.IXON | unix.IXOFF
	t.Oflag &^= unix.OPOST
	t.Lflag &^= unix.ECHO | unix.ECHONL | unix.ICANON | unix.ISIG | unix.IEXTEN
	t.Cflag &^= unix.CSIZE | unix.PARENB | unix.CRTSCTS
	t.Cflag |= unix.CS8 | unix.CLOCAL | unix.CREAD
	t.Cc[unix.VMIN], t.Cc[unix.VTIME] = 1, 0
	return unix.IoctlSetTermios(fd, unix.TCSETS, t)
}

func run(req wire.Request) wire.Response {
	resp := wire.Response{ID: req.ID}
	if len(req.Argv) == 0 {
		resp.Code, resp.Error = -1, "empty argv"
		return resp
	}
	timeout := time.Duration(req.TimeoutSeconds) * time.Second
	if timeout <= 0 {
		timeout = 5 * time.Minute
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, req.Argv[0], req.Argv[1:]...)
	cmd.Env = append(os.Environ(), req.Env...)
	cmd.Stdin = bytes.NewReader(req.Stdin)
	// Children that outlive the command (a daemon it starts) must not hold
	// the pipes open.
	cmd.WaitDelay = 5 * time.Second
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	resp.Stdout, resp.Stderr = stdout.Bytes(), stderr.Bytes()
	var ee *exec.ExitError
	switch {
	case ctx.Err() != nil:
		resp.Code, resp.Error = -1, fmt.Sprintf("killed after %v", timeout)
	case errors.As(err, &ee):
		resp.Code = ee.ExitCode()
	case err != nil:
		resp.Code, resp.Error = -1, err.Error()
	}
	return resp
}

// dial connects to the daemon's ttrpc socket, a path or a unix:// URI.
func dial(ctx context.Context, socket string) (*ttrpc.Client, error) {
	conn, err := (&net.Dialer{}).DialContext(ctx, "unix", strings.TrimPrefix(socket, "unix://"))
	if err != nil {
		return nil, err
	}
	return ttrpc.NewClient(conn), nil
}

// secureMount calls api.SecureMountService/SecureMount as kata-agent does
// for its trusted storage (rpc.rs cdh_secure_mount: the mount point made
// first, then the call).
func secureMount(socket, volumeType, mountPoint string, opts []string) error {
	if err := os.MkdirAll(mountPoint, 0o755); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	client, err := dial(ctx, socket)
	if err != nil {
		return err
	}
	defer client.Close()
	req := &cdhpb.SecureMountRequest{VolumeType: volumeType, MountPoint: mountPoint, Options: map[string]string{}}
	for _, kv := range opts {
		k, v, _ := strings.Cut(kv, "=")
		req.Options[k] = v
	}
	_, err = cdhpb.NewSecureMountServiceClient(client).SecureMount(ctx, req)
	return err
}

// pullImage calls api.ImagePullService/PullImage on the ttrpc socket as
// kata-agent does (confidential_data_hub::pull_image: the bundle directory
// made first, then the call), and prints the response as JSON.
func pullImage(socket, image, bundle string) error {
	if err := os.MkdirAll(bundle, 0o755); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	client, err := dial(ctx, socket)
	if err != nil {
		return err
	}
	defer client.Close()
	resp, err := cdhpb.NewImagePullServiceClient(client).PullImage(ctx, &cdhpb.ImagePullRequest{ImageUrl: image, BundlePath: bundle})
	if err != nil {
		return err
	}
	return json.NewEncoder(os.Stdout).Encode(map[string]string{"manifestDigest": resp.ManifestDigest})
}

// tpmHierarchies fails unless the TPM at dev has its owner (storage) and
// endorsement hierarchies enabled. SeaBIOS disables both for the rest of
// the boot when any TPM command of its start-up fails, a timeout included
// (750 ms for TPM2_Startup): the AK persisted under them is then out of
// reach ("TPM_RC_HIERARCHY"), which is the firmware's doing, not the
// attester's.
func tpmHierarchies(dev string) error {
	t, err := linuxtpm.Open(dev)
	if err != nil {
		return err
	}
	defer t.Close()
	rsp, err := tpm2.GetCapability{Capability: tpm2.TPMCapTPMProperties, Property: uint32(tpm2.TPMPTStartupClear), PropertyCount: 1}.Execute(t)
	if err != nil {
		return fmt.Errorf("TPM2_GetCapability(TPM_PT_STARTUP_CLEAR): %w", err)
	}
	props, err := rsp.CapabilityData.Data.TPMProperties()
	if err != nil || len(props.TPMProperty) != 1 || props.TPMProperty[0].Property != tpm2.TPMPTStartupClear {
		return fmt.Errorf("TPM2_GetCapability(TPM_PT_STARTUP_CLEAR): no such property in %+v (%v)", props, err)
	}
	// TPMA_STARTUP_CLEAR: shEnable is bit 1, ehEnable bit 2.
	v := props.TPMProperty[0].Value
	var off []string
	if v&(1<<1) == 0 {
		off = append(off, "owner (storage)")
	}
	if v&(1<<2) == 0 {
		off = append(off, "endorsement")
	}
	switch len(off) {
	case 1:
		return fmt.Errorf("the TPM's %s hierarchy is disabled (TPMA_STARTUP_CLEAR %#x): the firmware found its TPM failing at boot", off[0], v)
	case 2:
		return fmt.Errorf("the TPM's %s hierarchies are disabled (TPMA_STARTUP_CLEAR %#x): the firmware found its TPM failing at boot", strings.Join(off, " and "), v)
	}
	return nil
}
