// Package cfi parses DWARF call frame information from an .eh_frame section
// (the format gcc and clang emit, which debug/dwarf does not read) and
// evaluates it: for a pc it yields the rule for the canonical frame address
// and for each saved register.
package cfi

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sort"
	"sync"
	"sync/atomic"
)

// RuleKind says how to recover a register of the caller.
type RuleKind uint8

const (
	RuleUnspecified   RuleKind = iota // no rule: the ABI default applies
	RuleUndefined                     // not recoverable; for the return address: outermost frame
	RuleSameValue                     // unchanged
	RuleOffset                        // saved at CFA+Offset
	RuleValOffset                     // value is CFA+Offset
	RuleRegister                      // value is in register Reg
	RuleExpression                    // saved at the address computed by Expr
	RuleValExpression                 // value computed by Expr
)

// Rule recovers one register.
type Rule struct {
	Kind   RuleKind
	Offset int64
	Reg    int
	Expr   []byte
}

// CFA is the rule for the canonical frame address: Reg+Offset, or Expr when
// Expr is not nil.
type CFA struct {
	Reg    int
	Offset int64
	Expr   []byte
}

// Row is the unwind table row that applies at one pc.
type Row struct {
	CFA CFA
	// Regs holds the rules for registers that have one; registers without an
	// entry follow the ABI default (callee-saved: same value).
	Regs map[int]Rule
	// RA is the DWARF register number that holds the return address.
	RA int
	// Signal is set when the FDE's CIE has the "S" augmentation (signal
	// trampoline frame).
	Signal bool
	// FuncStart and FuncEnd bound the FDE (link-time addresses).
	FuncStart, FuncEnd uint64
}

// ErrFormat is matched by every *FormatError.
var ErrFormat = errors.New("malformed call frame information")

// FormatError is malformed CFI at a byte offset of the section.
type FormatError struct {
	Off int
	Msg string
}

func (e *FormatError) Error() string {
	return fmt.Sprintf("cfi: .eh_frame offset %#x: %s", e.Off, e.Msg)
}

// Is reports target == ErrFormat.
func (e *FormatError) Is(target error) bool { return target == ErrFormat }

type cie struct {
	codeAlign uint64
	dataAlign int64
	ra        int
	fdeEnc    byte
	signal    bool
	aug       bool
	insns     []byte
	insnsOff  int
}

type fde struct {
	start, end uint64
	cie        *cie
	insns      []byte
	insnsOff   int
}

// Table indexes the FDEs of one .eh_frame section: either through the
// section's .eh_frame_hdr binary search table (nothing is parsed until a pc
// is looked up) or, without one, through a sorted index built once by Parse.
type Table struct {
	fdes  []fde
	order binary.ByteOrder
	ptr   int

	// With an .eh_frame_hdr (see ParseWithHdr):
	data    []byte // .eh_frame
	addr    uint64 // link-time address of data[0]
	hdr     []byte // the binary search table's bytes
	hdrAddr uint64 // link-time address of the .eh_frame_hdr section
	hdrEnc  byte   // encoding of the table's entries
	hdrSize int    // size of one encoded value
	hdrN    int    // number of entries
	hdrBase int    // offset of the table in the .eh_frame_hdr section

	// rows caches RowAt by pc (rowResult), at most maxCachedRows of them:
	// a row is a function of the table and pc alone, and the threads of
	// a snapshot ask for the same few (a pool of workers blocked at one
	// call site), where evaluating one allocates and costs about a
	// microsecond.
	rows  sync.Map
	nrows atomic.Int32
}

// maxCachedRows bounds a Table's cache of rows.
const maxCachedRows = 4096

type rowResult struct {
	row Row
	ok  bool
	err error
}

// reader decodes the section.
type reader struct {
	d     []byte
	off   int
	order binary.ByteOrder
	base  uint64 // link-time address of d[0]
	ptr   int
	err   error
	// dataBase is the base of DW_EH_PE_datarel pointers (the
	// .eh_frame_hdr section's address); datarel is refused when 0.
	dataBase uint64
}

func (r *reader) fail(msg string) {
	if r.err == nil {
		r.err = &FormatError{r.off, msg}
	}
}

// bytes returns the next n bytes. Past the end it fails, and returns zeros
// for the fixed-size reads (n <= 8) and nil for a length the data gave:
// never an allocation of what a corrupt length says.
func (r *reader) bytes(n int) []byte {
	if r.err != nil || n < 0 || n > len(r.d)-r.off {
		r.fail("truncated")
		if n < 0 || n > 8 {
			return nil
		}
		return make([]byte, n)
	}
	b := r.d[r.off : r.off+n]
	r.off += n
	return b
}

