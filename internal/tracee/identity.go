package tracee

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// ErrPIDReused is returned when the process a Process was opened on has
// exited and its PID now names another process: nothing is read from or
// written to that one. errors.Is(ErrPIDReused, ErrExited) is true.
var ErrPIDReused = fmt.Errorf("its PID now belongs to another process: %w", ErrExited)

// ErrKernelThread is returned for a kernel thread: it has no user-space
// code or memory to patch.
var ErrKernelThread = errors.New("a kernel thread, which runs no user-space code to patch")

// ErrBusy is matched by *BusyError.
var ErrBusy = errors.New("another hotpatch is operating on the process")

// BusyError is a refusal to open a process that another Process (in this or
// another program) holds open: operations on one target are serialised.
type BusyError struct {
	Pid int
	// Holder is the PID of the program holding the process, 0 if unknown.
	Holder int
	// Waited is how long Open waited for it.
	Waited time.Duration
}

func (e *BusyError) Error() string {
	who := "another program"
	if e.Holder > 0 {
		who = fmt.Sprintf("process %d", e.Holder)
	}
	return fmt.Sprintf("tracee: pid %d: %v (%s holds it; waited %v): retry when it has finished", e.Pid, ErrBusy, who, e.Waited.Round(time.Millisecond))
}

// Is reports target == ErrBusy.
func (e *BusyError) Is(target error) bool { return target == ErrBusy }

// Option configures Open.
type Option func(*openConfig)

type openConfig struct {
	lockWait time.Duration
}

// LockWait makes Open wait up to d for another holder of the process to
// close it, instead of refusing at once.
func LockWait(d time.Duration) Option { return func(c *openConfig) { c.lockWait = d } }

// lock takes the process's exclusive lock: a flock on its /proc/PID/mem,
// which every Process holds open. The kernel drops it when the holder closes
// it or dies, so a killed patcher never leaves the target locked; and a new
// process that reuses the PID has another /proc inode, so it is not locked
// by a holder of the old one.
func lock(pid, memfd int, wait time.Duration) error {
	start := time.Now()
	for {
		err := unix.Flock(memfd, unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return nil
		}
		if err != unix.EWOULDBLOCK && err != unix.EINTR {
			return fmt.Errorf("tracee: pid %d: lock /proc/%d/mem: %w", pid, pid, err)
		}
		if time.Since(start) >= wait {
			return &BusyError{Pid: pid, Holder: lockHolder(memfd), Waited: time.Since(start)}
		}
		time.Sleep(min(20*time.Millisecond, wait))
	}
}

// lockHolder finds the PID that holds a flock on fd's file in /proc/locks
// (0 when not found).
func lockHolder(fd int) int {
	var st unix.Stat_t
	if unix.Fstat(fd, &st) != nil {
		return 0
	}
	f, err := os.Open("/proc/locks")
	if err != nil {
		return 0
	}
	defer f.Close()
	want := fmt.Sprintf("%02x:%02x:%d", unix.Major(st.Dev), unix.Minor(st.Dev), st.Ino)
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// "1: FLOCK  ADVISORY  WRITE 12345 00:16:80408 0 EOF"
		fs := strings.Fields(sc.Text())
		if len(fs) >= 6 && fs[1] == "FLOCK" && fs[5] == want {
			if n, err := strconv.Atoi(fs[4]); err == nil {
				return n
			}
		}
	}
	return 0
}

// identity pins a Process to the process it was opened on: a pidfd (which
// reports that process's exit, whatever happens to its PID afterwards), or,
// on kernels without pidfd_open, the process's start time.
type identity struct {
	pidfd int    // -1 when pidfd_open is not available
	start uint64 // starttime of /proc/PID/stat, in clock ticks since boot
}

func newIdentity(pid int) (identity, error) {
	id := identity{pidfd: -1}
	start, err := startTime(pid)
	if err != nil {
		return id, err
	}
	id.start = start
	if fd, err := unix.PidfdOpen(pid, 0); err == nil {
		id.pidfd = fd
	}
	// The process may have been replaced between reading its start time
	// and opening the pidfd.
	if now, err := startTime(pid); err != nil || now != start {
		id.close()
		return id, fmt.Errorf("tracee: pid %d: %w", pid, ErrExited)
	}
	return id, nil
}

func (id *identity) close() {
	if id.pidfd >= 0 {
		unix.Close(id.pidfd)
		id.pidfd = -1
	}
}

// same checks that pid still names the process the identity was made for.
func (id *identity) same(pid int) error {
	if id.pidfd >= 0 {
		fds := []unix.PollFd{{Fd: int32(id.pidfd), Events: unix.POLLIN}}
		n, err := unix.Poll(fds, 0)
		for err == unix.EINTR {
			n, err = unix.Poll(fds, 0)
		}
		if err != nil {
			return fmt.Errorf("tracee: pid %d: poll pidfd: %w", pid, err)
		}
		if n == 0 {
			return nil // alive: the PID is still its own
		}
		// Exited. A process at the PID now, unless it is the exited one
		// waiting to be reaped, is another one.
		if st, err := procState(pid); err == nil && st != "Z" && st != "X" {
			return fmt.Errorf("tracee: pid %d: the process exited; %w", pid, ErrPIDReused)
		}
		return fmt.Errorf("tracee: pid %d: %w", pid, ErrExited)
	}
	now, err := startTime(pid)
	switch {
	case err != nil:
		return fmt.Errorf("tracee: pid %d: %w", pid, ErrExited)
	case now != id.start:
		return fmt.Errorf("tracee: pid %d: the process exited; %w", pid, ErrPIDReused)
	}
	return nil
}

// procState returns the state letter of /proc/PID/stat ("R", "S", "Z"...).
func procState(pid int) (string, error) {
	fs, err := readStat(pid)
	if err != nil {
		return "", err
	}
	return fs[0], nil
}

// startTime reads field 22 of /proc/PID/stat.
func startTime(pid int) (uint64, error) {
	fs, err := readStat(pid)
	if err != nil {
		return 0, err
	}
	return strconv.ParseUint(fs[19], 10, 64)
}

// readStat returns the fields of /proc/PID/stat from the state on (see
// statFields), at least 20 of them.
func readStat(pid int) ([]string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, unix.ESRCH) {
			return nil, fmt.Errorf("tracee: pid %d: %w", pid, ErrNoProcess)
		}
		return nil, fmt.Errorf("tracee: pid %d: %w", pid, err)
	}
	fs, err := statFields(b)
	if err != nil || len(fs) < 20 {
		return nil, fmt.Errorf("tracee: pid %d: unreadable /proc/%d/stat", pid, pid)
	}
	return fs, nil
}

// statFields returns the fields of /proc/PID/stat after the command name
// (field 3, the state, first); the name is in parentheses and may hold
// spaces and parentheses itself.
func statFields(b []byte) ([]string, error) {
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return nil, errors.New("no command name")
	}
	return strings.Fields(s[i+1:]), nil
}
