package trampoline

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/arch/arm64/arm64asm"
)

// Test-side encoders, written from the ISA's field layouts and cross-checked
// against arm64asm in TestARM64Encoders.
func encBr(link bool, off int64) uint32 {
	w := 0x14000000 | uint32(off>>2)&0x3ffffff
	if link {
		w |= 0x80000000
	}
	return w
}
func encBcond(cc uint32, off int64) uint32 { return 0x54000000 | uint32(off>>2)&0x7ffff<<5 | cc }
func encCB(sf, nz bool, rt uint32, off int64) uint32 {
	w := 0x34000000 | uint32(off>>2)&0x7ffff<<5 | rt
	if sf {
		w |= 1 << 31
	}
	if nz {
		w |= 1 << 24
	}
	return w
}
func encTB(nz bool, rt, bit uint32, off int64) uint32 {
	w := 0x36000000 | (bit>>5)<<31 | (bit&31)<<19 | uint32(off>>2)&0x3fff<<5 | rt
	if nz {
		w |= 1 << 24
	}
	return w
}
func encADR(page bool, rd uint32, imm int64) uint32 { // imm in bytes (ADR) or pages (ADRP)
	w := 0x10000000 | uint32(imm&3)<<29 | uint32(imm>>2)&0x7ffff<<5 | rd
	if page {
		w |= 1 << 31
	}
	return w
}

// encLit: kind is opc<<1|V as in literalKind.
func encLit(kind, rt uint32, off int64) uint32 {
	return (kind>>1)<<30 | 0x18000000 | (kind&1)<<26 | uint32(off>>2)&0x7ffff<<5 | rt
}

const (
	litW, litX, litSW, litPRFM = 0 << 1, 1 << 1, 2 << 1, 3 << 1
	litS, litD, litQ           = 0<<1 | 1, 1<<1 | 1, 2<<1 | 1
)

func decodeA64(t testing.TB, w uint32) arm64asm.Inst {
	t.Helper()
	inst, err := arm64asm.Decode(binary.LittleEndian.AppendUint32(nil, w))
	require.NoError(t, err, "%08x", w)
	return inst
}

func pcrelOf(inst arm64asm.Inst) int64 {
	for _, a := range inst.Args {
		if r, ok := a.(arm64asm.PCRel); ok {
			return int64(r)
		}
	}
	return -1 << 62
}

func TestARM64Encoders(t *testing.T) {
	for _, tc := range []struct {
		w   uint32
		op  string
		rel int64
	}{
		{encBr(false, -0x8000000), "B", -0x8000000},
		{encBr(true, 0x7fffffc), "BL", 0x7fffffc},
		{encBcond(9, -0x100000), "B", -0x100000},
		{encCB(true, true, 3, 0xffffc), "CBNZ", 0xffffc},
		{encCB(false, false, 3, -4), "CBZ", -4},
		{encTB(true, 5, 63, -0x8000), "TBNZ", -0x8000},
		{encTB(false, 5, 1, 0x7ffc), "TBZ", 0x7ffc},
		{encADR(false, 7, -0x100000), "ADR", -0x100000},
		{encADR(false, 7, 0xfffff), "ADR", 0xfffff},
		{encADR(true, 7, -0x100000), "ADRP", -0x100000 << 12},
		{encLit(litX, 1, 0x40), "LDR", 0x40},
		{encLit(litSW, 1, -8), "LDRSW", -8},
		{encLit(litQ, 1, 12), "LDR", 12},
		{encLit(litPRFM, 0, 4), "PRFM", 4},
	} {
		inst := decodeA64(t, tc.w)
		require.Equal(t, tc.op, inst.Op.String(), "%08x: %v", tc.w, inst)
		require.Equal(t, tc.rel, pcrelOf(inst), "%08x: %v", tc.w, inst)
	}
}