func (r *reader) u8() byte     { return r.bytes(1)[0] }
func (r *reader) u16() uint16  { return r.order.Uint16(r.bytes(2)) }
func (r *reader) u32() uint32  { return r.order.Uint32(r.bytes(4)) }
func (r *reader) u64() uint64  { return r.order.Uint64(r.bytes(8)) }
func (r *reader) uleb() uint64 { v, _ := r.leb(false); return v }
func (r *reader) sleb() int64  { _, v := r.leb(true); return v }

func (r *reader) leb(signed bool) (uint64, int64) {
	var v uint64
	var shift uint
	for {
		b := r.u8()
		if r.err != nil {
			return 0, 0
		}
		if shift < 64 {
			v |= uint64(b&0x7f) << shift
		}
		shift += 7
		if b&0x80 == 0 {
			if signed && shift < 64 && b&0x40 != 0 {
				v |= ^uint64(0) << shift
			}
			return v, int64(v)
		}
	}
}

// pointer decodes a pointer with a DW_EH_PE_* encoding.
func (r *reader) pointer(enc byte) uint64 {
	if enc == 0xff {
		return 0
	}
	pos := r.base + uint64(r.off)
	var v uint64
	switch enc & 0x0f {
	case 0x00:
		if r.ptr == 4 {
			v = uint64(r.u32())
		} else {
			v = r.u64()
		}
	case 0x01:
		v = r.uleb()
	case 0x02:
		v = uint64(r.u16())
	case 0x03:
		v = uint64(r.u32())
	case 0x04, 0x0c:
		v = r.u64()
	case 0x09:
		v = uint64(r.sleb())
	case 0x0a:
		v = uint64(int64(int16(r.u16())))
	case 0x0b:
		v = uint64(int64(int32(r.u32())))
	default:
		r.fail(fmt.Sprintf("unknown pointer encoding %#x", enc))
		return 0
	}
	switch enc & 0x70 {
	case 0x00:
	case 0x10: // pcrel
		v += pos
	case 0x30: // datarel: only in .eh_frame_hdr
		if r.dataBase == 0 {
			r.fail("datarel pointer outside .eh_frame_hdr")
			return 0
		}
		v += r.dataBase
	default: // textrel, funcrel, aligned: not used in .eh_frame pointers
		r.fail(fmt.Sprintf("unsupported pointer application %#x", enc&0x70))
	}
	return v
}

// Parse indexes an .eh_frame section whose first byte lies at link-time
// address addr. ptrSize is 8 or 4. Errors carry the offending offset.
func Parse(ehFrame []byte, addr uint64, ptrSize int, order binary.ByteOrder) (*Table, error) {
	t := &Table{order: order, ptr: ptrSize}
	cies := map[int]*cie{}
	r := &reader{d: ehFrame, order: order, base: addr, ptr: ptrSize}
	for r.off < len(r.d) && r.err == nil {
		start := r.off
		length := uint64(r.u32())
		if r.err != nil {
			break
		}
		if length == 0 { // terminator
			break
		}
		if length == 0xffffffff {
			length = r.u64()
		}
		bodyStart := r.off
		if length > uint64(len(r.d)-bodyStart) {
			return nil, &FormatError{start, fmt.Sprintf("entry length %d beyond the section", length)}
		}
		end := bodyStart + int(length)
		idPos := r.off
		id := r.u32()
		if id == 0 {
			c, err := parseCIE(&reader{d: r.d[:end], off: r.off, order: order, base: addr, ptr: ptrSize})
			if err != nil {
				return nil, err
			}
			cies[start] = c
		} else {
			cieOff := idPos - int(id)
			c, ok := cies[cieOff]
			if !ok {
				cr := &reader{d: r.d, off: cieOff, order: order, base: addr, ptr: ptrSize}
				if cieOff < 0 || cieOff >= len(r.d) {
					return nil, &FormatError{idPos, "FDE points to no CIE"}
				}
				l := int(cr.u32())
				cr.d = r.d[:min(len(r.d), cieOff+4+l)]
				if cr.u32() != 0 || cr.err != nil {
					return nil, &FormatError{idPos, "FDE points to no CIE"}
				}
				var err error
				if c, err = parseCIE(cr); err != nil {
					return nil, err
				}
				cies[cieOff] = c
			}
			fr := &reader{d: r.d[:end], off: r.off, order: order, base: addr, ptr: ptrSize}
			pcBegin := fr.pointer(c.fdeEnc)
			pcRange := fr.pointer(c.fdeEnc & 0x0f)
			if c.aug {
				n := fr.uleb()
				fr.bytes(int(n))
			}
			if fr.err != nil {
				return nil, fr.err
			}
			if pcRange > 0 {
				t.fdes = append(t.fdes, fde{start: pcBegin, end: pcBegin + pcRange, cie: c, insns: r.d[fr.off:end], insnsOff: fr.off})
			}
		}
		r.off = end
	}
	if r.err != nil {
		return nil, r.err
	}
	sort.Slice(t.fdes, func(i, j int) bool { return t.fdes[i].start < t.fdes[j].start })
	return t, nil
}

