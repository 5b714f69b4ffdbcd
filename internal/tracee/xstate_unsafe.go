package tracee

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// getRegSet reads regset typ (an NT_* note type) of a stopped thread into
// buf and returns the bytes the kernel filled.
func getRegSet(tid, typ int, buf []byte) ([]byte, error) {
	iov := unix.Iovec{Base: &buf[0]}
	iov.SetLen(len(buf))
	if err := ptracePtr(unix.PTRACE_GETREGSET, tid, uintptr(typ), unsafe.Pointer(&iov)); err != nil {
		return nil, err
	}
	return buf[:iov.Len], nil
}

// setRegSet writes regset typ of a stopped thread.
func setRegSet(tid, typ int, data []byte) error {
	iov := unix.Iovec{Base: &data[0]}
	iov.SetLen(len(data))
	return ptracePtr(unix.PTRACE_SETREGSET, tid, uintptr(typ), unsafe.Pointer(&iov))
}

// siginfoAddr returns si_addr (fault address) and si_pid of a siginfo: both
// sit at byte 16 of the kernel's struct, in the union's first word.
func siginfoWord(si *unix.Siginfo) uint64 {
	return *(*uint64)(unsafe.Add(unsafe.Pointer(si), 16))
}
