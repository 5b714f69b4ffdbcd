//go:build cgo

package execmem

import (
	"bytes"
	"encoding/binary"
	"testing"
)

func a64(ws ...uint32) []byte {
	var b []byte
	for _, w := range ws {
		b = binary.LittleEndian.AppendUint32(b, w)
	}
	return b
}

// sum6 is `x0 = x0+x1+x2+x3+x4+x5; ret`.
var sum6 = a64(0x8b010000, 0x8b020000, 0x8b030000, 0x8b040000, 0x8b050000, 0xd65f03c0)

func TestAllocCall(t *testing.T) {
	s, err := Lookup("hp_repl")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		hint uintptr
		near bool // must be within Reach of hint
	}{
		{"anywhere", 0, false},
		{"near text", s.Addr, true},
		{"far", s.Addr + 1<<36, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := Alloc(100, tc.hint)
			if err != nil {
				t.Fatal(err)
			}
			defer r.Free()
			if tc.near && Distance(r.Addr, tc.hint) >= Reach {
				t.Errorf("region %#x is not within ±128 MiB of %#x", r.Addr, tc.hint)
			}
			r.Write(64, sum6)
			if got := Read(r.Addr+64, len(sum6)); !bytes.Equal(got, sum6) {
				t.Fatalf("read back % x", got)
			}
			if got := Call(r.Addr+64, 1, 2, 3, 4, 5, 6); got != 21 {
				t.Errorf("Call = %d, want 21", got)
			}
			// Rewrite the same code: the instruction cache must not serve
			// the old bytes (x0 = x0 - x1; ret).
			r.Write(64, a64(0xcb010000, 0xd65f03c0))
			if got := Call(r.Addr+64, 10, 3); got != 7 {
				t.Errorf("Call after rewriting = %d, want 7", got)
			}
		})
	}
}

func TestSamples(t *testing.T) {
	all, err := Samples()
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]func(x int64) int64{
		"hp_repl":       func(x int64) int64 { return 3 * x },
		"hp_adrp_load":  func(x int64) int64 { return x + 1000 },
		"hp_adr":        func(x int64) int64 { return 7 * x },
		"hp_ldr_lit":    func(x int64) int64 { return x + 1000 },
		"hp_ldrsw_lit":  func(x int64) int64 { return x - 5 },
		"hp_ldr_lit_d":  func(x int64) int64 { return int64(float64(x) * 2.5) },
		"hp_ldr_lit_q":  func(x int64) int64 { return x + 77 },
		"hp_b":          func(x int64) int64 { return x + 5 },
		"hp_bl":         func(x int64) int64 { return x + 10 },
		"hp_bti":        func(x int64) int64 { return x*x + 3 + x },
		"hp_pac":        func(x int64) int64 { return x + 11 },
		"hp_short":      func(x int64) int64 { return x },
		"hp_c_lookup":   func(x int64) int64 { return []int64{3, 1, 4, 1, 5, 9, 2, 6}[x&7]*10 + x },
		"hp_goprologue": nil,
	}
	for _, s := range all {
		t.Logf("%-16s %#x size=%-3d padding=% x", s.Name, s.Addr, s.Size, s.Padding())
		if s.Size <= 0 || s.Next < s.Addr+uintptr(s.Size) {
			t.Errorf("%s: bad bounds %+v", s.Name, s)
		}
		if f := want[s.Name]; f != nil {
			for _, x := range []int64{0, 1, 7, -4} {
				if got := Call(s.Addr, x); got != f(x) {
					t.Errorf("%s(%d) = %d, want %d", s.Name, x, got, f(x))
				}
			}
		}
	}
	short, err := Lookup("hp_short")
	if err != nil {
		t.Fatal(err)
	}
	if short.Size != 4 || len(short.Padding()) < 12 || !bytes.Equal(short.Padding()[:4], a64(0xd503201f)) {
		t.Errorf("hp_short: size %d padding % x", short.Size, short.Padding())
	}
	g, err := Lookup("hp_goprologue")
	if err != nil {
		t.Fatal(err)
	}
	if got := CallG(g.Addr, 5, 0); got != 12 {
		t.Errorf("hp_goprologue(5) = %d, want 12", got)
	}
	if got := CallG(g.Addr, 5, ^uint64(0)); got != 12 {
		t.Errorf("hp_goprologue(5) through morestack = %d, want 12", got)
	}
	if _, err := Lookup("nope"); err == nil {
		t.Error("Lookup of an unknown sample succeeded")
	}
}

func TestMakeWritable(t *testing.T) {
	s, err := Lookup("hp_short") // ret; nop padding
	if err != nil {
		t.Fatal(err)
	}
	orig := Read(s.Addr, 4)
	restore, err := MakeWritable(s.Addr, 8)
	if err != nil {
		t.Fatal(err)
	}
	patched := a64(0x91000400, 0xd65f03c0) // add x0, x0, #1; ret — into the padding
	saved := Read(s.Addr, len(patched))
	Write(s.Addr, patched)
	if got := Call(s.Addr, 41); got != 42 {
		t.Errorf("patched hp_short(41) = %d, want 42", got)
	}
	Write(s.Addr, saved)
	if err := restore(); err != nil {
		t.Fatal(err)
	}
	if got := Call(s.Addr, 41); got != 41 || !bytes.Equal(Read(s.Addr, 4), orig) {
		t.Errorf("restored hp_short(41) = %d", got)
	}
	if _, err := MakeWritable(0x1000, 1); err == nil {
		t.Error("MakeWritable of an unmapped page succeeded")
	}
}
