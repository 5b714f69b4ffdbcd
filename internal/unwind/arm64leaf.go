package unwind

import (
	"encoding/binary"

	"golang.org/x/arch/arm64/arm64asm"
)

// arm64LeafOnly reports whether every instruction of code is one a leaf
// function without a frame may contain: it never calls (BL, BLR), never
// writes SP, X29 or X30 (as a destination, or as a base register with
// writeback), and decodes (hints such as PACIASP/AUTIASP/BTI are fine: they
// sign or check LR in place). One instruction that fails this makes the
// whole code unproven: the answer is about the code, not a path through it.
func arm64LeafOnly(code []byte) bool {
	for off := 0; off+4 <= len(code); off += 4 {
		w := binary.LittleEndian.Uint32(code[off:])
		if w&0xfffff01f == 0xd503201f { // HINT space: NOP, YIELD, PACIASP, AUTIASP, BTI, ...
			continue
		}
		if w == 0 { // alignment padding between functions
			continue
		}
		in, err := arm64asm.Decode(code[off : off+4])
		if err != nil {
			return false
		}
		if !arm64LeafInsn(in) {
			return false
		}
	}
	return true
}

// frameRegs are the registers a frameless leaf must not write: FP and LR
// as Reg operands; as RegSP operands (bases, ADD/SUB), register 31 is SP
// too (arm64asm's SP and XZR share the encoding, told apart by the type).
var frameRegs = map[arm64asm.Reg]bool{arm64asm.X29: true, arm64asm.W29: true, arm64asm.X30: true, arm64asm.W30: true}

func frameRegSP(r arm64asm.RegSP) bool {
	return frameRegs[arm64asm.Reg(r)] || arm64asm.Reg(r) == arm64asm.SP || arm64asm.Reg(r) == arm64asm.WSP
}

func arm64LeafInsn(in arm64asm.Inst) bool {
	switch in.Op {
	case arm64asm.BL, arm64asm.BLR:
		return false
	}
	// Writeback to a frame register through a memory operand.
	for _, a := range in.Args {
		if m, ok := a.(arm64asm.MemImmediate); ok && m.Mode != arm64asm.AddrOffset && frameRegSP(m.Base) {
			return false
		}
	}
	// The first operand is the destination, except for stores, compares
	// and branches, which only read it.
	switch in.Op {
	case arm64asm.STR, arm64asm.STRB, arm64asm.STRH, arm64asm.STP, arm64asm.STUR, arm64asm.STURB, arm64asm.STURH,
		arm64asm.STLR, arm64asm.STLRB, arm64asm.STLRH, arm64asm.STNP,
		arm64asm.CMP, arm64asm.CMN, arm64asm.TST, arm64asm.CCMP, arm64asm.CCMN,
		arm64asm.CBZ, arm64asm.CBNZ, arm64asm.TBZ, arm64asm.TBNZ, arm64asm.B, arm64asm.BR, arm64asm.RET,
		arm64asm.PRFM, arm64asm.SVC, arm64asm.DMB, arm64asm.DSB, arm64asm.ISB, arm64asm.MSR:
		return true
	}
	dests := 1
	switch in.Op {
	case arm64asm.LDP, arm64asm.LDPSW, arm64asm.LDNP, arm64asm.LDXP, arm64asm.LDAXP:
		dests = 2 // both registers are loaded
	}
	for i := 0; i < dests && i < len(in.Args); i++ {
		switch r := in.Args[i].(type) {
		case arm64asm.Reg:
			if frameRegs[r] {
				return false
			}
		case arm64asm.RegSP:
			if frameRegSP(r) {
				return false
			}
		}
	}
	return true
}
