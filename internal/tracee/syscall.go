package tracee

import (
	"errors"
	"fmt"
	"sort"

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

// StubReach is how far from a thread's pc its system call stub may lie
// (0: anywhere).
const StubReach = stubReach

// ErrNoPadding is returned when no unused executable bytes are within
// reach of the borrowed thread for a system call stub.
var ErrNoPadding = errors.New("no padding for a system call stub")

// remoteSyscall runs the call on thread tid, or, with tid 0, on a thread of
// the process's choosing and, should that one have no padding within reach
// of its pc (arm64: a B reaches ±128 MiB), on each other thread in turn,
// the process stopped meanwhile.
func (p *Process) remoteSyscall(tid int, name string, nr uint64, args []uint64) (uint64, error) {
	res, err := p.remoteSyscallOn(tid, name, nr, args)
	if tid != 0 || !errors.Is(err, ErrNoPadding) {
		return res, err
	}
	if !p.stopped {
		if p.stopAll() != nil {
			return res, err
		}
		defer p.resumeAll()
	}
	for _, other := range append([]int(nil), p.order...) {
		r, e := p.remoteSyscallOn(other, name, nr, args)
		if !errors.Is(e, ErrNoPadding) {
			return r, e
		}
	}
	return res, err
}

func (p *Process) remoteSyscallOn(tid int, name string, nr uint64, args []uint64) (uint64, error) {
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
//
// The thread never runs the system call instruction of the target's own
// code, whose continuation would run with our registers if the tracer died
// before it put them back. It runs a stub (syscallStub) written into
// padding of an executable mapping (see pad.go): the system call, then code
// that restores the thread's registers by itself and jumps back to where it
// was. With the tracer alive the thread never gets past the system call:
// it is continued with PTRACE_SYSCALL, and at the syscall-exit stop the
// tracer interrupts it, so that it stops again before it returns to user
// space — inside the kernel's signal handling, where its own registers are
// put back (the kernel then restarts an interrupted system call from them,
// as at the stop we took the thread at). The stub bytes are put back once
// the thread is out of them.
//
// A tracer killed at any step leaves a thread that either has not been
// moved yet, or runs the stub from its start, or is inside it: in every
// case it finishes the system call and restores itself. No single-step is
// used: its SIGTRAP would be delivered to the thread, and kill it, if the
// tracer died before it took the trap. The syscall stops carry SIGTRAP|0x80
// (PTRACE_O_TRACESYSGOOD, set at seize): if the tracer dies before it
// waits for one, the kernel's attempt to send that "signal" to the thread
// fails harmlessly, where a plain SIGTRAP would kill it.
func (p *Process) runSyscall(t *thread, nr uint64, args []uint64) (uint64, error) {
	return p.runSyscallMarked(t, nr, args, nil)
}

// runSyscallMarked is runSyscall for a call whose effect must never go
// unrecorded (a mapping): the stub carries an intent record after its code
// (see intentRecord), and mark runs with the call's result while the
// thread is still stopped in the kernel, before the stub is put back. A
// tool killed at any step leaves the intent in padding (see Recover) or
// what mark wrote.
func (p *Process) runSyscallMarked(t *thread, nr uint64, args []uint64, mark func(res uint64) error) (uint64, error) {
	var saved Regs
	if err := getRegs(t.tid, &saved); err != nil {
		return 0, p.threadErr(t.tid, "get registers", err)
	}
	resume := saved.resumeState()
	var intent []byte
	if mark != nil {
		intent = intentRecord(nr, args)
	}
	pieces, err := p.placeSyscallStub(&resume, intent)
	if err != nil {
		return 0, err
	}
	syscallStep()
	putBack := func() { p.putBack(pieces) }
	r := saved
	r.setupSyscallStub(pieces[len(pieces)-1].at, nr, args)
	if err := setRegs(t.tid, &r); err != nil {
		putBack()
		return 0, p.threadErr(t.tid, "set registers", err)
	}
	syscallStep()
	step("syscall:on-stub")
	res, err := p.traceSyscall(t)
	if err != nil {
		if p.threads[t.tid] != nil && setRegs(t.tid, &saved) == nil {
			// Still there and out of the stub.
			putBack()
		}
		return 0, err
	}
	if mark != nil {
		step("syscall:returned")
		if e := int64(res); e >= 0 || e < -4095 {
			err = mark(res)
		}
		step("syscall:marked")
	}
	if err := setRegs(t.tid, &saved); err != nil {
		return 0, p.threadErr(t.tid, "restore registers", err)
	}
	syscallStep()
	putBack()
	syscallStep()
	return res, err
}

// stubPiece is code for a system call in padding: where, the code, and
// the bytes it replaced (once written).
type stubPiece struct {
	at         uint64
	code, orig []byte
}

// testForceHop, when set (by tests), makes every arm64 system call stub
// return through a hop, as one placed out of reach does; testHops counts
// the stubs placed with one.
var (
	testForceHop bool
	testHops     int
)

// placeSyscallStub writes the stub of a system call that returns to resume
// into padding, and returns the pieces written, the stub (its entry) last.
// On arm64 the stub goes within a branch's reach of resume's pc if
// padding there has room for it; if none has, anywhere, with a hop of
// syscallHopSize bytes within reach that it returns through.
func (p *Process) placeSyscallStub(resume *Regs, intent []byte) ([]stubPiece, error) {
	maps, err := readMaps(p.pid)
	if err != nil {
		return nil, p.exited()
	}
	pc := resume.PC()
	size := uint64(syscallStubSize)
	if intent != nil {
		size = (size+7)&^7 + uint64(len(intent))
	}
	stub := func(at, hop uint64) stubPiece {
		c := syscallStub(at, hop, resume)
		if intent != nil {
			c = append(c, make([]byte, (len(c)+7)&^7-len(c))...)
			c = append(c, intent...)
		}
		return stubPiece{at: at, code: c}
	}
	pads := p.findPads(maps, size)
	for _, pd := range pads {
		if at, ok := nearPC(pd, pc, size); ok && !testForceHop {
			if w, ok := p.writePieces(stub(at, 0)); ok {
				return w, nil
			}
		}
	}
	if stubReach == 0 {
		return nil, fmt.Errorf("tracee: pid %d: %w: none of %d bytes in an executable mapping", p.pid, ErrNoPadding, size)
	}
	for _, h := range p.findPads(maps, syscallHopSize) {
		hop, ok := nearPC(h, pc, syscallHopSize)
		if !ok {
			continue
		}
		for _, pd := range pads {
			at := pd.addr
			if at < hop+syscallHopSize && hop < at+size {
				at = (hop + syscallHopSize + 15) &^ 15 // after the hop
			}
			if at+size > pd.addr+pd.size {
				continue
			}
			if w, ok := p.writePieces(stubPiece{at: hop, code: syscallHop(hop, resume)}, stub(at, hop)); ok {
				testHops++
				return w, nil
			}
		}
	}
	return nil, fmt.Errorf("tracee: pid %d: %w: none of %d bytes in an executable mapping, nor %d within %d MiB of pc %#x", p.pid, ErrNoPadding, size, syscallHopSize, stubReach>>20, pc)
}

// nearPC returns where in pd n bytes lie nearest pc, if within stubReach
// of it (stubReach 0: anywhere; at pd's start).
func nearPC(pd pad, pc, n uint64) (uint64, bool) {
	if stubReach == 0 {
		return pd.addr, true
	}
	lo, hi := pd.addr, pd.addr+pd.size-n
	at := min(max(pc&^7, lo), hi) &^ 7
	return at, at >= lo && max(at, pc)-min(at, pc) <= stubReach
}

// writePieces writes each piece's code in turn, and returns them with the
// bytes they replaced; on a failure it puts back what it wrote.
func (p *Process) writePieces(pieces ...stubPiece) ([]stubPiece, bool) {
	for i := range pieces {
		pc := &pieces[i]
		pc.orig = make([]byte, len(pc.code))
		if n, _ := p.readMem(pc.orig, pc.at); n != len(pc.orig) {
			p.putBack(pieces[:i])
			return nil, false
		}
		if err := p.writeMem(pc.at, pc.code); err != nil {
			p.putBack(pieces[:i+1])
			return nil, false
		}
	}
	return pieces, true
}

// putBack writes back the bytes the pieces replaced, the last first.
func (p *Process) putBack(pieces []stubPiece) {
	for i := len(pieces) - 1; i >= 0; i-- {
		_ = p.writeMem(pieces[i].at, pieces[i].orig)
	}
}

// syscallStop is the stop signal of a syscall-entry or -exit stop
// (PTRACE_O_TRACESYSGOOD).
const syscallStop = int(unix.SIGTRAP) | 0x80

// isRestart reports a system call result that the kernel turns into a
// restart of the call (-ERESTARTSYS, -ERESTARTNOINTR, -ERESTARTNOHAND,
// -ERESTART_RESTARTBLOCK): a signal interrupted it.
func isRestart(res uint64) bool {
	e := -int64(res)
	return e >= 512 && e <= 516
}

// traceSyscall runs t, set up on a system call stub, through the system
// call, holding the signals that arrive meanwhile, and returns the call's
// result with the thread stopped again before it left the kernel (in a
// PTRACE_EVENT_STOP or a signal-delivery-stop, where setRegs of its own
// registers resumes it as if nothing happened).
func (p *Process) traceSyscall(t *thread) (uint64, error) {
	inCall := false // between the syscall-entry and -exit stops
	over := false   // past the syscall-exit stop, interrupted
	var res uint64
	resume := func() error {
		var err error
		if over {
			err = cont(t.tid, 0)
		} else {
			err = contSyscall(t.tid)
		}
		if err != nil {
			return p.threadErr(t.tid, "continue", err)
		}
		syscallStep()
		return nil
	}
	if err := resume(); err != nil {
		return 0, err
	}
	for {
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
		syscallStep()
		t.inSigStop = false
		ev, sig := int(status>>16), int(status.StopSignal())
		switch {
		case ev != 0:
			// PTRACE_EVENT_STOP: our interrupt once the call is over;
			// before, a stale interrupt or a group-stop.
			if over {
				return res, nil
			}
		case sig == syscallStop && !inCall:
			inCall = true
		case sig == syscallStop:
			inCall = false
			var r Regs
			if err := getRegs(t.tid, &r); err != nil {
				return 0, p.threadErr(t.tid, "get registers", err)
			}
			if res = r.syscallResult(); !isRestart(res) {
				// Done: stop the thread before it returns to user space.
				if err := interrupt(t.tid); err != nil {
					return 0, p.threadErr(t.tid, "interrupt", err)
				}
				syscallStep()
				over = true
			}
			// Else a signal interrupted the call: the kernel restarts it
			// once the signal is dealt with (held, below).
		default:
			// A signal for the target: keep it for later, suppress it now.
			var si unix.Siginfo
			gotInfo := getSiginfo(t.tid, &si) == nil
			t.pending = append(t.pending, pendingSignal{sig: sig, info: si, ok: gotInfo})
			if over {
				// A signal-delivery-stop also lies before the return to
				// user space: done (our interrupt, now stale, is
				// dropped by the next stop or the detach).
				t.inSigStop = true
				return res, nil
			}
		}
		if err := resume(); err != nil {
			return 0, err
		}
	}
}

// testHookSyscallStep, when set (by tests), runs after each step of a
// remote system call.
var testHookSyscallStep func()

func syscallStep() {
	if testHookSyscallStep != nil {
		testHookSyscallStep()
	}
}
