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
	return goBinaryOf(t, fixture.BuildGo(t, "pclnwork", ""))
}

// goBinaryFor is goBinary for the pclnwork fixture built for goarch.
func goBinaryFor(t *testing.T, goarch string) (*Unwinder, *gopcln.Table) {
	t.Helper()
	u, tab, _ := goBinaryOf(t, fixture.BuildGoArch(t, "pclnwork", "", goarch))
	return u, tab
}

func goBinaryOf(t testing.TB, bin string) (*Unwinder, *gopcln.Table, elf.Machine) {
	t.Helper()
	f, err := elf.Open(bin)
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

func fn(t testing.TB, tab *gopcln.Table, name string) *gopcln.Func {
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
func framed(t testing.TB, tab *gopcln.Table, f *gopcln.Func) (uint64, int64) {
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

func TestARM64LeafOnly(t *testing.T) {
	// The arm64 vDSO's clock_gettime: PAC-signed LR, no frame, a system
	// call, reads through SP.
	vdso := []uint32{0xd503233f, 0x71003c1f, 0x540005e8, 0x10fee8c3, 0xb9400067, 0x37000567, 0xd50339bf,
		0xd5033fdf, 0xd53be042, 0xca020044, 0x8b2463e4, 0xf940009f, 0xa940a86b, 0x9b052400, 0xa9000026,
		0xd2800e28, 0xd4000001, 0xd50323bf, 0xd65f03c0, 0}
	words := func(ws ...uint32) []byte {
		b := make([]byte, 4*len(ws))
		for i, w := range ws {
			b[4*i], b[4*i+1], b[4*i+2], b[4*i+3] = byte(w), byte(w>>8), byte(w>>16), byte(w>>24)
		}
		return b
	}
	for _, tt := range []struct {
		name string
		insn uint32
		leaf bool
	}{
		{"nothing more", 0xd503201f, true},
		{"stp x29, x30, [sp, #-16]!", 0xa9bf7bfd, false},
		{"mov x29, sp", 0x910003fd, false},
		{"sub sp, sp, #16", 0xd10043ff, false},
		{"ldp x29, x30, [sp], #16", 0xa8c17bfd, false},
		{"ldp x0, x30, [x1]", 0xa9407820, false},
		{"mov x30, x0", 0xaa0003fe, false},
		{"bl", 0x94000000, false},
		{"blr x1", 0xd63f0020, false},
		{"str x0, [sp, #8]", 0xf90007e0, true},
		{"str x0, [sp, #-16]!", 0xf81f0fe0, false},
		{"undecodable", 0xffffffff, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			code := append(words(vdso...), words(tt.insn)...)
			if got := arm64LeafOnly(code); got != tt.leaf {
				t.Fatalf("leaf = %v, want %v", got, tt.leaf)
			}
		})
	}
}

// A thread stopped in frameless leaf code without unwind tables (the arm64
// vDSO) returns to its LR, signed or not, and the walk goes on through the
// Go caller to the goroutine's root; above the innermost frame such code
// cannot be crossed (LR is unknown there).
func TestARM64LeafModule(t *testing.T) {
	u, tab, _ := goBinary(t)
	if !u.Arch.LinkRegister {
		u, tab = goBinaryFor(t, "arm64")
	}
	main, goexit := fn(t, tab, "main.main"), fn(t, tab, "runtime.goexit")
	mainPC, mainDelta := framed(t, tab, main)
	retMain, retGoexit := mainPC+4, goexit.Entry+4
	const leafAt = 0x10_0000
	leaf := &Module{Name: "[vdso]", Start: leafAt, End: leafAt + 16, Code: []CodeRange{{Addr: leafAt,
		Bytes: []byte{0x3f, 0x23, 0x03, 0xd5, 0x1f, 0x20, 0x03, 0xd5, 0xbf, 0x23, 0x03, 0xd5, 0xc0, 0x03, 0x5f, 0xd6}}}}
	u.Modules = append(u.Modules, leaf)
	a := u.Arch
	const sp1 = 0x7000_0000 // main.main's sp: LR saved at 0(RSP)
	mem := fakeMem{sp1: retGoexit}
	for _, lr := range []uint64{retMain, retMain | 0x003a_0000_0000_0000} {
		r := make([]uint64, a.RAReg+1)
		r[a.SPReg], r[a.RAReg], r[a.LRReg] = sp1, leafAt+4, lr
		s := u.Unwind(mem, r)
		if !s.Reliable || len(s.Frames) != 3 || s.Frames[1].PC != retMain || s.Frames[2].PC != retGoexit || s.Frames[0].Method != "leaf" {
			t.Fatalf("lr %#x: reliable=%v %s frames %+v (main.main delta %d)", lr, s.Reliable, s.Reason, s.Frames, mainDelta)
		}
	}
	// Not the innermost frame: a return address into leaf code.
	r := make([]uint64, a.RAReg+1)
	workPC, _ := framed(t, tab, fn(t, tab, "main.work"))
	r[a.SPReg], r[a.RAReg] = sp1, workPC
	s := u.Unwind(fakeMem{sp1: leafAt + 8}, r)
	if s.Reliable {
		t.Fatalf("crossed leaf code above the innermost frame: %+v", s.Frames)
	}
}

// An arm64 thread stopped inside runtime.sigtramp (the kernel entered it
// with LR = its sigreturn trampoline and SP at the rt_sigframe) is walked
// through the frame's saved registers into the interrupted goroutine, down
// to runtime.goexit; a return address that is not the sigreturn code is
// refused. The stack is laid out from the arm64 binary's pclntab.
func TestARM64GoSignalFrame(t *testing.T) {
	u, tab := goBinaryFor(t, "arm64")
	a := u.Arch
	sigtramp, work, main, goexit := fn(t, tab, "runtime.sigtramp"), fn(t, tab, "main.work"), fn(t, tab, "main.main"), fn(t, tab, "runtime.goexit")
	pc0, delta := framed(t, tab, sigtramp)
	mainPC, _ := framed(t, tab, main)
	retMain, retGoexit := mainPC+4, goexit.Entry+4
	const sigret = 0x10_0000 // the vDSO's __kernel_rt_sigreturn
	const sp0 = 0x7000_0000
	frame := sp0 + uint64(delta) // sigtramp's entry SP: the rt_sigframe
	const gsp = 0x7100_0000      // the goroutine's stack: main.main's frame
	mem := fakeMem{sigret: 0xd4000001_d2801168, sp0: sigret, gsp: retGoexit}
	regs := frame + 128 + 176 + 8 // uc_mcontext.regs: x0-x30, sp, pc
	for i := uint64(0); i < 33; i++ {
		mem[regs+8*i] = 0
	}
	mem[regs+8*30] = retMain    // x30: main.work has not stored LR yet
	mem[regs+8*31] = gsp        // sp
	mem[regs+8*32] = work.Entry // pc: interrupted at main.work's entry
	r := make([]uint64, a.RAReg+1)
	r[a.SPReg], r[a.RAReg] = sp0, pc0
	s := u.Unwind(mem, r)
	if !s.Reliable || len(s.Frames) != 4 || s.Frames[1].PC != work.Entry || s.Frames[2].PC != retMain || s.Frames[3].PC != retGoexit {
		t.Fatalf("reliable=%v %s frames %+v", s.Reliable, s.Reason, s.Frames)
	}
	if s.Frames[0].Method != "signal" {
		t.Fatalf("sigtramp's frame method %q", s.Frames[0].Method)
	}
	mem[sp0] = retMain // not the sigreturn code
	if s := u.Unwind(mem, r); s.Reliable || !strings.Contains(s.Reason, "signal return trampoline") {
		t.Fatalf("a bad return address above sigtramp: reliable=%v %s", s.Reliable, s.Reason)
	}
}
