package tracee

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Syscall runs system call nr with up to six arguments in the target and
// returns its raw result (negative errno values are returned as
// *SyscallError). When the process is stopped it borrows a stopped thread;
// otherwise it stops only one thread for the call, so the others keep
// running. The borrowed thread's registers, including the syscall-restart
// state (orig_rax), are restored exactly.
//
// Signals that reach the borrowed thread during the call are kept and
// delivered when the thread is resumed.
func (p *Process) Syscall(name string, nr uint64, args ...uint64) (uint64, error) {
	return p.syscallOn(0, name, nr, args...)
}

// syscallOn is Syscall on thread tid (0: leader preferred). A tid other than
// 0 needs the process stopped.
func (p *Process) syscallOn(tid int, name string, nr uint64, args ...uint64) (uint64, error) {
	if len(args) > 6 {
		return 0, fmt.Errorf("tracee: remote %s: %d arguments, at most 6", name, len(args))
	}
	var res uint64
	err := p.do(func() error {
		var err error
		res, err = p.remoteSyscall(tid, name, nr, args)
		return err
	})
	return res, err
}

func (p *Process) remoteSyscall(tid int, name string, nr uint64, args []uint64) (uint64, error) {
	var res uint64
	err := p.borrow(tid, false, func(t *thread) error {
		var err error
		res, err = p.runSyscall(t, nr, args)
		return err
	})
	if err != nil {
		return 0, err
	}
	if e := int64(res); e < 0 && e >= -4095 {
		return res, &SyscallError{Name: name, Errno: uint64(-e)}
	}
	return res, nil
}

// stopOne seizes and interrupts one thread (the leader if it can) while the
// process is not stopped. It does not follow clones. With sleeper, it
// prefers a thread that sleeps in the kernel (state S: blocked in a system
// call, so not in the middle of user code that may hold a lock such as
// malloc's), the leader first among those.
func (p *Process) stopOne(sleeper bool) (*thread, error) {
	tids, err := listTasks(p.pid)
	if err != nil {
		return nil, p.exited()
	}
	rank := func(tid int) int {
		r := 0
		if tid != p.pid {
			r++
		}
		if sleeper && taskState(p.pid, tid) != 'S' {
			r += 2
		}
		return r
	}
	sort.SliceStable(tids, func(i, j int) bool { return rank(tids[i]) < rank(tids[j]) })
	for _, tid := range tids {
		gone, err := p.attach(tid, 0)
		if err != nil {
			p.abandon()
			p.stopped = false
			return nil, err
		}
		if gone {
			continue
		}
		if err := p.waitAllStopped(); err != nil {
			p.abandon()
			p.stopped = false
			return nil, err
		}
		if t := p.threads[tid]; t != nil {
			return t, nil
		}
	}
	return nil, p.exited()
}

// runSyscall executes one system call on the stopped thread t and restores
// its registers.
func (p *Process) runSyscall(t *thread, nr uint64, args []uint64) (uint64, error) {
	insn, err := p.syscallInsnAddr()
	if err != nil {
		return 0, err
	}
	var saved Regs
	if err := getRegs(t.tid, &saved); err != nil {
		return 0, p.threadErr(t.tid, "get registers", err)
	}
	r := saved
	r.setupSyscall(insn, nr, args)
	if err := setRegs(t.tid, &r); err != nil {
		return 0, p.threadErr(t.tid, "set registers", err)
	}
	res, err := p.stepSyscall(t, insn)
	if err != nil {
		if p.threads[t.tid] != nil {
			// Still there: put the registers back whatever happened.
			_ = setRegs(t.tid, &saved)
		}
		return 0, err
	}
	if err := setRegs(t.tid, &saved); err != nil {
		return 0, p.threadErr(t.tid, "restore registers", err)
	}
	return res, nil
}