func parseCIE(r *reader) (*cie, error) {
	c := &cie{fdeEnc: 0}
	version := r.u8()
	var augB []byte
	for {
		b := r.u8()
		if b == 0 || r.err != nil {
			break
		}
		augB = append(augB, b)
	}
	aug := string(augB)
	if len(aug) > 0 && aug[0] != 'z' && aug != "eh" {
		return nil, &FormatError{r.off, fmt.Sprintf("unknown CIE augmentation %q", aug)}
	}
	if aug == "eh" {
		r.bytes(r.ptr)
	}
	c.codeAlign = r.uleb()
	c.dataAlign = r.sleb()
	if version == 1 {
		c.ra = int(r.u8())
	} else {
		c.ra = int(r.uleb())
	}
	if len(aug) > 0 && aug[0] == 'z' {
		c.aug = true
		n := r.uleb()
		if n > uint64(len(r.d)-r.off) {
			return nil, &FormatError{r.off, fmt.Sprintf("CIE augmentation data of %d bytes beyond the entry", n)}
		}
		augEnd := r.off + int(n)
		for _, a := range aug[1:] {
			switch a {
			case 'L':
				r.u8()
			case 'P':
				r.pointer(r.u8() &^ 0x80)
			case 'R':
				c.fdeEnc = r.u8()
			case 'S':
				c.signal = true
			case 'B', 'G':
			default:
				r.off = augEnd // unknown letters: skip the rest of the data
			}
		}
		r.off = augEnd
	}
	if r.err != nil {
		return nil, r.err
	}
	c.insns, c.insnsOff = r.d[min(r.off, len(r.d)):], r.off
	return c, nil
}

// FDEs returns the number of FDEs indexed.
func (t *Table) FDEs() int {
	if t.hdr != nil {
		return t.hdrN
	}
	return len(t.fdes)
}

// HasHdr reports whether lookups go through the .eh_frame_hdr table.
func (t *Table) HasHdr() bool { return t.hdr != nil }

// FuncRanges returns every FDE's [start, end) (link-time), sorted. With an
// .eh_frame_hdr it parses every FDE (meant for tools and tests).
func (t *Table) FuncRanges() [][2]uint64 {
	if t.hdr != nil {
		var out [][2]uint64
		for i := 0; i < t.hdrN; i++ {
			_, a, err := t.hdrEntry(i)
			if err != nil || a < t.addr || a-t.addr >= uint64(len(t.data)) {
				continue
			}
			if f, err := t.fdeAt(int(a - t.addr)); err == nil {
				out = append(out, [2]uint64{f.start, f.end})
			}
		}
		return out
	}
	out := make([][2]uint64, len(t.fdes))
	for i, f := range t.fdes {
		out[i] = [2]uint64{f.start, f.end}
	}
	return out
}

// RowAt evaluates the CFI program of the FDE covering link-time pc, up to pc.
// ok is false when no FDE covers pc. The row may be shared with other
// calls: do not change it. Safe for concurrent use.
func (t *Table) RowAt(pc uint64) (row Row, ok bool, err error) {
	if r, hit := t.rows.Load(pc); hit {
		res := r.(*rowResult)
		return res.row, res.ok, res.err
	}
	row, ok, err = t.evalRow(pc)
	// A slot is taken before the row is stored, so that goroutines side
	// by side never store more than maxCachedRows.
	if t.nrows.Add(1) <= maxCachedRows {
		if _, loaded := t.rows.LoadOrStore(pc, &rowResult{row, ok, err}); !loaded {
			return row, ok, err
		}
	}
	t.nrows.Add(-1)
	return row, ok, err
}

