package trampoline

import (
	"debug/elf"
	"encoding/binary"
	"fmt"
	"strings"

	"golang.org/x/arch/arm64/arm64asm"

	"github.com/hotpatch-dev/hotpatch/internal/arch"
)

// ARM64 is the AArch64 Arch. Its jump is `B imm26` (4 bytes) when the
// destination is 4-byte aligned and within ±128 MiB, and
// `LDR X16, #8; BR X16; .quad dest` (16 bytes) otherwise. Only the near
// form is a single aligned 4-byte store, the one modification of code the
// architecture allows while other cores may execute it (the far form is
// written only while every thread is stopped). The far form clobbers X16
// (IP0), which AAPCS64 and Go's ABI both leave dead at a function entry: a
// linker veneer between a caller and its callee may clobber it too.
//
// The literal of the far form needs no 8-byte alignment: an LDR (literal)
// is an ordinary load, and Linux runs user space with SCTLR_EL1.A clear, so
// a misaligned load from normal memory succeeds (it is only not
// single-copy atomic, which does not matter: the jump is written while
// every thread of the target is stopped). So a function entry that is 4
// but not 8 mod 8 needs no padding NOP, which would also grow the jump past
// 16-byte functions.
//
// Plan keeps a leading `BTI c|j|jc` in place (the jump goes after it, as
// endbr64 on x86-64), displaces whole 4-byte instructions (1 for the near
// jump, 4 for the far one), rewrites every PC-relative one (ADR, ADRP, LDR
// (literal) into W/X/S/D/Q registers, LDRSW and PRFM (literal), B, BL,
// B.cond, CBZ/CBNZ, TBZ/TBNZ) so it works from the thunk whatever the
// distance, keeps branches among the displaced instructions inside the
// thunk, and refuses (with an *Error) what it cannot move: words the
// decoder does not know in encoding classes that have PC-relative forms,
// load/store-exclusive instructions, and BTI landing pads after the entry.
// Zero words at the end of a function's code are taken as padding (Go
// counts its alignment in the symbol's size).
//
// Sequences that reach further than the instruction's own field use a
// scratch register: X16, or X17 when a displaced instruction mentions X16
// (Go's prologue loads the stack guard into R16), never any other register.
// ADR, ADRP and general-purpose LDR (literal) need none: they materialise
// the address in their own destination register.
//
// BTI caveat: a function whose page is BTI-guarded (its binary has the
// GNU_PROPERTY_AARCH64_FEATURE_1_BTI note and the CPU implements BTI) and
// whose entry is `PACIASP` rather than `BTI c` has that PACIASP displaced
// into the thunk; an indirect call then lands on the B at the entry, which
// is not a landing pad, and faults. Likewise a far jump back from the thunk
// (BR X16/X17 into the middle of the function) faults on a guarded page.
// Callers that know the target enforces BTI must place the thunk within
// ±128 MiB and refuse functions whose entry is PACIASP/PACIBSP.
type ARM64 struct{}

const (
	arm64NearJumpLen = 4
	arm64FarJumpLen  = 16

	// arm64MaxThunk bounds a thunk. At most 4 instructions are displaced
	// (16 bytes). The longest rewrite of one is 5 words: B.cond/CBZ/TBZ
	// inverted over an absolute jump (1+4), BL as MOVZ/MOVK×3 of the scratch
	// register + BLR (4+1), and FP/SIMD or PRFM LDR (literal) as MOVZ/MOVK×3
	// + LDR (4+1). Add a kept BTI repeated at the start (1 word) and the far
	// jump back (4 words): (1 + 4*5 + 4) * 4 = 100 bytes.
	arm64MaxThunk = 100

	a64NOP    = 0xd503201f
	a64BRK0   = 0xd4200000
	a64LDRX16 = 0x58000050 // LDR X16, #8
	a64BRX16  = 0xd61f0200 // BR X16
	regX16    = 16
	regX17    = 17
)

// Machine returns elf.EM_AARCH64.
func (ARM64) Machine() elf.Machine { return arch.ARM64.Machine }

// MaxThunkSize bounds len(Plan.Thunk) for any AArch64 function.
func (ARM64) MaxThunkSize() int { return arm64MaxThunk }

