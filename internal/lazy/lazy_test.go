package lazy

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestLazy: what the first requests need (the policy, the KBS client) is
// built once for all the callers waiting, whoever gives up, and built again
// after a failure.
func TestLazy(t *testing.T) {
	var builds atomic.Int32
	release := make(chan struct{})
	fail := true
	l := New(func(ctx context.Context) (int, error) {
		n := builds.Add(1)
		<-release
		if ctx.Err() != nil {
			return 0, ctx.Err()
		}
		if fail {
			return 0, errors.New("KBS unreachable")
		}
		return int(n), nil
	}, time.Minute)

	// A caller that gives up does not end the build for the others.
	impatient, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { _, err := l.Get(impatient); errc <- err }()
	for builds.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	var wg sync.WaitGroup
	results := make([]error, 4)
	for i := range results {
		wg.Add(1)
		go func() { defer wg.Done(); _, results[i] = l.Get(context.Background()) }()
	}
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Errorf("the impatient caller: %v", err)
	}
	time.Sleep(10 * time.Millisecond) // the others are waiting on the one build
	close(release)
	wg.Wait()
	for i, err := range results {
		if err == nil || err.Error() != "KBS unreachable" {
			t.Errorf("caller %d: %v, want the shared build's failure", i, err)
		}
	}
	if n := builds.Load(); n != 1 {
		t.Fatalf("%d builds for 5 concurrent callers, want 1", n)
	}

	// The next need tries again, and a success is kept.
	fail = false
	for i := 0; i < 3; i++ {
		v, err := l.Get(context.Background())
		if err != nil || v != 2 {
			t.Fatalf("get after the failure: %d, %v; want the second build's 2", v, err)
		}
	}
	if n := builds.Load(); n != 2 {
		t.Errorf("%d builds, want 2", n)
	}
}

// TestReset: a reset value is built anew at the next need, and a build
// that was under way when it was reset answers its callers but is not kept.
func TestReset(t *testing.T) {
	var builds atomic.Int32
	gate := make(chan struct{}, 1)
	v := New(func(ctx context.Context) (int, error) {
		n := builds.Add(1)
		if n == 2 {
			<-gate // the build the reset overtakes
		}
		return int(n), nil
	}, time.Minute)
	if got, err := v.Get(context.Background()); err != nil || got != 1 {
		t.Fatalf("first Get: %d, %v", got, err)
	}
	if old, ok := v.Reset(); !ok || old != 1 {
		t.Fatalf("Reset returned %d, %v; want the value it held", old, ok)
	}
	if _, ok := v.Peek(); ok {
		t.Fatal("a value after Reset")
	}
	stale := make(chan int)
	go func() { got, _ := v.Get(context.Background()); stale <- got }()
	for builds.Load() < 2 {
		time.Sleep(time.Millisecond)
	}
	v.Reset() // while build 2 runs
	if got, err := v.Get(context.Background()); err != nil || got != 3 {
		t.Fatalf("Get after the second Reset: %d, %v; want build 3", got, err)
	}
	gate <- struct{}{}
	if got := <-stale; got != 2 {
		t.Errorf("the caller of the overtaken build got %d, want its build's 2", got)
	}
	if got, _ := v.Peek(); got != 3 {
		t.Errorf("kept value %d, want 3: the overtaken build must not replace it", got)
	}
}
