package tracee

import (
	"encoding/binary"
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/arch/arm64/arm64asm"
)

// The return stub decodes to the intended instructions, uses only x0, x1,
// x8, x16, x17 (all reloaded by rt_sigreturn) and sp, and ends in svc #0 with x8 = 139 (rt_sigreturn) and sp at the
// signal frame (it is also executed by every remote-call test).
func TestReturnStubDecodes(t *testing.T) {
	const data, store = 0x0000ffff12345000, 0x0000aaaa56789008
	for _, tc := range []struct {
		restart, park bool
		store         uint64
	}{{false, false, 0}, {true, false, 0}, {false, false, store}, {false, true, 0}} {
		restart := tc.restart
		code := returnStub(data, tc.store, &callState{restart: restart}, tc.park)
		var ops []string
		for off := 0; off < len(code); off += 4 {
			in, err := arm64asm.Decode(code[off:])
			require.NoError(t, err, "at %d", off)
			ops = append(ops, arm64asm.GNUSyntax(in))
			for _, a := range in.Args {
				if a == nil {
					break
				}
				s := a.String()
				for r := 0; r <= 30; r++ {
					if r == 0 || r == 1 || r == 8 || r == 16 || r == 17 {
						continue
					}
					for _, name := range []string{fmt.Sprintf("X%d", r), fmt.Sprintf("W%d", r)} {
						require.False(t, s == name || strings.HasPrefix(s, "["+name) || strings.HasPrefix(s, name+","),
							"instruction %d (%s) uses %s", off/4, arm64asm.GNUSyntax(in), name)
					}
				}
			}
		}
		var want []string
		if tc.store != 0 {
			// The result at store first (CallStore).
			want = append(want, "mov x17, #0x9008", "movk x17, #0x5678, lsl #16", "movk x17, #0xaaaa, lsl #32", "movk x17, #0x0, lsl #48",
				"str x0, [x17]")
		}
		want = append(want,
			"mov x16, #0x5000", "movk x16, #0x1234, lsl #16", "movk x16, #0xffff, lsl #32", "movk x16, #0x0, lsl #48",
			"str x0, [x16]",
		)
		if tc.park {
			want = append(want,
				"mov x1, #0x1", "strb w1, [x16,#9]", // parked
				"mov x8, #0xac", "svc #0x0", // getpid
			)
		}
		want = append(want,
			"add x17, x16, #0x4, lsl #12",
			"mov x0, #0x0", "add x1, x17, #0x90", "mov x8, #0x84", "svc #0x0", // sigaltstack(NULL, &uc_stack)
			"mov x0, #0x1", "str x0, [x16,#8]", // done
		)
		if restart {
			want = append(want, "mov x8, #0x80", "svc #0x0", "str x0, [x17,#312]") // restart_syscall; frame x0
		}
		want = append(want, "mov x8, #0x8b", "mov sp, x17", "svc #0x0") // rt_sigreturn
		require.Equal(t, want, ops, "restart=%v", restart)
	}
}

// The signal frame holds the resume state where the kernel's struct
// rt_sigframe has it, a well-formed record list (one fpsimd_context, then
// the terminator) and the signal mask; the thread's x0 and pc are the
// restarted call's when the stub finishes a restart_syscall.
func TestSigframe(t *testing.T) {
	for _, restart := range []bool{false, true} {
		s := &callState{restart: restart, sigmask: 0x0000_0800_0000_0200}
		for i := range s.resume.Regs {
			s.resume.Regs[i] = 0x1000 + uint64(i)
		}
		s.resume.Sp, s.resume.Pc, s.resume.Pstate = 0xfff0, 0x400100, 0x60001000
		s.fp.data = make([]byte, 528)
		for i := range s.fp.data {
			s.fp.data[i] = byte(i)
		}
		b := ctxData(s)
		require.Len(t, b, ctxFrame+sfSize)
		f := b[ctxFrame:]
		le := binary.LittleEndian
		require.Zero(t, ctxFrame%16, "sp must be 16-aligned at rt_sigreturn")
		for i := 0; i < 31; i++ {
			require.Equal(t, 0x1000+uint64(i), le.Uint64(f[312+8*i:]), "x%d", i)
		}
		require.Equal(t, uint64(0xfff0), le.Uint64(f[560:]))
		pc := uint64(0x400100)
		if restart {
			pc += 4
		}
		require.Equal(t, pc, le.Uint64(f[568:]))
		require.Equal(t, uint64(0x60001000), le.Uint64(f[576:]))
		require.Equal(t, s.sigmask, le.Uint64(f[168:]))
		require.Equal(t, make([]byte, 24), f[144:168], "uc_stack: filled by the stub")
		rec := f[592:]
		require.Equal(t, uint32(0x46508001), le.Uint32(rec))
		require.Equal(t, uint32(528), le.Uint32(rec[4:]))
		require.Equal(t, s.fp.data[512:520], rec[8:16], "fpsr, fpcr")
		require.Equal(t, s.fp.data[:512], rec[16:528], "v0-v31")
		require.Equal(t, make([]byte, 8), rec[528:536], "terminator")
	}
}

