package trampoline

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"fmt"

	"golang.org/x/arch/x86/x86asm"

	"github.com/hotpatch-dev/hotpatch/internal/arch"
)

// AMD64 is the x86-64 Arch. Its jump is `jmp rel32` (5 bytes) when the
// destination is within ±2 GiB and `jmp [rip+0]; .quad dest` (14 bytes)
// otherwise; neither clobbers a register.
//
// Plan keeps a leading endbr64 in place (the jump goes after it), displaces
// whole instructions only, relocates RIP-relative operands and relative
// branches into the thunk, and refuses (with an *Error) whatever it does not
// understand.
type AMD64 struct{}

const (
	amd64NearJumpLen = 5
	amd64FarJumpLen  = 14

	// amd64MaxThunk bounds a thunk. The displaced instructions start before
	// offset 14 (the longest jump) and end by offset 14+15-1, so they total at
	// most 28 bytes. Relocation grows only relative branches, each of which
	// is at least 2 bytes long and grows by at most 16 bytes (loop rel8 →
	// loop +2; jmp short +N; jmp [rip+0]; .quad), so at most 7 of them fit
	// before offset 14. Add the kept endbr64 (4) and the jump back (14):
	// 4 + 28 + 7*16 + 14 = 158.
	amd64MaxThunk = 160
)

var endbr64 = []byte{0xf3, 0x0f, 0x1e, 0xfa}

// Machine returns elf.EM_X86_64.
func (AMD64) Machine() elf.Machine { return arch.AMD64.Machine }

// MaxThunkSize bounds len(Plan.Thunk) for any x86-64 function.
func (AMD64) MaxThunkSize() int { return amd64MaxThunk }

// Jump returns `e9 rel32` when to is within reach of a rel32 from from+5,
// else `ff 25 00 00 00 00` followed by the 8-byte little-endian address.
func (AMD64) Jump(from, to uint64) []byte {
	if rel, ok := rel32(from+amd64NearJumpLen, to); ok {
		b := []byte{0xe9, 0, 0, 0, 0}
		binary.LittleEndian.PutUint32(b[1:], uint32(rel))
		return b
	}
	return absJump(to)
}

// rel32 returns target-next as an int32 if it fits. Addresses wrap modulo
// 2^64, as the CPU computes them.
func rel32(next, target uint64) (int32, bool) {
	d := int64(target - next)
	return int32(d), d == int64(int32(d))
}

// absJump is `jmp [rip+0]; .quad to`.
func absJump(to uint64) []byte {
	b := make([]byte, amd64FarJumpLen)
	b[0], b[1] = 0xff, 0x25
	binary.LittleEndian.PutUint64(b[6:], to)
	return b
}

// amd64Inst is one decoded instruction at Addr with its raw bytes.
type amd64Inst struct {
	x86asm.Inst
	Addr uint64
	Raw  []byte
	// ripDispOff is the offset in Raw of a RIP-relative disp32, or -1.
	ripDispOff int
}

func (in *amd64Inst) text() string {
	if isEndbr64(in.Raw) {
		return "endbr64"
	}
	if in.Op == 0 {
		return "(unknown instruction)"
	}
	return x86asm.GNUSyntax(in.Inst, in.Addr, nil)
}

func (in *amd64Inst) String() string {
	return fmt.Sprintf("`%s` (% x) at %#x", in.text(), in.Raw, in.Addr)
}

// target returns the destination of a relative branch (jmp, jcc, call, loop,
// jrcxz, xbegin).
func (in *amd64Inst) target() (uint64, bool) {
	if in.PCRel == 0 || in.Op == 0 {
		return 0, false
	}
	rel, ok := in.Args[0].(x86asm.Rel)
	if !ok {
		return 0, false
	}
	return in.Addr + uint64(in.Len) + uint64(int64(rel)), true
}

func isEndbr64(b []byte) bool { return bytes.HasPrefix(b, endbr64) }

