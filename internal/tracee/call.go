package tracee

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// ErrCallCrashed is matched by every *CallError.
var ErrCallCrashed = errors.New("remote call crashed")

// CallError is a function called in the target that died of a signal (a
// fault, or abort). The thread's registers were restored and the signal
// was not delivered, so the target keeps running; but whatever the function
// changed before it crashed (locks it held, memory it wrote) stays.
type CallError struct {
	Name string // what was called
	Fn   uint64
	Tid  int
	Sig  unix.Signal
	PC   uint64 // where it crashed
	Addr uint64 // the faulting address (SIGSEGV, SIGBUS)
}

func (e *CallError) Error() string {
	return fmt.Sprintf("tracee: remote call of %s at %#x on thread %d crashed with %v at pc %#x (fault address %#x); the thread's registers were restored and the signal suppressed, but state the function changed stays — check the target",
		e.Name, e.Fn, e.Tid, e.Sig, e.PC, e.Addr)
}

// Is reports target == ErrCallCrashed.
func (e *CallError) Is(target error) bool { return target == ErrCallCrashed }

// callReturn is the return address pushed for a remote call: returning to
// it faults (SIGSEGV at pc 0), which the tracer catches. No trap is ever
// written into the target's code.
const callReturn = 0

// Call calls the function at fn in the target with up to six integer or
// pointer arguments and returns its integer result. When the process is
// stopped (Stop), it borrows a stopped thread (the leader first) and only
// that thread runs during the call; otherwise it stops one thread for the
// call while the others keep running — which is what a function that takes
// locks (dlopen, malloc) needs, since a lock held by a stopped thread would
// never be released. That thread is one blocked in a system call when there
// is one (the leader first): a thread interrupted in user code might hold a
// lock the called function needs, and the call would then deadlock.
//
// The thread's general-purpose registers (with the syscall-restart state,
// orig_rax) and its whole FPU/SSE/AVX state are saved and restored exactly:
// a thread that was blocked in a system call restarts it afterwards. The
// call runs below the thread's stack pointer and red zone, on a 16-byte
// aligned stack, and returns to address 0, a fault the tracer catches.
// Signals that reach the thread during the call are held and delivered
// when it is resumed. A call that crashes returns a *CallError.
func (p *Process) Call(name string, fn uint64, args ...uint64) (uint64, error) {
	return p.CallOn(0, name, fn, args...)
}

// CallOn is Call on thread tid of a stopped process (tid 0: as Call).
func (p *Process) CallOn(tid int, name string, fn uint64, args ...uint64) (uint64, error) {
	if len(args) > maxCallArgs {
		return 0, fmt.Errorf("tracee: remote call of %s: %d arguments, at most %d", name, len(args), maxCallArgs)
	}
	var res uint64
	err := p.do(func() error {
		return p.borrow(tid, true, func(t *thread) error {
			var err error
			res, err = p.runCall(t, name, fn, args)
			return err
		})
	})
	return res, err
}

// borrow runs f on a stopped thread: tid, or any stopped thread of a
// stopped process, or (process not stopped, tid 0) one thread stopped for
// the duration of f and released afterwards (with sleeper, preferably one
// blocked in a system call; see stopOne).
func (p *Process) borrow(tid int, sleeper bool, f func(t *thread) error) error {
	var t *thread
	temporary := false
	switch {
	case p.stopped && tid != 0:
		var err error
		if t, err = p.stoppedThread(tid); err != nil {
			return err
		}
	case p.stopped:
		for _, id := range p.order {
			if c := p.threads[id]; c != nil && c.stopped {
				t = c
				break
			}
		}
		if t == nil {
			return p.exited()
		}
	case tid != 0:
		return fmt.Errorf("tracee: pid %d thread %d: %w", p.pid, tid, ErrNotStopped)
	default:
		var err error
		if t, err = p.stopOne(sleeper); err != nil {
			return err
		}
		temporary = true
	}
	err := f(t)
	if temporary {
		if p.threads[t.tid] != nil {
			p.stopped = true
			p.order = []int{t.tid}
			if rerr := p.resumeAll(); err == nil && rerr != nil {
				err = rerr
			}
		}
		p.stopped = false
		p.order = nil
		clear(p.threads)
	}
	return err
}

// fpState is a saved FPU/SSE/AVX register set.
type fpState struct {
	typ  int
	data []byte
}

func saveFP(tid int) (fpState, error) {
	buf := make([]byte, 16<<10)
	if d, err := getRegSet(tid, fpRegSet, buf); err == nil {
		return fpState{fpRegSet, append([]byte(nil), d...)}, nil
	}
	d, err := getRegSet(tid, fpRegSetFallback, buf)
	if err != nil {
		return fpState{}, err
	}
	return fpState{fpRegSetFallback, append([]byte(nil), d...)}, nil
}

func (s fpState) restore(tid int) error { return setRegSet(tid, s.typ, s.data) }

