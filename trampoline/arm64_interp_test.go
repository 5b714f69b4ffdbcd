package trampoline

import (
	"encoding/binary"
	"fmt"
)

// a64CPU is a tiny AArch64 interpreter, the oracle of the relocation tests:
// it runs an original instruction at its address and the relocated
// sequence at the thunk over the same state, so the tests compare effects
// rather than encodings. It decodes the raw bits itself, independently of
// arm64asm and of the relocator's encoders, and knows only the instructions
// the relocator emits and the tests feed it: MOVZ/MOVK, ADR/ADRP, LDR
// (literal) in every form, LDR/LDRSW/PRFM (unsigned offset), B, BL, B.cond,
// CBZ/CBNZ, TBZ/TBNZ, BR, BLR, hints, ADD (immediate), SUBS (immediate,
// extended register). Anything else is an error, so an unexpected
// instruction in a thunk fails the test.
type a64CPU struct {
	X    [31]uint64
	SP   uint64
	NZCV uint8 // N=8 Z=4 C=2 V=1
	V    [32][16]byte
	PC   uint64
	mem  *a64Mem
}

// a64Mem is memory: byte overlays (code) over a deterministic pseudo-random
// background, so that a load from any address gives the same bytes in both
// runs.
type a64Mem struct {
	overlays []a64Overlay
}

type a64Overlay struct {
	addr uint64
	b    []byte
}

func (m *a64Mem) add(addr uint64, b []byte) { m.overlays = append(m.overlays, a64Overlay{addr, b}) }

func (m *a64Mem) byteAt(a uint64) byte {
	for i := len(m.overlays) - 1; i >= 0; i-- {
		o := m.overlays[i]
		if a-o.addr < uint64(len(o.b)) {
			return o.b[a-o.addr]
		}
	}
	x := a*0x9e3779b97f4a7c15 + 0x1234567
	x ^= x >> 29
	x *= 0xbf58476d1ce4e5b9
	return byte(x >> 56)
}

func (m *a64Mem) read(a uint64, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = m.byteAt(a + uint64(i))
	}
	return b
}

func sext(v uint64, bits uint) int64 { return int64(v<<(64-bits)) >> (64 - bits) }

func (c *a64CPU) reg(r uint32) uint64 { // register 31 is XZR
	if r == 31 {
		return 0
	}
	return c.X[r]
}

func (c *a64CPU) setReg(r uint32, v uint64) {
	if r != 31 {
		c.X[r] = v
	}
}

func (c *a64CPU) regSP(r uint32) uint64 { // register 31 is SP
	if r == 31 {
		return c.SP
	}
	return c.X[r]
}

func (c *a64CPU) setRegSP(r uint32, v uint64) {
	if r == 31 {
		c.SP = v
	} else {
		c.X[r] = v
	}
}

func (c *a64CPU) cond(cc uint32) bool {
	n, z, cf, v := c.NZCV&8 != 0, c.NZCV&4 != 0, c.NZCV&2 != 0, c.NZCV&1 != 0
	var r bool
	switch cc >> 1 {
	case 0:
		r = z
	case 1:
		r = cf
	case 2:
		r = n
	case 3:
		r = v
	case 4:
		r = cf && !z
	case 5:
		r = n == v
	case 6:
		r = n == v && !z
	case 7:
		return true // AL, NV
	}
	if cc&1 != 0 {
		return !r
	}
	return r
}

func (c *a64CPU) subs(a, b uint64, sf bool) uint64 {
	if !sf {
		a, b = uint64(uint32(a)), uint64(uint32(b))
	}
	r := a - b
	var n, z, cf, v bool
	if sf {
		n, z, cf = int64(r) < 0, r == 0, a >= b
		v = (int64(a) < 0) != (int64(b) < 0) && (int64(r) < 0) != (int64(a) < 0)
	} else {
		r = uint64(uint32(r))
		n, z, cf = int32(r) < 0, r == 0, a >= b
		v = (int32(a) < 0) != (int32(b) < 0) && (int32(r) < 0) != (int32(a) < 0)
	}
	c.NZCV = 0
	for i, f := range []bool{v, cf, z, n} {
		if f {
			c.NZCV |= 1 << i
		}
	}
	return r
}

// load performs a load of the given kind (opc:V as in literalKind) into rt.
func (c *a64CPU) load(kind uint32, rt uint32, a uint64) error {
	switch kind {
	case 0 << 1: // W
		c.setReg(rt, uint64(binary.LittleEndian.Uint32(c.mem.read(a, 4))))
	case 1 << 1: // X
		c.setReg(rt, binary.LittleEndian.Uint64(c.mem.read(a, 8)))
	case 2 << 1: // SW
		c.setReg(rt, uint64(int64(int32(binary.LittleEndian.Uint32(c.mem.read(a, 4))))))
	case 3 << 1: // PRFM: no architectural effect
	case 0<<1 | 1, 1<<1 | 1, 2<<1 | 1: // S, D, Q
		n := 4 << (kind >> 1)
		c.V[rt] = [16]byte{}
		copy(c.V[rt][:], c.mem.read(a, n))
	default:
		return fmt.Errorf("load kind %d", kind)
	}
	return nil
}