// evalRow is RowAt without the cache.
func (t *Table) evalRow(pc uint64) (row Row, ok bool, err error) {
	var f *fde
	if t.hdr != nil {
		if f, err = t.lookupHdr(pc); err != nil || f == nil {
			return Row{}, f != nil, err
		}
	} else {
		i := sort.Search(len(t.fdes), func(i int) bool { return t.fdes[i].start > pc }) - 1
		if i < 0 || pc >= t.fdes[i].end {
			return Row{}, false, nil
		}
		f = &t.fdes[i]
	}
	row = Row{Regs: map[int]Rule{}, RA: f.cie.ra, Signal: f.cie.signal, FuncStart: f.start, FuncEnd: f.end}
	// The CIE's initial instructions, then the FDE's up to pc.
	if err := t.exec(&row, f.cie, f.cie.insns, f.cie.insnsOff, nil, f.start, ^uint64(0)); err != nil {
		return Row{}, true, err
	}
	initial := copyRegs(row.Regs)
	if err := t.exec(&row, f.cie, f.insns, f.insnsOff, initial, f.start, pc); err != nil {
		return Row{}, true, err
	}
	return row, true, nil
}

func copyRegs(m map[int]Rule) map[int]Rule {
	c := make(map[int]Rule, len(m))
	for k, v := range m {
		c[k] = v
	}
	return c
}

type state struct {
	cfa  CFA
	regs map[int]Rule
}

// exec runs CFA instructions from loc until the location passes pc.
func (t *Table) exec(row *Row, c *cie, insns []byte, baseOff int, initial map[int]Rule, loc, pc uint64) error {
	r := &reader{d: insns, order: t.order, ptr: t.ptr}
	var stack []state
	fail := func(msg string) error { return &FormatError{baseOff + r.off, msg} }
	reg := func() int { return int(r.uleb()) }
	restore := func(n int) {
		if rule, ok := initial[n]; ok {
			row.Regs[n] = rule
		} else {
			delete(row.Regs, n)
		}
	}
	advance := func(delta uint64) bool {
		loc += delta * c.codeAlign
		return loc > pc
	}
	for r.off < len(r.d) {
		op := r.u8()
		switch op >> 6 {
		case 1:
			if advance(uint64(op & 0x3f)) {
				return nil
			}
			continue
		case 2:
			row.Regs[int(op&0x3f)] = Rule{Kind: RuleOffset, Offset: int64(r.uleb()) * c.dataAlign}
			continue
		case 3:
			restore(int(op & 0x3f))
			continue
		}
		switch op {
		case 0x00: // nop
		case 0x01: // set_loc
			loc = r.pointer(c.fdeEnc)
			if loc > pc {
				return nil
			}
		case 0x02:
			if advance(uint64(r.u8())) {
				return nil
			}
		case 0x03:
			if advance(uint64(r.u16())) {
				return nil
			}
		case 0x04:
			if advance(uint64(r.u32())) {
				return nil
			}
		case 0x05: // offset_extended
			n := reg()
			row.Regs[n] = Rule{Kind: RuleOffset, Offset: int64(r.uleb()) * c.dataAlign}
		case 0x06: // restore_extended
			restore(reg())
		case 0x07:
			row.Regs[reg()] = Rule{Kind: RuleUndefined}
		case 0x08:
			row.Regs[reg()] = Rule{Kind: RuleSameValue}
		case 0x09:
			n := reg()
			row.Regs[n] = Rule{Kind: RuleRegister, Reg: reg()}
		case 0x0a: // remember_state
			stack = append(stack, state{row.CFA, copyRegs(row.Regs)})
		case 0x0b: // restore_state
			if len(stack) == 0 {
				return fail("restore_state without remember_state")
			}
			s := stack[len(stack)-1]
			stack = stack[:len(stack)-1]
			row.CFA, row.Regs = s.cfa, s.regs
		case 0x0c: // def_cfa
			n := reg()
			row.CFA = CFA{Reg: n, Offset: int64(r.uleb())}
		case 0x0d: // def_cfa_register
			row.CFA.Reg, row.CFA.Expr = reg(), nil
		case 0x0e: // def_cfa_offset
			row.CFA.Offset, row.CFA.Expr = int64(r.uleb()), nil
		case 0x0f: // def_cfa_expression
			row.CFA = CFA{Expr: r.bytes(int(r.uleb()))}
		case 0x10: // expression
			n := reg()
			row.Regs[n] = Rule{Kind: RuleExpression, Expr: r.bytes(int(r.uleb()))}
		case 0x11: // offset_extended_sf
			n := reg()
			row.Regs[n] = Rule{Kind: RuleOffset, Offset: r.sleb() * c.dataAlign}
		case 0x12: // def_cfa_sf
			n := reg()
			row.CFA = CFA{Reg: n, Offset: r.sleb() * c.dataAlign}
		case 0x13: // def_cfa_offset_sf
			row.CFA.Offset, row.CFA.Expr = r.sleb()*c.dataAlign, nil
		case 0x14: // val_offset
			n := reg()
			row.Regs[n] = Rule{Kind: RuleValOffset, Offset: int64(r.uleb()) * c.dataAlign}
		case 0x15: // val_offset_sf
			n := reg()
			row.Regs[n] = Rule{Kind: RuleValOffset, Offset: r.sleb() * c.dataAlign}
		case 0x16: // val_expression
			n := reg()
			row.Regs[n] = Rule{Kind: RuleValExpression, Expr: r.bytes(int(r.uleb()))}
		case 0x2d: // AARCH64_negate_ra_state: LR is signed (pointer
			// authentication) from here on. Nothing to track: the
			// unwinder strips the PAC bits of every arm64 return address.
		case 0x2e: // GNU_args_size
			r.uleb()
		case 0x2f: // GNU_negative_offset_extended
			n := reg()
			row.Regs[n] = Rule{Kind: RuleOffset, Offset: -int64(r.uleb()) * c.dataAlign}
		default:
			return fail(fmt.Sprintf("unknown CFA instruction %#x", op))
		}
		if r.err != nil {
			return fail("instruction truncated")
		}
	}
	return nil
}

