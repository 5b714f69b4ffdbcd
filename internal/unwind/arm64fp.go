package unwind

import (
	"encoding/binary"

	"github.com/hotpatch-dev/hotpatch/internal/gopcln"
)

// A Go function's frame on arm64 (cmd/internal/obj/arm64, preprocess, the
// same in go1.22 to go1.26): after the stack-bound check, the prologue
// either stores LR as it allocates the frame and the caller's frame
// pointer just below it,
//
//	MOVD.W R30, -A(RSP)      str  x30, [sp, #-A]!
//	MOVD   R29, -8(RSP)      stur x29, [sp, #-8]
//	SUB    $8, RSP, R29      sub  x29, sp, #8
//
// or, for a frame too large for MOVD.W, stores both before moving SP:
//
//	SUB $A, RSP, R20         sub  x20, sp, #A
//	STP (R29, R30), -8(R20)  stp  x29, x30, [x20, #-8]
//	MOVD R20, RSP            mov  sp, x20
//	SUB $8, RSP, R29         sub  x29, sp, #8
//
// Either way, once the frame is complete the caller's x29 is the word at
// the frame's SP - 8 until the epilogue pops the frame.
const (
	arm64StoreFP  = 0xf81f83fd // stur x29, [sp, #-8]
	arm64SetFP    = 0xd10023fd // sub x29, sp, #8
	arm64StpFPLR  = 0xa93ffa9d // stp x29, x30, [x20, #-8]
	arm64MovSPX20 = 0x9100029f // mov sp, x20
	// prologueScan bounds the instructions before the prologue (the
	// stack-bound check).
	prologueScan = 16
)

// goFrame is what a Go function's prologue tells of its frame: the frame
// size A, and the offset from the entry from which the caller's frame
// pointer is stored at SP-8 (0: the prologue is not a known one).
type goFrame struct {
	size, fpFrom uint64
}

// arm64Prologue finds the known prologue in code (the function's first
// instructions). Instructions before it must be ones a frameless leaf may
// hold (the stack-bound check: loads, compares, conditional branches): none
// writes x29, x30 or SP, or calls.
func arm64Prologue(code []byte) goFrame {
	word := func(i int) uint32 {
		if 4*i+4 > len(code) {
			return 0
		}
		return binary.LittleEndian.Uint32(code[4*i:])
	}
	for i := 0; i < prologueScan && 4*i+4 <= len(code); i++ {
		w := word(i)
		// str x30, [sp, #-A]! (STR immediate, pre-index, 64-bit).
		if w&0xffe00fff == 0xf8000ffe && word(i+1) == arm64StoreFP && word(i+2) == arm64SetFP {
			imm := int64(w>>12&0x1ff) << 55 >> 55
			if imm >= 0 {
				return goFrame{}
			}
			return goFrame{size: uint64(-imm), fpFrom: uint64(4*i + 8)}
		}
		// sub x20, sp, #A{, lsl #12}, then the stp, mov, sub.
		if w&0xff8003ff == 0xd10003f4 && word(i+1) == arm64StpFPLR && word(i+2) == arm64MovSPX20 && word(i+3) == arm64SetFP {
			size := uint64(w >> 10 & 0xfff)
			if w>>22&1 != 0 {
				size <<= 12
			}
			return goFrame{size: size, fpFrom: uint64(4*i + 8)}
		}
		if !arm64LeafOnly(code[4*i : 4*i+4]) {
			return goFrame{}
		}
	}
	return goFrame{}
}

// goCallerFP returns the caller's frame pointer (x29) of the Go frame of f
// at link-time pc link, whose SP is sp and whose sp delta there is delta:
// the word at SP-8 when f's prologue is the known one, its frame is
// complete at pc, and delta is the frame size the prologue allocates.
// Otherwise (a frameless function, a prologue not yet done or not the
// known code, an assembly function that moves SP in its body) false: x29
// stays unknown.
func (u *Unwinder) goCallerFP(m *Module, f *gopcln.Func, link, sp uint64, delta int64, read func(uint64) (uint64, error)) (uint64, bool) {
	if !u.Arch.LinkRegister || delta <= 0 {
		return 0, false
	}
	fr := m.goFrame(f, read)
	if fr.fpFrom == 0 || uint64(delta) != fr.size || link < f.Entry+fr.fpFrom {
		return 0, false
	}
	fp, err := read(sp - 8)
	if err != nil {
		return 0, false
	}
	return fp, true
}