// runCall calls fn on the stopped thread t and restores it.
func (p *Process) runCall(t *thread, name string, fn uint64, args []uint64) (uint64, error) {
	var saved Regs
	if err := getRegs(t.tid, &saved); err != nil {
		return 0, p.threadErr(t.tid, "get registers", err)
	}
	fp, err := saveFP(t.tid)
	if err != nil {
		return 0, p.threadErr(t.tid, "get FP registers", err)
	}
	restore := func() error {
		if p.threads[t.tid] == nil {
			return p.exited()
		}
		if err := setRegs(t.tid, &saved); err != nil {
			return p.threadErr(t.tid, "restore registers", err)
		}
		return p.threadErr(t.tid, "restore FP registers", fp.restore(t.tid))
	}
	// Below the red zone, aligned, then the return address: at the
	// callee's entry (rsp+8) is a multiple of 16, as the ABI wants.
	sp := (saved.SP()-redZone)&^15 - 8
	var ret [8]byte // callReturn, little-endian
	if err := p.writeMem(sp, ret[:]); err != nil {
		return 0, err
	}
	r := saved
	r.setupCall(fn, sp, args)
	if err := setRegs(t.tid, &r); err != nil {
		return 0, p.threadErr(t.tid, "set registers", err)
	}
	res, cerr := p.waitCall(t, name, fn)
	if err := restore(); err != nil {
		return 0, errors.Join(cerr, err)
	}
	return res, cerr
}

// waitCall runs t until the called function returns to callReturn, holding
// the signals that arrive meanwhile.
func (p *Process) waitCall(t *thread, name string, fn uint64) (uint64, error) {
	for {
		if err := cont(t.tid, 0); err != nil {
			return 0, p.threadErr(t.tid, "continue", err)
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
					return 0, fmt.Errorf("tracee: remote call of %s: %w", name, p.exited())
				}
				continue
			}
			if tid != t.tid || !ws.Stopped() {
				continue
			}
			status = ws
			break
		}
		t.inSigStop = false
		if int(status>>16) != 0 {
			continue // PTRACE_EVENT_STOP: a stale interrupt or a group-stop
		}
		t.inSigStop = true
		sig := unix.Signal(status.StopSignal())
		var si unix.Siginfo
		gotInfo := getSiginfo(t.tid, &si) == nil
		var r Regs
		if err := getRegs(t.tid, &r); err != nil {
			return 0, p.threadErr(t.tid, "get registers", err)
		}
		if sig == unix.SIGSEGV && r.PC() == callReturn {
			return r.callResult(), nil
		}
		if crashed(sig, &si, gotInfo, p.pid) {
			ce := &CallError{Name: name, Fn: fn, Tid: t.tid, Sig: sig, PC: r.PC()}
			if sig == unix.SIGSEGV || sig == unix.SIGBUS {
				ce.Addr = siginfoWord(&si)
			}
			return 0, ce
		}
		// A signal for the target: keep it for later, suppress it now.
		t.pending = append(t.pending, pendingSignal{sig: int(sig), info: si, ok: gotInfo})
	}
}

// crashed tells a fault of the called code (a synchronous signal the kernel
// raised, or abort() raising SIGABRT on itself) from a signal someone sent.
func crashed(sig unix.Signal, si *unix.Siginfo, ok bool, pid int) bool {
	switch sig {
	case unix.SIGSEGV, unix.SIGBUS, unix.SIGILL, unix.SIGFPE, unix.SIGTRAP, unix.SIGSYS:
		return !ok || si.Code > 0 // SI_USER/SI_TKILL are <= 0
	case unix.SIGABRT:
		// abort() sends it to itself with tgkill: si_pid is the target.
		return ok && si.Code <= 0 && int(int32(siginfoWord(si))) == pid
	}
	return false
}

// writeMem is WriteMem on the ptrace goroutine.
func (p *Process) writeMem(addr uint64, data []byte) error {
	n := 0
	for n < len(data) {
		m, err := pwrite(p.memfd, data[n:], addr+uint64(n))
		if err == unix.EINTR {
			continue
		}
		if err == nil && m <= 0 {
			err = unix.EIO
		}
		if err != nil {
			return fmt.Errorf("tracee: pid %d: write %d bytes at %#x: %w", p.pid, len(data), addr, err)
		}
		n += m
	}
	return nil
}

// Thread is a thread borrowed for a sequence of remote calls (see Borrow).
type Thread struct {
	p *Process
	t *thread
}

// Tid returns the thread's ID.
func (th *Thread) Tid() int { return th.t.tid }

// Call is Process.Call on this thread.
func (th *Thread) Call(name string, fn uint64, args ...uint64) (uint64, error) {
	if len(args) > maxCallArgs {
		return 0, fmt.Errorf("tracee: remote call of %s: %d arguments, at most %d", name, len(args), maxCallArgs)
	}
	return th.p.runCall(th.t, name, fn, args)
}

// Borrow runs f with one thread borrowed as Call (tid 0) or CallOn (tid)
// would, so that several calls run on the same thread: dlopen then
// dlerror, whose message is thread-local. f runs on the ptrace thread and
// must use only the Thread, never other methods of the Process.
func (p *Process) Borrow(tid int, f func(*Thread) error) error {
	return p.do(func() error {
		return p.borrow(tid, true, func(t *thread) error { return f(&Thread{p, t}) })
	})
}