// ParseWithHdr indexes an .eh_frame section through its .eh_frame_hdr
// section (hdr, at link-time address hdrAddr): a lookup is a binary search
// of the header's table and the parse of one FDE, and nothing is parsed up
// front. When hdr is nil or has no usable table (no entries, or a variable
// length encoding), it falls back to Parse's sorted index, built once.
func ParseWithHdr(ehFrame []byte, addr uint64, hdr []byte, hdrAddr uint64, ptrSize int, order binary.ByteOrder) (*Table, error) {
	if len(hdr) < 4 || hdr[0] != 1 {
		return Parse(ehFrame, addr, ptrSize, order)
	}
	r := &reader{d: hdr, off: 4, order: order, base: hdrAddr, ptr: ptrSize, dataBase: hdrAddr}
	ehPtrEnc, countEnc, tabEnc := hdr[1], hdr[2], hdr[3]
	ehPtr := r.pointer(ehPtrEnc)
	if r.err != nil {
		return nil, &FormatError{r.off, ".eh_frame_hdr: " + r.err.Error()}
	}
	if ehPtr != addr {
		return nil, &FormatError{4, fmt.Sprintf(".eh_frame_hdr points to .eh_frame at %#x, the section is at %#x", ehPtr, addr)}
	}
	size := encSize(tabEnc, ptrSize)
	if countEnc == 0xff || tabEnc == 0xff || size == 0 || tabEnc&0x70 != 0x30 {
		return Parse(ehFrame, addr, ptrSize, order)
	}
	n := r.pointer(countEnc)
	if r.err != nil {
		return nil, &FormatError{r.off, ".eh_frame_hdr: " + r.err.Error()}
	}
	if n == 0 {
		return Parse(ehFrame, addr, ptrSize, order)
	}
	if n > uint64(len(hdr)) || r.off+int(n)*2*size > len(hdr) {
		return nil, &FormatError{r.off, fmt.Sprintf(".eh_frame_hdr: %d table entries do not fit the section", n)}
	}
	return &Table{order: order, ptr: ptrSize, data: ehFrame, addr: addr, hdr: hdr, hdrAddr: hdrAddr,
		hdrEnc: tabEnc, hdrSize: size, hdrN: int(n), hdrBase: r.off}, nil
}

// encSize is the size of a fixed-size DW_EH_PE encoding, 0 if variable.
func encSize(enc byte, ptrSize int) int {
	switch enc & 0x0f {
	case 0x00:
		return ptrSize
	case 0x02, 0x0a:
		return 2
	case 0x03, 0x0b:
		return 4
	case 0x04, 0x0c:
		return 8
	}
	return 0
}

