package tracee

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

const capSysPtrace = 19

// permFacts are the inputs of the permission diagnosis, gathered by
// checkAccess from /proc and kept apart so that diagnose is a pure function.
type permFacts struct {
	Pid        int
	Yama       int   // /proc/sys/kernel/yama/ptrace_scope, -1 when Yama is absent
	UID        int   // our real uid
	CapPtrace  bool  // CAP_SYS_PTRACE in our effective set
	TargetUIDs []int // Uid: line of /proc/PID/status: real, effective, saved, fs
	Descendant bool  // the target descends from us (Yama scope 1 allows that)
	ProbeErr   error // error of opening /proc/PID/mem for writing; nil if it worked
}

// diagnose decides from facts whether we may trace the process, and why not.
func diagnose(f permFacts) error {
	if errors.Is(f.ProbeErr, unix.ENOENT) || errors.Is(f.ProbeErr, unix.ESRCH) {
		return fmt.Errorf("tracee: pid %d: %w", f.Pid, ErrNoProcess)
	}
	perm := func(reason, hint string) error {
		return &PermissionError{Pid: f.Pid, Reason: reason, Hint: hint, Err: f.ProbeErr}
	}
	switch {
	case f.Yama == 3:
		return perm("ptrace_scope=3", "Yama has disabled ptrace until the next reboot (kernel.yama.ptrace_scope=3)")
	case f.Yama == 2 && !f.CapPtrace:
		return perm("ptrace_scope=2", "only processes with CAP_SYS_PTRACE may trace: run as root, or set kernel.yama.ptrace_scope=1 or 0")
	}
	if !f.CapPtrace {
		for _, u := range f.TargetUIDs[:min(3, len(f.TargetUIDs))] {
			if u != f.UID {
				return perm(fmt.Sprintf("owned by uid %d, we are uid %d", u, f.UID),
					fmt.Sprintf("run as uid %d, or as root (CAP_SYS_PTRACE)", u))
			}
		}
	}
	if f.ProbeErr == nil {
		return nil
	}
	denied := errors.Is(f.ProbeErr, unix.EACCES) || errors.Is(f.ProbeErr, unix.EPERM)
	switch {
	case denied && f.Yama == 1 && !f.CapPtrace && !f.Descendant:
		return perm("ptrace_scope=1", "Yama lets only ancestors trace: run as root (CAP_SYS_PTRACE), set kernel.yama.ptrace_scope=0, or have the target call prctl(PR_SET_PTRACER)")
	case denied && !f.CapPtrace:
		return perm("not dumpable", "the target is not dumpable (prctl(PR_SET_DUMPABLE, 0), a setuid/setgid or file-capability binary, or gids that differ from ours): run as root (CAP_SYS_PTRACE)")
	case denied:
		return perm(f.ProbeErr.Error(), "even CAP_SYS_PTRACE was refused: a security module (SELinux, AppArmor, seccomp) or another user namespace forbids it")
	}
	return fmt.Errorf("tracee: pid %d: open /proc/%d/mem: %w", f.Pid, f.Pid, f.ProbeErr)
}

// checkAccess gathers the facts, diagnoses them, and on success returns the
// open /proc/PID/mem descriptor (the probe).
func checkAccess(pid int) (int, error) {
	if pid <= 0 {
		return -1, fmt.Errorf("tracee: pid %d: %w", pid, ErrNoProcess)
	}
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, unix.ESRCH) {
			return -1, fmt.Errorf("tracee: pid %d: %w", pid, ErrNoProcess)
		}
		return -1, fmt.Errorf("tracee: pid %d: %w", pid, err)
	}
	st := parseStatus(status)
	if err := userProcess(pid, st); err != nil {
		return -1, err
	}
	if tgid, ok := st["Tgid"]; ok && tgid != strconv.Itoa(pid) {
		return -1, fmt.Errorf("tracee: %d is a thread of process %s, not a process: %w", pid, tgid, ErrNoProcess)
	}
	f := permFacts{Pid: pid, Yama: -1, UID: os.Getuid()}
	if b, err := os.ReadFile("/proc/sys/kernel/yama/ptrace_scope"); err == nil {
		if n, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
			f.Yama = n
		}
	}
	if self, err := os.ReadFile("/proc/self/status"); err == nil {
		f.CapPtrace = hasCap(parseStatus(self)["CapEff"], capSysPtrace)
	}
	for _, s := range strings.Fields(st["Uid"]) {
		if n, err := strconv.Atoi(s); err == nil {
			f.TargetUIDs = append(f.TargetUIDs, n)
		}
	}
	f.Descendant = isDescendant(pid, os.Getpid())
	fd, err := unix.Open(fmt.Sprintf("/proc/%d/mem", pid), unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		f.ProbeErr = err
		fd = -1
	}
	if err := diagnose(f); err != nil {
		if fd >= 0 {
			unix.Close(fd)
		}
		return -1, err
	}
	return fd, nil
}

// parseStatus parses the "Key:\tvalue" lines of /proc/PID/status.
func parseStatus(b []byte) map[string]string {
	m := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if ok {
			m[k] = strings.TrimSpace(v)
		}
	}
	return m
}

// hasCap reports whether capability bit c is set in a hex capability mask.
func hasCap(hex string, c uint) bool {
	v, err := strconv.ParseUint(hex, 16, 64)
	return err == nil && v&(1<<c) != 0
}

// isDescendant reports whether pid has ancestor as one of its ancestors.
func isDescendant(pid, ancestor int) bool {
	for i := 0; i < 4096 && pid > 1; i++ {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		if err != nil {
			return false
		}
		pp, err := strconv.Atoi(parseStatus(b)["PPid"])
		if err != nil {
			return false
		}
		if pp == ancestor {
			return true
		}
		pid = pp
	}
	return false
}

// pfKthread is PF_KTHREAD in the flags of /proc/PID/stat.
const pfKthread = 0x00200000

// userProcess refuses what has no user-space code to patch: a kernel thread
// (kthreadd, kworkers: no address space) and a zombie (exited, waiting for
// its parent to reap it).
func userProcess(pid int, status map[string]string) error {
	name := status["Name"]
	if strings.HasPrefix(status["State"], "Z") || strings.HasPrefix(status["State"], "X") {
		return fmt.Errorf("tracee: pid %d (%s) is a zombie: it has exited and waits for its parent to reap it: %w", pid, name, ErrExited)
	}
	if status["Kthread"] == "1" {
		return fmt.Errorf("tracee: pid %d (%s): %w", pid, name, ErrKernelThread)
	}
	fs, err := readStat(pid)
	if err != nil {
		return err
	}
	if flags, err := strconv.ParseUint(fs[6], 10, 64); err == nil && flags&pfKthread != 0 {
		return fmt.Errorf("tracee: pid %d (%s): %w", pid, name, ErrKernelThread)
	}
	return nil
}
