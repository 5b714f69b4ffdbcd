package unwind

import (
	"bytes"
	"encoding/binary"

	"github.com/hotpatch-dev/hotpatch/internal/gopcln"
)

// returnsToC reports whether runtime.mstart's frame (f at link, sp) returns
// into C code (intoC: a thread created through cgo) and whether the walk can
// step into it (walk: the C code has unwind tables, or is known code).
func (u *Unwinder) returnsToC(goTab *gopcln.Table, m *Module, f *gopcln.Func, link, sp uint64, read func(uint64) (uint64, error)) (walk, intoC bool) {
	delta, err := m.spDelta(goTab, f, link)
	if err != nil {
		return false, false
	}
	var ra uint64
	switch {
	case !u.Arch.LinkRegister:
		ra, err = read(sp + uint64(delta))
	case delta > 0:
		ra, err = read(sp)
	default:
		return false, false // in the link register, unknown above the innermost frame
	}
	if err != nil || ra == 0 {
		return false, false
	}
	rm := u.moduleAt(ra - 1)
	if rm == nil {
		return false, false
	}
	if _, isGo := u.GoFunc(ra - 1); isGo {
		return false, false
	}
	// C code the walk can step over: with unwind tables, or known code.
	if _, cfiTab, _ := rm.tables(u.Arch); cfiTab != nil {
		if _, ok, err := cfiTab.RowAt(ra - 1 - rm.Bias); ok && err == nil {
			return true, true
		}
	}
	callerSP := sp + uint64(delta)
	if !u.Arch.LinkRegister {
		callerSP += uint64(u.Arch.PtrSize)
	}
	known := false
	if u.Arch.Handwritten != nil {
		_, _, known = u.Arch.Handwritten(read, ra, callerSP)
	}
	return known, true
}

// cCode returns the code of every module that is not Go code: a module
// without a Go function table whole, and, in one with a table, every range
// no Go function covers (the C code the Go linker links lies before, among
// or after the Go functions; alignment filler between them is included,
// which only errs on the safe side). A stack that returns into C code it
// cannot walk may return into any of it. Computed once.
func (u *Unwinder) cCode() []CodeSpan {
	u.cOnce.Do(func() {
		for _, m := range u.Modules {
			goTab, _, _ := m.tables(u.Arch)
			var fs []gopcln.Func
			if goTab != nil {
				fs = goTab.Funcs()
			}
			at := m.Start
			for _, f := range fs {
				if e := f.Entry + m.Bias; e > at {
					u.cSpans = append(u.cSpans, CodeSpan{at, min(e, m.End)})
				}
				at = max(at, f.End+m.Bias)
			}
			if at < m.End {
				u.cSpans = append(u.cSpans, CodeSpan{at, m.End})
			}
		}
	})
	return u.cSpans
}

// crosscall1AMD64 is the code of runtime/cgo's crosscall1 (gcc_amd64.S,
// the same in every Go release since 1.x), which has no CFI: it pushes
// rbx, rbp, r12-r15, calls setg_gcc, then the Go function (mstart), then
// pops and returns.
var crosscall1AMD64 = []byte{
	0x53, 0x55, 0x41, 0x54, 0x41, 0x55, 0x41, 0x56, 0x41, 0x57, // push rbx, rbp, r12, r13, r14, r15
	0x48, 0x89, 0xfb, 0x48, 0x89, 0xd7, // mov rbx, rdi; mov rdi, rdx
	0xff, 0xd6, 0xff, 0xd3, // call rsi; call rbx
	0x41, 0x5f, 0x41, 0x5e, 0x41, 0x5d, 0x41, 0x5c, 0x5d, 0x5b, 0xc3, // pops, ret
}

// crosscall1Return is the offset of the return address of its call of the
// Go function.
const crosscall1Return = 20

// amd64Crosscall1 steps over crosscall1 when pc is the return address of
// its call of the Go function, its code read back byte for byte: the six
// saved registers lie at sp (r15) up to sp+40 (rbx), the return address at
// sp+48.
func amd64Crosscall1(read func(uint64) (uint64, error), pc, sp uint64) (map[int]uint64, uint64, bool) {
	code := make([]byte, 0, len(crosscall1AMD64)+8)
	for a := pc - crosscall1Return; len(code) < len(crosscall1AMD64); a += 8 {
		w, err := read(a)
		if err != nil {
			return nil, 0, false
		}
		code = binary.LittleEndian.AppendUint64(code, w)
	}
	if !bytes.Equal(code[:len(crosscall1AMD64)], crosscall1AMD64) {
		return nil, 0, false
	}
	regs := map[int]uint64{}
	// DWARF numbers of r15, r14, r13, r12, rbp, rbx, then the pc.
	for i, r := range []int{15, 14, 13, 12, 6, 3, 16} {
		v, err := read(sp + 8*uint64(i))
		if err != nil {
			return nil, 0, false
		}
		regs[r] = v
	}
	regs[7] = sp + 56
	return regs, sp + 56, true
}
