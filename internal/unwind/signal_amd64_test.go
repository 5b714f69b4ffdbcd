package unwind_test

import (
	"encoding/binary"
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/arch/x86/x86asm"

	"github.com/hotpatch-dev/hotpatch/elfsym"
	"github.com/hotpatch-dev/hotpatch/internal/fixture"
	"github.com/hotpatch-dev/hotpatch/internal/unwind"
)

// memory is a sparse little-endian word store.
type memory map[uint64]uint64

func (m memory) ReadAt(b []byte, off int64) (int, error) {
	if len(b) != 8 {
		return 0, fmt.Errorf("read of %d bytes", len(b))
	}
	v, ok := m[uint64(off)]
	if !ok {
		return 0, fmt.Errorf("no memory at %#x", off)
	}
	binary.LittleEndian.PutUint64(b, v)
	return 8, nil
}

// afterCall returns the return address of the first CALL in fn (to target,
// when given).
func afterCall(t *testing.T, tab *elfsym.Table, fn, target string) uint64 {
	t.Helper()
	s, err := tab.Lookup(fn)
	require.NoError(t, err)
	code, err := s.Module.Code(s.Addr, int(s.Size))
	require.NoError(t, err)
	var want uint64
	if target != "" {
		ts, err := tab.Lookup(target)
		require.NoError(t, err)
		want = ts.Addr
	}
	for off := 0; off < len(code); {
		in, err := x86asm.Decode(code[off:], 64)
		require.NoError(t, err, "%s+%#x", fn, off)
		off += in.Len
		if in.Op != x86asm.CALL {
			continue
		}
		next := s.Addr + uint64(off)
		if rel, ok := in.Args[0].(x86asm.Rel); ok && want != 0 && next+uint64(int64(rel)) != want {
			continue
		}
		return next
	}
	t.Fatalf("no call to %q in %s", target, fn)
	return 0
}

// goLab loads gotasks' tables and returns its unwinder, a function giving
// the sp delta at a pc (of the call before a return address when ret), and
// one giving a symbol's address.
func goLab(t *testing.T) (*elfsym.Table, *unwind.Unwinder, func(pc uint64, ret bool) uint64, func(string) uint64) {
	t.Helper()
	tab, err := elfsym.LoadFile(fixture.BuildGo(t, "gotasks", ""))
	require.NoError(t, err)
	u := unwind.ForTable(tab)
	require.NoError(t, u.Prepare())
	goTab, err := u.Modules[0].GoTable(u.Arch)
	require.NoError(t, err)
	delta := func(pc uint64, ret bool) uint64 {
		if ret {
			pc--
		}
		f, ok := goTab.FuncAt(pc)
		require.True(t, ok)
		d, err := goTab.SPDelta(f, pc)
		require.NoError(t, err)
		return uint64(d)
	}
	sym := func(name string) uint64 {
		s, err := tab.Lookup(name)
		require.NoError(t, err)
		return s.Addr
	}
	return tab, u, delta, sym
}

