package tracee

import (
	"errors"
	"fmt"
	"time"

	"golang.org/x/sys/unix"
)

// ErrCallCrashed is matched by every *CallError.
var ErrCallCrashed = errors.New("remote call crashed")

// ErrCallThreadState is returned when the borrowed thread holds state a
// remote call could not put back exactly (arm64: live SVE or streaming-mode
// registers); nothing was changed in the target.
var ErrCallThreadState = errors.New("thread state cannot be carried through a remote call")

// ErrCallRanOn is returned by a call made in a stop (Routine.Run) whose
// thread ran some of its own code after the call, before the tracer stopped
// it again (the stub's system call was not seen): what the call computed
// may no longer describe the target.
var ErrCallRanOn = errors.New("tracee: the borrowed thread ran its own code after the call")

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

// pageSize is the target's page size (x86-64 and arm64 Linux: 4 KiB at
// least; mappings here are rounded to it).
const pageSize = 4096

// Call calls the function at fn in the target with up to maxCallArgs (six
// on x86-64, eight on arm64) integer or pointer arguments and returns its integer result. When the process is
// stopped (Stop), it borrows a stopped thread (the leader first) and only
// that thread runs during the call; otherwise it stops one thread for the
// call while the others keep running — which is what a function that takes
// locks (dlopen, malloc) needs, since a lock held by a stopped thread would
// never be released. That thread is one blocked in a system call when there
// is one (the leader first): a thread interrupted in user code might hold a
// lock the called function needs, and the call would then deadlock.
//
// The thread's general-purpose registers (with the syscall-restart state,
// orig_rax on x86-64), its whole FP/SIMD state and its signal mask are
// saved and restored exactly: a thread that was blocked in a system call
// restarts it afterwards. The call runs below the thread's stack pointer
// and red zone, on a 16-byte aligned stack, and returns into a stub (in
// memory mapped for the call) that restores the thread by itself: a tracer
// killed during the call leaves the target running correctly. Nothing is
// written into the target's own code.
// Signals that reach the thread during the call are held and delivered
// when it is resumed. A call that crashes returns a *CallError.
//
// One piece of kernel state is the callee's to keep: a thread stopped
// while it continues an interrupted sleep through restart_syscall (a
// nanosleep or a timed futex wait stopped, resumed and stopped again)
// resumes it afterwards only if the called function does not itself call
// nanosleep or a timed wait, which reset the thread's restart block; its
// sleep then returns EINTR, as it would after a signal handler.
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
			res, err = p.runCall(t, name, fn, 0, args)
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
	case p.held:
		// Held threads are ours already: stop them all for the call, on
		// the thread stopOne would choose: with sleeper, one blocked in a
		// system call (in a C program: in libc, whose padding a stub
		// needs within a branch's reach on arm64; the first thread may be
		// busy in an executable with too little).
		pick := 0
		if sleeper {
			pick = p.sleeping()
		}
		if err := p.stopAll(); err != nil {
			return err
		}
		if pick != 0 && (p.threads[pick] == nil || !p.threads[pick].stopped) {
			pick = 0
		}
		err := p.borrow(pick, sleeper, f)
		if rerr := p.resumeAll(); err == nil {
			err = rerr
		}
		return err
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

// fpState is a saved FP/SIMD register set (x86-64: XSAVE or FXSAVE image;
// arm64: user_fpsimd_state).
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

// callState is what a remote call saves of the borrowed thread: the stub
// restores it by itself, and the tracer through ptrace when the callee
// crashes or the thread is caught inside the stub.
type callState struct {
	regs    Regs // at the stop
	resume  Regs // where the thread continues (regs.resumeState())
	fp      fpState
	sigmask uint64 // blocked signals
	// restart: the thread continues into restart_syscall, which the stub
	// must run itself (arm64; see archPrepare).
	restart bool
}