// resumeState on arm64 only forgets the system call number: the kernel has
// rewound an interrupted call before the stop (x0 = orig_x0, pc = the svc),
// and x8 holds the call to run — the interrupted one, or restart_syscall.
func TestResumeState(t *testing.T) {
	for _, c := range []struct {
		name      string
		x0, x8    uint64
		pc        uint64
		syscallno int32
	}{
		{"user code", 5, 17, 0x1000, -1},
		{"read rewound (-ERESTARTSYS)", 0, 63, 0x1000, -1},
		{"clock_nanosleep rewound (-ERESTART_RESTARTBLOCK, first stop)", 0, 115, 0x1000, -1},
		{"inside restart_syscall", 0, 128, 0x1000, -1},
		{"a syscall stop (not one of ours)", 3, 63, 0x1004, 63},
	} {
		var r Regs
		r.Regs[0], r.Regs[8], r.Pc, r.Syscallno = c.x0, c.x8, c.pc, c.syscallno
		got := r.resumeState()
		want := r
		want.Syscallno = -1
		require.Equal(t, want, got, c.name)
	}
}

// checkEntrySP checks the stack pointer a callee saw at its entry on a
// thread whose stack pointer was threadSP: 16-byte aligned (AAPCS64) and
// at or below the thread's.
func checkEntrySP(t *testing.T, tid int, sp, threadSP uint64) {
	t.Helper()
	require.Zero(t, sp%16, "thread %d: sp at entry %#x not 16-aligned", tid, sp)
	require.LessOrEqual(t, sp, threadSP-redZone, "thread %d: the call's stack %#x is above the thread's sp %#x", tid, sp, threadSP)
}

// resumeSyscall returns the system call a thread stopped at r executes when
// it is resumed (an interrupted one restarted, or restart_syscall), if any:
// the kernel has rewound pc to the svc, and x8 holds its number.
func resumeSyscall(p *Process, r Regs) (uint64, bool) {
	var insn [4]byte
	if n, _ := p.ReadAt(insn[:], int64(r.Pc)); n != len(insn) || [4]byte(syscallInsn) != insn {
		return 0, false
	}
	return r.Regs[8], true
}

// The system call stub decodes to the intended instructions: svc, then
// sp, the NZCV flags and every register loaded from the data that follows
// the code (x16, the base, last) and a direct branch to the interrupted pc
// — or, with a hop, x16 loaded with the hop's address (in x16's slot) and
// br x16.
func TestSyscallStubDecodes(t *testing.T) {
	var r Regs
	for i := range r.Regs {
		r.Regs[i] = 0x0101010101010101 * uint64(i+1)
	}
	r.Sp = 0xfffffffff000
	r.Pstate = 0x60001000
	const at = 0x0000ffff12345000
	r.Pc = at - 0x100000
	for _, hop := range []uint64{0, 0x0000aaaa00001230} {
		code := syscallStub(at, hop, &r)
		require.Len(t, code, syscallStubSize)
		var ops []string
		for off := 0; off < ssCode-4; off += 4 {
			in, err := arm64asm.Decode(code[off:])
			require.NoError(t, err, "at %d", off)
			ops = append(ops, arm64asm.GNUSyntax(in))
		}
		want := []string{"svc #0x0", fmt.Sprintf("adr x16, .+%#x", ssRegs-4),
			"ldr x17, [x16,#248]", "mov sp, x17", "ldr x17, [x16,#256]", "msr s3_3_c4_c2_0, x17"} // msr nzcv, x17
		for i := 0; i < 31; i += 2 {
			switch i {
			case 0:
				want = append(want, "ldp x0, x1, [x16]")
			case 16:
				i--
			default:
				want = append(want, fmt.Sprintf("ldp x%d, x%d, [x16,#%d]", i, i+1, 8*i))
			}
		}
		want = append(want, "ldr x16, [x16,#128]")
		x16 := r.Regs[16]
		if hop != 0 {
			want = append(want, "br x16")
			x16 = hop
		} else {
			want = append(want, fmt.Sprintf("b .+%#x", uint64(int64(r.Pc)-int64(at+88))))
		}
		require.Equal(t, want, ops, "hop %#x", hop)
		le := binary.LittleEndian
		for i, v := range r.Regs {
			if i == 16 {
				v = x16
			}
			require.Equal(t, v, le.Uint64(code[ssRegs+8*i:]), "x%d", i)
		}
		require.Equal(t, r.Sp, le.Uint64(code[ssSP:]))
		require.Equal(t, r.Pstate, le.Uint64(code[ssNZCV:]))
	}
}

// The hop a far stub returns through decodes to a landing pad, the load
// of x16 from its literal and a direct branch to the interrupted pc, which
// lies behind or ahead of it.
func TestSyscallHopDecodes(t *testing.T) {
	const at = 0x0000aaaa00001230
	for _, pc := range []uint64{at - 0x7f00000, at + 0x400, at + 8} {
		var r Regs
		r.Pc = pc
		r.Regs[16] = 0x1122334455667788
		code := syscallHop(at, &r)
		require.Len(t, code, syscallHopSize)
		var ops []string
		for off := 0; off < 16; off += 4 {
			in, err := arm64asm.Decode(code[off:])
			require.NoError(t, err, "at %d", off)
			ops = append(ops, strings.TrimSpace(arm64asm.GNUSyntax(in)))
		}
		// hint #38 is bti jc (d50324df, as GNU as assembles it).
		want := []string{"hint #0x26", "ldr x16, .+0xc", fmt.Sprintf("b .+%#x", uint64(int64(pc)-int64(at+8))), "nop"}
		require.Equal(t, want, ops, "pc %#x", pc)
		require.Equal(t, r.Regs[16], binary.LittleEndian.Uint64(code[16:]))
	}
}