// Jump returns `B to` when to is 4-byte aligned and to-from is within
// [-128 MiB, 128 MiB), else `LDR X16, #8; BR X16; .quad to`. from must be
// 4-byte aligned (every AArch64 instruction is). Addresses wrap modulo 2^64.
func (ARM64) Jump(from, to uint64) []byte {
	if w, ok := encB(from, to, false); ok {
		return words(w)
	}
	return farJumpARM64(regX16, to)
}

// farJumpARM64 is `LDR Xr, #8; BR Xr; .quad to`.
func farJumpARM64(r uint32, to uint64) []byte {
	b := words(0x58000040|r, 0xd61f0000|r<<5)
	return binary.LittleEndian.AppendUint64(b, to)
}

func words(ws ...uint32) []byte {
	b := make([]byte, 0, 4*len(ws))
	for _, w := range ws {
		b = binary.LittleEndian.AppendUint32(b, w)
	}
	return b
}

// fits reports whether a byte offset d is a multiple of 4 whose quotient
// fits a signed field of bits bits.
func fits(d int64, bits uint) bool {
	if d&3 != 0 {
		return false
	}
	q := d >> 2
	return q >= -(1<<(bits-1)) && q < 1<<(bits-1)
}

// encB encodes B (or BL) at pc to target when it reaches.
func encB(pc, target uint64, link bool) (uint32, bool) {
	d := int64(target - pc)
	if pc&3 != 0 || !fits(d, 26) {
		return 0, false
	}
	w := uint32(0x14000000) | uint32(d>>2)&0x3ffffff
	if link {
		w |= 0x80000000
	}
	return w, true
}

// movAbs materialises v in Xr with MOVZ and as few MOVKs as it needs.
func movAbs(r uint32, v uint64) []uint32 {
	out := []uint32{0xd2800000 | uint32(v&0xffff)<<5 | r} // MOVZ Xr, #v[15:0]
	for hw := uint32(1); hw < 4; hw++ {
		if h := uint32(v>>(16*hw)) & 0xffff; h != 0 {
			out = append(out, 0xf2800000|hw<<21|h<<5|r) // MOVK Xr, #h, LSL #16*hw
		}
	}
	return out
}

// a64Inst is one decoded instruction.
type a64Inst struct {
	arm64asm.Inst
	Addr uint64
}

func (in *a64Inst) String() string {
	return fmt.Sprintf("`%s` (%08x) at %#x", strings.ToLower(in.Inst.String()), in.Enc, in.Addr)
}

// pcrel returns the address a PC-relative instruction refers to.
func (in *a64Inst) pcrel() (uint64, bool) {
	for _, a := range in.Args {
		if r, ok := a.(arm64asm.PCRel); ok {
			if in.Op == arm64asm.ADRP {
				return in.Addr&^0xfff + uint64(int64(r)), true
			}
			return in.Addr + uint64(int64(r)), true
		}
	}
	return 0, false
}

// mentions reports whether an operand of in names general register r (as
// Wr or Xr, in any addressing form). For a word the decoder does not know
// (moved because its class has no PC-relative form), any register field
// (bits 4:0, 9:5, 14:10, 20:16) equal to r counts.
func (in *a64Inst) mentions(r uint32) bool {
	if in.Args[0] == nil {
		e := in.Enc
		return e&31 == r || e>>5&31 == r || e>>10&31 == r || e>>16&31 == r
	}
	x, w := fmt.Sprintf("X%d", r), fmt.Sprintf("W%d", r)
	for _, a := range in.Args {
		if a == nil {
			break
		}
		for _, tok := range strings.FieldsFunc(a.String(), func(c rune) bool {
			return !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9')
		}) {
			if tok == x || tok == w {
				return true
			}
		}
	}
	return false
}

// isHint reports the HINT space (NOP, YIELD, BTI, PACIASP, ...).
func isHint(w uint32) bool { return w&0xfffff01f == 0xd503201f }

func isBTI(w uint32) bool       { return w&0xffffff3f == 0xd503241f }
func isPACxSP(w uint32) bool    { return w == 0xd503233f || w == 0xd503237f }
func isA64Filler(w uint32) bool { return w == 0 || w == a64NOP }

