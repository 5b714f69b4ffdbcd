package trampoline

import (
	"bytes"
	"encoding/binary"
	"fmt"
)

// logical is one displaced instruction as the relocator must preserve it:
// its kind, the absolute address it refers to, and, for instructions copied
// verbatim or with a patched displacement, the encoding.
type logical struct {
	kind   string // copy, mem, jmp, jcc, call, loop, int3
	cc     byte   // jcc condition; loop opcode
	target uint64
	raw    string // encoding (displacement zeroed for mem; prefixes+opcode for loop)
}

func (l logical) String() string {
	return fmt.Sprintf("%s cc=%#x target=%#x raw=[% x]", l.kind, l.cc, l.target, l.raw)
}

// originalLogical describes a displaced instruction of the original code.
func originalLogical(in *amd64Inst) logical {
	if in.ripDispOff >= 0 {
		raw := append([]byte(nil), in.Raw...)
		disp := int32(binary.LittleEndian.Uint32(raw[in.ripDispOff:]))
		binary.LittleEndian.PutUint32(raw[in.ripDispOff:], 0)
		return logical{kind: "mem", target: in.Addr + uint64(in.Len) + uint64(int64(disp)), raw: string(raw)}
	}
	t, ok := in.target()
	if !ok {
		return logical{kind: "copy", raw: string(in.Raw)}
	}
	op := in.Raw[in.Len-in.PCRel-1]
	switch {
	case op == 0xeb || op == 0xe9:
		return logical{kind: "jmp", target: t}
	case op == 0xe8:
		return logical{kind: "call", target: t}
	case op >= 0x70 && op <= 0x7f:
		return logical{kind: "jcc", cc: op & 0xf, target: t}
	case op >= 0x80 && op <= 0x8f && in.Raw[in.Len-in.PCRel-2] == 0x0f:
		return logical{kind: "jcc", cc: op & 0xf, target: t}
	case op >= 0xe0 && op <= 0xe3:
		return logical{kind: "loop", cc: op, target: t, raw: string(in.Raw[:in.Len-1])}
	}
	return logical{kind: "unknown", target: t, raw: string(in.Raw)}
}

// thunkLogical decodes a thunk back into logical instructions, folding the
// multi-instruction sequences the relocator emits (absolute jumps and calls,
// inverted jcc over an absolute jump, loop hops).
func thunkLogical(thunk []byte, addr uint64) ([]logical, error) {
	var out []logical
	absAt := func(q int) (uint64, int, bool) { // a jump at q: target, length
		switch {
		case q+14 <= len(thunk) && bytes.Equal(thunk[q:q+6], []byte{0xff, 0x25, 0, 0, 0, 0}):
			return binary.LittleEndian.Uint64(thunk[q+6:]), 14, true
		case q+5 <= len(thunk) && thunk[q] == 0xe9:
			return addr + uint64(q) + 5 + uint64(int64(int32(binary.LittleEndian.Uint32(thunk[q+1:])))), 5, true
		}
		return 0, 0, false
	}
	for q := 0; q < len(thunk); {
		at := addr + uint64(q)
		if t, n, ok := absAt(q); ok {
			out = append(out, logical{kind: "jmp", target: t})
			q += n
			continue
		}
		if q+16 <= len(thunk) && bytes.Equal(thunk[q:q+8], []byte{0xff, 0x15, 2, 0, 0, 0, 0xeb, 8}) {
			out = append(out, logical{kind: "call", target: binary.LittleEndian.Uint64(thunk[q+8:])})
			q += 16
			continue
		}
		if thunk[q] == 0xcc && q == len(thunk)-1 {
			out = append(out, logical{kind: "int3"})
			q++
			continue
		}
		in, err := decodeAMD64(thunk[q:], at)
		if err != nil {
			return out, fmt.Errorf("thunk offset %d: %v", q, err)
		}
		l := originalLogical(in)
		switch l.kind {
		case "jcc":
			if in.Len == 2 && l.target == at+2+14 {
				t, n, ok := absAt(q + 2)
				if !ok || n != 14 {
					return out, fmt.Errorf("thunk offset %d: short jcc not over an absolute jump", q)
				}
				l = logical{kind: "jcc", cc: l.cc ^ 1, target: t}
				q += 14
			}
		case "loop":
			// loop L1; jmp short L2; L1: jmp target; L2:
			next := q + in.Len
			t, n, ok := absAt(next + 2)
			if l.target != addr+uint64(next+2) || next+2 > len(thunk) || thunk[next] != 0xeb || int(thunk[next+1]) != n || !ok {
				return out, fmt.Errorf("thunk offset %d: loop not followed by the hop sequence", q)
			}
			l.target = t
			q += 2 + n
		case "jmp", "call":
			if l.target >= addr && l.target < addr+uint64(len(thunk)) {
				return out, fmt.Errorf("thunk offset %d: unexpected branch inside the thunk", q)
			}
		}
		out = append(out, l)
		q += in.Len
	}
	return out, nil
}

// checkPlan verifies a successful plan against fn: sizes, bytes, and that
// the thunk, decoded, is the displaced instructions with the same absolute
// targets, followed by a jump back (or int3 when the function was whole).
func checkPlan(a AMD64, fn Func, newAddr uint64, p *Plan) error {
	if len(p.Thunk) > a.MaxThunkSize() {
		return fmt.Errorf("thunk %d bytes > MaxThunkSize %d", len(p.Thunk), a.MaxThunkSize())
	}
	if len(p.Jump) != len(p.Original) {
		return fmt.Errorf("len(Jump) %d != len(Original) %d", len(p.Jump), len(p.Original))
	}
	j := a.Jump(p.Addr, newAddr)
	if !bytes.HasPrefix(p.Jump, j) || len(bytes.Trim(p.Jump[len(j):], "\xcc")) != 0 {
		return fmt.Errorf("Jump % x is not % x + int3 fill", p.Jump, j)
	}
	start := int(p.Addr - fn.Addr)
	all := append(append([]byte(nil), fn.Code...), fn.Padding...)
	if start+len(p.Original) > len(all) || !bytes.Equal(all[start:start+len(p.Original)], p.Original) {
		return fmt.Errorf("Original % x is not the bytes at Addr", p.Original)
	}
	var want []logical
	if start == 4 {
		want = append(want, logical{kind: "copy", raw: string(endbr64)})
	}
	pos := start
	for pos < len(fn.Code) && pos-start < len(p.Original) {
		in, err := decodeAMD64(fn.Code[pos:], fn.Addr+uint64(pos))
		if err != nil {
			return err
		}
		want = append(want, originalLogical(in))
		pos += in.Len
	}
	if pos >= len(fn.Code) {
		want = append(want, logical{kind: "int3"})
	} else {
		if pos-start != len(p.Original) {
			return fmt.Errorf("Original (%d bytes) ends inside an instruction", len(p.Original))
		}
		want = append(want, logical{kind: "jmp", target: p.Addr + uint64(len(p.Original))})
	}
	got, err := thunkLogical(p.Thunk, p.ThunkAddr)
	if err != nil {
		return fmt.Errorf("%v (thunk % x)", err, p.Thunk)
	}
	if len(got) != len(want) {
		return fmt.Errorf("thunk has %d instructions, want %d:\n got %v\nwant %v", len(got), len(want), got, want)
	}
	for i := range got {
		if got[i] != want[i] {
			return fmt.Errorf("thunk instruction %d: got %v, want %v (thunk % x)", i, got[i], want[i], p.Thunk)
		}
	}
	return nil
}
