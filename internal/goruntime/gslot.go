package goruntime

import (
	"debug/elf"
	"errors"
	"fmt"
	"io"
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
// TLS on arm64 as well).
func gSlot(f *elf.File, syms []elf.Symbol, cgo bool) (GSlot, error) {
	var tls *elf.Prog
	for _, p := range f.Progs {
		if p.Type == elf.PT_TLS {
			tls = p
		}
	}
	var sym *elf.Symbol
	for i, s := range syms {
		if elf.ST_TYPE(s.Info) == elf.STT_TLS && (s.Name == "runtime.tlsg" || s.Name == "runtime.tls_g") {
			sym = &syms[i]
		}
	}
	switch f.Machine {
	case elf.EM_X86_64:
		if tls == nil {
			return GSlot{}, fmt.Errorf("goruntime: %w: no PT_TLS segment", ErrNoGSlot)
		}
		block := roundUp(tls.Memsz, tls.Align)
		switch {
		case sym != nil:
			return GSlot{TLS: true, Offset: int64(sym.Value) - int64(block)}, nil
		case tls.Memsz == 8:
			// Only g in the block (the Go linker's own layout).
			return GSlot{TLS: true, Offset: -8}, nil
		}
		return GSlot{}, fmt.Errorf("goruntime: %w: a %d-byte TLS block and no runtime.tlsg symbol (stripped external link?)", ErrNoGSlot, tls.Memsz)
	case elf.EM_AARCH64:
		if !cgo {
			return GSlot{Reg: 28}, nil
		}
		if tls == nil {
			return GSlot{}, fmt.Errorf("goruntime: %w: cgo binary without a PT_TLS segment", ErrNoGSlot)
		}
		base := int64(roundUp(16, tls.Align))
		switch {
		case sym != nil:
			return GSlot{TLS: true, Offset: base + int64(sym.Value)}, nil
		case tls.Memsz == 8:
			return GSlot{TLS: true, Offset: base}, nil
		}
		return GSlot{}, fmt.Errorf("goruntime: %w: a %d-byte TLS block and no runtime.tls_g symbol", ErrNoGSlot, tls.Memsz)
	}
	return GSlot{}, fmt.Errorf("goruntime: %w: machine %v", ErrNoGSlot, f.Machine)
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