// pcIndependentClass reports encodings in the top-level classes that have
// no PC-relative form: loads and stores other than LDR (literal) and the
// load/store-exclusive group, data processing (register), SIMD and
// floating point, SVE, system instructions (MSR/MRS, SYS, barriers) and
// UDF.
func pcIndependentClass(w uint32) bool {
	switch {
	case w&0x0a000000 == 0x08000000: // loads and stores
		return w&0x3b000000 != 0x18000000 && w&0x3f000000 != 0x08000000
	case w&0x0e000000 == 0x0a000000, // data processing (register)
		w&0x0e000000 == 0x0e000000, // SIMD and floating point
		w&0x1e000000 == 0x04000000, // SVE
		w&0xffc00000 == 0xd5000000, // system: MSR, MRS, SYS, barriers
		w&0xffff0000 == 0:          // UDF #imm16
		return true
	}
	return false
}

// goStackCheckEnd returns the address after Go's stack-growth check when
// code (at addr) starts with one: `MOVD 16(g), R16` (or 24(g), the
// runtime's stackguard1) then, within 8 instructions, the `BLS` to the
// morestack tail; else 0. Small frames compare RSP with R16, larger ones
// compute RSP-framesize into R17 first, huge ones with R27 and an extra
// BCC; none of these registers carries anything past the check.
func goStackCheckEnd(code []byte, addr uint64) uint64 {
	if len(code) < 4 {
		return 0
	}
	if w := binary.LittleEndian.Uint32(code); w != 0xf9400b90 && w != 0xf9400f90 {
		return 0
	}
	for p := 4; p+4 <= len(code) && p < 32; p += 4 {
		if binary.LittleEndian.Uint32(code[p:])&0xff00001f == 0x54000009 { // B.LS
			return addr + uint64(p) + 4
		}
	}
	return 0
}

// isExclusive reports load/store-exclusive instructions (LDXR, STXR,
// LDAXR, STLXR and their byte, halfword and pair forms).
func isExclusive(op arm64asm.Op) bool {
	s := op.String()
	for _, p := range []string{"LDXR", "LDXP", "LDAXR", "LDAXP", "STXR", "STXP", "STLXR", "STLXP"} {
		if strings.HasPrefix(s, p) {
			return true
		}
	}
	return false
}

// bcTarget decodes BC.cond (FEAT_HBC), which arm64asm does not know, so
// that the branch scan still sees it.
func bcTarget(w uint32, pc uint64) (uint64, bool) {
	if w&0xff000010 != 0x54000010 {
		return 0, false
	}
	imm := int64(int32(w<<8)>>13) * 4
	return pc + uint64(imm), true
}

// Plan patches fn to jump to newAddr, with the thunk at thunkAddr.
//
// The jump goes at fn.Addr, or at fn.Addr+4 when the function starts with
// a BTI landing pad (which stays, and is repeated at the start of the
// thunk). The thunk ends with a jump back to the first instruction after
// the displaced ones, or with BRK #0 when they were the whole function.
//
// A displaced BL or BLR returns into the thunk: a thread blocked in its
// callee has a return address strictly inside the patched bytes until the
// call returns, which Plan.Overwrites reports so the activeness check can
// refuse to write the jump meanwhile.
func (a ARM64) Plan(fn Func, newAddr, thunkAddr uint64) (*Plan, error) {
	if fn.Addr&3 != 0 {
		return nil, refuseA64(fn, fn.Addr, ErrCannotRelocate, "the entry %#x is not 4-byte aligned, so it is not an AArch64 instruction address; check the symbol", fn.Addr)
	}
	if thunkAddr&3 != 0 || newAddr&3 != 0 {
		return nil, refuseA64(fn, fn.Addr, ErrCannotRelocate, "the replacement %#x and the thunk %#x must be 4-byte aligned; allocate them on an instruction boundary", newAddr, thunkAddr)
	}
	p := &a64Planner{fn: fn, newAddr: newAddr, thunkAddr: thunkAddr}
	p.trimZeros()
	if len(p.code) >= 4 && isBTI(p.word(0)) {
		p.start = 4
	}
	p.addr = fn.Addr + uint64(p.start)
	p.jump = a.Jump(p.addr, newAddr)
	if err := p.displace(); err != nil {
		return nil, err
	}
	if err := p.overwritten(); err != nil {
		return nil, err
	}
	if err := p.checkInbound(); err != nil {
		return nil, err
	}
	p.goEnd = goStackCheckEnd(p.code[p.start:], p.addr)
	thunk, err := p.thunk()
	if err != nil {
		return nil, err
	}
	j := make([]byte, len(p.original))
	copy(j, p.jump)
	for i := len(p.jump); i+4 <= len(j); i += 4 {
		binary.LittleEndian.PutUint32(j[i:], a64BRK0)
	}
	return &Plan{Func: fn.Name, Addr: p.addr, Original: p.original, Jump: j, ThunkAddr: thunkAddr, Thunk: thunk}, nil
}