// TestARM64Jump decodes every jump with arm64asm and checks where it goes.
func TestARM64Jump(t *testing.T) {
	a := ARM64{}
	const from = 0x40_0000_1000
	for _, tc := range []struct {
		name string
		to   uint64
		near bool
	}{
		{"forward", from + 0x1000, true},
		{"backward", from - 0x1000, true},
		{"self", from, true},
		{"max forward", from + 0x8000000 - 4, true},
		{"one past max forward", from + 0x8000000, false},
		{"max backward", from - 0x8000000, true},
		{"one past max backward", from - 0x8000000 - 4, false},
		{"far up", from + 1<<40, false},
		{"far down", 0x1000, false},
		{"unaligned near", from + 0x102, false},
		{"wrap", 0xffff_ffff_ffff_f000, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := a.Jump(from, tc.to)
			if tc.near {
				require.Len(t, b, 4)
				inst := decodeA64(t, binary.LittleEndian.Uint32(b))
				require.Equal(t, arm64asm.B, inst.Op)
				require.Equal(t, tc.to, from+uint64(pcrelOf(inst)))
				return
			}
			require.Len(t, b, 16)
			ldr := decodeA64(t, binary.LittleEndian.Uint32(b))
			require.Equal(t, "LDR X16, .+0x8", ldr.String())
			br := decodeA64(t, binary.LittleEndian.Uint32(b[4:]))
			require.Equal(t, "BR X16", br.String())
			require.Equal(t, tc.to, binary.LittleEndian.Uint64(b[8:]))
			// And the interpreter agrees.
			c := &a64CPU{PC: from, mem: &a64Mem{}}
			c.mem.add(from, b)
			require.NoError(t, c.runWhile(from, from+16))
			require.Equal(t, tc.to, c.PC)
		})
	}
	// The 4-byte form from near the top and bottom of the address space.
	require.Len(t, a.Jump(0xffff_ffff_ffff_fff0, 0x10), 4)
	require.Len(t, a.Jump(0x10, 0xffff_ffff_ffff_fff0), 4)
}

// a64RelocCase is one PC-relative instruction at pc relocated to a thunk at t.
type a64RelocCase struct {
	name    string
	w       uint32
	pc, t   uint64
	scratch uint32
}

// a64RelocCases covers every PC-relative form at every reach: the thunk next
// to the instruction, beyond each field's reach (±32 KiB for TBZ, ±1 MiB for
// B.cond/CBZ/ADR/LDR, ±128 MiB for B/BL, ±4 GiB for ADRP), and far away in
// both directions, with targets at both ends of each field.
func a64RelocCases() []a64RelocCase {
	const pc = 0x55_0000_4000
	thunks := []struct {
		name string
		t    uint64
	}{
		{"adjacent", pc + 0x84},
		{"below", pc - 0x2000},
		{"40KiB", pc + 40<<10},
		{"2MiB", pc + 2<<20},
		{"-2MiB", pc - 2<<20},
		{"200MiB", pc + 200<<20},
		{"8GiB", pc + 8<<30},
		{"-300GiB", pc - 300<<30},
		{"wrap", 0xffff_ffff_ffff_0000},
	}
	forms := []struct {
		name string
		w    uint32
	}{
		{"b +8", encBr(false, 8)},
		{"b -max", encBr(false, -0x8000000)},
		{"b +max", encBr(false, 0x7fffffc)},
		{"bl +0x1000", encBr(true, 0x1000)},
		{"bl -max", encBr(true, -0x8000000)},
		{"cbz x3 +0x40", encCB(true, false, 3, 0x40)},
		{"cbnz x3 -max", encCB(true, true, 3, -0x100000)},
		{"cbz w3 +max", encCB(false, false, 3, 0xffffc)},
		{"cbnz w4 -8", encCB(false, true, 4, -8)},
		{"tbz x5 #0 +0x40", encTB(false, 5, 0, 0x40)},
		{"tbnz x5 #63 -max", encTB(true, 5, 63, -0x8000)},
		{"tbz w5 #31 +max", encTB(false, 5, 31, 0x7ffc)},
		{"tbnz x0 #40 +4", encTB(true, 0, 40, 4)},
		{"adr x0 +0x123", encADR(false, 0, 0x123)},
		{"adr x1 -max", encADR(false, 1, -0x100000)},
		{"adr x30 +max", encADR(false, 30, 0xfffff)},
		{"adr x16", encADR(false, 16, 0x10)},
		{"adrp x2 +5p", encADR(true, 2, 5)},
		{"adrp x2 -maxp", encADR(true, 2, -0x100000)},
		{"adrp x29 +maxp", encADR(true, 29, 0xfffff)},
		{"adrp x16 0p", encADR(true, 16, 0)},
		{"ldr w6 lit", encLit(litW, 6, 0x80)},
		{"ldr x6 lit -max", encLit(litX, 6, -0x100000)},
		{"ldr x16 lit", encLit(litX, 16, 0x20)},
		{"ldr xzr lit", encLit(litX, 31, 0x20)},
		{"ldrsw x7 lit +max", encLit(litSW, 7, 0xffffc)},
		{"ldr s8 lit", encLit(litS, 8, -0x40)},
		{"ldr d9 lit", encLit(litD, 9, 0x1000)},
		{"ldr q10 lit", encLit(litQ, 10, -0x1000)},
		{"ldr q17 lit", encLit(litQ, 17, 0x10)},
		{"prfm lit", encLit(litPRFM, 0, 0x100)},
		{"nop (copied)", a64NOP},
	}
	for cc := uint32(0); cc < 16; cc++ {
		forms = append(forms, struct {
			name string
			w    uint32
		}{fmt.Sprintf("b.cond %d", cc), encBcond(cc, 0x400-int64(cc)*0x10000)})
	}
	var out []a64RelocCase
	for _, f := range forms {
		for _, th := range thunks {
			out = append(out, a64RelocCase{name: f.name + " @" + th.name, w: f.w, pc: pc, t: th.t, scratch: regX17})
		}
	}
	// X16 as scratch with X17 operands, and thunks that hold the target.
	out = append(out,
		a64RelocCase{"adr x17 scratch x16", encADR(false, 17, 0x40), pc, pc + 8<<30, regX16},
		a64RelocCase{"ldr d17 scratch x16", encLit(litD, 17, 0x40), pc, pc + 8<<30, regX16},
		a64RelocCase{"cbz x17 scratch x16", encCB(true, false, 17, 0x40), pc, pc + 8<<30, regX16},
		a64RelocCase{"b to just past the thunk", encBr(false, 0x108), pc, pc + 0x100, regX17},
		a64RelocCase{"b.eq to just before the thunk", encBcond(0, 0xfc), pc, pc + 0x100, regX17},
	)
	return out
}

