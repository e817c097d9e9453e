package idleread

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

const idle = 400 * time.Millisecond

// server serves handler; a handler that stalls waits for the client to go
// away or the test to end.
func server(t *testing.T, handler func(w http.ResponseWriter, r *http.Request, stall func())) string {
	t.Helper()
	done := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		handler(w, r, func() {
			select {
			case <-r.Context().Done():
			case <-done:
			}
		})
	}))
	t.Cleanup(func() { close(done); srv.Close() })
	return srv.URL
}

func get(ctx context.Context, t *testing.T, url string, idle time.Duration, slowReader time.Duration) (string, error) {
	t.Helper()
	client := &http.Client{Transport: &Transport{Next: http.DefaultTransport, Idle: idle}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := client.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	var got strings.Builder
	buf := make([]byte, 4)
	for {
		n, err := resp.Body.Read(buf)
		got.Write(buf[:n])
		if err == io.EOF {
			return got.String(), nil
		}
		if err != nil {
			return got.String(), err
		}
		time.Sleep(slowReader)
	}
}

func TestTransport(t *testing.T) {
	half := strings.Repeat("x", 1000)
	for _, tc := range []struct {
		name    string
		handler func(w http.ResponseWriter, r *http.Request, stall func())
		idle    time.Duration
		// slow makes the client pause between its reads of the body.
		slow time.Duration
		// want is the body read, and wantHeaders whether the timeout came
		// before the response (nil error when wantTimeout is false).
		want        string
		wantTimeout bool
		wantHeaders bool
	}{
		{
			name:        "no answer",
			handler:     func(w http.ResponseWriter, r *http.Request, stall func()) { stall() },
			idle:        idle,
			wantTimeout: true, wantHeaders: true,
		},
		{
			name: "body stalls mid-way",
			handler: func(w http.ResponseWriter, r *http.Request, stall func()) {
				w.Header().Set("Content-Length", "2000")
				io.WriteString(w, half)
				w.(http.Flusher).Flush()
				stall()
			},
			idle:        idle,
			want:        half,
			wantTimeout: true,
		},
		{
			name: "slow but moving",
			handler: func(w http.ResponseWriter, r *http.Request, stall func()) {
				for range 8 {
					io.WriteString(w, "ab")
					w.(http.Flusher).Flush()
					time.Sleep(idle / 4)
				}
			},
			idle: idle,
			want: strings.Repeat("ab", 8),
		},
		{
			// The client pauses longer than idle between two reads; the
			// second chunk arrives after the pause, within idle of the
			// read that waits for it.
			name: "slow reader",
			handler: func(w http.ResponseWriter, r *http.Request, stall func()) {
				io.WriteString(w, "0123")
				w.(http.Flusher).Flush()
				time.Sleep(2*idle + idle/2)
				io.WriteString(w, "4567")
			},
			idle: idle,
			slow: 2 * idle,
			want: "01234567",
		},
		{
			name: "turned off",
			handler: func(w http.ResponseWriter, r *http.Request, stall func()) {
				w.(http.Flusher).Flush()
				time.Sleep(2 * idle)
				io.WriteString(w, "late")
			},
			idle: 0,
			want: "late",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			got, err := get(ctx, t, server(t, tc.handler), tc.idle, tc.slow)
			if got != tc.want {
				t.Errorf("body %q, want %q", got, tc.want)
			}
			if !tc.wantTimeout {
				if err != nil {
					t.Fatalf("error %v, want none", err)
				}
				return
			}
			var te *TimeoutError
			if !errors.As(err, &te) || te.Headers != tc.wantHeaders || te.Idle != tc.idle {
				t.Fatalf("error %v, want a TimeoutError of %s (headers %v)", err, tc.idle, tc.wantHeaders)
			}
			var ne net.Error
			if !errors.As(err, &ne) || !ne.Timeout() {
				t.Errorf("%v is not a net.Error timeout", err)
			}
			if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("an idle timeout reads as the caller's cancellation: %v", err)
			}
		})
	}
}

// TestCallerDeadline: the caller's own deadline ends a request, long
// before the idle time, and is reported as the caller's.
func TestCallerDeadline(t *testing.T) {
	url := server(t, func(w http.ResponseWriter, r *http.Request, stall func()) { stall() })
	ctx, cancel := context.WithTimeout(context.Background(), idle)
	defer cancel()
	_, err := get(ctx, t, url, time.Hour, 0)
	var te *TimeoutError
	if !errors.Is(err, context.DeadlineExceeded) || errors.As(err, &te) {
		t.Fatalf("error %v, want the caller's context.DeadlineExceeded", err)
	}
}
