package tracee

import (
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Raw ptrace and wait helpers. They must run on the ptrace goroutine.

// ptrace issues a request whose addr and data are plain numbers. A request
// that passes a pointer into Go memory uses ptracePtr (ptrace_unsafe.go).
func ptrace(req, tid int, addr, data uintptr) error {
	_, _, e := unix.Syscall6(unix.SYS_PTRACE, uintptr(req), uintptr(tid), addr, data, 0, 0)
	if e != 0 {
		return e
	}
	return nil
}

func seize(tid int, opts int) error {
	return ptrace(unix.PTRACE_SEIZE, tid, 0, uintptr(opts))
}

func interrupt(tid int) error { return ptrace(unix.PTRACE_INTERRUPT, tid, 0, 0) }

func cont(tid, sig int) error { return ptrace(unix.PTRACE_CONT, tid, 0, uintptr(sig)) }

// contSyscall continues a thread to its next system call's entry or exit
// (PTRACE_SYSCALL): a remote system call (traceSyscall), a parking call
// (waitCall).
func contSyscall(tid int) error { return ptrace(unix.PTRACE_SYSCALL, tid, 0, 0) }

func listen(tid int) error { return ptrace(unix.PTRACE_LISTEN, tid, 0, 0) }

func detach(tid, sig int) error { return ptrace(unix.PTRACE_DETACH, tid, 0, uintptr(sig)) }

// sigchld is the part of siginfo_t that waitid fills in.
type sigchld struct {
	signo, errno, code, _ int32
	pid                   int32
	uid                   uint32
	status                int32
	_                     [100]byte
}

const waitFlags = unix.WALL | unix.WNOTHREAD

// wait4 waits for tid (one of our tracees), retrying on EINTR.
func wait4(tid int, opts int) (int, unix.WaitStatus, error) {
	var ws unix.WaitStatus
	for {
		wpid, err := unix.Wait4(tid, &ws, waitFlags|opts, nil)
		if err == unix.EINTR {
			continue
		}
		return wpid, ws, err
	}
}

// nextEvent blocks until one of our tracees reports a wait event and
// consumes it. It looks only at the tracees of this OS thread (__WNOTHREAD).
// It first peeks (WNOWAIT) at any event of this thread, which is ours unless
// the thread also happens to be the real parent of another child with a
// pending event; then it falls back to polling our tracees one by one.
func (p *Process) nextEvent() (int, unix.WaitStatus, error) {
	backoff := 20 * time.Microsecond
	for {
		if len(p.threads) == 0 {
			return 0, 0, unix.ECHILD
		}
		if !p.pollMode {
			var si sigchld
			switch e := peekWait(&si); {
			case e == unix.EINTR:
				continue
			case e != 0:
				return 0, 0, e
			}
			if tid := int(si.pid); p.threads[tid] != nil || p.adopt(tid) {
				wpid, ws, err := wait4(tid, unix.WNOHANG)
				if err == nil && wpid == tid {
					return tid, ws, nil
				}
				if err == unix.ECHILD {
					return tid, 0, err
				}
				continue
			}
			p.pollMode = true
		}
		for tid := range p.threads {
			wpid, ws, err := wait4(tid, unix.WNOHANG)
			if err == unix.ECHILD || (err == nil && wpid == tid) {
				return tid, ws, err
			}
		}
		time.Sleep(backoff)
		backoff = min(2*backoff, time.Millisecond)
	}
}

// listTasks returns the thread IDs of pid, sorted. It reads the directory
// with getdents64 directly: os.File's reads cost twice the system calls
// (the poller's fcntl and epoll_ctl), and a held stop lists the threads
// once inside the pause.
func listTasks(pid int) ([]int, error) {
	dir := fmt.Sprintf("/proc/%d/task", pid)
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: dir, Err: err}
	}
	defer unix.Close(fd)
	var buf [8192]byte
	var tids []int
	for {
		n, err := unix.Getdents(fd, buf[:])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, &os.PathError{Op: "getdents64", Path: dir, Err: err}
		}
		if n <= 0 {
			break
		}
		_, _, names := unix.ParseDirent(buf[:n], -1, nil)
		for _, name := range names {
			if tid, err := strconv.Atoi(name); err == nil {
				tids = append(tids, tid)
			}
		}
	}
	sort.Ints(tids)
	return tids, nil
}

// taskState returns the state letter of /proc/PID/task/TID/stat, or 0 when
// the thread is gone.
func taskState(pid, tid int) byte {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/stat", pid, tid))
	if err != nil {
		return 0
	}
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 || i+2 >= len(b) {
		return 0
	}
	return b[i+2]
}

// taskTracer returns the TracerPid of a thread (0 when not traced).
func taskTracer(pid, tid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/status", pid, tid))
	if err != nil {
		return 0
	}
	n, _ := strconv.Atoi(parseStatus(b)["TracerPid"])
	return n
}

func isStopSignal(sig int) bool {
	switch unix.Signal(sig) {
	case unix.SIGSTOP, unix.SIGTSTP, unix.SIGTTIN, unix.SIGTTOU:
		return true
	}
	return false
}