// refuseA64 is Plan's typed refusal of fn, at address at.
func refuseA64(fn Func, at uint64, err error, format string, args ...any) error {
	return &Error{Func: fn.Name, Addr: at, Err: err, Detail: fmt.Sprintf(format, args...)}
}

// a64Planner is one arm64 Plan in progress: the function's code (its
// trailing zero words moved to padding), where the jump goes (addr, after
// a kept BTI: start), the instructions it displaces, the bytes it
// overwrites ([addr, end)), and where Go's stack-growth check ends.
type a64Planner struct {
	fn                        Func
	newAddr, thunkAddr        uint64
	code, padding             []byte
	start                     int
	addr, end, dispEnd, goEnd uint64
	jump, original            []byte
	displaced                 []*a64Inst
	whole                     bool // the displaced instructions are the whole function
}

func (p *a64Planner) refuse(at uint64, err error, format string, args ...any) error {
	return refuseA64(p.fn, at, err, format, args...)
}

func (p *a64Planner) word(off int) uint32 { return binary.LittleEndian.Uint32(p.code[off:]) }

// trimZeros sets the code and padding: Go counts the zero words that align
// the next function in the symbol's size, and they are padding.
func (p *a64Planner) trimZeros() {
	p.code, p.padding = p.fn.Code, p.fn.Padding
	if len(p.code)%4 != 0 {
		return
	}
	n := len(p.code)
	for n >= 4 && p.word(n-4) == 0 {
		n -= 4
	}
	if n > 0 && n < len(p.code) {
		p.padding = append(append([]byte(nil), p.code[n:]...), p.fn.Padding...)
		p.code = p.code[:n]
	}
}

// displace decodes the instructions the jump overwrites, refusing what
// cannot move into a thunk: a word the decoder does not know (but hints
// and PC-independent classes), a landing pad, an exclusive access.
func (p *a64Planner) displace() error {
	pos := p.start
	for pos-p.start < len(p.jump) && pos < len(p.code) {
		at := p.fn.Addr + uint64(pos)
		if len(p.code)-pos < 4 {
			return p.refuse(at, ErrCannotRelocate, "the function's code ends %d bytes into the instruction at %#x (bytes % x): it is truncated; check the function's bounds", len(p.code)-pos, at, p.code[pos:])
		}
		w := p.word(pos)
		inst, err := arm64asm.Decode(p.code[pos:])
		if err != nil && (isHint(w) || pcIndependentClass(w)) {
			// Hints (PACIASP, newer NOP-space instructions) and classes
			// with no PC-relative form (LSE atomics, newer loads, SIMD,
			// SVE) the decoder may not know: they move as they are.
			inst, err = arm64asm.Inst{Op: arm64asm.HINT, Enc: w}, nil
		}
		if err != nil && !isBTI(w) {
			return p.refuse(at, ErrCannotRelocate, "the decoder does not know the word %08x at %#x, so it cannot be moved out of the way of the jump (it may be PC-relative); patch the function's callers instead", w, at)
		}
		in := &a64Inst{Inst: inst, Addr: at}
		switch {
		case isBTI(w):
			return p.refuse(at, ErrBranchIntoPatch, "%s is an indirect-branch landing pad inside the bytes the jump would overwrite; patch the function's callers instead", in)
		case isExclusive(inst.Op):
			return p.refuse(at, ErrCannotRelocate, "%s is a load/store-exclusive: moved into the thunk it is separated from its pair by the jump back (and a retry loop would branch into the patch), which can make the exclusive sequence never succeed; patch the function's callers instead", in)
		}
		p.displaced = append(p.displaced, in)
		pos += 4
	}
	p.whole = pos >= len(p.code)
	p.original = append([]byte(nil), p.code[p.start:pos]...)
	return nil
}

