package tracee

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// The system calls that hand the kernel a pointer into Go memory. Each takes
// the pointer as an unsafe.Pointer (so the object it points to stays alive
// and is moved with its stack) and converts it to uintptr only inside the
// Syscall6 argument list, the one place Go guarantees that conversion (the
// shape of x/sys/unix's ptracePtr).

// ptracePtr issues a ptrace request whose data argument points into Go
// memory.
func ptracePtr(req, tid int, addr uintptr, data unsafe.Pointer) error {
	_, _, e := unix.Syscall6(unix.SYS_PTRACE, uintptr(req), uintptr(tid), addr, uintptr(data), 0, 0)
	if e != 0 {
		return e
	}
	return nil
}

func getEventMsg(tid int) (uint64, error) {
	var msg uint64
	err := ptracePtr(unix.PTRACE_GETEVENTMSG, tid, 0, unsafe.Pointer(&msg))
	return msg, err
}

func getSiginfo(tid int, si *unix.Siginfo) error {
	return ptracePtr(unix.PTRACE_GETSIGINFO, tid, 0, unsafe.Pointer(si))
}

func setSiginfo(tid int, si *unix.Siginfo) error {
	return ptracePtr(unix.PTRACE_SETSIGINFO, tid, 0, unsafe.Pointer(si))
}

// getSigmask returns a stopped thread's blocked signals. The kernel reports
// the mask a sigsuspend-like call (ppoll, pselect, epoll_pwait) will put
// back, not its temporary one: the mask the thread's own code runs with.
func getSigmask(tid int) (uint64, error) {
	var mask uint64
	err := ptracePtr(unix.PTRACE_GETSIGMASK, tid, unsafe.Sizeof(mask), unsafe.Pointer(&mask))
	return mask, err
}

// setSigmask sets a stopped thread's blocked signals.
func setSigmask(tid int, mask uint64) error {
	return ptracePtr(unix.PTRACE_SETSIGMASK, tid, unsafe.Sizeof(mask), unsafe.Pointer(&mask))
}

// peekWait waits for an event of any child of this OS thread (waitid
// P_ALL with WNOWAIT: the event stays pending) and describes it in si.
func peekWait(si *sigchld) unix.Errno { return peekWaitOpts(si, 0) }

// peekWaitOpts is peekWait with more waitid options (WNOHANG: si.pid stays
// 0 when no child has an event).
func peekWaitOpts(si *sigchld, opts int) unix.Errno {
	_, _, e := unix.Syscall6(unix.SYS_WAITID, unix.P_ALL, 0, uintptr(unsafe.Pointer(si)),
		uintptr(unix.WEXITED|unix.WSTOPPED|unix.WNOWAIT|waitFlags|opts), 0, 0)
	return e
}

// pread and pwrite take the offset as an unsigned address: addresses above
// 2^63 do not exist in user space, but the kernel's loff_t is signed, so
// call the system calls directly rather than through int64 wrappers.
func pread(fd int, b []byte, addr uint64) (int, error) {
	r, _, e := unix.Syscall6(unix.SYS_PREAD64, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)), uintptr(addr), 0, 0)
	if e != 0 {
		return 0, e
	}
	return int(r), nil
}

func pwrite(fd int, b []byte, addr uint64) (int, error) {
	r, _, e := unix.Syscall6(unix.SYS_PWRITE64, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)), uintptr(addr), 0, 0)
	if e != 0 {
		return 0, e
	}
	return int(r), nil
}
