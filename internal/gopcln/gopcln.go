// Package gopcln reads the parts of a Go binary's pclntab (the Go 1.20 and
// later format; older ones are refused) that debug/gosym does not expose: each function's pc→sp-delta
// table, funcID and flags, which unwinding needs. Symbol names and line
// tables come from debug/gosym; this package is only what it lacks.
//
// The runtime's FuncID enum is not stable across releases (Go 1.24 and 1.25
// inserted values before FuncID_systemstack), so callers identify special
// runtime functions by name; only the flag bits are relied on.
package gopcln

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sort"
)

// Func is one function of the table. Addresses are link-time addresses.
type Func struct {
	Name   string
	Entry  uint64
	End    uint64 // entry of the next function (includes trailing padding)
	FuncID uint8  // the runtime's abi.FuncID (release-specific values)
	Flag   uint8  // the runtime's abi.FuncFlag (see Flag* constants)
	// Args is the size in bytes of the function's argument area as laid
	// out on the stack (for ABIInternal functions, whose arguments come in
	// registers, the spill area the compiler reserves for them; results
	// returned in registers take none), ArgsSizeUnknown when the compiler
	// did not record it.
	Args int32
	// DeferReturn is nonzero when the function defers calls (the offset of
	// its deferreturn call).
	DeferReturn uint32
	pcsp        uint32 // offset of the pc→sp-delta table in pctab
	rec         uint32 // offset of the _func record in the function table
}

// External reports whether the entry is code the Go linker took from a
// host object (C code of an internally linked cgo binary): it has no
// pc→sp table, and the runtime does not unwind it either.
func (f *Func) External() bool { return f.pcsp == 0 }

// The runtime's abi.FuncFlag bits (unchanged since Go 1.21).
const (
	FlagTopFrame = 1 << 0 // function marks the outermost frame of a stack
	FlagSPWrite  = 1 << 1 // function writes SP arbitrarily: unwinding cannot cross it
	FlagAsm      = 1 << 2 // function is assembly
)

// ArgsSizeUnknown is the Args of a function whose argument size the
// compiler did not record (the runtime's abi.ArgsSizeUnknown).
const ArgsSizeUnknown = -0x80000000

// The pclntab magic numbers: the first word of the table, one per format.
// Only the Go 1.20+ format is decoded: the Go 1.18 one (written by 1.18 and
// 1.19) has the same header but a _func record without startLine, so its
// funcID and flag bytes sit four bytes earlier; the older ones differ more.
const (
	magic12  = 0xfffffffb // Go 1.2–1.15
	magic116 = 0xfffffffa // Go 1.16–1.17
	magic118 = 0xfffffff0 // Go 1.18–1.19
	magic120 = 0xfffffff1 // Go 1.20 and later
)

// oldFormats names the releases that wrote each format Parse refuses.
var oldFormats = map[uint32]string{
	magic12:  "Go 1.2–1.15",
	magic116: "Go 1.16–1.17",
	magic118: "Go 1.18–1.19",
}

// ErrUnsupported is matched by the error for a pclntab of a format this
// package does not decode (an older Go release's).
var ErrUnsupported = errors.New("pclntab format not supported")

// UnsupportedError is a pclntab in a format Parse refuses rather than
// misread: its _func records are laid out differently.
type UnsupportedError struct {
	Magic    uint32 // the table's magic number
	Releases string // the Go releases that write that format ("Go 1.18–1.19")
}

func (e *UnsupportedError) Error() string {
	return fmt.Sprintf("gopcln: pclntab magic %#x is the %s format; only the Go 1.20+ format (magic %#x) is decoded: rebuild the target with a supported Go release",
		e.Magic, e.Releases, uint32(magic120))
}

// Is reports target == ErrUnsupported.
func (e *UnsupportedError) Is(target error) bool { return target == ErrUnsupported }

// ErrFormat is matched by every parse error.
var ErrFormat = errors.New("malformed pclntab")

// FormatError is a malformed table at a byte offset.
type FormatError struct {
	Off int
	Msg string
}

func (e *FormatError) Error() string { return fmt.Sprintf("gopcln: offset %#x: %s", e.Off, e.Msg) }

// Is reports target == ErrFormat.
func (e *FormatError) Is(target error) bool { return target == ErrFormat }

// Table is a parsed pclntab.
type Table struct {
	data      []byte
	quantum   uint64
	textStart uint64
	funcs     []Func
	pctab     []byte
	pcln      []byte
	funcnames []byte
	order     binary.ByteOrder
}