// TestARM64RelocateSemantics runs each original instruction at pc and its
// relocation at the thunk over the same random registers, flags and memory,
// and requires the same registers, flags, SIMD registers and next PC (the
// end of the relocated sequence standing for pc+4), except the scratch
// register. A BL's return address must be the end of the sequence.
func TestARM64RelocateSemantics(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	var grew = map[string]int{}
	for _, tc := range a64RelocCases() {
		inst := decodeA64(t, tc.w)
		in := &a64Inst{Inst: inst, Addr: tc.pc}
		b, err := relocateARM64(in, tc.t, tc.scratch)
		require.NoError(t, err, tc.name)
		require.LessOrEqual(t, len(b), 20, tc.name)
		grew[fmt.Sprint(len(b))]++
		end := tc.t + uint64(len(b))
		for trial := range 40 {
			var init a64CPU
			for i := range init.X {
				init.X[i] = rng.Uint64()
			}
			switch trial % 4 { // exercise both outcomes of CBZ/TBZ
			case 0:
				init.X[3], init.X[4], init.X[17] = 0, 0, 0
			case 1:
				init.X[5], init.X[0] = 0, 0
			case 2:
				init.X[5], init.X[0] = ^uint64(0), ^uint64(0)
			}
			init.NZCV = uint8(trial % 16)
			init.SP = 0x7fff_0000_0000
			for i := range init.V {
				for j := range init.V[i] {
					init.V[i][j] = byte(rng.Uint32())
				}
			}
			mem := &a64Mem{}
			mem.add(tc.pc, binary.LittleEndian.AppendUint32(nil, tc.w))
			mem.add(tc.t, b)

			orig := init
			orig.mem, orig.PC = mem, tc.pc
			require.NoError(t, orig.step(), tc.name)

			rel := init
			rel.mem, rel.PC = mem, tc.t
			require.NoError(t, rel.runWhile(tc.t, end), "%s: thunk % x", tc.name, b)
			if rel.PC == end {
				rel.PC = tc.pc + 4
			}
			if tc.w&0xfc000000 == 0x94000000 { // BL: return into the thunk, and on to pc+4
				// The return address is the end of the sequence, which
				// stands for pc+4 (the thunk goes on from there).
				require.Equal(t, end, rel.X[30], "%s: BL return address", tc.name)
				rel.X[30] = tc.pc + 4
			}
			rel.X[tc.scratch], orig.X[tc.scratch] = 0, 0
			rel.mem, orig.mem = nil, nil
			require.Equal(t, orig, rel, "%s (trial %d): original %08x at %#x vs thunk % x at %#x", tc.name, trial, tc.w, tc.pc, b, tc.t)
		}
	}
	t.Logf("relocated sequence sizes (bytes: count): %v", grew)
}

