package goruntime

import (
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"golang.org/x/arch/x86/x86asm"

	"github.com/hotpatch-dev/hotpatch/internal/arch"
)

// GSlot says where a thread of the target keeps the g it runs, as the
// runtime's get_tls/load_g read it.
//
// On amd64 g lives in thread-local storage: with the Go linker alone
// (internal linking) the TLS block holds only g, at the thread pointer
// minus 8; with an external linker (cgo) the C code's thread-local
// variables share the block, and g is at runtime.tlsg's offset in the
// PT_TLS segment. x86-64 uses TLS variant II: the block ends at the thread
// pointer, so g is at tp - round_up(memsz, align) + offset.
//
// On arm64 a cgo binary keeps g in TLS too, at runtime.tls_g (variant I:
// the block starts 16 bytes, rounded up to its alignment, above the thread
// pointer); a binary without cgo never writes that slot and keeps g only
// in R28, which Go code does not use for anything else.
type GSlot struct {
	// TLS: g is at the thread pointer plus Offset.
	TLS    bool
	Offset int64
	// Reg, when not TLS: the DWARF number of the register that holds g
	// while the thread runs Go code (arm64 without cgo: x28).
	Reg int
}

// ErrNoGSlot is returned when a thread's g cannot be found.
var ErrNoGSlot = errors.New("the thread's g cannot be located")

// gSlot derives the slot from the executable's TLS segment and symbols.
// cgo reports whether the binary uses cgo (the runtime then stores g in
// TLS on arm64 as well); code is the runtime's code that addresses g in
// TLS (arm64: runtime.save_g, amd64: runtime.cgocallback; nil when not
// found), which must agree with the symbols, and gives the offset when
// there are none.
func gSlot(f *elf.File, syms []elf.Symbol, cgo bool, code []byte) (GSlot, error) {
	a, err := arch.ForMachine(f.Machine)
	if err != nil {
		return GSlot{}, fmt.Errorf("goruntime: %w: %w", ErrNoGSlot, err)
	}
	rt := runtimes[a]
	var tls *elf.Prog
	for _, p := range f.Progs {
		if p.Type == elf.PT_TLS {
			tls = p
		}
	}
	// The TLS symbol the runtime's code addresses g by (an arm64 binary
	// may have runtime.tlsg too, unused there).
	var sym *elf.Symbol
	for i, s := range syms {
		if elf.ST_TYPE(s.Info) == elf.STT_TLS && s.Name == rt.tlsSym {
			sym = &syms[i]
		}
	}
	return rt.gSlot(tls, sym, cgo, code)
}

// gSlotAMD64 is gSlot for x86-64 (TLS variant II: the block ends at the
// thread pointer).
func gSlotAMD64(tls *elf.Prog, sym *elf.Symbol, _ bool, code []byte) (GSlot, error) {
	fromCode, decoded := fsSlot(code)
	var off int64
	switch {
	case tls == nil:
		// The Go linker alone: runtime.settls points the thread
		// pointer 8 bytes past g's slot.
		off = -8
	case sym != nil:
		off = int64(sym.Value) - int64(roundUp(tls.Memsz, tls.Align))
	case tls.Memsz == 8:
		// Only g in the block (the Go linker's own layout).
		off = -8
	case decoded:
		return GSlot{TLS: true, Offset: fromCode}, nil
	default:
		return GSlot{}, fmt.Errorf("goruntime: %w: a %d-byte TLS block, no runtime.tlsg symbol, and runtime.cgocallback does not address g as known code", ErrNoGSlot, tls.Memsz)
	}
	if decoded && fromCode != off {
		return GSlot{}, fmt.Errorf("goruntime: %w: the ELF puts g at thread pointer%+d, runtime.cgocallback reads it at %+d", ErrNoGSlot, off, fromCode)
	}
	return GSlot{TLS: true, Offset: off}, nil
}

