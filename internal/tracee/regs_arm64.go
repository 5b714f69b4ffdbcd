package tracee

import (
	"encoding/binary"
	"fmt"

	"golang.org/x/sys/unix"
)

// Regs is a thread's general-purpose register set, in the host's layout
// (ptrace cannot cross architectures, so target arch == host arch here):
// user_pt_regs read with PTRACE_GETREGSET/NT_PRSTATUS, plus the system call
// number the kernel keeps for syscall restart (NT_ARM_SYSTEM_CALL, arm64's
// counterpart of x86-64's orig_rax).
type Regs struct {
	unix.PtraceRegs
	// Syscallno is the number of the system call the thread is in, or -1.
	Syscallno int32
	// TPIDR is the thread pointer (TPIDR_EL0, the NT_ARM_TLS regset); it
	// is read, never written back.
	TPIDR uint64
}

// ThreadPointer returns the thread pointer (TPIDR_EL0).
func (r *Regs) ThreadPointer() uint64 { return r.TPIDR }

// PC returns the instruction pointer.
func (r *Regs) PC() uint64 { return r.Pc }

// SP returns the stack pointer.
func (r *Regs) SP() uint64 { return r.Sp }

// SetPC sets the instruction pointer.
func (r *Regs) SetPC(pc uint64) { r.Pc = pc }

// DWARF returns the registers indexed by DWARF register number (AAPCS64
// DWARF: 0-30 x0-x30, 31 sp), followed by the pc at index 32, the column the
// unwinder reads the pc from (unwind.ARM64.RAReg).
func (r *Regs) DWARF() []uint64 {
	out := make([]uint64, 33)
	copy(out, r.Regs[:])
	out[31] = r.Sp
	out[32] = r.Pc
	return out
}

// G returns the register that holds the current goroutine in Go's
// ABIInternal (R28 on arm64).
func (r *Regs) G() uint64 { return r.Regs[28] }

// syscallInsn is the system call instruction (svc #0, d4000001).
var syscallInsn = []byte{0x01, 0x00, 0x00, 0xd4}

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

// pstateSS is PSTATE.SS (software step): the kernel shows it set while a
// thread is stopped after PTRACE_SINGLESTEP and manages it itself (it is
// cleared when the thread is continued or detached, and a write of pstate
// cannot change it), so it is ptrace state, not the thread's.
const pstateSS = 1 << 21

func getRegs(tid int, r *Regs) error {
	if err := unix.PtraceGetRegs(tid, &r.PtraceRegs); err != nil {
		return err
	}
	r.Pstate &^= pstateSS
	no, err := getSyscallNo(tid)
	if err != nil {
		return err
	}
	r.Syscallno = no
	var tls [8]byte
	b, err := getRegSet(tid, unix.NT_ARM_TLS, tls[:])
	if err != nil {
		return err
	}
	if len(b) != len(tls) {
		return fmt.Errorf("NT_ARM_TLS regset of thread %d is %d bytes, not %d", tid, len(b), len(tls))
	}
	r.TPIDR = binary.LittleEndian.Uint64(b)
	return nil
}

func setRegs(tid int, r *Regs) error {
	if err := unix.PtraceSetRegs(tid, &r.PtraceRegs); err != nil {
		return err
	}
	var no [4]byte
	binary.LittleEndian.PutUint32(no[:], uint32(r.Syscallno))
	return setRegSet(tid, unix.NT_ARM_SYSTEM_CALL, no[:])
}

// getSyscallNo reads the NT_ARM_SYSTEM_CALL regset.
func getSyscallNo(tid int) (int32, error) {
	var no [4]byte
	b, err := getRegSet(tid, unix.NT_ARM_SYSTEM_CALL, no[:])
	if err != nil {
		return 0, err
	}
	if len(b) != len(no) {
		return 0, fmt.Errorf("NT_ARM_SYSTEM_CALL regset of thread %d is %d bytes, not %d", tid, len(b), len(no))
	}
	return int32(binary.LittleEndian.Uint32(b)), nil
}

// setupSyscall makes r execute system call nr with args at the system call
// instruction pc. Syscallno = -1 keeps the kernel's syscall-restart logic
// away from these registers when the thread leaves its current stop.
//
// On arm64 the kernel rewinds an interrupted system call (x0 = orig_x0,
// pc = the svc) before the thread enters a ptrace stop, so the registers
// saved at the stop already hold the restart state; restoring them and
// Syscallno afterwards restarts the call. One nuance: a call interrupted
// with -ERESTART_RESTARTBLOCK would have gone on through restart_syscall
// (the kernel sets x8 only after the stop, and only if pc was not moved);
// after a remote syscall it runs again from its original arguments
// instead (see resumeState in call_arm64.go).
func (r *Regs) setupSyscall(pc, nr uint64, args []uint64) {
	r.Pc = pc
	r.Regs[8] = nr
	r.Syscallno = -1
	for i, a := range args {
		r.Regs[i] = a
	}
}

// syscallResult is the register that holds a system call's result.
func (r *Regs) syscallResult() uint64 { return r.Regs[0] }