// TestARM64RelocateNoScratch: sequences that need a scratch register are
// refused when none is free; the ones that need none still relocate.
func TestARM64RelocateNoScratch(t *testing.T) {
	const pc, far = 0x1000_0000, 0x1000_0000 + 8<<30
	for _, tc := range []struct {
		w  uint32
		ok bool
	}{
		{encBr(false, 8), false},
		{encBr(true, 8), false},
		{encBcond(1, 8), false},
		{encCB(true, false, 1, 8), false},
		{encTB(true, 1, 2, 8), false},
		{encLit(litD, 1, 8), false},
		{encLit(litX, 1, 8), true},
		{encADR(false, 1, 8), true},
		{encADR(true, 1, 8), true},
	} {
		in := &a64Inst{Inst: decodeA64(t, tc.w), Addr: pc}
		_, err := relocateARM64(in, far, 0)
		if tc.ok {
			require.NoError(t, err, "%v", in)
		} else {
			require.ErrorContains(t, err, "X16 and X17", "%v", in)
		}
	}
}

func a64Code(ws ...uint32) []byte { return words(ws...) }

// TestARM64Plan checks plans of hand-made functions: what is displaced,
// kept, refused, and that running the thunk equals running the original
// prologue.
func TestARM64Plan(t *testing.T) {
	const fnAddr, newNear, newFar = 0x40_0000, 0x40_0000 + 0x10_0000, 0x40_0000 + 1<<33
	const addX0 = 0x91000400 // add x0, x0, #1
	const ret = 0xd65f03c0
	goPrologue := a64Code(
		0xf9400b90, // ldr x16, [x28, #16]
		0xeb3063ff, // cmp sp, x16
		encBcond(9, 0x20),
		addX0, ret, 0, 0, 0,
		0xaa1e03e3, // mov x3, x30 (morestack tail)
		encBr(true, 0x1000),
		encBr(false, -0x28), // back to the entry: allowed
	)
	for _, tc := range []struct {
		name      string
		code      []byte
		padding   []byte
		newAddr   uint64
		thunkAddr uint64
		err       error
		detail    string
		addr      uint64 // want Plan.Addr
		displaced int
		run       bool
	}{
		{name: "near", code: a64Code(addX0, addX0, ret), newAddr: newNear, thunkAddr: fnAddr + 0x1000, addr: fnAddr, displaced: 1, run: true},
		{name: "far", code: a64Code(addX0, encADR(true, 1, 3), encLit(litX, 2, 0x40), encCB(true, false, 0, 0x40), ret), newAddr: newFar, thunkAddr: fnAddr + 1<<34, addr: fnAddr, displaced: 4, run: true},
		{name: "go prologue far", code: goPrologue, newAddr: newFar, thunkAddr: 0x7f00_0000_0000, addr: fnAddr, displaced: 4, run: true},
		{name: "go prologue near", code: goPrologue, newAddr: newNear, thunkAddr: fnAddr + 0x4000, addr: fnAddr, displaced: 1, run: true},
		{name: "bti kept", code: a64Code(0xd503245f, addX0, addX0, addX0, addX0, ret), newAddr: newFar, thunkAddr: fnAddr + 0x1000, addr: fnAddr + 4, displaced: 4, run: true},
		{name: "paciasp displaced", code: a64Code(0xd503233f, addX0, ret), newAddr: newNear, thunkAddr: fnAddr + 0x1000, addr: fnAddr, displaced: 1},
		{name: "short uses padding", code: a64Code(addX0, ret), padding: a64Code(0, a64NOP, 0, 0), newAddr: newFar, thunkAddr: fnAddr + 0x1000, addr: fnAddr, displaced: 2},
		{name: "too short", code: a64Code(addX0, ret), padding: a64Code(0, 0xd4200000), newAddr: newFar, thunkAddr: fnAddr + 0x1000, err: ErrTooShort},
		{name: "empty", newAddr: newNear, thunkAddr: fnAddr + 0x1000, err: ErrTooShort},
		{name: "truncated", code: []byte{0x1f, 0x20}, newAddr: newNear, thunkAddr: fnAddr + 0x1000, err: ErrCannotRelocate, detail: "truncated"},
		{name: "truncated after 1", code: []byte{0x1f, 0x20, 0x03, 0xd5, 0x1f}, padding: a64Code(0, 0, 0), newAddr: newFar, thunkAddr: fnAddr + 0x1000, err: ErrCannotRelocate, detail: "truncated"},
		{name: "loop to 2nd", code: a64Code(addX0, addX0, addX0, addX0, encCB(true, true, 1, -12), ret), newAddr: newFar, thunkAddr: fnAddr + 0x1000, err: ErrBranchIntoPatch},
		{name: "loop inside the window", code: a64Code(addX0, 0x91000421, encTB(false, 1, 2, -4), addX0, ret), newAddr: newFar, thunkAddr: fnAddr + 1<<34, addr: fnAddr, displaced: 4, run: true},
		{name: "forward inside the window", code: a64Code(encCB(true, false, 0, 12), encBcond(0, 0x40), addX0, addX0, ret), newAddr: newFar, thunkAddr: fnAddr + 1<<34, addr: fnAddr, displaced: 4, run: true},
		{name: "go zero padding in symbol", code: a64Code(addX0, encBr(false, 0x100), 0, 0), newAddr: newFar, thunkAddr: fnAddr + 0x1000, addr: fnAddr, displaced: 2},
		{name: "loop to 2nd near ok", code: a64Code(addX0, addX0, encCB(true, true, 1, -4), ret), newAddr: newNear, thunkAddr: fnAddr + 0x1000, addr: fnAddr, displaced: 1, run: true},
		{name: "loop to entry ok", code: a64Code(addX0, addX0, encCB(true, true, 1, -8), ret), newAddr: newFar, thunkAddr: fnAddr + 0x1000, addr: fnAddr, displaced: 4},
		{name: "adr into patch", code: a64Code(addX0, addX0, addX0, addX0, encADR(false, 1, -8), ret), newAddr: newFar, thunkAddr: fnAddr + 0x1000, err: ErrBranchIntoPatch},
		{name: "literal in patch", code: a64Code(addX0, addX0, ret, 0x12345678, encLit(litX, 1, -8), ret), newAddr: newFar, thunkAddr: fnAddr + 0x1000, err: ErrBranchIntoPatch, detail: "loads"},
		{name: "bc.cond into patch", code: a64Code(addX0, addX0, addX0, addX0, encBcond(0, -12)|0x10, ret), newAddr: newFar, thunkAddr: fnAddr + 0x1000, err: ErrBranchIntoPatch, detail: "BC.cond"},
		{name: "bti inside", code: a64Code(addX0, 0xd503249f, addX0, addX0, ret), newAddr: newFar, thunkAddr: fnAddr + 0x1000, err: ErrBranchIntoPatch, detail: "landing pad"},
		{name: "exclusive", code: a64Code(0xc85f7c01, addX0, ret), newAddr: newNear, thunkAddr: fnAddr + 0x1000, err: ErrCannotRelocate, detail: "exclusive"},
		{name: "unknown word", code: a64Code(encBcond(0, 0x40)|0x10, ret), newAddr: newNear, thunkAddr: fnAddr + 0x1000, err: ErrCannotRelocate, detail: "does not know"},
		{name: "no scratch", code: a64Code(0xaa1003f1, addX0, addX0, encBcond(0, 0x40), ret), newAddr: newFar, thunkAddr: fnAddr + 1<<34, err: ErrCannotRelocate, detail: "X16 and X17"},
		{name: "unaligned thunk", code: a64Code(addX0, ret), newAddr: newNear, thunkAddr: fnAddr + 0x1002, err: ErrCannotRelocate, detail: "aligned"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fn := Func{Name: "f", Addr: fnAddr, Code: tc.code, Padding: tc.padding}
			p, err := ARM64{}.Plan(fn, tc.newAddr, tc.thunkAddr)
			if tc.err != nil {
				require.ErrorIs(t, err, tc.err)
				var e *Error
				require.ErrorAs(t, err, &e)
				require.Equal(t, "f", e.Func)
				require.Contains(t, err.Error(), tc.detail)
				t.Log(err)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.addr, p.Addr)
			jump := ARM64{}.Jump(p.Addr, tc.newAddr)
			require.Equal(t, jump, p.Jump[:len(jump)])
			require.Len(t, p.Original, len(p.Jump))
			full := append(append([]byte(nil), tc.code...), tc.padding...)
			off := int(p.Addr - fnAddr)
			require.Equal(t, full[off:off+len(p.Original)], p.Original)
			require.LessOrEqual(t, len(p.Thunk), ARM64{}.MaxThunkSize())
			if off > 0 {
				require.Equal(t, tc.code[:4], p.Thunk[:4], "kept BTI repeated in the thunk")
			}
			codeLen := len(tc.code)
			for codeLen >= 4 && binary.LittleEndian.Uint32(tc.code[codeLen-4:]) == 0 {
				codeLen -= 4 // zero words at the end are padding
			}
			require.Equal(t, tc.displaced, min(len(p.Original), codeLen-off)/4)
			if codeLen-off <= len(p.Original) {
				require.Equal(t, words(a64BRK0), p.Thunk[len(p.Thunk)-4:], "a thunk of a whole function ends with BRK")
			}
			require.True(t, p.Overwrites(p.Addr+4) == (len(p.Jump) > 4))
			require.False(t, p.Overwrites(p.Addr))
			if !tc.run {
				return
			}
			// Run the original from the entry until it leaves the
			// overwritten bytes, and the thunk until it leaves the thunk.
			for trial := range 32 {
				var init a64CPU
				rng := rand.New(rand.NewPCG(uint64(trial), 7))
				for i := range init.X {
					init.X[i] = rng.Uint64() >> (trial % 64)
				}
				if trial%2 == 0 {
					init.X[0] = 0
				}
				init.SP = rng.Uint64() >> 1
				init.X[28] = fnAddr + 0x100000
				init.NZCV = uint8(trial % 16)
				mem := &a64Mem{}
				mem.add(fnAddr, tc.code)
				mem.add(tc.thunkAddr, p.Thunk)
				orig := init
				orig.mem, orig.PC = mem, fnAddr
				require.NoError(t, orig.runWhile(fnAddr, p.Addr+uint64(len(p.Original))))
				rel := init
				rel.mem, rel.PC = mem, tc.thunkAddr
				require.NoError(t, rel.runWhile(tc.thunkAddr, tc.thunkAddr+uint64(len(p.Thunk))))
				rel.X[16], orig.X[16], rel.X[17], orig.X[17] = 0, 0, 0, 0
				rel.mem, orig.mem = nil, nil
				require.Equal(t, orig, rel, "thunk % x", p.Thunk)
			}
		})
	}
}

