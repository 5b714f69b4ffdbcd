package tracee

import "golang.org/x/sys/unix"

// Regs is a thread's general-purpose register set, in the host's layout
// (ptrace cannot cross architectures, so target arch == host arch here).
type Regs struct{ unix.PtraceRegs }

// PC returns the instruction pointer.
func (r *Regs) PC() uint64 { return r.Rip }

// SP returns the stack pointer.
func (r *Regs) SP() uint64 { return r.Rsp }

// ThreadPointer returns the thread pointer (the fs base: glibc and musl
// keep the TCB's self-pointer at fs:0).
func (r *Regs) ThreadPointer() uint64 { return r.Fs_base }

// SetPC sets the instruction pointer.
func (r *Regs) SetPC(pc uint64) { r.Rip = pc }

// DWARF returns the registers indexed by DWARF register number (x86-64 psABI:
// 0 rax, 1 rdx, 2 rcx, 3 rbx, 4 rsi, 5 rdi, 6 rbp, 7 rsp, 8-15 r8-r15,
// 16 return address = rip).
func (r *Regs) DWARF() []uint64 {
	return []uint64{r.Rax, r.Rdx, r.Rcx, r.Rbx, r.Rsi, r.Rdi, r.Rbp, r.Rsp,
		r.R8, r.R9, r.R10, r.R11, r.R12, r.R13, r.R14, r.R15, r.Rip}
}

// G returns the register that holds the current goroutine in Go's
// ABIInternal (R14 on amd64).
func (r *Regs) G() uint64 { return r.R14 }

// syscallInsn is the system call instruction (syscall).
var syscallInsn = []byte{0x0f, 0x05}

// System call numbers used by this package.
const (
	sysGetpid   = unix.SYS_GETPID
	sysMmap     = unix.SYS_MMAP
	sysMprotect = unix.SYS_MPROTECT
	sysMunmap   = unix.SYS_MUNMAP

	sysMemfdCreate = unix.SYS_MEMFD_CREATE
	sysFcntl       = unix.SYS_FCNTL
	sysClose       = unix.SYS_CLOSE
)

func getRegs(tid int, r *Regs) error { return unix.PtraceGetRegs(tid, &r.PtraceRegs) }

func setRegs(tid int, r *Regs) error { return unix.PtraceSetRegs(tid, &r.PtraceRegs) }

// setupSyscall makes r execute system call nr with args at the system call
// instruction pc. orig_rax = -1 keeps the kernel's syscall-restart logic
// away from these registers when the thread leaves its current stop.
func (r *Regs) setupSyscall(pc, nr uint64, args []uint64) {
	r.Rip = pc
	r.Rax = nr
	r.Orig_rax = ^uint64(0)
	dst := [...]*uint64{&r.Rdi, &r.Rsi, &r.Rdx, &r.R10, &r.R8, &r.R9}
	for i, a := range args {
		*dst[i] = a
	}
}

// syscallResult is the register that holds a system call's result.
func (r *Regs) syscallResult() uint64 { return r.Rax }
