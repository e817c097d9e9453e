package lazy

import (
	"context"
	"sync"
	"time"

	"golang.org/x/sync/singleflight"
)

// Value is a value built at first need. The build is shared work: it runs
// once for all the callers waiting on it, under none of their contexts (a
// caller that gives up does not end it for the others) but bounded by a
// timeout of its own, and a failed build is tried again at the next need.
// A Value is safe for concurrent use.
type Value[T any] struct {
	build   func(ctx context.Context) (T, error)
	timeout time.Duration

	flight singleflight.Group
	mu     sync.Mutex
	val    T
	ok     bool
	// gen counts Resets: a build started before one is not kept.
	gen uint64
}

// New returns a Value that build makes; each build may run for timeout.
func New[T any](build func(ctx context.Context) (T, error), timeout time.Duration) *Value[T] {
	return &Value[T]{build: build, timeout: timeout}
}

// Peek returns the value if it is built, without building it.
func (v *Value[T]) Peek() (T, bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.val, v.ok
}

// Reset forgets the value, so that the next Get builds it anew, and
// returns what it held, for the caller to release. A build running now
// still answers the callers waiting on it, but its value is not kept.
func (v *Value[T]) Reset() (T, bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	old, ok := v.val, v.ok
	var zero T
	v.val, v.ok = zero, false
	v.gen++
	v.flight.Forget("")
	return old, ok
}

// Get returns the value, building it if it is not built yet, or waiting
// for the build under way. It returns when ctx ends, the build going on
// for the other callers.
func (v *Value[T]) Get(ctx context.Context) (T, error) {
	if val, ok := v.Peek(); ok {
		return val, nil
	}
	ch := v.flight.DoChan("", func() (any, error) {
		v.mu.Lock()
		val, ok, gen := v.val, v.ok, v.gen
		v.mu.Unlock()
		if ok {
			return val, nil
		}
		bctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), v.timeout)
		defer cancel()
		val, err := v.build(bctx)
		if err != nil {
			return nil, err
		}
		v.mu.Lock()
		if v.gen == gen {
			v.val, v.ok = val, true
		}
		v.mu.Unlock()
		return val, nil
	})
	var zero T
	select {
	case <-ctx.Done():
		return zero, ctx.Err()
	case r := <-ch:
		if r.Err != nil {
			return zero, r.Err
		}
		return r.Val.(T), nil
	}
}
