package patchtest_test

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/hotpatch-dev/hotpatch/patch/patchtest"
)

//go:noinline
func greeting() string { return "hello" }

//go:noinline
func farewell() string { return "bye" }

//go:noinline
func shared() int { return 1 }

// TestFuncPatchesForTheTest patches greeting for this test only; the next
// test checks that the cleanup put it back.
func TestFuncPatchesForTheTest(t *testing.T) {
	patchtest.Func(t, greeting, func() string { return "patched" })
	require.Equal(t, "patched", greeting())
}

// TestFuncCleanupReverted runs after TestFuncPatchesForTheTest: t.Cleanup
// reverted its patch.
func TestFuncCleanupReverted(t *testing.T) {
	require.Equal(t, "hello", greeting())
}

// TestFuncTimeNow replaces time.Now by a closure that captures a variable.
func TestFuncTimeNow(t *testing.T) {
	fixed := time.Date(2001, 2, 3, 4, 5, 6, 0, time.UTC)
	patchtest.Func(t, time.Now, func() time.Time { return fixed })
	require.True(t, time.Now().Equal(fixed))
	fixed = fixed.Add(24 * time.Hour)
	require.Equal(t, 4, time.Now().Day())
}

// TestFuncParallelDifferent: parallel tests that patch different
// functions each see their own patch.
func TestFuncParallelDifferent(t *testing.T) {
	t.Run("group", func(t *testing.T) {
		for _, tc := range []struct {
			name string
			fn   func() string
			want string
		}{{"greeting", greeting, "hello"}, {"farewell", farewell, "bye"}} {
			t.Run(tc.name, func(t *testing.T) {
				t.Parallel()
				patchtest.Func(t, tc.fn, func() string { return "patched " + tc.want })
				for range 100 {
					require.Equal(t, "patched "+tc.want, tc.fn())
				}
			})
		}
	})
	require.Equal(t, "hello", greeting())
	require.Equal(t, "bye", farewell())
}

// recorder is a testing.TB whose Fatalf records instead of stopping.
type recorder struct {
	testing.TB
	mu     sync.Mutex
	fatals []string
}

func (r *recorder) Helper() {}

func (r *recorder) Fatalf(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.fatals = append(r.fatals, fmt.Sprintf(format, args...))
}

// TestFuncParallelSameFails: of two parallel tests that patch the same
// function, the second fails with a message naming both; the first keeps
// its patch.
func TestFuncParallelSameFails(t *testing.T) {
	applied, tried := make(chan struct{}), make(chan struct{})
	var once sync.Once
	release := func() { once.Do(func() { close(applied) }) }
	var second *recorder
	t.Run("group", func(t *testing.T) {
		t.Run("first", func(t *testing.T) {
			t.Parallel()
			defer release() // a first that fails must not leave second waiting
			patchtest.Func(t, shared, func() int { return 2 })
			release()
			<-tried
			require.Equal(t, 2, shared())
		})
		t.Run("second", func(t *testing.T) {
			t.Parallel()
			<-applied
			second = &recorder{TB: t}
			h := patchtest.Func(second, shared, func() int { return 3 })
			close(tried)
			require.Nil(t, h)
		})
	})
	require.Len(t, second.fatals, 1)
	msg := second.fatals[0]
	require.Contains(t, msg, "already patched by TestFuncParallelSameFails/group/first")
	require.Contains(t, msg, "TestFuncParallelSameFails/group/second")
	require.True(t, strings.Contains(msg, "t.Parallel"), msg)
	require.Equal(t, 1, shared())
}

// TestFuncFailsClearly: a patch that cannot be applied fails the test with
// the reason.
func TestFuncFailsClearly(t *testing.T) {
	r := &recorder{TB: t}
	var nilFunc func() string
	patchtest.Func(r, nilFunc, greeting)
	require.Len(t, r.fatals, 1)
	require.Contains(t, r.fatals[0], "nil function")
}

// TestWrapCountsCalls wraps farewell, calling the original, for this test.
func TestWrapCountsCalls(t *testing.T) {
	calls := 0
	patchtest.Wrap(t, farewell, func(orig func() string) func() string {
		return func() string { calls++; return orig() + "!" }
	})
	require.Equal(t, "bye!", farewell())
	require.Equal(t, 1, calls)
}

// TestFuncByName patches a function by its name for this test.
func TestFuncByName(t *testing.T) {
	patchtest.FuncByName(t, "github.com/hotpatch-dev/hotpatch/patch/patchtest_test.farewell", func() string { return "ciao" })
	require.Equal(t, "ciao", farewell())
}

// TestFuncByNameCleanedUp runs after the two tests above: farewell is back.
func TestFuncByNameCleanedUp(t *testing.T) {
	require.Equal(t, "bye", farewell())
}
