package tracee

// The arm64 half of remote calls (call.go; call_amd64.go lists the names
// each arch provides).
//
// AAPCS64: arguments in x0-x7, the result in x0, the return address in x30.
// arm64 has no jump to an arbitrary address that leaves every register
// intact, so the return stub gives the thread back its state with
// rt_sigreturn, from a signal frame (struct rt_sigframe) prepared in the
// call's data mapping: the kernel reloads x0-x30, sp, pc, pstate, the
// FP/SIMD registers, the signal mask and the alternate signal stack from
// it, and a tracer killed mid-call leaves a thread that still restores
// itself.

import (
	"encoding/binary"
	"fmt"

	"golang.org/x/sys/unix"
)

// redZone: AAPCS64 has none; nothing below sp may be live (a signal handler
// could overwrite it at any time).
const redZone = 0

// callMargin is left free below the thread's stack pointer anyway: it costs
// nothing and spares code that (wrongly) keeps data just below sp.
const callMargin = 128

// fpRegSet is the FP/SIMD regset (user_fpsimd_state: v0-v31, fpsr, fpcr);
// arm64 has no fallback.
const (
	fpRegSet         = unix.NT_PRFPREG
	fpRegSetFallback = unix.NT_PRFPREG
)

// maxCallArgs is the number of integer arguments passed in registers.
const maxCallArgs = 8

// callStack returns the callee's stack pointer for a thread whose stack
// pointer is sp: below the margin, 16-byte aligned (AAPCS64 requires it at
// every public interface, and the CPU checks it on each sp-based access).
// Nothing is pushed: the return address goes in x30.
func callStack(sp, ret uint64) (uint64, []byte) {
	return (sp - callMargin) &^ 15, nil
}

// pstateBTYPE is PSTATE.BTYPE, the branch type a BTI landing pad checks.
const pstateBTYPE = 3 << 10

// setupCall makes r call fn(args...) with the stack pointer sp and the
// return address ret (x30). Syscallno = -1 keeps the kernel's
// syscall-restart logic away from these registers. BTYPE is cleared: a
// thread stopped just after an indirect branch has it set, and fn's first
// instruction in a guarded (PROT_BTI) page would then have to be a
// matching landing pad; with BTYPE 0 any instruction may come first. The
// stub's rt_sigreturn puts the thread's own pstate back.
func (r *Regs) setupCall(fn, sp, ret uint64, args []uint64) {
	r.Pc = fn
	r.Sp = sp
	r.Regs[30] = ret
	r.Syscallno = -1
	r.Pstate &^= pstateBTYPE
	for i, a := range args {
		r.Regs[i] = a
	}
}

// callResult is the integer return value register.
func (r *Regs) callResult() uint64 { return r.Regs[0] }

// sysRestartSyscall is restart_syscall, the call the kernel runs instead of
// one that returned -ERESTART_RESTARTBLOCK (asm-generic unistd).
const sysRestartSyscall = 128

// resumeState is where a thread stopped at regs continues when the kernel
// resumes it without running a signal handler. On arm64 the kernel has
// already rewound an interrupted system call before the thread entered its
// ptrace stop (do_signal: x0 = orig_x0, pc = the svc, syscallno forgotten),
// so the registers at the stop are the resume state: x8 still holds the
// call's number, and it runs again from its first argument. Two cases
// differ from what the kernel itself would have done:
//
//   - A call interrupted with -ERESTART_RESTARTBLOCK (nanosleep, a futex
//     wait with a timeout) would have been continued through
//     restart_syscall, which the kernel only puts in x8 after the stop, and
//     only if the tracer left pc alone. Once the call has moved pc that
//     choice is gone: the original call runs again with its original
//     arguments, so a relative sleep or timeout starts over (it lasts
//     longer, never shorter, and never fails with EINTR).
//   - A thread already continuing through restart_syscall (x8 = 128: it was
//     stopped, resumed and stopped again inside it) needs its restart
//     block, which rt_sigreturn resets: archPrepare marks it, and the stub
//     runs restart_syscall itself (see returnStub).
func (r *Regs) resumeState() Regs {
	out := *r
	out.Syscallno = -1
	return out
}

// sveHeaderFlags and svePTRegsSVE: user_sve_header.flags (u16 at byte 12)
// and SVE_PT_REGS_SVE, set when the regset holds live SVE (or streaming
// SVE) registers rather than just the FP/SIMD view of them.
const (
	sveHeaderFlags = 12
	svePTRegsSVE   = 1
)

