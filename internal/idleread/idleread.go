package idleread

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync/atomic"
	"time"
)

// DefaultTimeout is the idle time of a registry or KBS connection when the
// configuration sets none: far longer than any pause of a working server
// (registries answer within seconds, blobs stream continuously) and short
// enough that a dead one costs a daemon request half a minute, not hours.
const DefaultTimeout = 30 * time.Second

// TimeoutError says a server sent nothing for Idle while a request waited
// for its answer or its body. It is a net.Error whose Timeout is true.
type TimeoutError struct {
	// Idle is the time waited.
	Idle time.Duration
	// Headers is true when no response had arrived yet; false when the
	// body stalled.
	Headers bool
}

func (e *TimeoutError) Error() string {
	what := "response body"
	if e.Headers {
		what = "response"
	}
	return fmt.Sprintf("no data from the server for %s waiting for the %s (idle timeout)", e.Idle, what)
}

// Timeout and Temporary make a TimeoutError a net.Error.
func (e *TimeoutError) Timeout() bool   { return true }
func (e *TimeoutError) Temporary() bool { return true }

// Transport is an http.RoundTripper that fails a request when its server
// sends nothing for Idle: while waiting for the response, and during each
// read of the body. Idle <= 0 turns it off.
type Transport struct {
	Next http.RoundTripper
	Idle time.Duration
}

// RoundTrip implements http.RoundTripper.
func (t *Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	if t.Idle <= 0 {
		return t.Next.RoundTrip(req)
	}
	parent := req.Context()
	ctx, cancel := context.WithCancelCause(parent)
	w := &watch{parent: parent, ctx: ctx, cancel: cancel, idle: t.Idle}
	w.timer = time.AfterFunc(t.Idle, func() {
		cancel(&TimeoutError{Idle: t.Idle, Headers: !w.answered.Load()})
	})
	resp, err := t.Next.RoundTrip(req.WithContext(ctx))
	w.timer.Stop()
	if err != nil {
		err = w.explain(err)
		cancel(nil)
		return nil, err
	}
	// From here the timer runs during each read of the body.
	w.answered.Store(true)
	resp.Body = &body{ReadCloser: resp.Body, w: w}
	return resp, nil
}

// watch is one request's idle clock.
type watch struct {
	parent, ctx context.Context
	cancel      context.CancelCauseFunc
	idle        time.Duration
	timer       *time.Timer
	answered    atomic.Bool // the response headers arrived
}

// explain returns the idle timeout as the cause of err when it was: the
// transport only reports that the request's context was cancelled. A
// caller's own cancellation or deadline stays what it is.
func (w *watch) explain(err error) error {
	if w.parent.Err() != nil {
		return err
	}
	var te *TimeoutError
	if cause := context.Cause(w.ctx); errors.As(cause, &te) {
		return te
	}
	return err
}

type body struct {
	io.ReadCloser
	w *watch
}

func (b *body) Read(p []byte) (int, error) {
	b.w.timer.Reset(b.w.idle)
	n, err := b.ReadCloser.Read(p)
	b.w.timer.Stop()
	if err != nil && err != io.EOF {
		err = b.w.explain(err)
	}
	return n, err
}

func (b *body) Close() error {
	b.w.timer.Stop()
	err := b.ReadCloser.Close()
	b.w.cancel(nil)
	return err
}