// gSlotARM64 is gSlot for arm64 (TLS variant I: the block starts after the
// 16-byte TCB, rounded up to its alignment).
func gSlotARM64(tls *elf.Prog, sym *elf.Symbol, cgo bool, code []byte) (GSlot, error) {
	if !cgo {
		return GSlot{Reg: arch.ARM64.G}, nil
	}
	if tls == nil {
		return GSlot{}, fmt.Errorf("goruntime: %w: cgo binary without a PT_TLS segment", ErrNoGSlot)
	}
	fromCode, decoded := saveG(code)
	if sym == nil {
		if !decoded {
			return GSlot{}, fmt.Errorf("goruntime: %w: no runtime.tls_g symbol, and runtime.save_g does not read as known code", ErrNoGSlot)
		}
		return GSlot{TLS: true, Offset: fromCode}, nil
	}
	off := int64(roundUp(arch.ARM64.TCBSize, tls.Align)) + int64(sym.Value)
	if decoded && fromCode != off {
		return GSlot{}, fmt.Errorf("goruntime: %w: runtime.tls_g is at offset %d of the TLS block, runtime.save_g stores g at %d", ErrNoGSlot, off, fromCode)
	}
	return GSlot{TLS: true, Offset: off}, nil
}

// fsSlot reads the TLS offset amd64 code addresses g at: every
// FS-relative operand without a base register (mov %fs:OFF, reg; the local
// exec model, which Go code uses for g) must agree.
func fsSlot(code []byte) (int64, bool) {
	var off int64
	found := false
	for i := 0; i < len(code); {
		in, err := x86asm.Decode(code[i:], 64)
		if err != nil || in.Len == 0 {
			i++
			continue
		}
		i += in.Len
		for _, a := range in.Args {
			m, ok := a.(x86asm.Mem)
			if !ok || m.Segment != x86asm.FS {
				continue
			}
			d := int64(int32(m.Disp)) // a 32-bit displacement, sign-extended
			if m.Base != 0 || m.Index != 0 || found && d != off {
				return 0, false
			}
			off, found = d, true
		}
	}
	return off, found
}

// saveG reads the TLS offset runtime.save_g stores g at on arm64 (tls_arm64.s):
//
//	MRS TPIDR_EL0, R0; MOVZ R27, #off [; MOVK R27, #off>>16, LSL 16]; MOVD g, (R0)(R27)
func saveG(code []byte) (int64, bool) {
	const (
		mrs    = 0xd53bd040 // mrs x0, tpidr_el0
		store  = 0xf83b681c // str x28, [x0, x27]
		movz   = 0xd2800000 // movz x27, #imm16 (Rd 27 below)
		movk16 = 0xf2a00000 // movk x27, #imm16, lsl #16
	)
	var w []uint32
	for i := 0; i+4 <= len(code); i += 4 {
		w = append(w, binary.LittleEndian.Uint32(code[i:]))
	}
	for i := 0; i+2 < len(w); i++ {
		if w[i] != mrs || w[i+1]&0xffe0001f != movz|27 {
			continue
		}
		off := int64(w[i+1]>>5) & 0xffff
		j := i + 2
		if w[j]&0xffe0001f == movk16|27 {
			off |= (int64(w[j]>>5) & 0xffff) << 16
			j++
		}
		if j < len(w) && w[j] == store {
			return off, true
		}
	}
	return 0, false
}

func roundUp(n, align uint64) uint64 {
	if align <= 1 {
		return n
	}
	return (n + align - 1) / align * align
}

// ThreadG returns the g a stopped thread runs: read from its TLS slot
// (tp is its thread pointer), or taken from regs (indexed by DWARF number)
// where the binary keeps g in a register; goCode reports whether the
// thread's pc is in Go code (a register holds g only there). It fails when
// the slot is unknown or unreadable; a thread without a g (a thread C
// created that never called Go) reads 0.
func (r *Runtime) ThreadG(mem io.ReaderAt, tp uint64, regs []uint64, goCode bool) (uint64, error) {
	s := r.GSlot
	if r.gSlotErr != nil {
		return 0, r.gSlotErr
	}
	if !s.TLS {
		if !goCode || s.Reg >= len(regs) {
			return 0, fmt.Errorf("goruntime: %w: g is in a register only while the thread runs Go code", ErrNoGSlot)
		}
		return regs[s.Reg], nil
	}
	if tp == 0 {
		return 0, fmt.Errorf("goruntime: %w: the thread pointer is 0", ErrNoGSlot)
	}
	g, err := readWord(mem, uint64(int64(tp)+s.Offset))
	if err != nil {
		return 0, fmt.Errorf("goruntime: %w: read TLS at %#x: %v", ErrNoGSlot, uint64(int64(tp)+s.Offset), err)
	}
	return g, nil
}
