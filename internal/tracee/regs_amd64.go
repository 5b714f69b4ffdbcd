package tracee

import "golang.org/x/sys/unix"

// Regs is a thread's general-purpose register set, in the host's layout
// (ptrace cannot cross architectures, so target arch == host arch here).
type Regs struct{ unix.PtraceRegs }

// PC returns the instruction pointer.
func (r *Regs) PC() uint64 { return r.Rip }

// SP returns the stack pointer.
func (r *Regs) SP() uint64 { return r.Rsp }

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