// decodeAMD64 decodes one instruction at addr. It returns an error for
// bytes x86asm cannot decode or does not understand (Op == 0), except
// endbr64, which it returns as an instruction of length 4 with Op == 0.
// It also detects RIP-relative operands of VEX/EVEX instructions, for which
// x86asm does not set PCRel, and works around x86asm giving VZEROUPPER and
// VZEROALL a ModRM byte they do not have.
func decodeAMD64(code []byte, addr uint64) (*amd64Inst, error) {
	if isEndbr64(code) {
		return &amd64Inst{Inst: x86asm.Inst{Len: 4, Mode: 64}, Addr: addr, Raw: code[:4], ripDispOff: -1}, nil
	}
	inst, err := x86asm.Decode(code, 64)
	if (err != nil || inst.Op == 0) && len(code) < 15 {
		// Truncated input makes x86asm fail or return Op == 0: say so.
		long := append(append([]byte(nil), code...), make([]byte, 15)...)
		if full, err2 := x86asm.Decode(long, 64); err2 == nil && full.Op != 0 && full.Len > len(code) {
			return nil, fmt.Errorf("the instruction at %#x (bytes % x) is truncated: it needs %d bytes but only %d are given", addr, code, full.Len, len(code))
		}
	}
	if err != nil {
		n := min(len(code), 15)
		return nil, fmt.Errorf("cannot decode the bytes % x at %#x: %v", code[:n], addr, err)
	}
	if inst.Op == 0 {
		n := min(len(code), 8)
		return nil, fmt.Errorf("the decoder does not understand the instruction at %#x (bytes % x ..., which x86asm reads as `%s`)",
			addr, code[:n], x86asm.GNUSyntax(inst, addr, nil))
	}
	in := &amd64Inst{Inst: inst, Addr: addr, Raw: code[:inst.Len], ripDispOff: -1}
	if vexLen := vexPrefixLen(code[0]); vexLen > 0 {
		if err := in.fixVEX(code, vexLen); err != nil {
			return nil, err
		}
		return in, nil
	}
	for _, a := range inst.Args {
		m, ok := a.(x86asm.Mem)
		if !ok {
			continue
		}
		switch {
		case m.Base == x86asm.RIP && inst.PCRel == 4 && inst.PCRelOff+4 <= inst.Len:
			in.ripDispOff = inst.PCRelOff
		case m.Base == x86asm.RIP || m.Base == x86asm.EIP || m.Base == x86asm.IP:
			return nil, fmt.Errorf("%s addresses memory relative to the instruction pointer in a form this relocator does not handle", in)
		}
	}
	return in, nil
}

// vexPrefixLen is the length of the VEX (c5: 2, c4: 3) or EVEX (62: 4)
// prefix starting with b, or 0. In 64-bit mode these bytes always start a
// VEX/EVEX prefix, and x86asm only recognises one as the first byte.
func vexPrefixLen(b byte) int {
	switch b {
	case 0xc5:
		return 2
	case 0xc4:
		return 3
	case 0x62:
		return 4
	}
	return 0
}

