package cfi

import (
	"encoding/binary"
	"errors"
	"reflect"
	"testing"
)

func TestEval(t *testing.T) {
	regs := map[int]uint64{7: 0x1000, 16: 0x40102b, 6: 0x2000}
	mem := map[uint64]uint64{0x1008: 0xdead, 0x10a0: 0x7fff0000}
	m := Machine{
		Reg: func(n int) (uint64, bool) { v, ok := regs[n]; return v, ok },
		Mem: func(a uint64, size int) (uint64, error) {
			v, ok := mem[a]
			if !ok {
				return 0, errors.New("unmapped")
			}
			if size < 8 {
				v &= 1<<(8*size) - 1
			}
			return v, nil
		},
		PtrSize: 8,
	}
	// glibc's PLT CFA: breg7 8; breg16 0; lit15; and; lit11; ge; lit3; shl; plus
	plt := []byte{0x77, 8, 0x80, 0, 0x3f, 0x1a, 0x3b, 0x2a, 0x33, 0x24, 0x22}
	for _, c := range []struct {
		name    string
		expr    []byte
		initial []uint64
		want    uint64
		err     bool
	}{
		{"plt after push", plt, nil, 0x1000 + 16, false},
		{"lit", []byte{0x35}, nil, 5, false},
		{"initial is the CFA", []byte{0x23, 0x10}, []uint64{0x500}, 0x510, false},
		{"sigframe cfa", []byte{0x77, 0xa0, 0x01, 0x06}, nil, 0x7fff0000, false},
		{"deref_size", []byte{0x77, 8, 0x94, 1}, nil, 0xad, false},
		{"const and minus", []byte{0x08, 10, 0x08, 3, 0x1c}, nil, 7, false},
		{"consts negative", []byte{0x11, 0x7f}, nil, ^uint64(0), false},
		{"shr/shra", []byte{0x11, 0x70, 0x32, 0x26}, nil, ^uint64(3), false},
		{"bra taken", []byte{0x31, 0x28, 2, 0, 0x3a, 0x3a, 0x3b}, nil, 11, false},
		{"bra not taken", []byte{0x30, 0x28, 1, 0, 0x3a, 0x3b}, nil, 11, false},
		{"skip", []byte{0x2f, 1, 0, 0x3a, 0x3b}, nil, 11, false},
		{"reg value", []byte{0x56}, nil, 0x2000, false},
		{"bregx", []byte{0x92, 6, 0x08}, nil, 0x2008, false},
		{"dup over swap rot pick", []byte{0x31, 0x32, 0x14, 0x16, 0x17, 0x15, 2, 0x22}, nil, 1 + 2, false},
		{"xor or mul mod div neg abs not", []byte{0x36, 0x33, 0x27, 0x31, 0x21, 0x33, 0x1e, 0x34, 0x1d, 0x3f, 0x1f, 0x19}, nil, 15, false},
		{"compare", []byte{0x31, 0x32, 0x2d, 0x31, 0x32, 0x2b, 0x22}, nil, 1, false},
		{"unknown register", []byte{0x71, 0}, nil, 0, true},
		{"unmapped memory", []byte{0x30, 0x06}, nil, 0, true},
		{"underflow", []byte{0x22}, nil, 0, true},
		{"empty", nil, nil, 0, true},
		{"truncated", []byte{0x0e, 1, 2}, nil, 0, true},
		{"unsupported op", []byte{0xe0}, nil, 0, true},
		{"branch outside", []byte{0x2f, 0x40, 0}, nil, 0, true},
		{"division by zero", []byte{0x31, 0x30, 0x1b}, nil, 0, true},
		{"infinite loop", []byte{0x2f, 0xfd, 0xff}, nil, 0, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, err := Eval(c.expr, m, c.initial...)
			if c.err {
				if err == nil || !errors.Is(err, ErrExpr) {
					t.Fatalf("Eval = %#x, %v; want an ErrExpr", got, err)
				}
				return
			}
			if err != nil || got != c.want {
				t.Fatalf("Eval = %#x, %v; want %#x", got, err, c.want)
			}
		})
	}
}

