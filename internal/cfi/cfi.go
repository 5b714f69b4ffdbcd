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

// Table indexes the FDEs of one .eh_frame section.
type Table struct {
	fdes  []fde
	order binary.ByteOrder
	ptr   int
}

// reader decodes the section.
type reader struct {
	d     []byte
	off   int
	order binary.ByteOrder
	base  uint64 // link-time address of d[0]
	ptr   int
	err   error
}

func (r *reader) fail(msg string) {
	if r.err == nil {
		r.err = &FormatError{r.off, msg}
	}
}

func (r *reader) bytes(n int) []byte {
	if r.err != nil || n < 0 || r.off+n > len(r.d) {
		r.fail("truncated")
		return make([]byte, max(n, 0))
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
	default: // datarel, textrel, funcrel: not used in .eh_frame FDE pointers
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
func (t *Table) FDEs() int { return len(t.fdes) }

// FuncRanges returns every FDE's [start, end) (link-time), sorted.
func (t *Table) FuncRanges() [][2]uint64 {
	out := make([][2]uint64, len(t.fdes))
	for i, f := range t.fdes {
		out[i] = [2]uint64{f.start, f.end}
	}
	return out
}

// RowAt evaluates the CFI program of the FDE covering link-time pc, up to pc.
// ok is false when no FDE covers pc.
func (t *Table) RowAt(pc uint64) (row Row, ok bool, err error) {
	i := sort.Search(len(t.fdes), func(i int) bool { return t.fdes[i].start > pc }) - 1
	if i < 0 || pc >= t.fdes[i].end {
		return Row{}, false, nil
	}
	f := &t.fdes[i]
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