// saveCall saves t's state for a remote call, or refuses a thread whose
// state a call could not carry through.
func (p *Process) saveCall(t *thread) (*callState, error) {
	s := &callState{}
	if err := getRegs(t.tid, &s.regs); err != nil {
		return nil, p.threadErr(t.tid, "get registers", err)
	}
	var err error
	if s.fp, err = saveFP(t.tid); err != nil {
		return nil, p.threadErr(t.tid, "get FP registers", err)
	}
	if s.sigmask, err = getSigmask(t.tid); err != nil {
		return nil, p.threadErr(t.tid, "get signal mask", err)
	}
	s.resume = s.regs.resumeState()
	if err := p.archPrepare(t, s); err != nil {
		return nil, err
	}
	return s, nil
}

// restore puts the saved state back through ptrace.
func (s *callState) restore(tid int) error {
	if err := setRegs(tid, &s.regs); err != nil {
		return fmt.Errorf("restore registers: %w", err)
	}
	if err := s.fp.restore(tid); err != nil {
		return fmt.Errorf("restore FP registers: %w", err)
	}
	if err := setSigmask(tid, s.sigmask); err != nil {
		return fmt.Errorf("restore signal mask: %w", err)
	}
	return nil
}

// runCall calls fn on the stopped thread t and puts the thread back.
//
// The function returns into a stub in memory mapped for the call (code
// read+execute, data read+write), which stores the result, restores every
// register and the FP state of the interrupted thread — restarting an
// interrupted system call as the kernel would — and jumps back. The tracer
// only watches: it holds the signals that arrive, catches a crash (and then
// restores the thread through ptrace), and polls the stub's done flag.
// Because the thread restores itself, a tracer killed mid-call (SIGKILL)
// leaves a target that runs on correctly.
//
// With store not 0, the stub also writes the result at that address of
// the target (8 bytes, writable) before anything else: the target itself
// records it, so that a tracer killed during the call or right after it
// loses nothing (a library handle, say).
func (p *Process) runCall(t *thread, name string, fn, store uint64, args []uint64) (uint64, error) {
	c, err := p.prepareCall(t, name, fn, store, args, nil)
	if err != nil {
		return 0, err
	}
	return p.finishCall(c, false)
}

// callPages is memory mapped beforehand for a remote call (a Routine's):
// the return stub goes at code, the call's data at data (dataSize bytes),
// and the callee runs on its own stack below stackTop rather than below the
// thread's stack pointer. Its stub parks the thread (returnStub) and the
// call fails with ErrCallRanOn if the thread ran its own code before the
// tracer stopped it again.
type callPages struct {
	code, stubSize, data, dataSize, stackTop uint64
}

// pendingCall is a remote call set up on its thread (prepareCall), not yet
// waited for (finishCall).
type pendingCall struct {
	t                           *thread
	name                        string
	fn                          uint64
	s                           *callState
	dataAddr, codeAddr, stubLen uint64
	park                        bool
	free                        func()
}

