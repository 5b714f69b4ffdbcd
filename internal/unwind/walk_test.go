package unwind

import (
	"errors"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestFramesIterator walks the stack of TestGoFrames ("body") frame by
// frame: Next adds each frame with its caller found (CFA and method set),
// Err is nil until the end and at a root, and Stack is what Unwind
// returns. A stack that cannot be proven complete ends with an Err that
// is ErrUnreliable and carries the reason.
func TestFramesIterator(t *testing.T) {
	u, tab, _ := goBinary(t)
	a := u.Arch
	main, goexit := fn(t, tab, "main.main"), fn(t, tab, "runtime.goexit")
	mainPC, mainDelta := framed(t, tab, main)
	workPC, workDelta := framed(t, tab, fn(t, tab, "main.work"))
	retMain, retGoexit := mainPC+1, goexit.Entry+4
	const sp0 = 0x7000_0000
	mem := fakeMem{}
	if a.LinkRegister {
		mem[sp0], mem[sp0+uint64(workDelta)] = retMain, retGoexit
	} else {
		mem[sp0+uint64(workDelta)] = retMain
		mem[sp0+uint64(workDelta)+8+uint64(mainDelta)] = retGoexit
	}
	regs := pcAt(a, workPC)
	regs[a.SPReg] = sp0

	it := u.Frames(mem, regs)
	var pcs []uint64
	for it.Next() {
		fr := it.Frame()
		pcs = append(pcs, fr.PC)
		if len(pcs) < 3 {
			require.Equal(t, "pclntab", fr.Method, "frame %d", len(pcs)-1)
			require.NotZero(t, fr.CFA)
		}
		require.NoError(t, it.Err(), "an error before the walk ended")
	}
	require.Equal(t, []uint64{workPC, retMain, retGoexit}, pcs)
	require.NoError(t, it.Err())
	require.False(t, it.Next(), "Next after the end")
	s := it.Stack()
	require.True(t, s.Reliable)
	require.Equal(t, "runtime.goexit", s.Root)
	require.Equal(t, u.Unwind(mem, regs), s)

	// The caller's return address unreadable: one frame, then the end.
	delete(mem, sp0)
	delete(mem, sp0+uint64(workDelta))
	it = u.Frames(mem, regs)
	n := 0
	for it.Next() {
		n++
	}
	require.Equal(t, 1, n)
	err := it.Err()
	require.True(t, errors.Is(err, ErrUnreliable), "%v", err)
	require.Contains(t, err.Error(), it.Stack().Reason)
	require.False(t, it.Stack().Reliable)
	require.Equal(t, u.Unwind(mem, regs), it.Stack())
}
