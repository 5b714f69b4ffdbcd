package gopcln

import (
	"debug/elf"
	"debug/gosym"
	"encoding/binary"
	"errors"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/arch/arm64/arm64asm"
	"golang.org/x/arch/x86/x86asm"

	"github.com/hotpatch-dev/hotpatch/internal/fixture"
)

// build parses the pclntab of the Go fixture pclnwork, built with flags
// for the machine the tests run on (prebuilt in the arm64 VM).
func build(t testing.TB, flags ...string) (*elf.File, *Table) {
	t.Helper()
	bin := fixture.BuildGo(t, "pclnwork", "", flags...)
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	data, err := f.Section(".gopclntab").Data()
	if err != nil {
		t.Fatal(err)
	}
	tab, err := Parse(data, f.Section(".text").Addr)
	if err != nil {
		t.Fatal(err)
	}
	return f, tab
}

func TestFuncsMatchGosym(t *testing.T) {
	for _, flags := range [][]string{nil, {"-ldflags=-s -w"}} {
		f, tab := build(t, flags...)
		data, _ := f.Section(".gopclntab").Data()
		gt, err := gosym.NewTable(nil, gosym.NewLineTable(data, f.Section(".text").Addr))
		if err != nil {
			t.Fatal(err)
		}
		if len(gt.Funcs) != len(tab.Funcs()) || len(gt.Funcs) < 1000 {
			t.Fatalf("%v: %d funcs, gosym has %d", flags, len(tab.Funcs()), len(gt.Funcs))
		}
		for i, g := range gt.Funcs {
			got := tab.Funcs()[i]
			if got.Name != g.Name || got.Entry != g.Entry || got.End != g.End {
				t.Fatalf("func %d = %s [%#x,%#x), gosym %s [%#x,%#x)", i, got.Name, got.Entry, got.End, g.Name, g.Entry, g.End)
			}
			if fa, ok := tab.FuncAt(g.Entry); !ok || fa.Name != g.Name {
				t.Fatalf("FuncAt(%#x) = %v, want %s", g.Entry, fa, g.Name)
			}
		}
	}
}

// The sp delta must follow the real instructions: check every instruction of
// main.work and of several runtime functions along the fall-through path
// (conditional branches fall through) until a ret or jmp.
func TestSPDeltaFollowsCode(t *testing.T) {
	f, tab := build(t)
	text := f.Section(".text")
	code, _ := text.Data()
	checked := 0
	arm := &arm64SP{tmp: map[string]int64{}}
	for _, fn := range tab.Funcs() {
		if fn.Name != "main.work" && fn.Name != "main.main" && fn.Name != "fmt.Println" && fn.Name != "runtime.mallocgc" {
			continue
		}
		want := int64(0)
		for pc := fn.Entry; pc < fn.End; {
			got, err := tab.SPDelta(&fn, pc)
			if err != nil {
				t.Fatalf("%s+%#x: %v", fn.Name, pc-fn.Entry, err)
			}
			if got != want {
				t.Fatalf("%s+%#x: delta %d, the instructions say %d", fn.Name, pc-fn.Entry, got, want)
			}
			var n int
			var end bool
			switch f.Machine {
			case elf.EM_X86_64:
				n, end = stepAMD64(t, fn.Name, code[pc-text.Addr:], &want)
			case elf.EM_AARCH64:
				n, end = arm.step(t, fn.Name, code[pc-text.Addr:], &want)
			default:
				t.Skipf("no instruction model for %v", f.Machine)
			}
			checked++
			if end {
				pc = fn.End // the fall-through path ends: the rest is reached by branches
				continue
			}
			pc += uint64(n)
		}
	}
	t.Logf("checked %d instructions", checked)
	if checked < 20 {
		t.Fatalf("checked only %d instructions", checked)
	}
}

// stepAMD64 applies one x86-64 instruction's effect on the sp delta; it
// returns the instruction's length and whether the fall-through path ends.
func stepAMD64(t *testing.T, fn string, code []byte, want *int64) (int, bool) {
	inst, err := x86asm.Decode(code, 64)
	if err != nil {
		t.Fatal(err)
	}
	switch {
	case inst.Op == x86asm.PUSH:
		*want += 8
	case inst.Op == x86asm.POP:
		*want -= 8
	case (inst.Op == x86asm.SUB || inst.Op == x86asm.ADD) && inst.Args[0] == x86asm.RSP:
		imm, ok := inst.Args[1].(x86asm.Imm)
		if !ok {
			t.Fatalf("%s: unexpected %v", fn, inst)
		}
		if inst.Op == x86asm.SUB {
			*want += int64(imm)
		} else {
			*want -= int64(imm)
		}
	case inst.Op == x86asm.RET || inst.Op == x86asm.JMP || inst.Op == x86asm.UD2 || inst.Op == x86asm.INT:
		return inst.Len, true
	}
	return inst.Len, false
}

