package elfsym

import (
	"debug/elf"
	"encoding/binary"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"

	"golang.org/x/arch/arm64/arm64asm"
	"golang.org/x/arch/x86/x86asm"

	"github.com/hotpatch-dev/hotpatch/internal/arch"
)

// Reference is a place in a module that refers to a function's entry: a
// direct call or jump, an instruction that computes the entry address, or
// a word of data holding it (a Go func value, an itab, a C table of
// function pointers).
type Reference struct {
	Kind string // "call", "jump", "address" or "data"
	Addr uint64 // live address of the instruction or the word
	From string // the function holding the instruction ("" for data)
}

func (r Reference) String() string {
	if r.From != "" {
		return fmt.Sprintf("%s at %#x in %s", r.Kind, r.Addr, r.From)
	}
	return fmt.Sprintf("%s word at %#x", r.Kind, r.Addr)
}

// References finds, for each of the given live entry addresses of
// functions of module m, one place of m that refers to it: direct calls
// and jumps and address computations in m's code (x86-64: rel32 and
// RIP-relative operands; arm64: B, BL, ADR, ADRP+ADD), checked by decoding
// the instruction that holds them, then words of m's data (and, for
// position-independent code, relocations) that hold the entry. A jump of a
// function to its own entry (Go's stack-growth path) does not count. The
// text and data are read once for all entries, and an entry's outcome is
// kept with the module (see refCache): asked again, it costs no scan. An
// entry absent from the result has no reference the binary shows.
func (t *Table) References(m *Module, entries []uint64) (map[uint64]Reference, error) {
	out := map[uint64]Reference{}
	rest := m.refs.known(m, entries, out)
	if len(rest) == 0 {
		return out, nil
	}
	found, err := t.scanReferences(m, rest)
	if err != nil {
		return nil, err
	}
	m.refs.remember(m, rest, found)
	for e, r := range found {
		out[e] = r
	}
	return out, nil
}

// refCache holds the outcome of a module's earlier reference scans by
// link-time entry: the reference found, or none after a complete scan. A
// scan reads only the module's file (its bytes, read once into the Module,
// and its data sections through the same mapped inode), so an outcome
// holds as long as the Module: a library mapped later, or again, is
// another Module, scanned anew.
type refCache struct {
	mu sync.Mutex
	m  map[uint64]refOutcome
}

type refOutcome struct {
	ref   Reference // live
	found bool
}

// known puts the cached references among entries into out and returns the
// entries never scanned for.
func (c *refCache) known(m *Module, entries []uint64, out map[uint64]Reference) []uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	var rest []uint64
	for _, e := range entries {
		o, ok := c.m[e-m.Bias]
		switch {
		case !ok:
			rest = append(rest, e)
		case o.found:
			out[e] = o.ref
		}
	}
	return rest
}

// remember records the outcome of a complete scan for entries.
func (c *refCache) remember(m *Module, entries []uint64, found map[uint64]Reference) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = map[uint64]refOutcome{}
	}
	for _, e := range entries {
		r, ok := found[e]
		c.m[e-m.Bias] = refOutcome{ref: r, found: ok}
	}
}