// prepareCall sets up a call of fn on the stopped thread t: its state
// saved, the stub and the call's data written, its registers set. The
// thread is not continued.
func (p *Process) prepareCall(t *thread, name string, fn, store uint64, args []uint64, at *callPages) (*pendingCall, error) {
	s, err := p.saveCall(t)
	if err != nil {
		return nil, fmt.Errorf("tracee: remote call of %s: %w", name, err)
	}
	data := ctxData(s)
	var dataAddr, codeAddr uint64
	free := func() {}
	sp := s.regs.SP()
	if at != nil {
		if uint64(len(data)) > at.dataSize {
			return nil, fmt.Errorf("tracee: remote call of %s: the thread's state (%d bytes) does not fit in %d", name, len(data), at.dataSize)
		}
		dataAddr, codeAddr, sp = at.data, at.code, at.stackTop
	} else {
		dataSize := (uint64(len(data)) + ScratchFooterSize + pageSize - 1) &^ (pageSize - 1)
		// Scratch: a tool killed before it unmaps them leaves pages a later
		// one finds (and removes once no task runs in them).
		if dataAddr, err = p.mmapScratch(t, dataSize, ProtRead|ProtWrite); err != nil {
			return nil, err
		}
		step("call:data-mapped")
		if codeAddr, err = p.mmapScratch(t, pageSize, ProtRead|ProtExec); err != nil {
			p.runSyscallErr(t, "munmap", sysMunmap, dataAddr, dataSize)
			return nil, err
		}
		free = func() {
			// The thread is stopped outside the stub: nothing uses the pages.
			p.runSyscallErr(t, "munmap", sysMunmap, codeAddr, pageSize)
			p.runSyscallErr(t, "munmap", sysMunmap, dataAddr, dataSize)
		}
	}
	stub := returnStub(dataAddr, store, s, at != nil)
	if at != nil && uint64(len(stub)) > at.stubSize {
		return nil, fmt.Errorf("tracee: remote call of %s: a return stub of %d bytes, room for %d", name, len(stub), at.stubSize)
	}
	// The callee's stack and what the ABI wants on it (x86-64: the return
	// address; arm64: nothing, the return address goes in x30).
	sp, push := callStack(sp, codeAddr)
	err = p.writeMem(dataAddr, data)
	if err == nil {
		err = p.writeMem(codeAddr, stub)
	}
	if err == nil && len(push) > 0 {
		err = p.writeMem(sp, push)
	}
	if err != nil {
		free()
		return nil, err
	}
	r := s.regs
	r.setupCall(fn, sp, codeAddr, args)
	if err := setRegs(t.tid, &r); err != nil {
		free()
		return nil, p.threadErr(t.tid, "set registers", err)
	}
	step("call:set-up")
	return &pendingCall{t: t, name: name, fn: fn, s: s, dataAddr: dataAddr, codeAddr: codeAddr,
		stubLen: uint64(len(stub)), park: at != nil, free: free}, nil
}

// finishCall runs a prepared call (continued already when started) to its
// end and puts its thread back.
func (p *Process) finishCall(c *pendingCall, started bool) (uint64, error) {
	res, cerr := p.waitCall(c, started)
	step("call:returned")
	if p.threads[c.t.tid] == nil {
		return 0, cerr // gone: nothing left to free
	}
	c.free()
	return res, cerr
}

// runSyscallErr is runSyscall with errno results as *SyscallError.
func (p *Process) runSyscallErr(t *thread, name string, nr uint64, args ...uint64) (uint64, error) {
	res, err := p.runSyscall(t, nr, args)
	if err != nil {
		return 0, err
	}
	if e := int64(res); e < 0 && e >= -4095 {
		return 0, &SyscallError{Name: name, Errno: uint64(-e)}
	}
	return res, nil
}

// inStub reports whether pc lies in the return stub.
func inStub(pc, codeAddr, codeLen uint64) bool { return pc >= codeAddr && pc < codeAddr+codeLen }