// TestGoSignalFrame: a thread stopped inside runtime.sigtramp (the Go signal
// handler's entry, called by the kernel with runtime.sigreturn__sigaction as
// return address above its signal frame) is walked through the kernel's
// ucontext into the interrupted goroutine's frames, down to runtime.goexit.
// The stack is built from the real binary's code and pclntab.
func TestGoSignalFrame(t *testing.T) {
	tab, u, delta, sym := goLab(t)
	mem := memory{}
	// The handler: stopped in sigtramp just after its call of sigtrampgo.
	pc0 := afterCall(t, tab, "runtime.sigtramp", "runtime.sigtrampgo")
	sp0 := uint64(0x7000_0000)
	cfa := sp0 + delta(pc0, false) + 8
	mem[cfa-8] = sym("runtime.sigreturn__sigaction")
	// The interrupted goroutine, on another stack: at main.tiny's entry,
	// called from main.main, called from runtime.main, started by goexit.
	gsp := uint64(0xc000_1000)
	ra1 := afterCall(t, tab, "main.main", "main.tiny")
	ra2 := afterCall(t, tab, "runtime.main", "")
	mem[gsp] = ra1
	sp1 := gsp + 8
	mem[sp1+delta(ra1, true)] = ra2
	sp2 := sp1 + delta(ra1, true) + 8
	mem[sp2+delta(ra2, true)] = sym("runtime.goexit") + 1
	uc := cfa
	// mcontext: r8..r15, rdi, rsi, rbp, rbx, rdx, rax, rcx, rsp, rip.
	for i := 0; i < 17; i++ {
		mem[uc+40+8*uint64(i)] = 0
	}
	mem[uc+40+8*15] = gsp
	mem[uc+40+8*16] = sym("main.tiny")

	regs := make([]uint64, 17)
	regs[7], regs[16] = sp0, pc0
	s := u.Unwind(mem, regs)
	require.True(t, s.Reliable, s.Reason)
	var names []string
	for i, f := range s.Frames {
		pc := f.PC
		if i > 0 && s.Frames[i-1].Method != "signal" {
			pc--
		}
		fs, ok := tab.SymbolAt(pc)
		require.True(t, ok)
		names = append(names, fs.Name)
	}
	require.Equal(t, []string{"runtime.sigtramp", "main.tiny", "main.main", "runtime.main", "runtime.goexit"}, names)
	require.Equal(t, "signal", s.Frames[0].Method)

	// A return address above sigtramp that is not the restorer: refused.
	mem[cfa-8] = ra1
	s = u.Unwind(mem, regs)
	require.False(t, s.Reliable)
	require.Contains(t, s.Reason, "not runtime.sigreturn__sigaction")
}

// TestGoSwitchedStack: a walk that reaches runtime.systemstack (which moves
// SP to the system stack) stops there, unreliable, naming it in SwitchedAt.
func TestGoSwitchedStack(t *testing.T) {
	tab, err := elfsym.LoadFile(fixture.BuildGo(t, "gotasks", ""))
	require.NoError(t, err)
	u := unwind.ForTable(tab)
	s, err := tab.Lookup("runtime.systemstack")
	require.NoError(t, err)
	regs := make([]uint64, 17)
	regs[7], regs[16] = 0x7000_0000, s.Addr+1
	st := u.Unwind(memory{}, regs)
	require.False(t, st.Reliable)
	require.Equal(t, "runtime.systemstack", st.SwitchedAt)
}

// TestGoAsyncPreempt: above runtime.asyncPreempt the "return address" is the
// instruction the preemption interrupted, here main.tiny's first one (its
// pc-1 lies in the function before): it is looked up as is.
func TestGoAsyncPreempt(t *testing.T) {
	tab, u, d, sym := goLab(t)
	delta := func(pc uint64) uint64 { return d(pc, false) }
	mem := memory{}
	pc0 := afterCall(t, tab, "runtime.asyncPreempt", "")
	sp0 := uint64(0xc000_0000)
	cfa0 := sp0 + delta(pc0) + 8
	mem[cfa0-8] = sym("main.tiny") // interrupted at its entry
	ra1 := afterCall(t, tab, "main.main", "main.tiny")
	mem[cfa0] = ra1 // main.tiny has no frame: its return address is on top
	sp2 := cfa0 + 8
	ra2 := afterCall(t, tab, "runtime.main", "")
	mem[sp2+delta(ra1-1)] = ra2
	sp3 := sp2 + delta(ra1-1) + 8
	mem[sp3+delta(ra2-1)] = sym("runtime.goexit") + 1

	regs := make([]uint64, 17)
	regs[7], regs[16] = sp0, pc0
	s := u.Unwind(mem, regs)
	require.True(t, s.Reliable, s.Reason)
	require.Len(t, s.Frames, 5)
	require.Equal(t, sym("main.tiny"), s.Frames[1].PC)
	require.Equal(t, ra1, s.Frames[2].PC)
}
