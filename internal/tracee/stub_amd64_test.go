package tracee

import (
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/arch/x86/x86asm"
)

// The return stub decodes to the intended instructions (it is also executed
// by every remote-call test); a parking one calls getpid first, and loads
// its data address again after the syscall, which loses r11.
func TestReturnStubDecodes(t *testing.T) {
	for _, tc := range []struct{ xsave, park bool }{{true, false}, {false, false}, {true, true}} {
		s := &callState{}
		s.resume.Rip = 0x401234
		s.fp.typ = fpRegSet
		if !tc.xsave {
			s.fp.typ = fpRegSetFallback
		}
		code := returnStub(0x7f0000001000, 0, s, tc.park)
		ops := decodeStub(t, code)
		fp := "xrstor64 ptr [r11+0xc0]"
		if !tc.xsave {
			fp = "fxrstor64 ptr [r11+0xc0]"
		}
		want := []string{"mov r11, 0x7f0000001000", "mov qword ptr [r11], rax"}
		if tc.park {
			want = append(want,
				"mov byte ptr [r11+0x9], 0x1", "mov eax, 0x27", "syscall", // parked; getpid
				"mov r11, 0x7f0000001000")
		}
		want = append(want, "mov eax, -0x1", "mov edx, -0x1", fp,
			"push qword ptr [r11+0x10]", "popfq",
			"mov rax, qword ptr [r11+0x18]", "mov rdx, qword ptr [r11+0x20]", "mov rcx, qword ptr [r11+0x28]",
			"mov rbx, qword ptr [r11+0x30]", "mov rsi, qword ptr [r11+0x38]", "mov rdi, qword ptr [r11+0x40]",
			"mov rbp, qword ptr [r11+0x48]", "mov r8, qword ptr [r11+0x58]", "mov r9, qword ptr [r11+0x60]",
			"mov r10, qword ptr [r11+0x68]", "mov r12, qword ptr [r11+0x78]", "mov r13, qword ptr [r11+0x80]",
			"mov r14, qword ptr [r11+0x88]", "mov r15, qword ptr [r11+0x90]", "mov rsp, qword ptr [r11+0x50]",
			"mov byte ptr [r11+0x8], 0x1", "mov r11, qword ptr [r11+0x70]", "jmp qword ptr [rip]",
		)
		require.Equal(t, len(want), len(ops), "%q", ops)
		for i := range want {
			require.Equal(t, strings.Join(strings.Fields(want[i]), " "), strings.Join(strings.Fields(ops[i]), " "), "instruction %d", i)
		}
		require.Equal(t, []byte{0x34, 0x12, 0x40, 0, 0, 0, 0, 0}, code[len(code)-8:])
	}
}

// resumeState restarts interrupted system calls as the kernel does.
func TestResumeState(t *testing.T) {
	neg := func(n int64) uint64 { return uint64(-n) }
	for _, c := range []struct {
		name             string
		rax, orig, rip   uint64
		wantRax, wantRip uint64
	}{
		{"not in a syscall", 5, ^uint64(0), 0x1000, 5, 0x1000},
		{"ERESTARTSYS", neg(512), 0, 0x1002, 0, 0x1000},
		{"ERESTARTNOINTR", neg(513), 7, 0x1002, 7, 0x1000},
		{"ERESTARTNOHAND", neg(514), 232, 0x1002, 232, 0x1000},
		{"ERESTART_RESTARTBLOCK", neg(516), 230, 0x1002, 219, 0x1000},
		{"EINTR is returned", neg(4), 0, 0x1002, neg(4), 0x1002},
		{"a finished syscall", 3, 0, 0x1002, 3, 0x1002},
	} {
		var r Regs
		r.Rax, r.Orig_rax, r.Rip = c.rax, c.orig, c.rip
		got := r.resumeState()
		require.Equal(t, c.wantRax, got.Rax, c.name)
		require.Equal(t, c.wantRip, got.Rip, c.name)
		require.Equal(t, ^uint64(0), got.Orig_rax, c.name)
	}
}

// checkEntrySP checks the stack pointer a callee saw at its entry on a
// thread whose stack pointer was threadSP: rsp+8 16-byte aligned (the call
// pushed the return address) and below the red zone.
func checkEntrySP(t *testing.T, tid int, sp, threadSP uint64) {
	t.Helper()
	require.Zero(t, (sp+8)%16, "thread %d: rsp+8 at entry %#x not 16-aligned", tid, sp)
	require.LessOrEqual(t, sp+8, threadSP-redZone, "thread %d: the call's stack overlaps the red zone", tid)
}

// resumeSyscall returns the system call a thread stopped at r executes when
// it is resumed (an interrupted one restarted, or restart_syscall), if any.
func resumeSyscall(p *Process, r Regs) (uint64, bool) {
	rs := r.resumeState()
	if int64(r.Orig_rax) < 0 || rs.Rip == r.Rip {
		return 0, false
	}
	return rs.Rax, true
}

// The system call stub decodes to the intended instructions: the system
// call, then immediates into rflags and every register (rsp last) and a
// jump to the interrupted pc; it reads and writes no memory but popfq's
// stack slot.
func TestSyscallStubDecodes(t *testing.T) {
	var r Regs
	vals := []*uint64{&r.Rax, &r.Rdx, &r.Rcx, &r.Rbx, &r.Rsi, &r.Rdi, &r.Rbp, &r.Rsp,
		&r.R8, &r.R9, &r.R10, &r.R11, &r.R12, &r.R13, &r.R14, &r.R15}
	for i, v := range vals {
		*v = 0x0101010101010101 * uint64(i+1)
	}
	r.Eflags = 0x246
	r.Rip = 0x401234
	code := syscallStub(0x7f0000001000, 0, &r)
	require.Len(t, code, syscallStubSize)
	ops := decodeStub(t, code)
	want := []string{"syscall", "push 0x246", "popfq"}
	names := []string{"rax", "rdx", "rcx", "rbx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15"}
	for i, n := range names {
		if n != "rsp" {
			want = append(want, fmt.Sprintf("mov %s, %#x", n, *vals[i]))
		}
	}
	want = append(want, fmt.Sprintf("mov rsp, %#x", r.Rsp), "jmp qword ptr [rip]")
	require.Equal(t, want, ops)
	require.Equal(t, []byte{0x34, 0x12, 0x40, 0, 0, 0, 0, 0}, code[len(code)-8:])
}

// decodeStub returns the instructions of a stub that ends in a jmp [rip]
// followed by the 8-byte interrupted pc, in Intel syntax.
func decodeStub(t *testing.T, code []byte) []string {
	t.Helper()
	var ops []string
	off := 0
	for off < len(code)-8 {
		in, err := x86asm.Decode(code[off:], 64)
		require.NoError(t, err, "at %d", off)
		ops = append(ops, strings.ToLower(x86asm.IntelSyntax(in, 0, nil)))
		off += in.Len
	}
	require.Equal(t, len(code)-8, off, "the interrupted pc follows the jump")
	return ops
}
