package attest

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/url"
	"time"
)

const mssimScheme = "mssim://"

// Microsoft TPM simulator protocol (TPM reference implementation,
// TpmTcpProtocol.h), as swtpm's --server type=tcp speaks it.
const (
	mssimSendCommand = 8
	mssimSessionEnd  = 20
	// mssimMaxResponse bounds what a (possibly hostile) simulator can make
	// us allocate; TPM responses are a few KiB.
	mssimMaxResponse = 1 << 20
)

// mssimTPM is a TPM reached over the simulator's command port. go-tpm's tcp
// transport reads a response with a single Read, which a TCP stream may
// split, and insists on the platform port, which swtpm started with
// startup-clear does not need.
type mssimTPM struct {
	conn net.Conn
	stop func() bool
}

// dialMSSIM connects to mssim://HOST:PORT. Cancelling ctx aborts a command
// in flight.
func dialMSSIM(ctx context.Context, uri string) (*mssimTPM, error) {
	addr, err := mssimAddr(uri)
	if err != nil {
		return nil, err
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("tpm simulator %s: %w", addr, err)
	}
	t := &mssimTPM{conn: conn}
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	t.stop = context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	return t, nil
}

// mssimAddr returns HOST:PORT of mssim://HOST:PORT.
func mssimAddr(uri string) (string, error) {
	u, err := url.Parse(uri)
	if err != nil || u.Scheme+"://" != mssimScheme || u.Hostname() == "" || u.Port() == "" ||
		(u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.User != nil {
		return "", fmt.Errorf("tpm %q: want mssim://HOST:PORT", uri)
	}
	return u.Host, nil
}

// Send implements go-tpm's transport.TPM.
func (t *mssimTPM) Send(cmd []byte) ([]byte, error) {
	msg := make([]byte, 9, 9+len(cmd))
	binary.BigEndian.PutUint32(msg[0:], mssimSendCommand)
	msg[4] = 0 // locality
	binary.BigEndian.PutUint32(msg[5:], uint32(len(cmd)))
	msg = append(msg, cmd...)
	if _, err := t.conn.Write(msg); err != nil {
		return nil, fmt.Errorf("tpm simulator: send: %w", err)
	}
	var hdr [4]byte
	if _, err := io.ReadFull(t.conn, hdr[:]); err != nil {
		return nil, fmt.Errorf("tpm simulator: response length: %w", err)
	}
	n := binary.BigEndian.Uint32(hdr[:])
	if n > mssimMaxResponse {
		return nil, fmt.Errorf("tpm simulator: response of %d bytes is too large", n)
	}
	rsp := make([]byte, n)
	if _, err := io.ReadFull(t.conn, rsp); err != nil {
		return nil, fmt.Errorf("tpm simulator: response: %w", err)
	}
	if _, err := io.ReadFull(t.conn, hdr[:]); err != nil {
		return nil, fmt.Errorf("tpm simulator: acknowledgement: %w", err)
	}
	if ack := binary.BigEndian.Uint32(hdr[:]); ack != 0 {
		return nil, fmt.Errorf("tpm simulator: command failed with transport code %d", ack)
	}
	if n == 0 {
		return nil, fmt.Errorf("tpm simulator: empty response (is the TPM powered on and started?)")
	}
	return rsp, nil
}

// Close ends the simulator session so it accepts the next client at once.
func (t *mssimTPM) Close() error {
	t.stop()
	var msg [4]byte
	binary.BigEndian.PutUint32(msg[:], mssimSessionEnd)
	t.conn.Write(msg[:]) // best effort: the close below is what matters
	return t.conn.Close()
}