// archPrepare refuses a thread with live SVE or streaming-mode SVE
// registers, and marks a thread whose resume state is a pending
// restart_syscall (s.restart).
//
// SVE: the stub's signal frame carries the FP/SIMD registers only (an
// fpsimd_context, no sve_context), and rt_sigreturn without an sve_context
// drops the SVE state (the Z registers' upper bits, P and FFR), so a thread
// interrupted in the middle of SVE code could not get it back. Refusing is
// the honest choice over carrying a vector-length-dependent sve_context: a
// thread blocked in a system call never has live SVE state (a system call
// discards it), and Call on a running process borrows such a thread. A
// thread in streaming mode (SME) is refused too: the callee, ordinary
// non-streaming code, must not run in it. The ZA array is left alone by
// the frame and by the callee's ABI (a private-ZA callee saves it lazily).
func (p *Process) archPrepare(t *thread, s *callState) error {
	if len(s.fp.data) < 520 {
		return p.threadErr(t.tid, "get FP registers", fmt.Errorf("NT_PRFPREG gave %d bytes, want 528", len(s.fp.data)))
	}
	for _, rs := range []struct {
		typ  int
		what string
	}{{unix.NT_ARM_SVE, "live SVE registers"}, {unix.NT_ARM_SSVE, "streaming SVE mode (SME)"}} {
		var hdr [16]byte
		d, err := getRegSet(t.tid, rs.typ, hdr[:])
		if err != nil || len(d) < sveHeaderFlags+2 {
			continue // no SVE/SME on this machine or kernel
		}
		if binary.LittleEndian.Uint16(d[sveHeaderFlags:])&svePTRegsSVE != 0 {
			return fmt.Errorf("thread %d has %s, which the call's signal frame cannot restore: %w (call on a thread blocked in a system call instead)",
				t.tid, rs.what, ErrCallThreadState)
		}
	}
	if s.resume.Regs[8] == sysRestartSyscall {
		var insn [4]byte
		if n, _ := p.readMem(insn[:], s.resume.Pc); n == len(insn) && [4]byte(syscallInsn) == insn {
			s.restart = true
		}
	}
	return nil
}

// Layout of a remote call's data mapping. The tracer polls the result and
// done words (the first 16 bytes); the signal frame lies ctxFrame bytes up,
// so that a signal handler run between the stub's last two instructions
// (only possible once the tracer is gone: it holds signals during a call)
// has the 16 KiB below it as its stack.
const (
	ctxResult = 0 // the call's x0
	ctxDone   = 8 // set to 1 once the stub no longer needs the call's state
	ctxParked = 9 // set to 1 once a parking stub announces the call's end
	ctxFrame  = 0x4000
)

// struct rt_sigframe { siginfo_t info; struct ucontext uc; } of
// arch/arm64/kernel/signal.c, with ucontext and sigcontext from the uapi
// headers (asm/ucontext.h, asm/sigcontext.h): uc_flags, uc_link, uc_stack
// (stack_t, 24 bytes), uc_sigmask (8) and 120 unused bytes, then
// uc_mcontext 16-byte aligned: fault_address, regs[31], sp, pc, pstate,
// and __reserved[4096] (16-aligned) holding the context records.
const (
	sfUcStack  = 128 + 16  // frame.uc.uc_stack
	sfSigmask  = 128 + 40  // frame.uc.uc_sigmask
	sfRegs     = 304 + 8   // frame.uc.uc_mcontext.regs[0]
	sfSP       = 304 + 256 // .sp
	sfPC       = 304 + 264 // .pc
	sfPstate   = 304 + 272 // .pstate
	sfReserved = 304 + 288 // .__reserved: records {u32 magic, u32 size, ...}
	sfSize     = 4688      // sizeof(struct rt_sigframe)

	// struct fpsimd_context: head, fpsr, fpcr, then vregs[32] at 16; a
	// terminator record (magic 0, size 0) follows it.
	fpsimdMagic = 0x46508001
	fpsimdSize  = 528
)

// ctxData is the data mapping of a remote call: the result and done words
// and the signal frame that returns the thread to s.resume.
func ctxData(s *callState) []byte {
	b := make([]byte, ctxFrame+sfSize)
	f := b[ctxFrame:]
	le := binary.LittleEndian
	r := s.resume
	for i, v := range r.Regs {
		le.PutUint64(f[sfRegs+8*i:], v)
	}
	le.PutUint64(f[sfSP:], r.Sp)
	pc := r.Pc
	if s.restart {
		// The stub finishes restart_syscall itself: the thread goes on
		// after the svc, with the call's result in x0 (stored by the stub).
		pc += 4
	}
	le.PutUint64(f[sfPC:], pc)
	le.PutUint64(f[sfPstate:], r.Pstate)
	// uc_stack is filled in by the stub (sigaltstack), since rt_sigreturn
	// installs it as the thread's alternate signal stack.
	le.PutUint64(f[sfSigmask:], s.sigmask)
	fp := f[sfReserved:]
	le.PutUint32(fp[0:], fpsimdMagic)
	le.PutUint32(fp[4:], fpsimdSize)
	copy(fp[8:16], s.fp.data[512:520]) // fpsr, fpcr
	copy(fp[16:16+512], s.fp.data[:512])
	// The terminator record at fp[528:536] is zero already.
	return b
}