// overwritten completes the bytes the jump overwrites with the padding
// after a function too short for it (zero or NOP words only).
func (p *a64Planner) overwritten() error {
	if len(p.original) < len(p.jump) {
		need := len(p.jump) - len(p.original)
		fl := 0
		for fl+4 <= len(p.padding) && isA64Filler(binary.LittleEndian.Uint32(p.padding[fl:])) {
			fl += 4
		}
		if len(p.code)&3 != 0 || fl < need {
			return p.refuse(p.fn.Addr, ErrTooShort, "the jump to %#x needs %d bytes at %#x, but the function has %d bytes of code there and %d bytes of zero/NOP padding after it; %s",
				p.newAddr, len(p.jump), p.addr, len(p.original), fl, arm64TooShortAdvice(len(p.jump), len(p.original)+fl))
		}
		p.original = append(p.original, p.padding[:need]...)
	}
	p.end = p.addr + uint64(len(p.original))
	p.dispEnd = p.addr + 4*uint64(len(p.displaced))
	return nil
}

// internal returns the index of the displaced instruction a displaced
// branch goes to, other than the first (a branch to addr reaches the
// jump, as from anywhere else).
func (p *a64Planner) internal(in *a64Inst) (int, bool) {
	t, ok := in.pcrel()
	if !ok || in.Addr < p.addr || in.Addr >= p.dispEnd || !isBranch(in.Enc) || t <= p.addr || t >= p.dispEnd || t&3 != 0 {
		return 0, false
	}
	return int(t-p.addr) / 4, true
}

// checkInbound refuses a function in which anything else branches into,
// or loads from, the overwritten bytes (a branch to addr itself reaches
// the jump; a branch among the displaced instructions is retargeted in
// the thunk). Words the decoder does not know are taken for data (Go and
// gcc keep literal pools in functions), except BC.cond, which is a branch.
func (p *a64Planner) checkInbound() error {
	addr, end := p.addr, p.end
	for off := 0; off+4 <= len(p.code); off += 4 {
		at := p.fn.Addr + uint64(off)
		w := p.word(off)
		inst, err := arm64asm.Decode(p.code[off:])
		if err != nil {
			if t, ok := bcTarget(w, at); ok && t > addr && t < end {
				return p.refuse(at, ErrBranchIntoPatch, "BC.cond (%08x) at %#x branches to %#x, inside the %d bytes [%#x, %#x) the jump would overwrite; patch the function's callers instead", w, at, t, len(p.original), addr, end)
			}
			continue
		}
		in := &a64Inst{Inst: inst, Addr: at}
		t, ok := in.pcrel()
		if !ok || in.Op == arm64asm.ADRP {
			continue
		}
		if lk := literalKind(w); lk != nil {
			if t < end && t+uint64(lk.size) > addr {
				return p.refuse(at, ErrBranchIntoPatch, "%s loads the %d bytes at %#x, which overlap the %d bytes [%#x, %#x) the jump would overwrite; patch the function's callers instead", in, lk.size, t, len(p.original), addr, end)
			}
			continue
		}
		if _, ok := p.internal(in); !ok && t > addr && t < end {
			return p.refuse(at, ErrBranchIntoPatch, "%s refers to %#x, inside the %d bytes [%#x, %#x) the jump would overwrite; the function cannot be patched at its entry: patch its callers instead", in, t, len(p.original), addr, end)
		}
	}
	return nil
}

// scratchAt is the scratch register for sequences that reach further than
// the field of the instruction they replace, at address at: X16, or X17
// if X16 is in use, 0 if neither is free. Go's stack-growth check (see
// goStackCheckEnd) computes in X16/X17 (and R27) for itself only: its
// branches go to the morestack tail, which reads neither, and after it
// the function body starts afresh, so the check's own uses do not count
// there.
func (p *a64Planner) scratchAt(at uint64) uint32 {
	if p.goEnd != 0 && at < p.goEnd {
		return regX16 // a branch of the check, to the morestack tail
	}
	for _, r := range []uint32{regX16, regX17} {
		used := false
		for _, in := range p.displaced {
			if p.goEnd != 0 && in.Addr < p.goEnd && at >= p.goEnd {
				continue
			}
			used = used || in.mentions(r)
		}
		if !used {
			return r
		}
	}
	return 0
}