// fixVEX checks x86asm's length of a VEX/EVEX instruction against the ModRM
// encoding and records a RIP-relative displacement (ModRM mod=00 rm=101).
func (in *amd64Inst) fixVEX(code []byte, vexLen int) error {
	opPos := vexLen
	if len(code) <= opPos {
		return fmt.Errorf("truncated VEX instruction at %#x", in.Addr)
	}
	// VZEROUPPER/VZEROALL (map 0F, opcode 77) have no ModRM; x86asm
	// swallows the next byte as one.
	mapSel := byte(1)
	switch vexLen {
	case 3:
		mapSel = code[1] & 0x1f
	case 4:
		mapSel = code[1] & 0x03
	}
	if vexLen != 4 && mapSel == 1 && code[opPos] == 0x77 {
		in.Len = opPos + 1
		in.Raw = code[:in.Len]
		return nil
	}
	var mem *x86asm.Mem
	for _, a := range in.Args {
		if m, ok := a.(x86asm.Mem); ok {
			mem = &m
		}
	}
	if len(code) <= opPos+1 {
		return fmt.Errorf("truncated VEX instruction at %#x", in.Addr)
	}
	modrm := code[opPos+1]
	mod, rm := modrm>>6, modrm&7
	// Minimum length from the ModRM form; an imm8 may follow.
	n := opPos + 2
	if mod != 3 && rm == 4 {
		if len(code) <= n {
			return fmt.Errorf("truncated VEX instruction at %#x", in.Addr)
		}
		sib := code[n]
		n++
		if mod == 0 && sib&7 == 5 {
			n += 4
		}
	}
	switch {
	case mod == 0 && rm == 5:
		n += 4
	case mod == 1:
		n++
	case mod == 2:
		n += 4
	}
	if in.Len != n && in.Len != n+1 {
		return fmt.Errorf("%s: decoder length %d disagrees with its ModRM encoding (%d bytes before any immediate)", in, in.Len, n)
	}
	if (mod != 3) != (mem != nil) {
		return fmt.Errorf("%s: decoder operands disagree with its ModRM encoding", in)
	}
	if mod == 0 && rm == 5 {
		off := opPos + 2
		if int64(int32(binary.LittleEndian.Uint32(code[off:]))) != mem.Disp {
			return fmt.Errorf("%s: decoder displacement disagrees with the encoding", in)
		}
		in.ripDispOff = off
	}
	return nil
}

// fillerLen is the length of the longest prefix of b made of whole filler
// instructions: int3, nop and the multi-byte nop encodings.
func fillerLen(b []byte) int {
	n := 0
	for n < len(b) {
		switch b[n] {
		case 0xcc, 0x90:
			n++
			continue
		}
		inst, err := x86asm.Decode(b[n:], 64)
		if err != nil || inst.Op != x86asm.NOP {
			break
		}
		n += inst.Len
	}
	return n
}

