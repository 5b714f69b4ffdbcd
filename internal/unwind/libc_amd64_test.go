package unwind

import (
	"debug/elf"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/hotpatch-dev/hotpatch/internal/cfi"
)

// libcModule returns the machine's libc.so.6 as a module at bias 0, with
// its .eh_frame and .eh_frame_hdr.
func libcModule(t testing.TB) (*Module, *cfi.Table) {
	t.Helper()
	out, err := exec.Command("gcc", "-print-file-name=libc.so.6").Output()
	require.NoError(t, err)
	path, _ := filepath.EvalSymlinks(strings.TrimSpace(string(out)))
	f, err := elf.Open(path)
	if err != nil {
		t.Skipf("libc: %v", err)
	}
	defer f.Close()
	m := &Module{Name: path}
	for _, p := range f.Progs {
		if p.Type == elf.PT_LOAD && p.Flags&elf.PF_X != 0 {
			m.Start, m.End = p.Vaddr, p.Vaddr+p.Memsz
		}
	}
	eh, hdr := f.Section(".eh_frame"), f.Section(".eh_frame_hdr")
	require.NotNil(t, eh)
	require.NotNil(t, hdr)
	m.EHFrame, _ = eh.Data()
	m.EHFrameAddr = eh.Addr
	m.EHFrameHdr, _ = hdr.Data()
	m.EHFrameHdrAddr = hdr.Addr
	_, tab, err := m.tables(AMD64)
	require.NoError(t, err)
	require.True(t, tab.HasHdr(), "libc's lookups go through .eh_frame_hdr")
	return m, tab
}

// findFDE returns the first FDE of tab whose entry row satisfies pred.
func findFDE(t testing.TB, tab *cfi.Table, pred func(cfi.Row) bool) [2]uint64 {
	t.Helper()
	for _, r := range tab.FuncRanges() {
		row, ok, err := tab.RowAt(r[0])
		if ok && err == nil && pred(row) {
			return r
		}
	}
	t.Fatal("no such FDE")
	return [2]uint64{}
}

// normalFunc returns the start of a libc function whose entry row is the
// plain CFA=rsp+8, RA at CFA-8, after skip such functions.
func normalFunc(t testing.TB, tab *cfi.Table, skip int) uint64 {
	r := findFDE(t, tab, func(row cfi.Row) bool {
		ra := row.Regs[16]
		if row.CFA.Expr == nil && row.CFA.Reg == 7 && row.CFA.Offset == 8 && ra.Kind == cfi.RuleOffset && ra.Offset == -8 && !row.Signal {
			skip--
			return skip < 0
		}
		return false
	})
	return r[0]
}

// The kernel's x86-64 rt_sigframe, as the stack pointer is when the handler
// returns into __restore_rt: struct ucontext (uc_flags, uc_link, uc_stack:
// 40 bytes) then struct sigcontext (r8..r15, rdi, rsi, rbp, rbx, rdx, rax,
// rcx, rsp, rip). This layout is the kernel ABI; the unwinder must get it
// from libc's CFI for __restore_rt, and this test checks that it does.
var sigcontextOff = map[string]uint64{
	"r8": 40, "r12": 72, "rdi": 104, "rbp": 120, "rbx": 128, "rax": 144, "rsp": 160, "rip": 168,
}

// A captured stack through a signal frame: handler returned into
// __restore_rt; the interrupted pc is the first byte of a function (so a
// pc-1 lookup would find the wrong FDE) and the interrupted frame unwinds
// with the registers the signal frame restored.
func TestSignalFrameLibc(t *testing.T) {
	m, tab := libcModule(t)
	sig := findFDE(t, tab, func(row cfi.Row) bool { return row.Signal })
	restoreRT := sig[0] + 1 // glibc starts the FDE one byte early, at a nop
	interrupted := normalFunc(t, tab, 10)
	const sp = 0x7000_0000
	const isp = 0x7100_0000 // the interrupted frame's stack pointer
	caller := normalFunc(t, tab, 20) + 5
	mem := fakeMem{
		sp + sigcontextOff["rsp"]: isp,
		sp + sigcontextOff["rip"]: interrupted,
		sp + sigcontextOff["rbx"]: 0xb0b0,
		sp + sigcontextOff["rbp"]: 0xbeef,
		sp + sigcontextOff["r12"]: 0x1212,
		sp + sigcontextOff["rax"]: 0xaaaa,
		sp + sigcontextOff["r8"]:  0x8888,
		sp + sigcontextOff["rdi"]: 0xd1d1,
		isp:                       caller,
	}
	for a := uint64(sp); a < sp+256; a += 8 {
		if _, ok := mem[a]; !ok {
			mem[a] = 0
		}
	}
	u := &Unwinder{Arch: AMD64, Modules: []*Module{m}}
	regs := make([]uint64, 17)
	regs[7], regs[16] = sp, restoreRT
	s := u.Unwind(mem, regs)
	require.GreaterOrEqual(t, len(s.Frames), 3, "%+v", s)
	require.True(t, s.Frames[0].Signal, "frame 0 is the signal trampoline")
	require.Equal(t, uint64(isp), s.Frames[0].CFA)
	require.Equal(t, interrupted, s.Frames[1].PC, "the interrupted pc, exactly")
	require.Equal(t, uint64(isp), s.Frames[1].SP)
	require.Equal(t, "cfi", s.Frames[1].Method, "the interrupted function's own FDE (pc, not pc-1) unwound it")
	require.Equal(t, uint64(isp+8), s.Frames[1].CFA)
	require.Equal(t, caller, s.Frames[2].PC)

	// Without the pc-1 rule for the frame above a signal frame, the lookup
	// would land in the previous FDE or none: check the FDE really starts
	// at the interrupted pc.
	row, ok, err := tab.RowAt(interrupted)
	require.True(t, ok)
	require.NoError(t, err)
	require.Equal(t, interrupted, row.FuncStart)
}