// thunk builds the thunk: the kept BTI, the displaced instructions
// relocated, then the jump back (or BRK #0 after a whole function). Two
// passes: the first finds where each displaced instruction lands (a
// branch among them is always one word: the thunk is far shorter than any
// branch's reach), the second retargets them.
func (p *a64Planner) thunk() ([]byte, error) {
	var thunk []byte
	if p.start > 0 {
		thunk = append(thunk, p.code[:4]...)
	}
	offsets := make([]int, len(p.displaced))
	body := len(thunk)
	for pass := range 2 {
		thunk = thunk[:body]
		for i, in := range p.displaced {
			offsets[i] = len(thunk)
			if j, ok := p.internal(in); ok {
				w, _ := setBranchOffset(in.Enc, int64(offsets[j]-offsets[i]))
				if pass == 0 {
					w = in.Enc
				}
				thunk = append(thunk, words(w)...)
				continue
			}
			b, err := relocateARM64(in, p.thunkAddr+uint64(len(thunk)), p.scratchAt(in.Addr))
			if err != nil {
				return nil, p.refuse(in.Addr, ErrCannotRelocate, "%v", err)
			}
			thunk = append(thunk, b...)
		}
	}
	if p.whole {
		thunk = append(thunk, words(a64BRK0)...)
	} else {
		back, err := jumpARM64(p.thunkAddr+uint64(len(thunk)), p.end, p.scratchAt(p.end))
		if err != nil {
			return nil, p.refuse(p.addr, ErrCannotRelocate, "the jump back from the thunk to %#x: %v", p.end, err)
		}
		thunk = append(thunk, back...)
	}
	if len(thunk) > arm64MaxThunk {
		return nil, p.refuse(p.addr, ErrCannotRelocate, "internal error: thunk of %d bytes exceeds MaxThunkSize %d; please report this function's bytes", len(thunk), arm64MaxThunk)
	}
	return thunk, nil
}

func arm64TooShortAdvice(jumpLen, have int) string {
	if jumpLen > arm64NearJumpLen && have >= arm64NearJumpLen {
		return "place the replacement within ±128 MiB of the function so the 4-byte B fits, or patch the function's callers instead"
	}
	return "patch the function's callers instead"
}

// jumpARM64 is an unconditional jump from pc to target: B when it reaches,
// else through the scratch register r (0 when none is free).
func jumpARM64(pc, target uint64, r uint32) ([]byte, error) {
	if w, ok := encB(pc, target, false); ok {
		return words(w), nil
	}
	if r == 0 {
		return nil, errNoScratch(pc, target)
	}
	return farJumpARM64(r, target), nil
}

func errNoScratch(pc, target uint64) error {
	return fmt.Errorf("%#x is beyond the reach of a B from the thunk at %#x, and the displaced instructions use both X16 and X17, so no scratch register is free for an absolute jump; place the thunk within ±128 MiB of the function", target, pc)
}

// literal describes an LDR (literal) form: the size it loads and the
// LDR (unsigned immediate, offset 0) that loads the same from [Xn].
type literal struct {
	size int
	ldr  uint32 // Rt and Rn zero
	gpr  bool   // Rt is a general register (X/W), so it can hold the address
	name string
}

// literalKind classifies an LDR (literal) encoding by opc:V, or nil.
func literalKind(w uint32) *literal {
	if w&0x3b000000 != 0x18000000 {
		return nil
	}
	switch (w>>30)<<1 | (w>>26)&1 {
	case 0 << 1: // LDR Wt
		return &literal{4, 0xb9400000, true, "LDR (literal) into a W register"}
	case 1 << 1: // LDR Xt
		return &literal{8, 0xf9400000, true, "LDR (literal) into an X register"}
	case 2 << 1: // LDRSW Xt
		return &literal{4, 0xb9800000, true, "LDRSW (literal)"}
	case 3 << 1: // PRFM
		return &literal{0, 0xf9800000, false, "PRFM (literal)"}
	case 0<<1 | 1: // LDR St
		return &literal{4, 0xbd400000, false, "LDR (literal) into an S register"}
	case 1<<1 | 1: // LDR Dt
		return &literal{8, 0xfd400000, false, "LDR (literal) into a D register"}
	case 2<<1 | 1: // LDR Qt
		return &literal{16, 0x3dc00000, false, "LDR (literal) into a Q register"}
	}
	return nil
}

// isBranch reports B, BL, B.cond, CBZ/CBNZ and TBZ/TBNZ.
func isBranch(w uint32) bool {
	_, ok := setBranchOffset(w, 0)
	return ok
}

// setBranchOffset rewrites the offset of a B, BL, B.cond, CBZ/CBNZ or
// TBZ/TBNZ to d bytes, if it fits.
func setBranchOffset(w uint32, d int64) (uint32, bool) {
	switch {
	case w&0x7c000000 == 0x14000000: // B, BL
		return w&^0x3ffffff | uint32(d>>2)&0x3ffffff, fits(d, 26)
	case w&0xff000010 == 0x54000000, w&0x7e000000 == 0x34000000: // B.cond, CBZ/CBNZ
		return w&^(0x7ffff<<5) | uint32(d>>2)&0x7ffff<<5, fits(d, 19)
	case w&0x7e000000 == 0x36000000: // TBZ/TBNZ
		return w&^(0x3fff<<5) | uint32(d>>2)&0x3fff<<5, fits(d, 14)
	}
	return 0, false
}