// goFrame decodes (once per function) the prologue of f from the live code
// at its entry.
func (m *Module) goFrame(f *gopcln.Func, read func(uint64) (uint64, error)) goFrame {
	m.deltasMu.RLock()
	fr, ok := m.frames[f.Entry]
	m.deltasMu.RUnlock()
	if ok {
		return fr
	}
	n := min(prologueScan+4, int((f.End-f.Entry)/4))
	code := make([]byte, 0, 4*n+8)
	for a := f.Entry + m.Bias; len(code) < 4*n; a += 8 {
		w, err := read(a)
		if err != nil {
			return goFrame{} // not memoized: unreadable now
		}
		code = binary.LittleEndian.AppendUint64(code, w)
	}
	fr = arm64Prologue(code[:4*n])
	m.deltasMu.Lock()
	if m.frames == nil {
		m.frames = map[uint64]goFrame{}
	}
	m.frames[f.Entry] = fr
	m.deltasMu.Unlock()
	return fr
}

// crosscall2ARM64 is the start of runtime/cgo's crosscall2 on arm64
// (asm_arm64.s, the same in go1.22 to go1.26), which C code calls to call
// back into Go. It is NOFRAME with a 192-byte frame the pclntab counts but
// does not lay out as a Go frame: LR is not at 0(RSP).
var crosscall2ARM64 = []uint32{
	0xd10303ff, // sub sp, sp, #0xc0
	0xa90087e0, // stp x0, x1, [sp, #8]
	0xf9000fe3, // str x3, [sp, #24]
	0xa90253f3, // stp x19, x20, [sp, #32]
	0xa9035bf5, // stp x21, x22, [sp, #48]
	0xa90463f7, // stp x23, x24, [sp, #64]
	0xa9056bf9, // stp x25, x26, [sp, #80]
	0xa90673fb, // stp x27, x28, [sp, #96]
	0x6d0727e8, // stp d8, d9, [sp, #112]
	0x6d082fea, // stp d10, d11, [sp, #128]
	0x6d0937ec, // stp d12, d13, [sp, #144]
	0x6d0a3fee, // stp d14, d15, [sp, #160]
	0xa90b7bfd, // stp x29, x30, [sp, #176]
	// bl runtime.load_g; bl runtime.cgocallback (relative: checked as BLs)
}

// arm64Crosscall2 steps over crosscall2 from the return address of its
// call of runtime.cgocallback, its code read back word for word: the C
// caller's x19-x28 lie at sp+32.., x29 and LR at sp+176 and sp+184, and
// its SP is sp+192.
func arm64Crosscall2(read func(uint64) (uint64, error), name string, entry, pc, sp uint64) (map[int]uint64, uint64, bool) {
	const frame, ret = 192, 4 * (13 + 2)
	if name != "crosscall2" || pc != entry+ret {
		return nil, 0, false
	}
	code := make([]byte, 0, ret+8)
	for a := entry; len(code) < ret; a += 8 {
		w, err := read(a)
		if err != nil {
			return nil, 0, false
		}
		code = binary.LittleEndian.AppendUint64(code, w)
	}
	for i, w := range crosscall2ARM64 {
		if binary.LittleEndian.Uint32(code[4*i:]) != w {
			return nil, 0, false
		}
	}
	for i := len(crosscall2ARM64); i < ret/4; i++ {
		if binary.LittleEndian.Uint32(code[4*i:])&0xfc000000 != 0x94000000 { // bl
			return nil, 0, false
		}
	}
	// DWARF numbers of the registers crosscall2 saved, by slot offset;
	// x30 is the return address into the C caller, the pc of its frame
	// (pseudo column 32; the caller's own LR is not known there).
	slots := map[int]uint64{29: 176, 32: 184}
	for r := 19; r <= 28; r++ {
		slots[r] = 32 + 8*uint64(r-19)
	}
	regs := map[int]uint64{31: sp + frame} // sp
	for r, off := range slots {
		v, err := read(sp + off)
		if err != nil {
			return nil, 0, false
		}
		regs[r] = v
	}
	return regs, sp + frame, true
}
