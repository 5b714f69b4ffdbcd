package tracee

import "golang.org/x/sys/unix"

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

// setupCall makes r call fn(args...) with the stack pointer sp (already
// 16-byte aligned, with the return address pushed at sp) per the System V
// ABI: integer arguments in rdi, rsi, rdx, rcx, r8, r9; al = 0 vector
// registers for variadic callees; the direction flag clear. orig_rax = -1
// keeps the kernel's syscall-restart logic away from these registers.
func (r *Regs) setupCall(fn, sp uint64, args []uint64) {
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