// hdrEntry decodes entry i of the .eh_frame_hdr table: the FDE's initial
// location and its link-time address.
func (t *Table) hdrEntry(i int) (loc, fdeAddr uint64, err error) {
	r := &reader{d: t.hdr, off: t.hdrBase + i*2*t.hdrSize, order: t.order, base: t.hdrAddr, ptr: t.ptr, dataBase: t.hdrAddr}
	loc = r.pointer(t.hdrEnc)
	fdeAddr = r.pointer(t.hdrEnc)
	return loc, fdeAddr, r.err
}

// lookupHdr finds the FDE covering pc through the .eh_frame_hdr table.
func (t *Table) lookupHdr(pc uint64) (*fde, error) {
	var err error
	i := sort.Search(t.hdrN, func(i int) bool {
		loc, _, e := t.hdrEntry(i)
		if e != nil && err == nil {
			err = e
		}
		return loc > pc
	}) - 1
	if err != nil {
		return nil, err
	}
	if i < 0 {
		return nil, nil
	}
	loc, fdeAddr, err := t.hdrEntry(i)
	if err != nil {
		return nil, err
	}
	if fdeAddr < t.addr || fdeAddr-t.addr >= uint64(len(t.data)) {
		return nil, &FormatError{int(fdeAddr - t.addr), fmt.Sprintf(".eh_frame_hdr entry %d points outside .eh_frame", i)}
	}
	f, err := t.fdeAt(int(fdeAddr - t.addr))
	if err != nil {
		return nil, err
	}
	if f.start != loc {
		return nil, &FormatError{int(fdeAddr - t.addr), fmt.Sprintf("FDE starts at %#x but .eh_frame_hdr says %#x", f.start, loc)}
	}
	if pc >= f.end {
		return nil, nil
	}
	return f, nil
}

// fdeAt parses the FDE at offset off of the section, and its CIE.
func (t *Table) fdeAt(off int) (*fde, error) {
	r := &reader{d: t.data, off: off, order: t.order, base: t.addr, ptr: t.ptr}
	length := uint64(r.u32())
	if length == 0xffffffff {
		length = r.u64()
	}
	if r.err != nil || length > uint64(len(t.data)-r.off) {
		return nil, &FormatError{off, "FDE length beyond the section"}
	}
	end := r.off + int(length)
	idPos := r.off
	id := r.u32()
	if id == 0 || r.err != nil {
		return nil, &FormatError{off, "not an FDE"}
	}
	cieOff := idPos - int(id)
	if cieOff < 0 || cieOff+4 > len(t.data) {
		return nil, &FormatError{idPos, "FDE points to no CIE"}
	}
	cr := &reader{d: t.data, off: cieOff, order: t.order, base: t.addr, ptr: t.ptr}
	l := int(cr.u32())
	cr.d = t.data[:min(len(t.data), cieOff+4+max(l, 0))]
	if cr.u32() != 0 || cr.err != nil {
		return nil, &FormatError{idPos, "FDE points to no CIE"}
	}
	c, err := parseCIE(cr)
	if err != nil {
		return nil, err
	}
	fr := &reader{d: t.data[:end], off: r.off, order: t.order, base: t.addr, ptr: t.ptr}
	pcBegin := fr.pointer(c.fdeEnc)
	pcRange := fr.pointer(c.fdeEnc & 0x0f)
	if c.aug {
		n := fr.uleb()
		fr.bytes(int(n))
	}
	if fr.err != nil {
		return nil, fr.err
	}
	return &fde{start: pcBegin, end: pcBegin + pcRange, cie: c, insns: t.data[fr.off:end], insnsOff: fr.off}, nil
}

// EHFramePtr decodes the address of .eh_frame recorded in an .eh_frame_hdr
// (hdr, at link-time address hdrAddr): what finds the unwind tables of an
// object that has no section headers, from its PT_GNU_EH_FRAME segment.
func EHFramePtr(hdr []byte, hdrAddr uint64, ptrSize int, order binary.ByteOrder) (uint64, error) {
	if len(hdr) < 4 || hdr[0] != 1 {
		return 0, &FormatError{0, ".eh_frame_hdr: not version 1"}
	}
	r := &reader{d: hdr, off: 4, order: order, base: hdrAddr, ptr: ptrSize, dataBase: hdrAddr}
	v := r.pointer(hdr[1])
	if r.err != nil {
		return 0, r.err
	}
	return v, nil
}
