package trampoline

import (
	"encoding/binary"
	"fmt"
)

// GoOriginaler builds "call the original" code for Go functions (see
// GoOriginal in goorig.go): AMD64 and ARM64.
type GoOriginaler interface {
	GoOriginal(fn Func, at, marker, morestack, morestackNoctxt uint64, jumpLen int) ([]byte, error)
	GoOriginalEntry(at, ctx, fn, marker, orig uint64) []byte
}

var (
	_ GoOriginaler = AMD64{}
	_ GoOriginaler = ARM64{}
)

const (
	a64LdrX16G16   = 0xf9400b90 // MOVD 16(R28), R16: g.stackguard0
	a64CmpX16SP    = 0xeb3063ff // CMP R16, RSP
	a64CmpX16X17   = 0xeb10023f // CMP R16, R17
	a64MovX3X30    = 0xaa1e03e3 // MOVD R30, R3
	a64CmpX26X16   = 0xeb10035f // CMP R16, R26 (SUBS XZR, X26, X16)
	a64MovX26Zero  = 0xaa1f03fa // MOVD ZR, R26
	a64CondLS      = 9
	a64CondNE      = 1
	regX26, regX30 = 26, 30
)

// GoOriginal is GoOriginal for arm64 Go functions (`MOVD 16(R28), R16;
// [SUB $N, RSP, R17;] CMP R16, RSP|R17; BLS tail`, and a tail that spills
// the arguments, saves LR in R3 and calls runtime.morestack_noctxt). Its
// own tail loads the marker into R26 (the closure context register, which
// morestack saves and restores) and LR with the address after the
// function's call of morestack_noctxt, and branches to runtime.morestack.
func (ARM64) GoOriginal(fn Func, at, marker, morestack, morestackNoctxt uint64, jumpLen int) ([]byte, error) {
	refuse := func(format string, args ...any) ([]byte, error) {
		return nil, &Error{Func: fn.Name, Addr: fn.Addr, Err: ErrCannotRelocate, Detail: fmt.Sprintf(format, args...)}
	}
	word := func(off uint64) (uint32, bool) {
		if off+4 > uint64(len(fn.Code)) {
			return 0, false
		}
		return binary.LittleEndian.Uint32(fn.Code[off:]), true
	}
	if w, ok := word(0); !ok || w != a64LdrX16G16 {
		return nil, &Error{Func: fn.Name, Addr: fn.Addr, Err: ErrNoStackCheck, Detail: "the function does not begin with Go's stack check"}
	}
	check := []uint32{a64LdrX16G16}
	off := uint64(4)
	for ; ; off += 4 {
		w, ok := word(off)
		if !ok || off > 12 {
			return refuse("no BLS after Go's stack check")
		}
		if w&0xff00001f == 0x54000000|a64CondLS {
			break
		}
		if w != a64CmpX16SP && w != a64CmpX16X17 && w&0xff0003ff != 0xd10003f1 { // SUB $N, RSP, R17
			return refuse("Go's stack check holds %#08x, which this relocator does not know", w)
		}
		check = append(check, w)
	}
	bls, _ := word(off)
	tail := fn.Addr + off + uint64(int64(int32(bls<<8)>>13)*4)
	rest := off + 4
	if rest < uint64(jumpLen) {
		return refuse("the %d-byte jump overwrites more than the %d bytes of the stack check", jumpLen, rest)
	}
	if tail < fn.Addr+rest || tail >= fn.Addr+uint64(len(fn.Code)) {
		return refuse("the stack check branches to %#x, outside the function's body", tail)
	}
	var spills []uint32
	var resume uint64
	for t := tail - fn.Addr; resume == 0; t += 4 {
		w, ok := word(t)
		if !ok || len(spills) > 64 {
			return refuse("no call of runtime.morestack_noctxt in the stack-growth tail at %#x", tail)
		}
		switch {
		case w == a64MovX3X30:
			bl, ok := word(t + 4)
			target := fn.Addr + t + 4 + uint64(int64(int32(bl<<6)>>6)*4)
			if !ok || bl&0xfc000000 != 0x94000000 || target != morestackNoctxt {
				return refuse("the stack-growth tail at %#x does not call runtime.morestack_noctxt at %#x after saving LR", tail, morestackNoctxt)
			}
			resume = fn.Addr + t + 8
		case w&0x0a000000 == 0x08000000 && w&0x3b000000 != 0x18000000 && (w>>5)&31 == 31 && w&(1<<22) == 0:
			spills = append(spills, w) // a store relative to RSP
		default:
			return refuse("the stack-growth tail at %#x holds %#08x, not an argument spill", tail, w)
		}
	}

	// check..., BLS tail; LDR X16, back; BR X16; tail: spills...,
	// MOVD R30, R3; LDR X26, marker; LDR X30, resume; LDR X16, morestack;
	// BR X16; then the literals.
	n := len(check) + 3 + len(spills) + 5
	if n%2 == 1 {
		n++ // 8-byte aligned literals
	}
	lit := func(i int) uint64 { return uint64(4*n + 8*i) } // back, marker, resume, morestack
	ldr := func(pc uint64, r uint32, i int) uint32 { return 0x58000000 | uint32((lit(i)-pc)/4)<<5 | r }
	ws := append([]uint32(nil), check...)
	tailAt := uint64(4 * (len(check) + 3))
	ws = append(ws, 0x54000000|uint32((tailAt-uint64(4*len(ws)))/4)<<5|a64CondLS)
	ws = append(ws, ldr(uint64(4*len(ws)), regX16, 0), a64BRX16)
	ws = append(ws, spills...)
	ws = append(ws, a64MovX3X30)
	ws = append(ws, ldr(uint64(4*len(ws)), regX26, 1))
	ws = append(ws, ldr(uint64(4*len(ws)), regX30, 2))
	ws = append(ws, ldr(uint64(4*len(ws)), regX16, 3), a64BRX16)
	for len(ws) < n {
		ws = append(ws, a64NOP)
	}
	b := words(ws...)
	for _, v := range []uint64{fn.Addr + rest, marker, resume, morestack} {
		b = binary.LittleEndian.AppendUint64(b, v)
	}
	if len(b) > GoOriginalMaxSize {
		return refuse("the original's code (%d bytes) exceeds %d bytes", len(b), GoOriginalMaxSize)
	}
	return b, nil
}

// GoOriginalEntry is GoOriginalEntry for arm64: a call with R26 == marker
// goes to orig with R26 cleared, every other call enters the replacement
// closure (R26 = ctx, then fn). X16 is scratch at a function entry.
func (ARM64) GoOriginalEntry(at, ctx, fn, marker, orig uint64) []byte {
	// 0 LDR X16, marker; 4 CMP X26, X16; 8 B.NE 24; 12 MOVD ZR, R26;
	// 16 LDR X16, orig; 20 BR X16; 24 LDR X26, ctx; 28 LDR X16, fn;
	// 32 BR X16; 36 NOP; 40 marker, orig, ctx, fn.
	ldr := func(pc uint64, r uint32, i int) uint32 { return 0x58000000 | uint32((40+8*uint64(i)-pc)/4)<<5 | r }
	b := words(ldr(0, regX16, 0), a64CmpX26X16, 0x54000000|(16/4)<<5|a64CondNE, a64MovX26Zero,
		ldr(16, regX16, 1), a64BRX16, ldr(24, regX26, 2), ldr(28, regX16, 3), a64BRX16, a64NOP)
	for _, v := range []uint64{marker, orig, ctx, fn} {
		b = binary.LittleEndian.AppendUint64(b, v)
	}
	return b
}