// stepSyscall single-steps t over the system call instruction at insn and
// returns the result register.
func (p *Process) stepSyscall(t *thread, insn uint64) (uint64, error) {
	end := insn + uint64(len(syscallInsn))
	for {
		if err := singlestep(t.tid, 0); err != nil {
			return 0, p.threadErr(t.tid, "single-step", err)
		}
		var status unix.WaitStatus
		for {
			tid, ws, err := p.nextEvent()
			if err != nil {
				if err == unix.ECHILD {
					p.lost(tid)
					if p.threads[t.tid] == nil {
						return 0, p.exited()
					}
					continue
				}
				return 0, fmt.Errorf("tracee: pid %d: wait: %w", p.pid, err)
			}
			if ws.Exited() || ws.Signaled() {
				delete(p.threads, tid)
				if tid == t.tid || tid == p.pid {
					return 0, p.exited()
				}
				continue
			}
			if tid != t.tid || !ws.Stopped() {
				continue // another (stopped) thread cannot report a stop
			}
			status = ws
			break
		}
		t.inSigStop = false
		var si unix.Siginfo
		var r Regs
		if err := getRegs(t.tid, &r); err != nil {
			return 0, p.threadErr(t.tid, "get registers", err)
		}
		ev, sig := int(status>>16), int(status.StopSignal())
		if ev != 0 {
			// PTRACE_EVENT_STOP (a stale interrupt, or a group-stop
			// the thread participates in): step again.
			continue
		}
		t.inSigStop = true
		gotInfo := getSiginfo(t.tid, &si) == nil
		if unix.Signal(sig) == unix.SIGTRAP && r.PC() == end && (!gotInfo || stepReport(&si)) {
			return r.syscallResult(), nil
		}
		// A signal for the target: keep it for later, suppress it now.
		t.pending = append(t.pending, pendingSignal{sig: sig, info: si, ok: gotInfo})
	}
}

// syscallInsnAddr returns the address of a system call instruction in an
// executable mapping of the target (cached; verified at each use).
func (p *Process) syscallInsnAddr() (uint64, error) {
	if p.sysInsn != 0 {
		buf := make([]byte, len(syscallInsn))
		if n, _ := p.readMem(buf, p.sysInsn); n == len(buf) && bytes.Equal(buf, syscallInsn) {
			return p.sysInsn, nil
		}
		p.sysInsn = 0
	}
	maps, err := os.ReadFile(fmt.Sprintf("/proc/%d/maps", p.pid))
	if err != nil {
		return 0, p.exited()
	}
	exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", p.pid))
	type region struct {
		start, end uint64
		rank       int
	}
	var regions []region
	sc := bufio.NewScanner(bytes.NewReader(maps))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 5 || !strings.Contains(f[1], "x") {
			continue
		}
		lo, hi, ok := strings.Cut(f[0], "-")
		if !ok {
			continue
		}
		start, err1 := strconv.ParseUint(lo, 16, 64)
		end, err2 := strconv.ParseUint(hi, 16, 64)
		if err1 != nil || err2 != nil {
			continue
		}
		path := ""
		if len(f) >= 6 {
			path = f[5]
		}
		rank := 3
		switch {
		case path == "[vdso]":
			rank = 0 // stable, small
		case path != "" && path == exe:
			rank = 1
		case strings.Contains(path, "/libc"):
			rank = 2
		case path == "[vsyscall]":
			continue // emulated, not executable in most setups
		}
		regions = append(regions, region{start, end, rank})
	}
	for rank := 0; rank <= 3; rank++ {
		for _, rg := range regions {
			if rg.rank != rank {
				continue
			}
			if a := p.scanFor(rg.start, rg.end, syscallInsn); a != 0 {
				p.sysInsn = a
				return a, nil
			}
		}
	}
	return 0, fmt.Errorf("tracee: pid %d: no system call instruction found in executable mappings", p.pid)
}

// scanFor returns the first address of pat in [start, end) aligned to
// syscallInsnAlign, or 0.
func (p *Process) scanFor(start, end uint64, pat []byte) uint64 {
	const chunk = 64 << 10
	buf := make([]byte, chunk+len(pat)-1)
	for a := start; a < end; a += chunk {
		n := min(uint64(len(buf)), end-a)
		got, _ := p.readMem(buf[:n], a)
		for off := 0; ; {
			i := bytes.Index(buf[off:got], pat)
			if i < 0 {
				break
			}
			if at := a + uint64(off+i); at%syscallInsnAlign == 0 {
				return at
			}
			off += i + 1
		}
		if uint64(got) < n {
			return 0
		}
	}
	return 0
}

// stepReport tells the SIGTRAP of our single-step from one sent by a
// process: a kernel-generated trap has si_code > 0 (TRAP_TRACE on x86-64),
// except the one arm64 reports for a step over svc, which the kernel sends
// at syscall exit as SI_USER from pid 0 and uid 0 (user_single_step_report),
// something no process can send (its pid is never 0 in its own namespace).
func stepReport(si *unix.Siginfo) bool {
	if si.Code > 0 {
		return true
	}
	// si_pid and si_uid follow signo, errno, code and padding.
	raw := (*[24]byte)(unsafe.Pointer(si))
	return si.Code == 0 && binary.NativeEndian.Uint64(raw[16:24]) == 0
}