// FuzzPlanARM64: Plan never panics; a plan's jump is a branch to newAddr,
// Original is the bytes at Addr, and the thunk fits MaxThunkSize;
// refusals are typed.
func FuzzPlanARM64(f *testing.F) {
	f.Add(a64Code(0xf9400b90, 0xeb3063ff, encBcond(9, 0x20), 0x91000400, 0xd65f03c0), []byte{0, 0, 0, 0}, uint64(0x40_0000), uint64(1<<33), uint64(0x50_0000))
	f.Add(a64Code(0xd503245f, encADR(true, 1, 3), encLit(litQ, 2, 0x40), encTB(true, 0, 3, -4)), []byte{}, uint64(0x1000), uint64(0x2000), uint64(1<<40))
	f.Add([]byte{1, 2, 3}, []byte{0x1f, 0x20, 0x03, 0xd5}, uint64(0xffff_ffff_ffff_fff0), uint64(0), uint64(8))
	f.Fuzz(func(t *testing.T, code, padding []byte, fnAddr, newAddr, thunkAddr uint64) {
		fnAddr &^= 3
		fn := Func{Name: "fz", Addr: fnAddr, Code: code, Padding: padding}
		p, err := ARM64{}.Plan(fn, newAddr, thunkAddr)
		if err != nil {
			var e *Error
			if !errors.As(err, &e) || !(errors.Is(err, ErrTooShort) || errors.Is(err, ErrBranchIntoPatch) || errors.Is(err, ErrCannotRelocate)) {
				t.Fatalf("untyped refusal %T: %v", err, err)
			}
			return
		}
		if len(p.Thunk) > arm64MaxThunk || len(p.Jump) != len(p.Original) || len(p.Jump)%4 != 0 {
			t.Fatalf("sizes: thunk %d, jump %d, original %d", len(p.Thunk), len(p.Jump), len(p.Original))
		}
		full := append(append([]byte(nil), code...), padding...)
		off := p.Addr - fnAddr
		if off > 4 || string(full[off:off+uint64(len(p.Original))]) != string(p.Original) {
			t.Fatalf("Original % x is not the bytes at %#x", p.Original, p.Addr)
		}
		c := &a64CPU{PC: p.Addr, mem: &a64Mem{}}
		c.mem.add(p.Addr, p.Jump)
		if err := c.step(); err != nil {
			t.Fatal(err)
		}
		if c.PC == p.Addr+4 && len(p.Jump) == 16 { // LDR X16, #8; BR X16
			if err := c.step(); err != nil {
				t.Fatal(err)
			}
		}
		if c.PC != newAddr {
			t.Fatalf("jump % x at %#x goes to %#x, want %#x", p.Jump, p.Addr, c.PC, newAddr)
		}
	})
}

