//go:build amd64

package execmem

import (
	"bytes"
	"testing"
)

// sum6 is `rax = rdi+rsi+rdx+rcx+r8+r9; ret`.
var sum6 = []byte{
	0x48, 0x8d, 0x04, 0x37, // lea rax, [rdi+rsi]
	0x48, 0x01, 0xd0, // add rax, rdx
	0x48, 0x01, 0xc8, // add rax, rcx
	0x4c, 0x01, 0xc0, // add rax, r8
	0x4c, 0x01, 0xc8, // add rax, r9
	0xc3, // ret
}

func TestAllocCall(t *testing.T) {
	s, err := Lookup("hp_repl")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		hint uintptr
		near bool // must be within rel32 reach of hint
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
			if r.Size != pageSize {
				t.Errorf("size %d, want one page", r.Size)
			}
			if tc.near && Distance(r.Addr, tc.hint) >= Reach {
				t.Errorf("region %#x is not within ±2 GiB of %#x", r.Addr, tc.hint)
			}
			r.Write(64, sum6)
			if got := Read(r.Addr+64, len(sum6)); !bytes.Equal(got, sum6) {
				t.Fatalf("read back % x", got)
			}
			if got := Call(r.Addr+64, 1, 2, 3, 4, 5, 6); got != 21 {
				t.Errorf("Call = %d, want 21", got)
			}
			if got := Call(r.Addr+64, -1, -2); got != -3 {
				t.Errorf("Call = %d, want -3", got)
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
		"hp_repl":     func(x int64) int64 { return 3 * x },
		"hp_rip_load": func(x int64) int64 { return x + 1000 },
		"hp_rip_lea":  func(x int64) int64 { return 7 * x },
		"hp_vex":      func(x int64) int64 { return x + 1000 },
		"hp_jmp8":     func(x int64) int64 { return x + 5 },
		"hp_call":     func(x int64) int64 { return x + 10 },
		"hp_endbr":    func(x int64) int64 { return x*x + 3 + x },
		"hp_short":    func(x int64) int64 { return x },
		"hp_c_lookup": func(x int64) int64 { return []int64{3, 1, 4, 1, 5, 9, 2, 6}[x&7]*10 + x },
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
	if short.Size != 4 || len(short.Padding()) < 10 || short.Padding()[0] != 0xcc {
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
	s, err := Lookup("hp_short") // mov rax, rdi; ret; int3 padding
	if err != nil {
		t.Fatal(err)
	}
	orig := Read(s.Addr, 4)
	restore, err := MakeWritable(s.Addr, 4)
	if err != nil {
		t.Fatal(err)
	}
	// lea rax, [rdi+1]; ret — 5 bytes, into the padding.
	patched := []byte{0x48, 0x8d, 0x47, 0x01, 0xc3}
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