// arm64SP models how Go's arm64 prologues and epilogues move SP: small
// frames with a pre-indexed store of LR ("MOVD.W R30, -size(RSP)") and a
// post-indexed load back; large ones through a temporary
// ("SUB $size, RSP, R20; STP ...; MOVD R20, RSP") and "ADD $size, RSP".
type arm64SP struct{ tmp map[string]int64 }

var (
	armImm      = `#(-?(?:0x)?[0-9a-f]+)(?:, LSL #(\d+))?`
	armSPArith  = regexp.MustCompile(`^(ADD|SUB) SP, SP, ` + armImm + `$`)
	armTmpSub   = regexp.MustCompile(`^SUB (X\d+), SP, ` + armImm + `$`)
	armMovSP    = regexp.MustCompile(`^MOV SP, (X\d+)$`)
	armPreIndex = regexp.MustCompile(`^(STR|STP).*\[SP, ?#(-?(?:0x)?[0-9a-f]+)\]!$`)
	armPostLoad = regexp.MustCompile(`^(LDR|LDP).*\[SP\], ?#(-?(?:0x)?[0-9a-f]+)$`)
)

func armNum(t *testing.T, s, shift string) int64 {
	v, err := strconv.ParseInt(s, 0, 64)
	if err != nil {
		t.Fatalf("immediate %q: %v", s, err)
	}
	if shift != "" {
		n, _ := strconv.Atoi(shift)
		v <<= n
	}
	return v
}

func (a *arm64SP) step(t *testing.T, fn string, code []byte, want *int64) (int, bool) {
	inst, err := arm64asm.Decode(code)
	if err != nil {
		return 4, false // data or an encoding x/arch does not know: no sp effect
	}
	s := inst.String()
	switch {
	case armSPArith.MatchString(s):
		m := armSPArith.FindStringSubmatch(s)
		v := armNum(t, m[2], m[3])
		if m[1] == "SUB" {
			*want += v
		} else {
			*want -= v
		}
	case armTmpSub.MatchString(s):
		m := armTmpSub.FindStringSubmatch(s)
		a.tmp[m[1]] = armNum(t, m[2], m[3])
	case armMovSP.MatchString(s):
		m := armMovSP.FindStringSubmatch(s)
		v, ok := a.tmp[m[1]]
		if !ok {
			t.Fatalf("%s: %s from a register the model does not know", fn, s)
		}
		*want += v
	case armPreIndex.MatchString(s):
		*want -= armNum(t, armPreIndex.FindStringSubmatch(s)[2], "")
	case armPostLoad.MatchString(s):
		*want -= armNum(t, armPostLoad.FindStringSubmatch(s)[2], "")
	case inst.Op == arm64asm.B:
		rel, ok := inst.Args[0].(arm64asm.PCRel)
		if !ok {
			return 4, false // B.cond: falls through
		}
		// An unconditional branch forward (loops are laid out with their
		// condition last): follow it; backward, the path ends.
		if rel > 0 {
			return int(rel), false
		}
		return 4, true
	case inst.Op == arm64asm.RET ||
		inst.Op == arm64asm.BR || inst.Op == arm64asm.BRK:
		return 4, true
	}
	return 4, false
}

func TestParseErrors(t *testing.T) {
	for _, b := range [][]byte{nil, {1, 2, 3}, {0xf1, 0xff, 0xff, 0xff, 0, 0, 3, 8}, make([]byte, 64)} {
		if _, err := Parse(b, 0); !errors.Is(err, ErrFormat) {
			t.Errorf("Parse(% x) = %v, want ErrFormat", b, err)
		}
	}
}