func FuzzEval(f *testing.F) {
	f.Add([]byte{0x77, 8, 0x80, 0, 0x3f, 0x1a, 0x3b, 0x2a, 0x33, 0x24, 0x22})
	f.Add([]byte{0x77, 0xa0, 0x01, 0x06})
	f.Add([]byte{0x2f, 0xfd, 0xff})
	m := Machine{
		Reg: func(n int) (uint64, bool) { return uint64(n) * 8, n < 17 },
		Mem: func(a uint64, _ int) (uint64, error) { return a ^ 0x55, nil },
	}
	f.Fuzz(func(t *testing.T, expr []byte) {
		Eval(expr, m, 0x1000)
	})
}

// The .eh_frame_hdr binary search and the sorted index agree on every FDE
// of libc and the dynamic linker, at the first, a middle and the last byte,
// and outside every FDE.
func TestHdrMatchesIndex(t *testing.T) {
	sy := sys(t)
	for _, path := range []string{sy.libc, sy.ld} {
		f, idx := load(t, path)
		hs := f.Section(".eh_frame_hdr")
		es := f.Section(".eh_frame")
		if hs == nil {
			t.Fatalf("%s has no .eh_frame_hdr", path)
		}
		hd, _ := hs.Data()
		ed, _ := es.Data()
		hdr, err := ParseWithHdr(ed, es.Addr, hd, hs.Addr, 8, binary.LittleEndian)
		if err != nil {
			t.Fatal(err)
		}
		if !hdr.HasHdr() || hdr.FDEs() != idx.FDEs() {
			t.Fatalf("%s: hdr table %v with %d FDEs, index %d", path, hdr.HasHdr(), hdr.FDEs(), idx.FDEs())
		}
		if !reflect.DeepEqual(hdr.FuncRanges(), idx.FuncRanges()) {
			t.Fatalf("%s: FDE ranges differ", path)
		}
		for _, r := range idx.FuncRanges() {
			for _, pc := range []uint64{r[0], (r[0] + r[1]) / 2, r[1] - 1, r[1], r[0] - 1} {
				a, aok, aerr := idx.RowAt(pc)
				b, bok, berr := hdr.RowAt(pc)
				if aok != bok || (aerr == nil) != (berr == nil) || !reflect.DeepEqual(a, b) {
					t.Fatalf("%s: RowAt(%#x): index %v %v %+v, hdr %v %v %+v", path, pc, aok, aerr, a, bok, berr, b)
				}
			}
		}
	}
	// Without a header, ParseWithHdr falls back to the index.
	f, _ := load(t, libc(t))
	es := f.Section(".eh_frame")
	ed, _ := es.Data()
	tab, err := ParseWithHdr(ed, es.Addr, nil, 0, 8, binary.LittleEndian)
	if err != nil || tab.HasHdr() || tab.FDEs() < 100 {
		t.Fatalf("fallback: %v %v", tab, err)
	}
}

// A corrupt header is an error, never a wrong row.
func FuzzParseWithHdr(f *testing.F) {
	f.Add([]byte{1, 0x1b, 0x03, 0x3b, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0})
	eh := []byte{
		// CIE: length 20, id 0, version 1, "zR", code 1, data -8, ra 16, aug len 1, enc 0x1b, def_cfa rsp+8, offset r16 1
		20, 0, 0, 0, 0, 0, 0, 0, 1, 'z', 'R', 0, 1, 0x78, 16, 1, 0x1b, 0x0c, 7, 8, 0x90, 1, 0, 0,
		// FDE: length 16, cie ptr 28, pc begin (pcrel sdata4), range 16, aug 0, pad
		16, 0, 0, 0, 28, 0, 0, 0, 0xd8, 0xff, 0xff, 0xff, 16, 0, 0, 0, 0, 0, 0, 0,
		0, 0, 0, 0,
	}
	f.Fuzz(func(t *testing.T, hdr []byte) {
		tab, err := ParseWithHdr(eh, 0x1000, hdr, 0x800, 8, binary.LittleEndian)
		if err != nil {
			return
		}
		for pc := uint64(0xfe0); pc < 0x1040; pc += 3 {
			tab.RowAt(pc)
		}
		tab.FuncRanges()
	})
}
