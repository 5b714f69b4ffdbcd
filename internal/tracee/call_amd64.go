package tracee

// The architecture-specific half of remote calls (call.go). Each arch
// provides the same names: redZone, fpRegSet and fpRegSetFallback,
// maxCallArgs, callStack, (*Regs).setupCall, callResult and resumeState,
// archPrepare, ctxData and returnStub (call_arm64.go for arm64).

import (
	"encoding/binary"

	"golang.org/x/sys/unix"
)

// redZone is the System V x86-64 red zone below the stack pointer, which a
// leaf function may use without moving rsp: a remote call must not touch it.
const redZone = 128

// fpRegSet is the regset that holds the whole FPU/SSE/AVX state (XSAVE
// layout), and fpRegSetFallback the FXSAVE one (x87 + SSE) for kernels or
// CPUs without XSAVE.
const (
	fpRegSet         = unix.NT_X86_XSTATE
	fpRegSetFallback = unix.NT_PRFPREG
)

// callStack returns the callee's stack pointer for a thread whose stack
// pointer is sp, and what to write there: below the red zone, aligned, then
// the return address ret, so that at the callee's entry (rsp+8) is a
// multiple of 16, as the ABI wants.
func callStack(sp, ret uint64) (uint64, []byte) {
	sp = (sp-redZone)&^15 - 8
	return sp, binary.LittleEndian.AppendUint64(nil, ret)
}

// setupCall makes r call fn(args...) with the stack pointer sp (already
// 16-byte aligned, with the return address pushed at sp, so ret is unused
// here) per the System V ABI: integer arguments in rdi, rsi, rdx, rcx, r8,
// r9; al = 0 vector registers for variadic callees; the direction flag
// clear. orig_rax = -1 keeps the kernel's syscall-restart logic away from
// these registers.
func (r *Regs) setupCall(fn, sp, ret uint64, args []uint64) {
	r.Rip = fn
	r.Rsp = sp
	r.Rax = 0
	r.Orig_rax = ^uint64(0)
	r.Eflags &^= 1 << 10 // DF
	dst := [...]*uint64{&r.Rdi, &r.Rsi, &r.Rdx, &r.Rcx, &r.R8, &r.R9}
	for i, a := range args {
		*dst[i] = a
	}
}

// callResult is the integer return value register.
func (r *Regs) callResult() uint64 { return r.Rax }

// maxCallArgs is the number of integer arguments passed in registers.
const maxCallArgs = 6

// Syscall-restart return values of an interrupted system call (the
// kernel's -ERESTART* codes), and the restart system call.
const (
	errRestartSys          = 512
	errRestartNoIntr       = 513
	errRestartNoHand       = 514
	errRestartRestartBlock = 516
	sysRestartSyscall      = 219
)

// resumeState is where a thread stopped at regs continues when the kernel
// resumes it without running a signal handler: a system call interrupted
// with -ERESTART* is restarted (rax = its number, or restart_syscall, and
// rip back over the 2-byte syscall instruction), exactly as the kernel's
// signal-return path does. A remote call's return stub restores this state
// itself, so that the thread continues correctly even if the tracer is gone.
func (r *Regs) resumeState() Regs {
	out := *r
	if int64(r.Orig_rax) < 0 {
		return out
	}
	switch -int64(r.Rax) {
	case errRestartSys, errRestartNoIntr, errRestartNoHand:
		out.Rax = r.Orig_rax
		out.Rip -= 2
	case errRestartRestartBlock:
		out.Rax = sysRestartSyscall
		out.Rip -= 2
	}
	out.Orig_rax = ^uint64(0)
	return out
}

// archPrepare has nothing to check or add on x86-64: every state of a
// stopped thread, including a pending restart_syscall (whose restart block
// the stub's plain jump leaves alone), goes through a call.
func (p *Process) archPrepare(t *thread, s *callState) error { return nil }

// Layout of a remote call's data page (see returnStub).
const (
	ctxResult = 0   // the call's rax
	ctxDone   = 8   // set to 1 once the thread restored itself
	ctxParked = 9   // set to 1 once a parking stub waits for the tracer
	ctxFlags  = 16  // rflags
	ctxGP     = 24  // 16 registers in DWARF order (rax, rdx, rcx, rbx, rsi, rdi, rbp, rsp, r8..r15)
	ctxFP     = 192 // the XSAVE (or FXSAVE) image, 64-byte aligned
)

// ctxData is the data page of a remote call that returns to s.resume with
// FP state s.fp.
func ctxData(s *callState) []byte {
	r, fp := s.resume, s.fp
	b := make([]byte, ctxFP+len(fp.data))
	put := func(off int, v uint64) {
		for i := 0; i < 8; i++ {
			b[off+i] = byte(v >> (8 * i))
		}
	}
	put(ctxFlags, r.Eflags)
	for i, v := range r.DWARF()[:16] {
		put(ctxGP+8*i, v)
	}
	copy(b[ctxFP:], fp.data)
	return b
}