// waitCall runs c's thread until the stub reports the call done and the
// thread is stopped again outside the stub, holding the signals that
// arrive meanwhile. If the called code crashes, it restores the thread
// through ptrace and returns a *CallError.
//
// started: the thread was continued already (calls run side by side).
// With c.park (a parking stub, callPages), the thread runs through
// PTRACE_SYSCALL (contSyscall) and the tracer sleeps in wait4 until the stub's
// getpid stops it at its entry: the call is over, the thread is interrupted
// in the stub and put back there. A thread stopped outside the stub ran
// its own code meanwhile: ErrCallRanOn. Without park, the tracer polls the
// done flag.
func (p *Process) waitCall(c *pendingCall, started bool) (uint64, error) {
	w := &callWait{p: p, c: c, backoff: 10 * time.Microsecond}
	if !started {
		if err := w.run(); err != nil {
			return 0, err
		}
	}
	for {
		opts := unix.WNOHANG
		if c.park {
			opts = 0 // the stub's getpid stops it: no polling
		}
		tid, ws, err := wait4(c.t.tid, opts)
		if err != nil {
			if err == unix.ECHILD {
				p.lost(c.t.tid)
				return 0, fmt.Errorf("tracee: remote call of %s: %w", c.name, p.exited())
			}
			return 0, fmt.Errorf("tracee: pid %d: wait: %w", p.pid, err)
		}
		if tid != c.t.tid {
			if err := w.poll(); err != nil {
				return 0, err
			}
			continue
		}
		if ws.Exited() || ws.Signaled() {
			delete(p.threads, tid)
			return 0, fmt.Errorf("tracee: remote call of %s: %w", c.name, p.exited())
		}
		if !ws.Stopped() {
			continue
		}
		c.t.inSigStop = false
		var r Regs
		if err := getRegs(c.t.tid, &r); err != nil {
			return 0, p.threadErr(c.t.tid, "get registers", err)
		}
		var over bool
		var res uint64
		switch {
		case int(ws>>16) != 0:
			res, over, err = w.eventStop(r)
		case c.park && int(ws.StopSignal()) == syscallStop:
			err = w.syscallStop(r)
		default:
			res, over, err = w.signalStop(unix.Signal(ws.StopSignal()), r)
		}
		if over || err != nil {
			return res, err
		}
	}
}

// callWait is the state of a waitCall.
type callWait struct {
	p      *Process
	c      *pendingCall
	result [16]byte // the call's result and flags, once read
	// done: the call is over; interrupted: the thread was asked to
	// stop (PTRACE_INTERRUPT) since.
	done, interrupted bool
	lost              error // a parked call's result that could not be read
	backoff           time.Duration
}

// run continues the thread: through PTRACE_SYSCALL while a parked call
// runs, else PTRACE_CONT.
func (w *callWait) run() error {
	var err error
	if w.c.park && !w.done {
		err = contSyscall(w.c.t.tid)
	} else {
		err = cont(w.c.t.tid, 0)
	}
	if err != nil {
		return w.p.threadErr(w.c.t.tid, "continue", err)
	}
	return nil
}

// interrupt asks the thread to stop.
func (w *callWait) interrupt() error {
	if err := interrupt(w.c.t.tid); err != nil {
		return w.p.threadErr(w.c.t.tid, "interrupt", err)
	}
	w.interrupted = true
	return nil
}

// poll handles a wait with no event (a call that is not parked): once the
// done flag is set the thread is interrupted, else the tracer sleeps a
// little.
func (w *callWait) poll() error {
	if !w.done {
		if n, _ := w.p.readMem(w.result[:], w.c.dataAddr); n == len(w.result) && w.result[ctxDone] == 1 {
			w.done = true
			w.backoff = 10 * time.Microsecond
		}
	}
	if w.done && !w.interrupted {
		return w.interrupt()
	}
	time.Sleep(w.backoff)
	w.backoff = min(2*w.backoff, 500*time.Microsecond)
	return nil
}

// eventStop handles a PTRACE_EVENT_STOP at r: our interrupt, which ends
// the call (over), or a group-stop before it.
func (w *callWait) eventStop(r Regs) (res uint64, over bool, err error) {
	c := w.c
	if !w.interrupted {
		return 0, false, w.run()
	}
	res = binaryLE(w.result[ctxResult:])
	if inStub(r.PC(), c.codeAddr, c.stubLen) {
		// The call is over, the thread still in the stub's last
		// instructions: put it back ourselves. It is never
		// single-stepped out: the step's SIGTRAP would kill it if we
		// died before taking the trap.
		if err := c.s.restore(c.t.tid); err != nil {
			return 0, true, w.p.threadErr(c.t.tid, "leave the return stub", err)
		}
		if w.lost != nil {
			return 0, true, w.lost
		}
		return res, true, nil
	}
	if c.park {
		return res, true, fmt.Errorf("tracee: remote call of %s on thread %d: %w", c.name, c.t.tid, ErrCallRanOn)
	}
	return res, true, nil
}