// scanReferences is References without the cache.
func (t *Table) scanReferences(m *Module, entries []uint64) (map[uint64]Reference, error) {
	want := map[uint64]bool{} // link-time
	for _, e := range entries {
		want[e-m.Bias] = true
	}
	out := map[uint64]Reference{}
	found := func(target uint64, r Reference) {
		if _, ok := out[target+m.Bias]; !ok {
			r.Addr += m.Bias
			out[target+m.Bias] = r
			delete(want, target)
		}
	}
	for _, s := range m.exec {
		if len(want) == 0 {
			break
		}
		refScans.Add(1)
		var err error
		switch m.arch {
		case arch.AMD64:
			err = t.scanX86(m, s, want, found)
		case arch.ARM64:
			scanARM64(m, s, want, func(target uint64, r Reference) {
				if sym, ok := t.SymbolAt(r.Addr + m.Bias); ok {
					r.From = sym.Name
					if sym.Addr == target+m.Bias && r.Kind == "jump" {
						return // its own stack-growth path
					}
				}
				found(target, r)
			})
		default:
			return nil, fmt.Errorf("elfsym: references in %s: machine %v not supported", m.Path, m.Machine)
		}
		if err != nil {
			return nil, err
		}
	}
	if len(want) > 0 {
		if err := m.scanData(want, found); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// refScans counts the scans of executable segments (tests).
var refScans atomic.Int64

// bounds returns the smallest and largest of a set.
func bounds(want map[uint64]bool) (lo, hi uint64) {
	lo = ^uint64(0)
	for w := range want {
		lo, hi = min(lo, w), max(hi, w)
	}
	return lo, hi
}

// scanX86 looks at every 4 bytes of the segment as a rel32 ending an
// instruction (call, jmp, jcc, lea or mov with a RIP-relative operand) and
// confirms a candidate by decoding its function from the entry.
func (t *Table) scanX86(m *Module, s segment, want map[uint64]bool, found func(uint64, Reference)) error {
	lo, hi := bounds(want)
	d := s.data
	for j := 0; j+4 <= len(d); j++ {
		target := s.vaddr + uint64(j) + 4 + uint64(int64(int32(binary.LittleEndian.Uint32(d[j:]))))
		if target < lo || target > hi || !want[target] {
			continue
		}
		if r, ok := t.confirmX86(m, s, j, target); ok {
			found(target, r)
			if len(want) == 0 {
				return nil
			}
			lo, hi = bounds(want)
		}
	}
	return nil
}

// confirmX86 decodes the function holding segment offset j from its entry
// and reports whether an instruction there has its rel32 or RIP-relative
// displacement at j, pointing at target.
func (t *Table) confirmX86(m *Module, s segment, j int, target uint64) (Reference, bool) {
	live := s.vaddr + uint64(j) + m.Bias
	sym, ok := t.SymbolAt(live)
	if !ok || sym.Module != m {
		return Reference{}, false
	}
	start := int(sym.Addr - m.Bias - s.vaddr)
	if sym.Addr-m.Bias < s.vaddr || start > j {
		return Reference{}, false
	}
	for pc := start; pc <= j; {
		inst, err := x86asm.Decode(s.data[pc:min(pc+15, len(s.data))], 64)
		if err != nil || inst.Len == 0 {
			pc++
			continue
		}
		if inst.PCRel == 4 && pc+inst.PCRelOff == j {
			kind := "address"
			switch {
			case inst.Op == x86asm.CALL:
				kind = "call"
			case inst.Op == x86asm.JMP || (inst.Op >= x86asm.JA && inst.Op <= x86asm.JS):
				if sym.Addr == target+m.Bias {
					return Reference{}, false // its own stack-growth path
				}
				kind = "jump"
			}
			return Reference{Kind: kind, Addr: s.vaddr + uint64(pc), From: sym.Name}, true
		}
		pc += inst.Len
	}
	return Reference{}, false
}

// scanARM64 decodes B, BL, ADR and ADRP+ADD at every instruction.
func scanARM64(m *Module, s segment, want map[uint64]bool, found func(uint64, Reference)) {
	d := s.data
	for j := 0; j+4 <= len(d); j += 4 {
		w := binary.LittleEndian.Uint32(d[j:])
		pc := s.vaddr + uint64(j)
		var target uint64
		kind := ""
		switch {
		case w&0xfc000000 == 0x94000000, w&0xfc000000 == 0x14000000: // BL, B
			target = pc + uint64(int64(int32(w<<6)>>6)*4)
			kind = map[bool]string{true: "call", false: "jump"}[w&0x80000000 != 0]
		case w&0x9f000000 == 0x10000000: // ADR
			target = pc + uint64(adrImm(w))
			kind = "address"
		case w&0x9f000000 == 0x90000000: // ADRP, then ADD of the low 12 bits
			page := pc&^0xfff + uint64(adrImm(w)<<12)
			reg := w & 0x1f
			for k := j + 4; k < j+20 && k+4 <= len(d); k += 4 {
				a := binary.LittleEndian.Uint32(d[k:])
				if a&0xffc00000 == 0x91000000 && (a>>5)&0x1f == reg { // ADD Xd, Xn, #imm12
					target = page + uint64((a>>10)&0xfff)
					kind = "address"
					break
				}
			}
		}
		if kind == "" || !want[target] {
			continue
		}
		if _, err := arm64asm.Decode(d[j : j+4]); err != nil {
			continue
		}
		found(target, Reference{Kind: kind, Addr: pc})
	}
}

// adrImm is the signed 21-bit immediate of ADR and ADRP.
func adrImm(w uint32) int64 {
	imm := (w>>29)&3 | (w>>5)&0x7ffff<<2
	return int64(int32(imm<<11) >> 11)
}

// scanData looks for the entries in every aligned pointer of the module's
// allocated, non-executable sections, and in the addends of its relative
// relocations (which fill those pointers in position-independent code).
func (m *Module) scanData(want map[uint64]bool, found func(uint64, Reference)) error {
	if m.image != nil {
		return nil
	}
	ef, err := m.Open()
	if err != nil {
		return err
	}
	defer ef.Close()
	ptr, word := words(ef)
	for _, sec := range ef.Sections {
		if len(want) == 0 {
			return nil
		}
		if sec.Flags&elf.SHF_ALLOC == 0 || sec.Flags&elf.SHF_EXECINSTR != 0 || sec.Type == elf.SHT_NOBITS ||
			slices.Contains([]string{".gopclntab", ".data.rel.ro.gopclntab", ".eh_frame", ".eh_frame_hdr", ".dynstr", ".strtab"}, sec.Name) {
			continue
		}
		d, err := sec.Data()
		if err != nil {
			continue
		}
		if sec.Type == elf.SHT_RELA && ptr == 8 {
			for off := 0; off+24 <= len(d); off += 24 {
				typ := elf.R_TYPE64(ef.ByteOrder.Uint64(d[off+8:]))
				a := ef.ByteOrder.Uint64(d[off+16:])
				if want[a] && m.arch != nil && typ == m.arch.RelativeReloc {
					found(a, Reference{Kind: "data", Addr: ef.ByteOrder.Uint64(d[off:])})
				}
			}
			continue
		}
		for off := int((uint64(ptr) - sec.Addr%uint64(ptr)) % uint64(ptr)); off+ptr <= len(d); off += ptr {
			if v := word(d[off:]); want[v] {
				found(v, Reference{Kind: "data", Addr: sec.Addr + uint64(off)})
			}
		}
	}
	return nil
}
