package unwind

import (
	"encoding/binary"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/hotpatch-dev/hotpatch/internal/fixture"
)

// wordMem is a captured stack: little-endian words from base.
type wordMem struct {
	base uint64
	b    []byte
}

func (m wordMem) ReadAt(p []byte, off int64) (int, error) {
	a := uint64(off)
	if a < m.base || a-m.base > uint64(len(m.b)) || uint64(len(p)) > uint64(len(m.b))-(a-m.base) {
		return 0, fmt.Errorf("read %d bytes at %#x: unmapped", len(p), a)
	}
	return copy(p, m.b[a-m.base:]), nil
}

// watchdog crashes the fuzzing process when a walk takes longer than d (the
// fuzzer then saves the input): a walk must never loop.
func watchdog(d time.Duration) (stop func()) {
	done := make(chan struct{})
	go func() {
		select {
		case <-done:
		case <-time.After(d):
			panic(fmt.Sprintf("walk still running after %v: a loop?", d))
		}
	}()
	return func() { close(done) }
}

// consistent fails t when a stack the walk called reliable is not one: it
// must end at a root (or where the CFI says the return address is
// undefined), within MaxFrames, every pc in a module, and every
// frame's SP at or above its callee's (strictly, but for an arm64 frame
// whose return address was still in LR), within the captured stack.
func consistent(t *testing.T, u *Unwinder, s Stack, lo, hi uint64) {
	if len(s.Frames) > MaxFrames+1 {
		t.Fatalf("%d frames", len(s.Frames))
	}
	if !s.Reliable {
		return
	}
	if s.Root == "" && !strings.HasPrefix(s.Reason, "outermost frame") {
		t.Fatalf("reliable without a root: %s %+v", s.Reason, s.Frames)
	}
	for i, fr := range s.Frames {
		if u.moduleAt(fr.PC) == nil && u.moduleAt(fr.PC-1) == nil {
			t.Fatalf("reliable stack: frame %d pc %#x in no module: %+v", i, fr.PC, s.Frames)
		}
		if fr.SP < lo || i+1 < len(s.Frames) && !u.Arch.LinkRegister && fr.SP > hi {
			t.Fatalf("reliable stack: frame %d sp %#x outside the stack [%#x,%#x]: %+v", i, fr.SP, lo, hi, s.Frames)
		}
		if i == 0 || s.Frames[i-1].Signal {
			continue
		}
		prev := s.Frames[i-1].SP
		if fr.SP < prev || fr.SP == prev && !u.Arch.LinkRegister {
			t.Fatalf("reliable stack: frame %d sp %#x not above its callee's %#x: %+v", i, fr.SP, prev, s.Frames)
		}
	}
}

// FuzzUnwindGo walks mutated captured stacks of the pclnwork fixture: a
// real three-frame stack (main.work, main.main, runtime.goexit) whose words,
// pc, sp and link register the fuzzer changes. A walk may say unreliable;
// it never panics, never loops, and never calls inconsistent frames a
// complete stack.
func FuzzUnwindGo(f *testing.F) {
	u, tab, _ := goBinaryOf(f, fixture.BuildGo(f, "pclnwork", ""))
	a := u.Arch
	fs := tab.Funcs()
	index := func(name string) uint16 {
		for i := range fs {
			if fs[i].Name == name {
				return uint16(i)
			}
		}
		f.Fatalf("no %s", name)
		return 0
	}
	work, main, goexit := fn(f, tab, "main.work"), fn(f, tab, "main.main"), fn(f, tab, "runtime.goexit")
	mainPC, mainDelta := framed(f, tab, main)
	workPC, workDelta := framed(f, tab, work)
	retMain, retGoexit := mainPC+1, goexit.Entry+4
	// The stack of TestGoFrames "body", as words from sp0.
	stack := make([]byte, uint64(workDelta)+uint64(mainDelta)+32)
	put := func(off uint64, v uint64) { binary.LittleEndian.PutUint64(stack[off:], v) }
	if a.LinkRegister {
		put(0, retMain)
		put(uint64(workDelta), retGoexit)
	} else {
		put(uint64(workDelta), retMain)
		put(uint64(workDelta)+8+uint64(mainDelta), retGoexit)
	}
	wi := index("main.work")
	if s := u.Unwind(wordMem{0x7000_0000, stack}, pcAt(a, workPC)); !s.Reliable || len(s.Frames) != 3 {
		f.Fatalf("the seed stack does not walk: %s %+v", s.Reason, s.Frames)
	}
	f.Add(wi, uint16(workPC-work.Entry), uint8(0), uint64(0xdead0000), false, stack)
	f.Add(wi, uint16(0), uint8(0), retMain, false, stack)
	f.Add(index("main.main"), uint16(mainPC-main.Entry+1), uint8(0), uint64(0), true, stack[workDelta:])
	// Stacks sprayed with return addresses: every word a walk reads is one.
	spray := func(pcs ...uint64) []byte {
		b := make([]byte, len(stack))
		for i := 0; i+8 <= len(b); i += 8 {
			binary.LittleEndian.PutUint64(b[i:], pcs[i/8%len(pcs)])
		}
		return b
	}
	f.Add(wi, uint16(workPC-work.Entry), uint8(0), retGoexit, false, spray(retGoexit))
	f.Add(wi, uint16(workPC-work.Entry), uint8(8), retMain, false, spray(retMain, retGoexit))
	f.Add(index("runtime.mcall"), uint16(0), uint8(0), retMain, true, spray(retMain, retMain, retGoexit))
	f.Add(index("runtime.mcall"), uint16(0), uint8(0), uint64(0), false, stack)
	f.Fuzz(func(t *testing.T, fi, pcOff uint16, spOff uint8, lr uint64, ret bool, words []byte) {
		defer watchdog(10 * time.Second)()
		const sp0 = 0x7000_0000
		fun := fs[int(fi)%len(fs)]
		regs := make([]uint64, max(a.RAReg, a.SPReg, a.LRReg)+1)
		regs[a.RAReg] = fun.Entry + uint64(pcOff)%max(fun.End-fun.Entry, 1)
		regs[a.SPReg] = sp0 + uint64(spOff)
		if a.LinkRegister {
			regs[a.LRReg] = lr
		}
		mem := wordMem{sp0, words}
		var s Stack
		if ret {
			s = u.UnwindReturn(mem, regs)
		} else {
			s = u.Unwind(mem, regs)
		}
		consistent(t, u, s, sp0, sp0+uint64(len(words)))
	})
}