// step executes the instruction at PC.
func (c *a64CPU) step() error {
	pc := c.PC
	w := binary.LittleEndian.Uint32(c.mem.read(pc, 4))
	next := pc + 4
	rt := w & 31
	switch {
	case w&0xff800000 == 0xd2800000: // MOVZ X
		hw := (w >> 21) & 3
		c.setReg(rt, uint64((w>>5)&0xffff)<<(16*hw))
	case w&0xff800000 == 0xf2800000: // MOVK X
		hw := (w >> 21) & 3
		v := c.reg(rt)&^(0xffff<<(16*hw)) | uint64((w>>5)&0xffff)<<(16*hw)
		c.setReg(rt, v)
	case w&0x1f000000 == 0x10000000: // ADR, ADRP
		imm := sext(uint64((w>>5)&0x7ffff)<<2|uint64((w>>29)&3), 21)
		if w&0x80000000 == 0 {
			c.setReg(rt, pc+uint64(imm))
		} else {
			c.setReg(rt, pc&^0xfff+uint64(imm<<12))
		}
	case w&0x3b000000 == 0x18000000: // LDR (literal)
		kind := (w>>30)<<1 | (w>>26)&1
		a := pc + uint64(sext(uint64((w>>5)&0x7ffff), 19)*4)
		if err := c.load(kind, rt, a); err != nil {
			return fmt.Errorf("%08x at %#x: %v", w, pc, err)
		}
	case w&0x3b000000 == 0x39000000 && (w>>22)&3 != 0: // LDR (unsigned offset)
		size := w >> 30
		v := (w >> 26) & 1
		opc := (w >> 22) & 3
		var kind uint32
		switch {
		case v == 0 && size == 2 && opc == 1:
			kind = 0 << 1
		case v == 0 && size == 3 && opc == 1:
			kind = 1 << 1
		case v == 0 && size == 2 && opc == 2:
			kind = 2 << 1
		case v == 0 && size == 3 && opc == 2:
			kind = 3 << 1
		case v == 1 && size == 2 && opc == 1:
			kind = 0<<1 | 1
		case v == 1 && size == 3 && opc == 1:
			kind = 1<<1 | 1
		case v == 1 && size == 0 && opc == 3:
			kind = 2<<1 | 1
			size = 4
		default:
			return fmt.Errorf("unhandled load %08x at %#x", w, pc)
		}
		a := c.regSP((w>>5)&31) + uint64((w>>10)&0xfff)<<size
		if err := c.load(kind, rt, a); err != nil {
			return err
		}
	case w&0x7c000000 == 0x14000000: // B, BL
		if w&0x80000000 != 0 {
			c.X[30] = pc + 4
		}
		next = pc + uint64(sext(uint64(w&0x3ffffff), 26)*4)
	case w&0xff000010 == 0x54000000: // B.cond
		if c.cond(w & 15) {
			next = pc + uint64(sext(uint64((w>>5)&0x7ffff), 19)*4)
		}
	case w&0x7e000000 == 0x34000000: // CBZ, CBNZ
		v := c.reg(rt)
		if w&0x80000000 == 0 {
			v = uint64(uint32(v))
		}
		if (v == 0) == (w&(1<<24) == 0) {
			next = pc + uint64(sext(uint64((w>>5)&0x7ffff), 19)*4)
		}
	case w&0x7e000000 == 0x36000000: // TBZ, TBNZ
		bit := (w>>31)<<5 | (w>>19)&31
		set := c.reg(rt)>>bit&1 != 0
		if set == (w&(1<<24) != 0) {
			next = pc + uint64(sext(uint64((w>>5)&0x3fff), 14)*4)
		}
	case w&0xfffffc1f == 0xd61f0000: // BR
		next = c.reg((w >> 5) & 31)
	case w&0xfffffc1f == 0xd63f0000: // BLR
		next = c.reg((w >> 5) & 31)
		c.X[30] = pc + 4
	case w&0xfffff01f == 0xd503201f: // hints
	case w&0xff800000 == 0x91000000: // ADD X (immediate)
		imm := uint64((w >> 10) & 0xfff)
		if w&(1<<22) != 0 {
			imm <<= 12
		}
		c.setRegSP(rt, c.regSP((w>>5)&31)+imm)
	case w&0x7f800000 == 0x71000000: // SUBS (immediate), CMP
		imm := uint64((w >> 10) & 0xfff)
		if w&(1<<22) != 0 {
			imm <<= 12
		}
		c.setReg(rt, c.subs(c.regSP((w>>5)&31), imm, w&0x80000000 != 0))
	case w&0xffe0fc00 == 0xeb206000: // SUBS X (extended register, UXTX #0), CMP SP, Xm
		c.setReg(rt, c.subs(c.regSP((w>>5)&31), c.reg((w>>16)&31), true))
	default:
		return fmt.Errorf("the test interpreter does not know %08x at %#x", w, pc)
	}
	c.PC = next
	return nil
}

// runWhile steps while PC is in [lo, hi), at most 100 instructions.
func (c *a64CPU) runWhile(lo, hi uint64) error {
	for i := 0; c.PC-lo < hi-lo; i++ {
		if i == 100 {
			return fmt.Errorf("no exit from [%#x, %#x) after 100 instructions", lo, hi)
		}
		if err := c.step(); err != nil {
			return err
		}
	}
	return nil
}