// The registers a signal frame restores are the interrupted ones, all of
// them (not only callee-saved).
func TestSignalFrameRestoresRegisters(t *testing.T) {
	_, tab := libcModule(t)
	sig := findFDE(t, tab, func(row cfi.Row) bool { return row.Signal })
	row, _, err := tab.RowAt(sig[0] + 1)
	require.NoError(t, err)
	const sp = 0x7000_0000
	mem := fakeMem{}
	for a := uint64(sp); a < sp+256; a += 8 {
		mem[a] = a - sp // each slot holds its offset
	}
	mach := cfi.Machine{Reg: func(n int) (uint64, bool) { return sp, n == 7 }, Mem: func(a uint64, _ int) (uint64, error) { return mem[a], nil }, PtrSize: 8}
	cfa, err := cfi.Eval(row.CFA.Expr, mach)
	require.NoError(t, err)
	require.Equal(t, sigcontextOff["rsp"], cfa, "CFA = saved rsp")
	for _, reg := range []struct {
		dwarf int
		name  string
	}{{0, "rax"}, {3, "rbx"}, {5, "rdi"}, {6, "rbp"}, {7, "rsp"}, {8, "r8"}, {12, "r12"}, {16, "rip"}} {
		rule := row.Regs[reg.dwarf]
		require.Equal(t, cfi.RuleExpression, rule.Kind, reg.name)
		addr, err := cfi.Eval(rule.Expr, mach, cfa)
		require.NoError(t, err)
		require.Equal(t, sp+sigcontextOff[reg.name], addr, reg.name)
	}
}

// glibc's .plt FDE gives the CFA as an expression of rsp and rip: rsp+8
// before an entry's push, rsp+16 after it (rip&15 >= 11).
func TestPLTLibc(t *testing.T) {
	m, tab := libcModule(t)
	// PLT0 (16 bytes) has plain rows; the entries after it share the
	// expression.
	var entry uint64
	for _, r := range tab.FuncRanges() {
		if r[1]-r[0] < 48 {
			continue
		}
		row, ok, err := tab.RowAt(r[0] + 16)
		if ok && err == nil && row.CFA.Expr != nil && !row.Signal {
			entry = r[0] + 16
			break
		}
	}
	require.NotZero(t, entry, "libc has a .plt FDE with a CFA expression")
	const sp = 0x7000_0000
	caller := normalFunc(t, tab, 5) + 7
	for _, c := range []struct {
		off uint64
		cfa uint64
	}{{0, sp + 8}, {6, sp + 8}, {11, sp + 16}} {
		mem := fakeMem{sp: caller, sp + 8: caller}
		u := &Unwinder{Arch: AMD64, Modules: []*Module{m}}
		regs := make([]uint64, 17)
		regs[7], regs[16] = sp, entry+c.off
		s := u.Unwind(mem, regs)
		require.GreaterOrEqual(t, len(s.Frames), 2, "%+v", s)
		require.Equal(t, c.cfa, s.Frames[0].CFA, "pc %#x", entry+c.off)
		require.Equal(t, caller, s.Frames[1].PC)
	}
}

// A pc without CFI ends the walk as unreliable.
func TestNoCFIUnreliable(t *testing.T) {
	m, _ := libcModule(t)
	u := &Unwinder{Arch: AMD64, Modules: []*Module{m}}
	regs := make([]uint64, 17)
	regs[7], regs[16] = 0x7000_0000, m.End+0x1000
	s := u.Unwind(fakeMem{}, regs)
	require.False(t, s.Reliable)
	require.Contains(t, s.Reason, "no module maps")
}