// System call numbers of the stub (asm-generic unistd).
const (
	sysSigaltstack = 132
	sysRtSigreturn = 139
)

// A64 encodings the stub uses.
func a64Movz(rd, imm, hw uint32) uint32 { return 0xd2800000 | hw<<21 | imm<<5 | rd }
func a64Movk(rd, imm, hw uint32) uint32 { return 0xf2800000 | hw<<21 | imm<<5 | rd }

// a64Str is STR Xt, [Xn, #off] (off a multiple of 8 below 32 KiB).
func a64Str(rt, rn, off uint32) uint32 { return 0xf9000000 | (off/8)<<10 | rn<<5 | rt }

// a64Strb is STRB Wt, [Xn, #off] (off below 4096).
func a64Strb(rt, rn, off uint32) uint32 { return 0x39000000 | off<<10 | rn<<5 | rt }

// a64Add is ADD Xd|SP, Xn|SP, #imm12 {, LSL #12}.
func a64Add(rd, rn, imm, lsl12 uint32) uint32 { return 0x91000000 | lsl12<<22 | imm<<10 | rn<<5 | rd }

const a64Svc0 = 0xd4000001

// a64Mov64 is MOVZ then three MOVK: Xd = v.
func a64Mov64(rd uint32, v uint64) []uint32 {
	w := []uint32{a64Movz(rd, uint32(v)&0xffff, 0)}
	for hw := uint32(1); hw < 4; hw++ {
		w = append(w, a64Movk(rd, uint32(v>>(16*hw))&0xffff, hw))
	}
	return w
}

// returnStub is the code a remote call of s returns to (x30), with its data
// mapping at data. It uses x0, x1, x8, x16 and x17, all reloaded by
// rt_sigreturn:
//
//	(store) x17 = store; [x17] = x0
//	x16 = data; [x16+result] = x0; x17 = the frame
//	sigaltstack(NULL, &frame.uc.uc_stack)   so rt_sigreturn reinstalls the same one
//	[x16+done] = 1
//	(s.restart) restart_syscall(); frame.regs[0] = x0
//	sp = x17; rt_sigreturn()
//
// done is set once the stub needs nothing more from the tracer nor gives it
// anything: from there the tracer may stop the thread anywhere in the stub
// and restore it through ptrace (waitCall). A pending restart_syscall is run here, after done, because rt_sigreturn resets the
// restart block it needs: a live tracer finds the thread blocked in it and
// puts it back through ptrace, restart block intact; without a tracer the
// stub finishes the call and returns past the svc with its result, as the
// thread itself would have.
//
// With park, the stub sets the parked flag once the result is stored and
// calls getpid (x0, x8) before anything else: the tracer stops it at that
// call's entry and restores the thread through ptrace (nothing of the
// thread's state has been touched yet), so that the thread runs none of its
// own code between the call and the tracer's stop (CallInStop); a tracer
// gone lets it go on at once. See the x86-64 stub.
func returnStub(data, store uint64, s *callState, park bool) []byte {
	var w []uint32
	if store != 0 {
		w = append(w, a64Mov64(17, store)...)
		w = append(w, a64Str(0, 17, 0))
	}
	w = append(w, a64Mov64(16, data)...)
	w = append(w, a64Str(0, 16, ctxResult))
	if park {
		w = append(w,
			a64Movz(1, 1, 0),
			a64Strb(1, 16, ctxParked),
			a64Movz(8, sysGetpid, 0),
			a64Svc0,
		)
	}
	w = append(w,
		a64Add(17, 16, ctxFrame>>12, 1),
		a64Movz(0, 0, 0),
		a64Add(1, 17, sfUcStack, 0),
		a64Movz(8, sysSigaltstack, 0),
		a64Svc0,
		a64Movz(0, 1, 0),
		a64Str(0, 16, ctxDone),
	)
	if s.restart {
		w = append(w,
			a64Movz(8, sysRestartSyscall, 0),
			a64Svc0,
			a64Str(0, 17, sfRegs),
		)
	}
	w = append(w,
		a64Movz(8, sysRtSigreturn, 0),
		a64Add(31, 17, 0, 0), // mov sp, x17
		a64Svc0,
	)
	c := make([]byte, 4*len(w))
	for i, v := range w {
		binary.LittleEndian.PutUint32(c[4*i:], v)
	}
	return c
}