// TestARM64MaxThunkSizeTight builds the worst case: a kept BTI, then four
// displaced instructions that each need five words from a far thunk (B.cond,
// CBZ and TBZ over an absolute jump, BL through a register whose address
// needs all four MOVZ/MOVK halfwords), and the far jump back. The thunk is
// exactly MaxThunkSize, and it still runs like the original.
func TestARM64MaxThunkSizeTight(t *testing.T) {
	const fnAddr = 0x1234_5678_9abc_0000
	code := a64Code(0xd503245f, encBcond(1, 0x100), encCB(true, false, 3, 0x200), encTB(true, 5, 7, 0x300), encBr(true, 0x400), 0xd65f03c0)
	p, err := ARM64{}.Plan(Func{Name: "worst", Addr: fnAddr, Code: code}, fnAddr+1<<40, 0x10_0000)
	require.NoError(t, err)
	require.Equal(t, ARM64{}.MaxThunkSize(), len(p.Thunk), "thunk % x", p.Thunk)
	checkThunkDecodes(t, "worst", p.Thunk)
	for trial := range 64 {
		init := a64CPU{NZCV: uint8(trial % 16)}
		init.X[3] = uint64(trial/16%2) * 5
		init.X[5] = uint64(trial / 32 * 0x80)
		mem := &a64Mem{}
		mem.add(fnAddr, code)
		mem.add(p.ThunkAddr, p.Thunk)
		orig, rel := init, init
		orig.mem, orig.PC = mem, fnAddr
		rel.mem, rel.PC = mem, p.ThunkAddr
		require.NoError(t, orig.runWhile(fnAddr, p.Addr+uint64(len(p.Original))))
		require.NoError(t, rel.runWhile(p.ThunkAddr, p.ThunkAddr+uint64(len(p.Thunk))))
		if orig.X[30] == fnAddr+20 { // BL: the thunk's return point stands for it
			require.Equal(t, p.ThunkAddr+uint64(len(p.Thunk))-16, rel.X[30])
			rel.X[30] = orig.X[30]
		}
		rel.X[16], orig.X[16], rel.mem, orig.mem = 0, 0, nil, nil
		require.Equal(t, orig, rel, "trial %d", trial)
	}
}

// TestARM64UndecodedUsesScratch: an LSE atomic the decoder does not know is
// moved as is, and its use of X16 keeps X16 from being the scratch of the
// far jump back.
func TestARM64UndecodedUsesScratch(t *testing.T) {
	const ldaddX16 = 0xb8e00200 // ldaddal w0, w0, [x16]
	_, err := arm64asm.Decode(a64Code(ldaddX16))
	require.Error(t, err, "the decoder learnt LSE: pick another undecodable word")
	code := a64Code(0x91000400, ldaddX16, 0x91000400, 0x91000400, 0xd65f03c0)
	p, err := ARM64{}.Plan(Func{Name: "lse", Addr: 0x40_0000, Code: code}, 1<<40, 1<<39)
	require.NoError(t, err)
	require.Equal(t, a64Code(ldaddX16), p.Thunk[4:8])
	back := p.Thunk[16:]
	require.Equal(t, farJumpARM64(regX17, 0x40_0010), back, "the jump back must use X17")
}