// Plan patches fn to jump to newAddr, with the thunk at thunkAddr.
//
// The jump goes at fn.Addr, or at fn.Addr+4 when the function starts with
// endbr64 (which stays, and is repeated at the start of the thunk so that the
// thunk is a valid indirect-branch target under CET). The thunk ends with a
// jump back to the first byte after the displaced instructions, or with int3
// when the displaced instructions were the whole function.
//
// A thread whose PC (or a return address on whose stack) lies strictly
// inside (Plan.Addr, Plan.Addr+len(Plan.Original)) when the jump is written
// would resume in the middle of it: see Plan.Overwrites.
func (a AMD64) Plan(fn Func, newAddr, thunkAddr uint64) (*Plan, error) {
	code := fn.Code
	start := 0
	if isEndbr64(code) {
		start = len(endbr64)
	}
	addr := fn.Addr + uint64(start)
	jump := a.Jump(addr, newAddr)

	// Displaced instructions: whole instructions covering len(jump).
	var displaced []*amd64Inst
	pos := start
	for pos-start < len(jump) && pos < len(code) {
		in, err := decodeAMD64(code[pos:], fn.Addr+uint64(pos))
		if err != nil {
			return nil, &Error{Func: fn.Name, Addr: fn.Addr + uint64(pos), Err: ErrCannotRelocate,
				Detail: err.Error() + "; the instruction cannot be moved out of the way of the jump: check the function's bounds, or patch its callers instead"}
		}
		if isEndbr64(in.Raw) {
			return nil, &Error{Func: fn.Name, Addr: in.Addr, Err: ErrCannotRelocate,
				Detail: fmt.Sprintf("%s is an indirect-branch target inside the bytes the jump would overwrite; patch the function's callers instead", in)}
		}
		displaced = append(displaced, in)
		pos += in.Len
	}
	whole := pos >= len(code) // the displaced instructions are the whole (rest of the) function
	original := append([]byte(nil), code[start:pos]...)
	if len(original) < len(jump) {
		need := len(jump) - len(original)
		if fl := fillerLen(fn.Padding); fl < need {
			return nil, &Error{Func: fn.Name, Addr: fn.Addr, Err: ErrTooShort,
				Detail: fmt.Sprintf("the jump to %#x needs %d bytes at %#x, but the function has %d bytes of code there and %d bytes of int3/nop padding after it (%d in all); %s",
					newAddr, len(jump), addr, len(original), fl, len(original)+fl, tooShortAdvice(len(jump), len(original)+fl))}
		}
		original = append(original, fn.Padding[:need]...)
	}

	// No branch anywhere in the function may land inside the overwritten
	// bytes (a branch to addr itself is fine: it reaches the jump).
	end := addr + uint64(len(original))
	for p := 0; p < len(code); {
		in, err := decodeAMD64(code[p:], fn.Addr+uint64(p))
		if err != nil {
			if fillerLen(code[p:]) == len(code)-p {
				break
			}
			return nil, &Error{Func: fn.Name, Addr: fn.Addr + uint64(p), Err: ErrCannotRelocate,
				Detail: err.Error() + "; so a branch into the patched bytes cannot be ruled out: check the function's bounds (its symbol size), or patch its callers instead"}
		}
		if t, ok := in.target(); ok && t > addr && t < end {
			return nil, &Error{Func: fn.Name, Addr: in.Addr, Err: ErrBranchIntoPatch,
				Detail: fmt.Sprintf("%s branches to %#x, inside the %d bytes [%#x, %#x) the jump would overwrite; the function cannot be patched at its entry: patch its callers instead",
					in, t, len(original), addr, end)}
		}
		p += in.Len
	}

	var thunk []byte
	if start > 0 {
		thunk = append(thunk, endbr64...)
	}
	for _, in := range displaced {
		b, err := relocateAMD64(in, thunkAddr+uint64(len(thunk)))
		if err != nil {
			return nil, &Error{Func: fn.Name, Addr: in.Addr, Err: ErrCannotRelocate, Detail: err.Error()}
		}
		thunk = append(thunk, b...)
	}
	if whole {
		thunk = append(thunk, 0xcc)
	} else {
		thunk = append(thunk, a.Jump(thunkAddr+uint64(len(thunk)), end)...)
	}
	if len(thunk) > amd64MaxThunk {
		// Unreachable by construction (see amd64MaxThunk); refuse rather
		// than overrun the caller's thunk slot.
		return nil, &Error{Func: fn.Name, Addr: addr, Err: ErrCannotRelocate,
			Detail: fmt.Sprintf("internal error: thunk of %d bytes exceeds MaxThunkSize %d; please report this function's bytes", len(thunk), amd64MaxThunk)}
	}

	j := make([]byte, len(original))
	copy(j, jump)
	for i := len(jump); i < len(j); i++ {
		j[i] = 0xcc
	}
	return &Plan{Func: fn.Name, Addr: addr, Original: original, Jump: j, ThunkAddr: thunkAddr, Thunk: thunk}, nil
}

