package gopcln

import (
	"debug/elf"
	"debug/gosym"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"golang.org/x/arch/x86/x86asm"
)

// build builds a small Go program and parses the pclntab of a Go binary built for the test.
func build(t testing.TB, flags ...string) (*elf.File, *Table) {
	t.Helper()
	dir := t.TempDir()
	src := filepath.Join(dir, "main.go")
	os.WriteFile(src, []byte("package main\n\nimport \"fmt\"\n\n//go:noinline\nfunc work(n int) int { var a [64]int; for i := range a { a[i] = i * n }; return a[n%64] }\n\nfunc main() { fmt.Println(work(3)) }\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "go.mod"), []byte("module m\n\ngo 1.22\n"), 0o644)
	bin := filepath.Join(dir, "bin")
	cmd := exec.Command("go", append(append([]string{"build", "-o", bin}, flags...), ".")...)
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
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
			inst, err := x86asm.Decode(code[pc-text.Addr:], 64)
			if err != nil {
				t.Fatal(err)
			}
			checked++
			switch {
			case inst.Op == x86asm.PUSH:
				want += 8
			case inst.Op == x86asm.POP:
				want -= 8
			case (inst.Op == x86asm.SUB || inst.Op == x86asm.ADD) && inst.Args[0] == x86asm.RSP:
				imm, ok := inst.Args[1].(x86asm.Imm)
				if !ok {
					t.Fatalf("%s: unexpected %v", fn.Name, inst)
				}
				if inst.Op == x86asm.SUB {
					want += int64(imm)
				} else {
					want -= int64(imm)
				}
			case inst.Op == x86asm.RET || inst.Op == x86asm.JMP || inst.Op == x86asm.UD2 || inst.Op == x86asm.INT:
				pc = fn.End // the fall-through path ends: the rest is reached by branches
				continue
			}
			pc += uint64(inst.Len)
		}
	}
	if checked < 20 {
		t.Fatalf("checked only %d instructions", checked)
	}
}

func TestParseErrors(t *testing.T) {
	for _, b := range [][]byte{nil, {1, 2, 3}, {0xf1, 0xff, 0xff, 0xff, 0, 0, 3, 8}, make([]byte, 64)} {
		if _, err := Parse(b, 0); !errors.Is(err, ErrFormat) {
			t.Errorf("Parse(% x) = %v, want ErrFormat", b, err)
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
