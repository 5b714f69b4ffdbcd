package gopcln

import (
	"debug/elf"
	"encoding/binary"
	"errors"
	"os"
	"testing"
)

// ownTable returns the pclntab of the running test binary (a real table of
// the current toolchain, on any machine) and its text address.
func ownTable(f testing.TB) ([]byte, uint64) {
	exe, err := os.Executable()
	if err != nil {
		f.Skip(err)
	}
	ef, err := elf.Open(exe)
	if err != nil {
		f.Skip(err)
	}
	defer ef.Close()
	s, text := ef.Section(".gopclntab"), ef.Section(".text")
	if s == nil || text == nil {
		f.Skip("the test binary has no .gopclntab")
	}
	d, err := s.Data()
	if err != nil {
		f.Fatal(err)
	}
	return d, text.Addr
}

// mutate applies muts to a copy of the real table d, aimed at its parts:
// each 6-byte group is (kind, function index u16, byte offset u16, value).
// It returns the table and the indexes of the functions it touched.
func mutate(d []byte, muts []byte) ([]byte, []int) {
	d = append([]byte(nil), d...)
	order := binary.LittleEndian
	nfunc := int(order.Uint64(d[8:]))
	pclnOff := int(order.Uint64(d[8+7*8:]))
	pctabOff := int(order.Uint64(d[8+6*8:]))
	set := func(off int, v byte) {
		if off >= 0 && off < len(d) {
			d[off] = v
		}
	}
	var touched []int
	for ; len(muts) >= 6; muts = muts[6:] {
		i := int(order.Uint16(muts[1:])) % (nfunc + 1)
		off, v := int(order.Uint16(muts[3:])), muts[5]
		touched = append(touched, i)
		funcOff := pclnOff + int(order.Uint32(d[min(pclnOff+i*8+4, len(d)-4):]))
		switch muts[0] % 5 {
		case 0: // the header
			set(off%72, v)
		case 1: // the function table entry
			set(pclnOff+i*8+off%8, v)
		case 2: // the _func record
			set(funcOff+off%64, v)
		case 3: // the pc→sp table
			if funcOff+20 <= len(d) {
				set(pctabOff+int(order.Uint32(d[funcOff+16:]))+off%16, v)
			}
		case 4: // anywhere
			set(int(order.Uint32(muts[1:]))%len(d), v)
		}
	}
	return d, touched
}

// check exercises a table Parse accepted: its functions are sorted and
// FuncAt finds each; SPDelta and Inlined return values or errors.
func check(t *testing.T, tab *Table, touched []int) {
	fs := tab.Funcs()
	for i := range fs {
		if fs[i].End < fs[i].Entry || i > 0 && fs[i].Entry < fs[i-1].Entry {
			t.Fatalf("function %d %s [%#x,%#x) out of order", i, fs[i].Name, fs[i].Entry, fs[i].End)
		}
	}
	gofunc := func(off uint32, n int) ([]byte, error) { return make([]byte, n), nil }
	for _, i := range append(touched, 0, len(fs)/2, len(fs)-1) {
		for _, j := range []int{i - 1, i, i + 1} {
			if j < 0 || j >= len(fs) {
				continue
			}
			f := &fs[j]
			for _, pc := range []uint64{f.Entry, (f.Entry + f.End) / 2, f.End - 1} {
				if g, ok := tab.FuncAt(pc); f.End > f.Entry && (!ok || pc < g.Entry || pc >= g.End) {
					t.Fatalf("FuncAt(%#x) = %v %v, inside %s [%#x,%#x)", pc, g, ok, f.Name, f.Entry, f.End)
				}
				tab.SPDelta(f, pc)
			}
			tab.Inlined(f, gofunc)
		}
	}
}

// FuzzParseMutated: the real pclntab of the test binary, mutated where the
// parser reads (header, function table, _func records, pc→sp tables), is
// either refused or parsed into a table whose lookups hold: sorted
// functions that FuncAt finds; no panic, no loop.
func FuzzParseMutated(f *testing.F) {
	d, text := ownTable(f)
	f.Add([]byte{})
	f.Add([]byte{1, 5, 0, 2, 0, 0xff})                    // an entry offset
	f.Add([]byte{2, 7, 0, 16, 0, 0x7f})                   // a pcsp offset
	f.Add([]byte{3, 9, 0, 1, 0, 0x80})                    // a pc→sp byte
	f.Add([]byte{0, 0, 0, 8, 0, 0xff, 2, 3, 0, 43, 0, 9}) // nfunc, nfuncdata
	if _, err := Parse(d, text); err != nil {
		f.Fatalf("the test binary's own table: %v", err)
	}
	f.Fuzz(func(t *testing.T, muts []byte) {
		m, touched := mutate(d, muts)
		tab, err := Parse(m, text)
		if err != nil {
			return
		}
		check(t, tab, touched)
	})
}

// TestParseUnsorted: a function table whose entries are out of order (found
// by FuzzParseMutated) is refused, never parsed into functions FuncAt
// cannot find and whose End lies before their Entry.
func TestParseUnsorted(t *testing.T) {
	d, text := ownTable(t)
	m, _ := mutate(d, []byte{1, 5, 0, 2, 0, 0xff}) // entry 5 past entry 6
	if _, err := Parse(m, text); !errors.Is(err, ErrFormat) {
		t.Fatalf("Parse of an unsorted table: %v, want ErrFormat", err)
	}
}
