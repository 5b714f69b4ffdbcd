//go:build linux

package gomonkey

import (
	"testing"
	"time"

	gm "github.com/agiledragon/gomonkey/v2"
	"github.com/stretchr/testify/require"

	"github.com/hotpatch-dev/hotpatch/patch"
)

//go:noinline
func answer() int { return 1 }

//go:noinline
func otherAnswer() int { return 2 }

type counter struct{ n int }

//go:noinline
func (c *counter) Next() int { c.n++; return c.n }

var sink int

// BenchmarkApplyRevert is one apply and its revert. hotpatch stops every
// thread and checks every goroutine's stack (through its warm helper
// process); gomonkey writes the jump with mprotect, checking nothing.
func BenchmarkApplyRevert(b *testing.B) {
	b.Run("lib=hotpatch", func(b *testing.B) {
		var pause time.Duration
		for b.Loop() {
			h, err := patch.Func(answer, otherAnswer)
			if err != nil {
				b.Fatal(err)
			}
			pause += h.Result().Pause
			if err := h.Revert(); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(pause.Microseconds())/float64(b.N), "pause-µs/op")
	})
	b.Run("lib=gomonkey", func(b *testing.B) {
		for b.Loop() {
			p := gm.ApplyFunc(answer, otherAnswer)
			p.Reset()
		}
	})
}

// BenchmarkCall is the cost of a call of a patched function against a
// direct call of the same code.
func BenchmarkCall(b *testing.B) {
	b.Run("lib=none", func(b *testing.B) {
		for b.Loop() {
			sink += otherAnswer()
		}
	})
	b.Run("lib=hotpatch", func(b *testing.B) {
		h, err := patch.Func(answer, otherAnswer)
		require.NoError(b, err)
		b.Cleanup(func() { require.NoError(b, h.Revert()) })
		for b.Loop() {
			sink += answer()
		}
	})
	b.Run("lib=gomonkey", func(b *testing.B) {
		p := gm.ApplyFunc(answer, otherAnswer)
		b.Cleanup(p.Reset)
		for b.Loop() {
			sink += answer()
		}
	})
}

// TestBothPatch checks that both libraries really patch what is measured
// (a benchmark of a patch that did nothing would measure nothing).
func TestBothPatch(t *testing.T) {
	h, err := patch.Func(answer, otherAnswer)
	require.NoError(t, err)
	require.Equal(t, 2, answer(), "hotpatch")
	require.NoError(t, h.Revert())
	require.Equal(t, 1, answer())

	p := gm.ApplyFunc(answer, otherAnswer)
	require.Equal(t, 2, answer(), "gomonkey")
	p.Reset()
	require.Equal(t, 1, answer())
}