// relocateAMD64 returns in re-encoded to run at newAddr with the same effect.
func relocateAMD64(in *amd64Inst, newAddr uint64) ([]byte, error) {
	if in.ripDispOff >= 0 {
		old := int32(binary.LittleEndian.Uint32(in.Raw[in.ripDispOff:]))
		target := in.Addr + uint64(in.Len) + uint64(int64(old))
		d, ok := rel32(newAddr+uint64(in.Len), target)
		if !ok {
			return nil, fmt.Errorf("%s addresses %#x relative to the instruction pointer, which is out of rel32 reach of the thunk at %#x; place the thunk within ±2 GiB of the function", in, target, newAddr)
		}
		b := append([]byte(nil), in.Raw...)
		binary.LittleEndian.PutUint32(b[in.ripDispOff:], uint32(d))
		return b, nil
	}
	target, isBranch := in.target()
	if in.PCRel != 0 && !isBranch {
		return nil, fmt.Errorf("%s has an instruction-pointer-relative field this relocator does not handle; patch the function's callers instead", in)
	}
	if !isBranch {
		return append([]byte(nil), in.Raw...), nil
	}

	// Relative branch: find the opcode and vet the prefixes.
	var opStart int
	switch in.PCRel {
	case 1:
		opStart = in.Len - 2
	case 4:
		opStart = in.Len - 5
		if opStart >= 1 && in.Raw[opStart-1] == 0x0f && in.Raw[opStart]&0xf0 == 0x80 {
			opStart--
		}
	default:
		return nil, fmt.Errorf("%s has a %d-byte relative displacement this relocator does not handle; patch the function's callers instead", in, in.PCRel)
	}
	if opStart < 0 || in.PCRelOff != in.Len-in.PCRel {
		return nil, fmt.Errorf("%s: unexpected encoding of a relative branch; patch the function's callers instead", in)
	}
	op := in.Raw[opStart]
	known := op == 0xeb || op == 0xe9 || op == 0xe8 || (op >= 0x70 && op <= 0x7f) ||
		(op == 0x0f && in.PCRel == 4) || (op >= 0xe0 && op <= 0xe3 && in.PCRel == 1)
	if !known {
		return nil, fmt.Errorf("%s is a relative branch this relocator does not handle; patch the function's callers instead", in)
	}
	for _, p := range in.Raw[:opStart] {
		switch {
		case p == 0x2e || p == 0x3e || p == 0xf2 || p == 0x67: // hints, bnd, address size
		case p&0xf0 == 0x40: // REX
		default:
			return nil, fmt.Errorf("%s: prefix %#02x on a relative branch is not handled; patch the function's callers instead", in, p)
		}
	}
	jmpTo := func(at uint64) []byte { return AMD64{}.Jump(at, target) }

	switch {
	case op == 0xeb || op == 0xe9: // jmp rel8/rel32
		return jmpTo(newAddr), nil

	case op >= 0x70 && op <= 0x7f, op == 0x0f: // jcc rel8/rel32
		cc := op & 0x0f
		if op == 0x0f {
			cc = in.Raw[opStart+1] & 0x0f
		}
		if d, ok := rel32(newAddr+6, target); ok {
			b := []byte{0x0f, 0x80 | cc, 0, 0, 0, 0}
			binary.LittleEndian.PutUint32(b[2:], uint32(d))
			return b, nil
		}
		// Inverted jcc over an absolute jump.
		return append([]byte{0x70 | (cc ^ 1), amd64FarJumpLen}, absJump(target)...), nil

	case op == 0xe8: // call rel32
		if target == in.Addr+uint64(in.Len) {
			return nil, fmt.Errorf("%s calls the next instruction to read its own address, which a moved copy cannot reproduce; patch the function's callers instead", in)
		}
		if d, ok := rel32(newAddr+5, target); ok {
			b := []byte{0xe8, 0, 0, 0, 0}
			binary.LittleEndian.PutUint32(b[1:], uint32(d))
			return b, nil
		}
		// call [rip+2]; jmp short +8; .quad target
		b := []byte{0xff, 0x15, 2, 0, 0, 0, 0xeb, 8, 0, 0, 0, 0, 0, 0, 0, 0}
		binary.LittleEndian.PutUint64(b[8:], target)
		return b, nil

	case op >= 0xe0 && op <= 0xe3: // loopne, loope, loop, jrcxz/jecxz
		// Same instruction (prefixes included, so the counter width and the
		// flags it reads stay) with a short hop to a jump to the target:
		//     loop L1; jmp short L2; L1: jmp target; L2:
		j := jmpTo(newAddr + uint64(in.Len) + 2)
		b := append([]byte(nil), in.Raw...)
		b[in.Len-1] = 2
		b = append(b, 0xeb, byte(len(j)))
		return append(b, j...), nil
	}
	panic("unreachable")
}

func tooShortAdvice(jumpLen, have int) string {
	if jumpLen > amd64NearJumpLen && have >= amd64NearJumpLen {
		return "place the replacement within ±2 GiB of the function so the 5-byte jump fits, or patch the function's callers instead"
	}
	return "patch the function's callers instead"
}