// returnStub is the code a remote call of s returns to, with its data page
// at data: it stores rax (the result; also at store, unless 0), restores the FP state
// (xrstor, or fxrstor for an FXSAVE image), rflags and every general
// register of the interrupted state, sets the done flag and jumps to the
// interrupted pc. It touches no memory but its own pages, the call's
// stack (below the red zone) and store; the interrupted state is restored without the
// tracer, so a tracer killed during the call leaves a target that runs on.
//
// With park, the stub first sets the parked flag and makes a system call,
// getpid, before it restores anything: the tracer continues the thread with
// PTRACE_SYSCALL and sleeps in wait4 until that call's entry stops it, then
// stops it there for good and restores it through ptrace, so that the
// thread runs none of its own code between the call and the tracer's stop
// (CallInStop), and neither the tracer nor the finished thread takes a
// core meanwhile (a stub that spun for a polling tracer kept both busy for
// milliseconds). A tracer gone leaves a thread that makes the call, which
// does nothing, and restores itself at once. getpid is in every seccomp
// allow-list worth the name (systemd's @default among them).
func returnStub(data, store uint64, s *callState, park bool) []byte {
	pc, xsave := s.resume.PC(), s.fp.typ == fpRegSet
	var c []byte
	d32 := func(v int) []byte { return []byte{byte(v), byte(v >> 8), byte(v >> 16), byte(v >> 24)} }
	if store != 0 {
		c = append(c, 0x49, 0xba) // movabs r10, store (restored below)
		for i := 0; i < 8; i++ {
			c = append(c, byte(store>>(8*i)))
		}
		c = append(c, 0x49, 0x89, 0x02) // mov [r10], rax
	}
	dataBase := func() {
		c = append(c, 0x49, 0xbb) // movabs r11, data
		for i := 0; i < 8; i++ {
			c = append(c, byte(data>>(8*i)))
		}
	}
	dataBase()
	c = append(c, 0x49, 0x89, 0x83) // mov [r11+result], rax
	c = append(c, d32(ctxResult)...)
	if park {
		c = append(c, 0x41, 0xc6, 0x83) // mov byte [r11+parked], 1
		c = append(c, d32(ctxParked)...)
		c = append(c, 1)
		c = append(c, 0xb8) // mov eax, getpid
		c = append(c, d32(int(sysGetpid))...)
		c = append(c, 0x0f, 0x05) // syscall (rcx and r11 lost; all restored below)
		dataBase()
	}
	c = append(c, 0xb8, 0xff, 0xff, 0xff, 0xff) // mov eax, -1
	c = append(c, 0xba, 0xff, 0xff, 0xff, 0xff) // mov edx, -1
	if xsave {
		c = append(c, 0x49, 0x0f, 0xae, 0xab) // xrstor64 [r11+fp]
	} else {
		c = append(c, 0x49, 0x0f, 0xae, 0x8b) // fxrstor64 [r11+fp]
	}
	c = append(c, d32(ctxFP)...)
	c = append(c, 0x41, 0xff, 0xb3) // push qword [r11+flags]
	c = append(c, d32(ctxFlags)...)
	c = append(c, 0x9d) // popfq
	// x86 register numbers of the DWARF order rax, rdx, rcx, rbx, rsi, rdi,
	// rbp, (rsp), r8..r15; rsp and r11 come last.
	enc := []int{0, 2, 1, 3, 6, 7, 5, -1, 8, 9, 10, -1, 12, 13, 14, 15}
	load := func(reg, slot int) {
		rex := byte(0x49)
		if reg >= 8 {
			rex |= 0x04 // REX.R
		}
		c = append(c, rex, 0x8b, 0x83|byte(reg&7)<<3) // mov reg, [r11+disp32]
		c = append(c, d32(ctxGP+8*slot)...)
	}
	for slot, reg := range enc {
		if reg >= 0 {
			load(reg, slot)
		}
	}
	load(4, 7)                      // mov rsp, [r11+rsp]
	c = append(c, 0x41, 0xc6, 0x83) // mov byte [r11+done], 1
	c = append(c, d32(ctxDone)...)
	c = append(c, 1)
	load(11, 11)                          // mov r11, [r11+r11]
	c = append(c, 0xff, 0x25, 0, 0, 0, 0) // jmp [rip+0]
	for i := 0; i < 8; i++ {
		c = append(c, byte(pc>>(8*i))) // the interrupted pc
	}
	return c
}