// Parse parses a pclntab section. textStart is the link-time address the
// function entry offsets are relative to; 0 means "take it from the header"
// (Go 1.26 writes 0 there, so pass the runtime.text address when known).
// Errors carry the offending offset; the formats of releases before Go 1.20
// are refused with an *UnsupportedError.
func Parse(pclntab []byte, textStart uint64) (*Table, error) {
	d := pclntab
	if len(d) < 8 {
		return nil, &FormatError{0, "too short for a header"}
	}
	m, order := magic(d)
	if releases, old := oldFormats[m]; old {
		return nil, &UnsupportedError{Magic: m, Releases: releases}
	}
	if m != magic120 {
		return nil, &FormatError{0, fmt.Sprintf("magic %#x is not a Go pclntab", m)}
	}
	quantum, ptr := d[6], int(d[7])
	if (quantum != 1 && quantum != 2 && quantum != 4) || (ptr != 4 && ptr != 8) {
		return nil, &FormatError{6, fmt.Sprintf("bad pc quantum %d or pointer size %d", quantum, ptr)}
	}
	word := func(i int) (uint64, error) {
		off := 8 + i*ptr
		if off+ptr > len(d) {
			return 0, &FormatError{off, "header truncated"}
		}
		if ptr == 8 {
			return order.Uint64(d[off:]), nil
		}
		return uint64(order.Uint32(d[off:])), nil
	}
	var hdr [8]uint64 // nfunc nfiles textStart funcname cu filetab pctab pcln
	for i := range hdr {
		v, err := word(i)
		if err != nil {
			return nil, err
		}
		hdr[i] = v
	}
	nfunc, funcnameOff, pctabOff, pclnOff := hdr[0], hdr[3], hdr[6], hdr[7]
	if textStart == 0 {
		textStart = hdr[2]
	}
	n := uint64(len(d))
	if funcnameOff > n || pctabOff > n || pclnOff > n || nfunc > n/8 {
		return nil, &FormatError{8, "header offsets beyond the table"}
	}
	t := &Table{data: d, quantum: uint64(quantum), textStart: textStart, pctab: d[pctabOff:],
		pcln: d[pclnOff:], funcnames: d[funcnameOff:], order: order}
	pcln := d[pclnOff:]
	u32 := func(b []byte, off uint64) (uint32, error) {
		if off+4 > uint64(len(b)) {
			return 0, &FormatError{int(pclnOff + off), "function table truncated"}
		}
		return order.Uint32(b[off:]), nil
	}
	// functab: nfunc+1 pairs of (entry offset, func offset).
	if (nfunc+1)*8 > uint64(len(pcln)) {
		return nil, &FormatError{int(pclnOff), "function table truncated"}
	}
	t.funcs = make([]Func, 0, nfunc)
	for i := uint64(0); i < nfunc; i++ {
		entry, _ := u32(pcln, i*8)
		funcOff, _ := u32(pcln, i*8+4)
		next, _ := u32(pcln, (i+1)*8)
		if next < entry {
			// FuncAt's binary search, and every function's End, need
			// the table sorted, as the runtime's own lookup does.
			return nil, &FormatError{int(pclnOff + (i+1)*8), fmt.Sprintf("function table not sorted: entry %d at %#x follows %#x", i+1, next, entry)}
		}
		// _func: entryOff u32, nameOff i32, args, deferreturn, pcsp, pcfile,
		// pcln, npcdata, cuOffset u32, startLine i32, funcID, flag u8, ...
		if uint64(funcOff)+44 > uint64(len(pcln)) {
			return nil, &FormatError{int(pclnOff) + int(funcOff), "function record truncated"}
		}
		f := pcln[funcOff:]
		nameOff := uint64(order.Uint32(f[4:]))
		name, err := cstring(d, funcnameOff+nameOff)
		if err != nil {
			return nil, err
		}
		t.funcs = append(t.funcs, Func{
			Name: name, Entry: textStart + uint64(entry), End: textStart + uint64(next),
			Args: int32(order.Uint32(f[8:])), DeferReturn: order.Uint32(f[12:]),
			pcsp: order.Uint32(f[16:]), FuncID: f[40], Flag: f[41], rec: funcOff,
		})
	}
	return t, nil
}

// magic returns the table's magic number and byte order: big-endian when
// the first word reads as a known magic that way, else little-endian.
func magic(d []byte) (uint32, binary.ByteOrder) {
	if m := binary.BigEndian.Uint32(d); m == magic120 || oldFormats[m] != "" {
		return m, binary.BigEndian
	}
	return binary.LittleEndian.Uint32(d), binary.LittleEndian
}

func cstring(d []byte, off uint64) (string, error) {
	if off >= uint64(len(d)) {
		return "", &FormatError{int(off), "function name beyond the table"}
	}
	for i := off; i < uint64(len(d)); i++ {
		if d[i] == 0 {
			return string(d[off:i]), nil
		}
	}
	return "", &FormatError{int(off), "unterminated function name"}
}

// TextStart returns the link-time address that function entry offsets are
// relative to.
func (t *Table) TextStart() uint64 { return t.textStart }

// Funcs returns every function, sorted by entry.
func (t *Table) Funcs() []Func { return t.funcs }

// FuncAt returns the function containing the link-time address pc.
func (t *Table) FuncAt(pc uint64) (*Func, bool) {
	i := sort.Search(len(t.funcs), func(i int) bool { return t.funcs[i].Entry > pc }) - 1
	if i < 0 || pc >= t.funcs[i].End {
		return nil, false
	}
	return &t.funcs[i], true
}

// SPDelta returns how far the stack pointer is below the function's entry SP
// (not counting the return address pushed by the call) at link-time pc.
func (t *Table) SPDelta(f *Func, pc uint64) (int64, error) {
	if pc < f.Entry || pc >= f.End {
		return 0, fmt.Errorf("gopcln: pc %#x is outside %s [%#x, %#x)", pc, f.Name, f.Entry, f.End)
	}
	if f.pcsp == 0 {
		return 0, fmt.Errorf("gopcln: %s has no pc→sp table", f.Name)
	}
	p := int(f.pcsp)
	val, cur := int64(-1), f.Entry
	for first := true; ; first = false {
		uv, n := binary.Uvarint(t.pctab[min(p, len(t.pctab)):])
		if n <= 0 {
			return 0, &FormatError{p, "pc→sp table of " + f.Name + " truncated"}
		}
		if uv == 0 && !first {
			return 0, fmt.Errorf("gopcln: pc %#x beyond the pc→sp table of %s", pc, f.Name)
		}
		p += n
		val += int64(-(uv & 1) ^ (uv >> 1))
		pd, n := binary.Uvarint(t.pctab[min(p, len(t.pctab)):])
		if n <= 0 {
			return 0, &FormatError{p, "pc→sp table of " + f.Name + " truncated"}
		}
		p += n
		cur += pd * t.quantum
		if pc < cur {
			return val, nil
		}
	}
}