// syscallStop handles a system call's entry or exit stop of a parked call
// at r: in the stub, its getpid (the stub's first system call), which ends
// the call; else one of the callee's own.
func (w *callWait) syscallStop(r Regs) error {
	c := w.c
	if !w.done && inStub(r.PC(), c.codeAddr, c.stubLen) {
		// Interrupted at its entry, the thread stops once the getpid
		// is done, before it returns to user space.
		if err := w.interrupt(); err != nil {
			return err
		}
		w.done = true
		step("call:parked")
		if n, err := w.p.readMem(w.result[:], c.dataAddr); n < len(w.result) || w.result[ctxParked] != 1 {
			// The call's data is gone or was not written: no result to
			// trust. The thread is put back all the same.
			w.lost = fmt.Errorf("tracee: remote call of %s on thread %d: its result cannot be read (%v)", c.name, c.t.tid, err)
		}
	}
	return w.run()
}

// signalStop handles a signal-delivery-stop at r: a crash of the callee
// ends the call with a *CallError (over), the thread restored; a signal
// for the target is held for later.
func (w *callWait) signalStop(sig unix.Signal, r Regs) (res uint64, over bool, err error) {
	c := w.c
	var si unix.Siginfo
	gotInfo := getSiginfo(c.t.tid, &si) == nil
	c.t.inSigStop = true
	if !w.done && crashed(sig, &si, gotInfo, w.p.pid) {
		ce := &CallError{Name: c.name, Fn: c.fn, Tid: c.t.tid, Sig: sig, PC: r.PC()}
		if sig == unix.SIGSEGV || sig == unix.SIGBUS {
			ce.Addr = siginfoWord(&si)
		}
		// At this signal-delivery-stop the kernel restarts an
		// interrupted system call itself once the registers are back
		// (x86-64; on arm64 they already hold the restart).
		if err := c.s.restore(c.t.tid); err != nil {
			return 0, true, errors.Join(ce, w.p.threadErr(c.t.tid, "restore the thread", err))
		}
		return 0, true, ce
	}
	// A signal for the target: keep it for later, suppress it now.
	c.t.pending = append(c.t.pending, pendingSignal{sig: int(sig), info: si, ok: gotInfo})
	if err := w.run(); err != nil {
		return 0, false, err
	}
	if w.interrupted {
		// This stop cleared our pending PTRACE_INTERRUPT (any trap
		// does): ask again, or the thread would never stop.
		return 0, false, w.interrupt()
	}
	return 0, false, nil
}

// binaryLE decodes a little-endian uint64.
func binaryLE(b []byte) uint64 {
	var v uint64
	for i := 7; i >= 0; i-- {
		v = v<<8 | uint64(b[i])
	}
	return v
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
	return th.p.runCall(th.t, name, fn, 0, args)
}

// CallStore is Call whose result the target itself also writes at store
// (8 writable bytes of its memory) as the callee returns, before the
// tracer sees it: a tracer killed during or right after the call leaves
// the result there.
func (th *Thread) CallStore(name string, fn, store uint64, args ...uint64) (uint64, error) {
	if len(args) > maxCallArgs {
		return 0, fmt.Errorf("tracee: remote call of %s: %d arguments, at most %d", name, len(args), maxCallArgs)
	}
	return th.p.runCall(th.t, name, fn, store, args)
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

// sleeping returns a thread of the process blocked in the kernel (state
// S), the leader first, or 0.
func (p *Process) sleeping() int {
	for _, tid := range p.order {
		if p.threads[tid] != nil && taskState(p.pid, tid) == 'S' {
			return tid
		}
	}
	return 0
}
