package unwind

import (
	"debug/elf"
	"strings"
	"testing"

	"github.com/hotpatch-dev/hotpatch/internal/fixture"
	"github.com/hotpatch-dev/hotpatch/internal/gopcln"
)

// goBinary opens the pclnwork fixture (built for the machine the test runs
// on) and returns an unwinder for it, its pclntab and its arch.
func goBinary(t *testing.T) (*Unwinder, *gopcln.Table, elf.Machine) {
	t.Helper()
	f, err := elf.Open(fixture.BuildGo(t, "pclnwork", ""))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	text := f.Section(".text")
	pcln, err := f.Section(".gopclntab").Data()
	if err != nil {
		t.Fatal(err)
	}
	tab, err := gopcln.Parse(pcln, text.Addr)
	if err != nil {
		t.Fatal(err)
	}
	arch := map[elf.Machine]Arch{elf.EM_X86_64: AMD64, elf.EM_AARCH64: ARM64}
	a, ok := arch[f.Machine]
	if !ok {
		t.Skipf("no unwinder arch for %v", f.Machine)
	}
	u := &Unwinder{Arch: a, Modules: []*Module{{Name: "pclnwork", Start: text.Addr, End: text.Addr + text.Size,
		Pclntab: pcln, GoTextStart: text.Addr}}}
	return u, tab, f.Machine
}

func fn(t *testing.T, tab *gopcln.Table, name string) *gopcln.Func {
	for i := range tab.Funcs() {
		if f := &tab.Funcs()[i]; f.Name == name {
			return f
		}
	}
	t.Fatalf("no %s", name)
	return nil
}

// framed returns the first pc of f with the largest sp delta (inside the
// body, after the prologue) and that delta.
func framed(t *testing.T, tab *gopcln.Table, f *gopcln.Func) (uint64, int64) {
	var best uint64
	var max int64
	for pc := f.Entry; pc < f.End; pc++ {
		d, err := tab.SPDelta(f, pc)
		if err != nil {
			break // the padding after the function's code
		}
		if d > max {
			best, max = pc, d
		}
	}
	if max == 0 {
		t.Fatalf("%s has no frame", f.Name)
	}
	return best, max
}

// A Go stack main.work < main.main < runtime.goexit, laid out in memory the
// way the arch's calls and prologues lay it out, unwinds to the goroutine
// root from main.work's entry (no frame yet: on arm64 the return address is
// still in LR) and from its body (on arm64 LR was stored at 0(RSP)).
func TestGoFrames(t *testing.T) {
	u, tab, _ := goBinary(t)
	a := u.Arch
	work, main, goexit := fn(t, tab, "main.work"), fn(t, tab, "main.main"), fn(t, tab, "runtime.goexit")
	mainPC, mainDelta := framed(t, tab, main)
	workPC, workDelta := framed(t, tab, work)
	retMain := mainPC + 1 // a return address: the unwinder looks up ret-1
	retGoexit := goexit.Entry + 4
	regs := func(pc, sp, lr uint64) []uint64 {
		r := make([]uint64, a.RAReg+1)
		r[a.SPReg], r[a.RAReg] = sp, pc
		if a.LinkRegister {
			r[a.LRReg] = lr
		}
		return r
	}
	const sp0 = 0x7000_0000
	tests := []struct {
		name      string
		pc        uint64
		workDelta int64
	}{
		{"entry", work.Entry, 0},
		{"body", workPC, workDelta},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			mem := fakeMem{}
			lr := uint64(0xdead0000) // must not be used once LR is on the stack
			var sp1 uint64           // main.main's sp
			switch {
			case !a.LinkRegister:
				mem[sp0+uint64(tt.workDelta)] = retMain
				sp1 = sp0 + uint64(tt.workDelta) + 8
			case tt.workDelta == 0:
				lr, sp1 = retMain, sp0
			default:
				mem[sp0] = retMain
				sp1 = sp0 + uint64(tt.workDelta)
			}
			if a.LinkRegister {
				mem[sp1] = retGoexit
			} else {
				mem[sp1+uint64(mainDelta)] = retGoexit
			}
			s := u.Unwind(mem, regs(tt.pc, sp0, lr))
			if !s.Reliable || !strings.Contains(s.Reason, "runtime.goexit") {
				t.Fatalf("stack %+v: reliable=%v %s", s.Frames, s.Reliable, s.Reason)
			}
			if len(s.Frames) != 3 || s.Frames[0].PC != tt.pc || s.Frames[1].PC != retMain || s.Frames[2].PC != retGoexit ||
				s.Frames[1].SP != sp1 {
				t.Fatalf("frames %+v, want pcs %#x %#x %#x, main.main sp %#x", s.Frames, tt.pc, retMain, retGoexit, sp1)
			}
		})
	}
	// Above the innermost frame a function without a frame cannot have
	// made a call; on arm64 the LR it would return to is unknown.
	if a.LinkRegister {
		mem := fakeMem{sp0: work.Entry + 1}
		s := u.Unwind(mem, regs(workPC, sp0, 0xdead0000))
		if s.Reliable {
			t.Fatalf("a caller frame with sp delta 0 unwound reliably: %+v", s.Frames)
		}
	}
	// A zero return address is never a stack's end.
	s := u.Unwind(fakeMem{sp0: 0, sp0 + uint64(workDelta): 0}, regs(workPC, sp0, 0))
	if s.Reliable {
		t.Fatalf("zero return address unwound reliably: %+v", s.Frames)
	}
}

// runtime.mcall ends a walk only where the function it called on the
// system stack returns to it. A thread stopped inside mcall itself may still
// be on the goroutine's stack, before its state is saved in the g: that walk
// must not end there as if complete (the goroutine's own frames, gopark and
// its callers, would be hidden), it is a stack switch.
func TestGoMcallRoot(t *testing.T) {
	u, tab, _ := goBinary(t)
	a := u.Arch
	mcall, work := fn(t, tab, "runtime.mcall"), fn(t, tab, "main.work")
	const sp0 = 0x7000_0000
	for _, pc := range []uint64{mcall.Entry, mcall.Entry + 4, (mcall.Entry + mcall.End) / 2 &^ 3} {
		r := make([]uint64, a.RAReg+1)
		r[a.SPReg], r[a.RAReg] = sp0, pc
		s := u.Unwind(fakeMem{}, r)
		if s.Reliable || s.SwitchedAt != "runtime.mcall" {
			t.Fatalf("stopped in mcall at %#x: reliable=%v switched at %q (%s)", pc, s.Reliable, s.SwitchedAt, s.Reason)
		}
	}
	// fn(g) on g0, called by mcall: mcall is the root of the system stack.
	workPC, workDelta := framed(t, tab, work)
	ret := mcall.Entry + 8
	mem := fakeMem{}
	if a.LinkRegister {
		mem[sp0] = ret
	} else {
		mem[sp0+uint64(workDelta)] = ret
	}
	r := make([]uint64, a.RAReg+1)
	r[a.SPReg], r[a.RAReg] = sp0, workPC
	s := u.Unwind(mem, r)
	if !s.Reliable || !strings.Contains(s.Reason, "runtime.mcall") || len(s.Frames) != 2 {
		t.Fatalf("returned to by mcall: reliable=%v frames %+v (%s)", s.Reliable, s.Frames, s.Reason)
	}
}