// TestParseOldFormats: the magic numbers of older releases' formats, in
// either byte order, are refused as unsupported, not read as Go 1.20+ tables.
func TestParseOldFormats(t *testing.T) {
	for _, tc := range []struct {
		magic    uint32
		releases string
	}{
		{0xfffffff0, "Go 1.18–1.19"},
		{0xfffffffa, "Go 1.16–1.17"},
		{0xfffffffb, "Go 1.2–1.15"},
	} {
		for _, order := range []binary.ByteOrder{binary.LittleEndian, binary.BigEndian} {
			b := make([]byte, 8+8*8+64)
			order.PutUint32(b, tc.magic)
			b[6], b[7] = 1, 8
			_, err := Parse(b, 0x1000)
			var ue *UnsupportedError
			if !errors.As(err, &ue) || !errors.Is(err, ErrUnsupported) || ue.Magic != tc.magic || ue.Releases != tc.releases {
				t.Errorf("%#x (%v): Parse = %v, want an *UnsupportedError for %s", tc.magic, order, err, tc.releases)
			}
		}
	}
}

// TestOldReleases: go1.19 writes the Go 1.18 format, whose _func records
// have no startLine (funcID and flag four bytes earlier): Parse refuses its
// table, with or without DWARF, rather than misread the flags. go1.21
// writes the current format: Parse decodes it as debug/gosym does (the
// release itself is refused elsewhere, by version).
func TestOldReleases(t *testing.T) {
	for _, tc := range []struct {
		toolchain string
		refused   bool
	}{{"go1.19.13", true}, {"go1.21.13", false}} {
		for _, flags := range [][]string{nil, {"-ldflags=-s -w"}} {
			f, err := elf.Open(fixture.BuildGo(t, "gotasks", tc.toolchain, flags...))
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			data, err := f.Section(".gopclntab").Data()
			if err != nil {
				t.Fatal(err)
			}
			text := f.Section(".text").Addr
			tab, err := Parse(data, text)
			if tc.refused {
				var ue *UnsupportedError
				if !errors.As(err, &ue) || ue.Magic != 0xfffffff0 || !strings.Contains(err.Error(), "Go 1.18–1.19") {
					t.Errorf("%s %v: Parse = %v, want the Go 1.18 format refused", tc.toolchain, flags, err)
				}
				if tab != nil {
					t.Errorf("%s %v: a refused table was returned", tc.toolchain, flags)
				}
				continue
			}
			if err != nil {
				t.Fatalf("%s %v: %v", tc.toolchain, flags, err)
			}
			gt, err := gosym.NewTable(nil, gosym.NewLineTable(data, text))
			if err != nil {
				t.Fatal(err)
			}
			if len(gt.Funcs) != len(tab.Funcs()) {
				t.Fatalf("%s %v: %d funcs, gosym has %d", tc.toolchain, flags, len(tab.Funcs()), len(gt.Funcs))
			}
			for i, g := range gt.Funcs {
				if got := tab.Funcs()[i]; got.Name != g.Name || got.Entry != g.Entry {
					t.Fatalf("%s %v: func %d = %s %#x, gosym %s %#x", tc.toolchain, flags, i, got.Name, got.Entry, g.Name, g.Entry)
				}
			}
		}
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte{0xf1, 0xff, 0xff, 0xff, 0, 0, 1, 8, 1, 0, 0, 0, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		tab, err := Parse(b, 0x1000)
		if err != nil {
			return
		}
		for _, fn := range tab.Funcs() {
			tab.SPDelta(&fn, fn.Entry)
			tab.FuncAt(fn.Entry)
		}
	})
}

func TestTruncated(t *testing.T) {
	f, _ := build(t)
	data, _ := f.Section(".gopclntab").Data()
	for n := 0; n < 4096 && n < len(data); n += 7 {
		tab, err := Parse(data[:n], 0x401000)
		if err != nil {
			continue
		}
		for _, fn := range tab.Funcs() {
			tab.SPDelta(&fn, fn.Entry) // must not panic
		}
	}
}

// Args is the size of a function's argument area (for register-ABI
// functions the spill slots of the arguments; results passed in registers
// take none): what a replacement's must equal.
func TestArgsSize(t *testing.T) {
	for _, flags := range [][]string{nil, {"-ldflags=-s -w"}} {
		_, tab := build(t, flags...)
		want := map[string]int32{
			"main.work":    8, // (n int) int
			"main.main":    0,
			"fmt.Fprintln": 40, // (w io.Writer, a ...any) (n int, err error)
		}
		for _, fn := range tab.Funcs() {
			if w, ok := want[fn.Name]; ok {
				if fn.Args != w {
					t.Errorf("%v: %s args %d, want %d", flags, fn.Name, fn.Args, w)
				}
				delete(want, fn.Name)
			}
		}
		if len(want) > 0 {
			t.Errorf("%v: not found: %v", flags, want)
		}
	}
}
