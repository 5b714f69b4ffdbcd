//go:build linux

package gomonkey

import (
	"errors"
	"fmt"
	"reflect"
	"runtime"
	"testing"
	"time"

	gm "github.com/agiledragon/gomonkey/v2"
	"github.com/stretchr/testify/require"

	"github.com/hotpatch-dev/hotpatch/benchmarks/gomonkey/hidden"
	"github.com/hotpatch-dev/hotpatch/patch"
)

//go:noinline
func twice[T int | float64](v T) T { return v * 2 }

//go:noinline
func greet() string { return "hello" }

// A feature tried with both libraries on the same function: each says
// what happened (the table of docs/gomonkey.md is these lines). Ours must
// work, or refuse with a typed error where that is the documented answer;
// gomonkey's outcome is observed, not asserted.
type outcome struct{ ours, theirs string }

func (o outcome) log(t *testing.T, feature string) {
	t.Logf("| %s | %s | %s |", feature, o.ours, o.theirs)
}

// try runs f and turns a panic into its text (gomonkey panics on what it
// cannot patch).
func try(f func() string) (s string) {
	defer func() {
		if r := recover(); r != nil {
			s = fmt.Sprintf("panics: %v", r)
		}
	}()
	return f()
}

func TestFeatures(t *testing.T) {
	t.Run("function", func(t *testing.T) {
		h, err := patch.Func(answer, otherAnswer)
		require.NoError(t, err)
		require.Equal(t, 2, answer())
		require.NoError(t, h.Revert())
		theirs := try(func() string {
			p := gm.ApplyFunc(answer, otherAnswer)
			defer p.Reset()
			return fmt.Sprintf("works (%d)", answer())
		})
		outcome{"works", theirs}.log(t, "function")
	})
	t.Run("method", func(t *testing.T) {
		var c counter
		h, err := patch.Func((*counter).Next, func(*counter) int { return -1 })
		require.NoError(t, err)
		require.Equal(t, -1, c.Next())
		require.NoError(t, h.Revert())
		theirs := try(func() string {
			p := gm.ApplyMethod(reflect.TypeOf(&c), "Next", func(*counter) int { return -1 })
			defer p.Reset()
			return fmt.Sprintf("works (%d)", c.Next())
		})
		outcome{"works (method expression `(*T).M`)", theirs}.log(t, "method")
	})
	t.Run("unexported function of another package", func(t *testing.T) {
		h, err := patch.FuncByName("github.com/hotpatch-dev/hotpatch/benchmarks/gomonkey/hidden.double", func(n int) int { return 3 * n })
		require.NoError(t, err)
		require.Equal(t, 9, hidden.Quad(1))
		require.NoError(t, h.Revert())
		require.Equal(t, 4, hidden.Quad(1))
		outcome{"works (`FuncByName`, signature checked)",
			"no API (ApplyPrivateMethod reaches unexported methods only)"}.log(t, "unexported function of another package")
	})
	t.Run("closure capturing variables", func(t *testing.T) {
		fixed := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
		h, err := patch.Func(time.Now, func() time.Time { return fixed })
		require.NoError(t, err)
		require.Equal(t, fixed, time.Now())
		require.NoError(t, h.Revert())
		theirs := try(func() string {
			p := gm.ApplyFunc(time.Now, func() time.Time { return fixed })
			defer p.Reset()
			if time.Now().Equal(fixed) {
				return "works"
			}
			return "no effect"
		})
		outcome{"works", theirs}.log(t, "closure capturing variables (time.Now)")
	})
	t.Run("generic function", func(t *testing.T) {
		_, err := patch.Func(twice[int], func(v int) int { return v * 3 })
		require.ErrorIs(t, err, patch.ErrNotPatchable, "an instantiation shares its shape function's code")
		theirs := try(func() string {
			p := gm.ApplyFunc(twice[int], func(v int) int { return v * 3 })
			defer p.Reset()
			if got := twice(5); got == 10 {
				return fmt.Sprintf("silently no effect (twice[int](5) still %d)", got)
			}
			return fmt.Sprintf("works (twice[int](5) = %d, twice[float64](5) = %v)", twice(5), twice(5.0))
		})
		outcome{"refused, typed (`ErrNotPatchable`): the code is the shape function's", theirs}.log(t, "generic function")
	})
	t.Run("sequence of results", func(t *testing.T) {
		n := 0
		h, err := patch.Func(greet, func() string { n++; return fmt.Sprint("call ", n) })
		require.NoError(t, err)
		require.Equal(t, "call 1", greet())
		require.Equal(t, "call 2", greet())
		require.NoError(t, h.Revert())
		theirs := try(func() string {
			p := gm.ApplyFuncSeq(greet, []gm.OutputCell{{Values: gm.Params{"a"}}, {Values: gm.Params{"b"}}})
			defer p.Reset()
			return fmt.Sprintf("works (%s, %s)", greet(), greet())
		})
		outcome{"a closure with a counter (no helper API)", theirs}.log(t, "sequence of results")
	})
	t.Run("call the original", func(t *testing.T) {
		h, err := patch.Wrap(greet, func(orig func() string) func() string {
			return func() string { return orig() + "!" }
		})
		require.NoError(t, err)
		require.Equal(t, "hello!", greet())
		require.NoError(t, h.Revert())
		theirs := try(func() string {
			p := gm.ApplyFunc(greet, func() string { return "patched" })
			defer p.Reset()
			var got string
			p.Origin(func() { got = greet() })
			return fmt.Sprintf("Origin(fn) unpatches for every goroutine while fn runs (%q)", got)
		})
		outcome{"`Wrap`: the replacement calls the original, patch stays on for other goroutines", theirs}.log(t, "call the original")
	})
	t.Run("goroutines inside the function", func(t *testing.T) {
		// A goroutine parked in the function: ours keeps it on the old
		// code (auto mode) and returns once it left; gomonkey does not
		// look (its README: "not threadsafe").
		release := make(chan struct{})
		inside := make(chan struct{})
		go blocker(inside, release)
		<-inside
		done := make(chan error, 1)
		go func() {
			h, err := patch.FuncWith(blocker, func(chan struct{}, chan struct{}) {}, patch.FuncOptions{Mode: patch.ModeStop, Timeout: 300 * time.Millisecond})
			if err == nil {
				err = h.Revert()
				err = errors.Join(errors.New("applied while a goroutine was inside"), err)
			}
			done <- err
		}()
		err := <-done
		close(release)
		require.ErrorIs(t, err, patch.ErrBlocked)
		outcome{"checked: stop mode refuses while a goroutine is inside (auto/gradual keep it on the old code)",
			"not checked (README: \"not threadsafe\")"}.log(t, "goroutines inside the function")
	})
	outcome{"both (arm64 VM lane)", "both"}.log(t, "amd64 / arm64 (here: "+runtime.GOARCH+")")
}

//go:noinline
func blocker(inside, release chan struct{}) {
	close(inside)
	<-release
}
