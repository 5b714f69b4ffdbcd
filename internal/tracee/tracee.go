package tracee

import (
	"errors"
	"fmt"
)

// ErrNoProcess is returned when the process does not exist (or exited).
var ErrNoProcess = errors.New("no such process")

// ErrPermission is matched (errors.Is) by every *PermissionError.
var ErrPermission = errors.New("permission denied")

// PermissionError says why the caller may not trace the process.
type PermissionError struct {
	Pid int
	// Reason is one of: "ptrace_scope=N" (Yama), "not dumpable",
	// "owned by uid U, we are uid V", or the raw errno text.
	Reason string
	// Hint says what to do about it.
	Hint string
}

func (e *PermissionError) Error() string {
	return fmt.Sprintf("tracee: cannot trace pid %d: %s (%s)", e.Pid, e.Reason, e.Hint)
}

// Is reports target == ErrPermission.
func (e *PermissionError) Is(target error) bool { return target == ErrPermission }

// SyscallError is a system call that ran inside the target and failed.
type SyscallError struct {
	Name  string // "mmap", "munmap", ...
	Errno uint64 // positive errno value
}

func (e *SyscallError) Error() string {
	return fmt.Sprintf("tracee: remote %s failed: errno %d", e.Name, e.Errno)
}

// Process is a target process. Create one with Open. All methods are safe for
// use from any goroutine (they are funneled to one locked OS thread).
type Process struct {
	pid int
	// implementation fields
}

// Open checks that the caller may trace pid (existence, Yama ptrace_scope,
// dumpable, uid) without attaching. It returns ErrNoProcess or a
// *PermissionError when not.
func Open(pid int) (*Process, error) { panic("todo") }

// Pid returns the process ID.
func (p *Process) Pid() int { return p.pid }

// Stop seizes and interrupts every thread of the process and waits until all
// are stopped, including threads created while stopping. Signals that arrive
// meanwhile are re-delivered, never lost. On error nothing is left stopped.
func (p *Process) Stop() error { panic("todo") }

// Stopped reports whether the process is currently stopped by Stop.
func (p *Process) Stopped() bool { panic("todo") }

// Threads returns the thread IDs stopped by the last Stop, leader first.
func (p *Process) Threads() []int { panic("todo") }

// Resume restarts every thread stopped by Stop and detaches from it.
func (p *Process) Resume() error { panic("todo") }

// Close resumes the process if stopped and releases the ptrace thread.
func (p *Process) Close() error { panic("todo") }

// GetRegs reads the registers of a stopped thread.
func (p *Process) GetRegs(tid int) (Regs, error) { panic("todo") }

// SetRegs writes the registers of a stopped thread.
func (p *Process) SetRegs(tid int, r Regs) error { panic("todo") }

// ReadAt reads target memory (process_vm_readv, falling back to
// /proc/PID/mem). It implements io.ReaderAt with off as the address; it does
// not need the process stopped. A short read returns an error naming the
// address.
func (p *Process) ReadAt(b []byte, off int64) (int, error) { panic("todo") }

// WriteMem writes target memory through /proc/PID/mem, which also writes
// read-only and executable pages without changing their protection.
func (p *Process) WriteMem(addr uint64, data []byte) error { panic("todo") }

// Syscall runs system call nr with up to six arguments in the target and
// returns its raw result (negative errno values are returned as
// *SyscallError). When the process is stopped it borrows a stopped thread;
// otherwise it stops only one thread for the call, so the others keep
// running. The borrowed thread's registers, including the syscall-restart
// state (orig_rax), are restored exactly.
func (p *Process) Syscall(name string, nr uint64, args ...uint64) (uint64, error) { panic("todo") }

// Mmap maps memory in the target (see mmap(2)); addr is a hint unless flags
// contain MAP_FIXED_NOREPLACE.
func (p *Process) Mmap(addr, length uint64, prot, flags int) (uint64, error) { panic("todo") }

// Munmap unmaps memory in the target.
func (p *Process) Munmap(addr, length uint64) error { panic("todo") }

// Mprotect changes protection of memory in the target.
func (p *Process) Mprotect(addr, length uint64, prot int) error { panic("todo") }

// Protection and mapping flags, re-exported so that callers need not import
// x/sys/unix.
const (
	ProtRead  = 0x1
	ProtWrite = 0x2
	ProtExec  = 0x4

	MapPrivate        = 0x02
	MapAnonymous      = 0x20
	MapFixedNoreplace = 0x100000
)