// relocateARM64 returns in re-encoded to run at pc with the same effect.
// r is the scratch register (X16 or X17), or 0 if none is free.
func relocateARM64(in *a64Inst, pc uint64, r uint32) ([]byte, error) {
	target, isRel := in.pcrel()
	w := in.Enc
	if !isRel {
		return words(w), nil
	}
	d := int64(target - pc)
	rt := w & 31
	switch {
	case w&0x7c000000 == 0x14000000: // B, BL
		link := w&0x80000000 != 0
		if nw, ok := encB(pc, target, link); ok {
			return words(nw), nil
		}
		if r == 0 {
			return nil, fmt.Errorf("%s: %w", in, errNoScratch(pc, target))
		}
		if !link {
			return farJumpARM64(r, target), nil
		}
		return words(append(movAbs(r, target), 0xd63f0000|r<<5)...), nil // BLR Xr

	case w&0xff000010 == 0x54000000, // B.cond
		w&0x7e000000 == 0x34000000: // CBZ, CBNZ
		if nw, ok := setBranchOffset(w, d); ok {
			return words(nw), nil
		}
		var inv uint32
		if w&0xff000000 == 0x54000000 {
			if w&0xe == 0xe { // AL/NV: always
				return jumpARM64(pc, target, r)
			}
			inv = w&^(0x7ffff<<5|1) | (w&1 ^ 1)
		} else {
			inv = w&^(0x7ffff<<5) ^ 1<<24
		}
		return skipOverJump(in, inv, 19, pc, target, r)

	case w&0x7e000000 == 0x36000000: // TBZ, TBNZ
		if nw, ok := setBranchOffset(w, d); ok {
			return words(nw), nil
		}
		return skipOverJump(in, w&^(0x3fff<<5)^1<<24, 14, pc, target, r)

	case w&0x1f000000 == 0x10000000: // ADR, ADRP
		if w&0x80000000 == 0 { // ADR
			if d >= -(1<<20) && d < 1<<20 {
				return words(w&^(3<<29|0x7ffff<<5) | uint32(d&3)<<29 | uint32(d>>2)&0x7ffff<<5), nil
			}
		} else if pd := int64(target&^0xfff-pc&^0xfff) >> 12; pd >= -(1<<20) && pd < 1<<20 && target&0xfff == 0 {
			return words(w&^(3<<29|0x7ffff<<5) | uint32(pd&3)<<29 | uint32(pd>>2)&0x7ffff<<5), nil
		}
		if rt == 31 { // never encoded by assemblers: Rd 31 is XZR
			return words(a64NOP), nil
		}
		return words(movAbs(rt, target)...), nil

	case literalKind(w) != nil:
		lk := literalKind(w)
		if fits(d, 19) {
			return words(w&^(0x7ffff<<5) | uint32(d>>2)&0x7ffff<<5), nil
		}
		base := rt
		if !lk.gpr || rt == 31 {
			if r == 0 {
				return nil, fmt.Errorf("%s: %s needs a scratch register to hold the address %#x, beyond ±1 MiB of the thunk at %#x, and the displaced instructions use both X16 and X17; place the thunk within ±1 MiB of the literal", in, lk.name, target, pc)
			}
			base = r
		}
		return words(append(movAbs(base, target), lk.ldr|base<<5|rt)...), nil
	}
	return nil, fmt.Errorf("%s reads the program counter in a form this relocator does not handle; patch the function's callers instead", in)
}

// skipOverJump emits the inverted conditional inv (whose offset field has
// bits bits at bit 5) jumping over an absolute jump to target.
func skipOverJump(in *a64Inst, inv uint32, bits uint, pc, target uint64, r uint32) ([]byte, error) {
	if r == 0 {
		return nil, fmt.Errorf("%s: %w", in, errNoScratch(pc, target))
	}
	far := farJumpARM64(r, target)
	skip := uint32(4+len(far)) >> 2
	mask := uint32(1)<<bits - 1
	return append(words(inv|(skip&mask)<<5), far...), nil
}
