package tracee

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// ErrNoProcess is returned when the process does not exist (or exited).
var ErrNoProcess = errors.New("no such process")

// ErrExited is returned when the process exits while it is being stopped,
// resumed or operated on. errors.Is(ErrExited, ErrNoProcess) is true.
var ErrExited = fmt.Errorf("process exited: %w", ErrNoProcess)

// ErrNotStopped is returned by operations that need a thread stopped by Stop
// (GetRegs, SetRegs) when it is not.
var ErrNotStopped = errors.New("tracee: thread is not stopped (call Stop first)")

// ErrStopped is returned by operations meant for a running process
// (Routine.RunAside) when it is stopped or held: run them in the stop.
var ErrStopped = errors.New("tracee: process is stopped or held (this runs beside a running process)")

// ErrClosed is returned by every method called after Close.
var ErrClosed = errors.New("tracee: process handle is closed")

// ErrPermission is matched (errors.Is) by every *PermissionError.
var ErrPermission = errors.New("permission denied")

// PermissionError says why the caller may not trace the process.
type PermissionError struct {
	Pid int
	// Reason is one of: "ptrace_scope=N" (Yama), "not dumpable",
	// "owned by uid U, we are uid V", "already traced by pid P", or the raw
	// errno text.
	Reason string
	// Hint says what to do about it.
	Hint string
	// Err is the kernel's refusal (EPERM, EACCES) when one was seen, nil
	// when the facts alone (Yama, uids) decided.
	Err error
}

func (e *PermissionError) Error() string {
	return fmt.Sprintf("tracee: cannot trace pid %d: %s (%s)", e.Pid, e.Reason, e.Hint)
}

// Is reports target == ErrPermission.
func (e *PermissionError) Is(target error) bool { return target == ErrPermission }

// Unwrap returns the kernel's refusal, if any.
func (e *PermissionError) Unwrap() error { return e.Err }

// SyscallError is a system call that ran inside the target and failed.
type SyscallError struct {
	Name  string // "mmap", "munmap", ...
	Errno uint64 // positive errno value
}

func (e *SyscallError) Error() string {
	return fmt.Sprintf("tracee: remote %s failed: errno %d (%v)", e.Name, e.Errno, unix.Errno(e.Errno))
}

// Unwrap returns the errno as a syscall.Errno, so that errors.Is(err,
// syscall.EINVAL) works.
func (e *SyscallError) Unwrap() error { return unix.Errno(e.Errno) }

// Process is a target process. Create one with Open. All methods are safe for
// use from any goroutine (they are funneled to one locked OS thread).
type Process struct {
	pid  int
	reqs chan func()
	quit chan struct{}
	// loopG identifies the ptrace goroutine (its getg) while it serves
	// requests (0 otherwise): a call from it runs at once (see do).
	// exclusive: it runs an Exclusive f.
	loopG     atomic.Uintptr
	exclusive atomic.Bool
	memfd     int // /proc/PID/mem, O_RDWR, flock'ed; -1 after Close
	id        identity

	// Everything below is owned by the ptrace goroutine.
	closed   bool
	stopped  bool
	threads  map[int]*thread
	order    []int // leader first
	pollMode bool  // another child of the ptrace thread has pending events
	tid      int   // the ptrace thread
	// held: the threads stay seized between stops (Hold); complete: every
	// thread of the process is known (see stopAll); sigch wakes the ptrace
	// goroutine to service the held threads (hold.go); respawn: the ptrace
	// thread exits after the current request, detaching every tracee,
	// and a new one takes over.
	held, complete, respawn bool
	sigch                   chan os.Signal
	// objects caches the ELF segments of the target's mapped objects by
	// "start path" of their first mapping (system call stubs, pad.go).
	objects map[string]*object
}

// thread is one traced thread.
type thread struct {
	tid     int
	stopped bool // in a ptrace-stop we caused (or a group-stop)
	// groupStop is the stop signal when the thread reported a group-stop
	// (the process was SIGSTOP'd); 0 for our own interrupt stop.
	groupStop int
	// inSigStop: the current stop is a signal-delivery-stop, where a signal
	// (with its siginfo) can be injected on detach.
	inSigStop bool
	// pending are signals that arrived while the thread ran a remote system
	// call; they are delivered again when the thread is detached.
	pending []pendingSignal
}

type pendingSignal struct {
	sig  int
	info unix.Siginfo
	ok   bool // info is valid
}

// Open checks that the caller may trace pid (existence, Yama ptrace_scope,
// dumpable, uid) without attaching. It returns ErrNoProcess,
// ErrKernelThread or a *PermissionError when not.
//
// The Process is bound to the process pid names now: if that one exits and
// another takes its PID, every stop and batched read fails with
// ErrPIDReused instead of touching the other (memory goes through the
// /proc/PID/mem opened here, which never reaches another process).
//
// It also takes the process's lock, held until Close (or the death of this
// program): a second Open of the same process, here or in another program,
// waits for it as long as LockWait says (default: not at all), then returns
// a *BusyError.
func Open(pid int, opts ...Option) (*Process, error) {
	var c openConfig
	for _, o := range opts {
		o(&c)
	}
	if pid <= 0 {
		return nil, fmt.Errorf("tracee: pid %d: %w", pid, ErrNoProcess)
	}
	id, err := newIdentity(pid)
	if err != nil {
		return nil, err
	}
	memfd, err := checkAccess(pid)
	if err == nil {
		// /proc/PID/mem was opened on the process the identity pins.
		if err = id.same(pid); err != nil {
			unix.Close(memfd)
		}
	}
	if err == nil {
		if err = lock(pid, memfd, c.lockWait); err != nil {
			unix.Close(memfd)
		}
	}
	if err != nil {
		id.close()
		return nil, err
	}
	p := &Process{
		pid:     pid,
		id:      id,
		reqs:    make(chan func()),
		quit:    make(chan struct{}),
		memfd:   memfd,
		threads: map[int]*thread{},
	}
	go p.loop()
	return p, nil
}

// loop is the ptrace goroutine. It never unlocks its OS thread, so that when
// it returns the thread exits, and the kernel detaches anything still traced
// by it (a safety net: nothing is ever left stopped by a closed Process).
func (p *Process) loop() {
	runtime.LockOSThread()
	// Not on the main thread, if the scheduler lets us off it: that one
	// never exits (see canExit), so a hold on it ends with a stop.
	for i := 0; i < 20 && unix.Gettid() == os.Getpid(); i++ {
		runtime.UnlockOSThread()
		time.Sleep(50 * time.Microsecond)
		runtime.LockOSThread()
	}
	p.tid = unix.Gettid()
	g := getg()
	p.loopG.Store(g)
	defer p.loopG.CompareAndSwap(g, 0) // unless a respawned loop took over
	p.pollMode = false                 // a new thread has no other children
	tick := time.NewTimer(serviceTick)
	defer tick.Stop()
	for {
		var wake <-chan os.Signal
		var ticks <-chan time.Time
		if p.held && !p.stopped {
			wake, ticks = p.sigch, tick.C
			tick.Reset(serviceTick)
		}
		select {
		case f := <-p.reqs:
			f()
		case <-wake:
		case <-ticks:
		case <-p.quit:
			return
		}
		if p.held && !p.stopped {
			p.service()
		}
		if p.respawn {
			p.respawn = false
			go p.loop()
			return // the kernel detaches what this thread traced
		}
	}
}

// do runs f on the ptrace goroutine and waits for it; called on the ptrace
// goroutine (within an Exclusive f), it runs f at once.
func (p *Process) do(f func() error) error {
	if p.onLoop() {
		if p.closed {
			return ErrClosed
		}
		return f()
	}
	var err error
	done := make(chan struct{})
	g := func() {
		defer close(done)
		if p.closed {
			err = ErrClosed
			return
		}
		err = f()
	}
	select {
	case p.reqs <- g:
	case <-p.quit:
		return ErrClosed
	}
	<-done
	return err
}

// onLoop reports whether the caller is the ptrace goroutine (the only one
// its locked OS thread runs), without a system call: it is asked on every
// call into the Process, several times in each pause.
func (p *Process) onLoop() bool {
	g := p.loopG.Load()
	return g != 0 && getg() == g
}

// Exclusive runs f on the ptrace goroutine, where every call f makes on p
// runs at once instead of being handed to it and waited for: a pause (stop,
// registers, check, writes, resume) is then one hand-off, not ten, each
// of which costs thread wake-ups — tens of microseconds on a loaded
// machine, more than the work. Meanwhile the calls of other goroutines
// wait; their reads (ReadAt) go on, without the /proc/PID/mem fallback
// that would wait for the ptrace goroutine. So f must not wait for another
// goroutine that calls p but to read. A panic in f is raised again in the
// caller.
func (p *Process) Exclusive(f func() error) error {
	var panicked any
	err := p.do(func() error {
		was := p.exclusive.Swap(true)
		defer func() {
			p.exclusive.Store(was)
			panicked = recover()
		}()
		return f()
	})
	if panicked != nil {
		panic(panicked)
	}
	return err
}

// Paused stops the process, runs f and resumes it, all in one hand-off to
// the ptrace goroutine (Exclusive), and returns how long the process was
// stopped (0 when it could not be stopped) and Stop's error, or f's and
// Resume's.
func (p *Process) Paused(f func() error) (time.Duration, error) {
	var pause time.Duration
	err := p.Exclusive(func() error {
		start := time.Now()
		if err := p.Stop(); err != nil {
			return err
		}
		err := f()
		rerr := p.Resume()
		pause = time.Since(start)
		return errors.Join(err, rerr)
	})
	return pause, err
}

// Pid returns the process ID.
func (p *Process) Pid() int { return p.pid }

// Stop seizes and interrupts every thread of the process and waits until all
// are stopped, including threads created while stopping. Signals that arrive
// meanwhile are re-delivered, never lost. On error nothing is left stopped.
// Stop on a stopped process does nothing.
//
// A process that is in a group-stop (SIGSTOP) is stopped as well; Resume
// leaves it in its group-stop (the kernel reinstates it on detach).
func (p *Process) Stop() error { return p.do(p.stopAll) }

// Stopped reports whether the process is currently stopped by Stop.
func (p *Process) Stopped() bool {
	var s bool
	_ = p.do(func() error { s = p.stopped; return nil })
	return s
}

// Threads returns the thread IDs stopped by the last Stop, leader first.
// It is empty when the process is not stopped.
func (p *Process) Threads() []int {
	var out []int
	_ = p.do(func() error {
		if p.stopped {
			out = append([]int(nil), p.order...)
		}
		return nil
	})
	return out
}

// CountThreads returns how many threads the process has now, stopped or
// not (from /proc: a thread may be born or exit right after).
func (p *Process) CountThreads() (int, error) {
	tids, err := listTasks(p.pid)
	return len(tids), err
}

// Resume restarts every thread stopped by Stop and detaches from it.
// If the process died while stopped, Resume reaps what is left and returns
// an error matching ErrExited.
func (p *Process) Resume() error { return p.do(p.resumeAll) }

// Close resumes the process if stopped and releases the ptrace thread.
func (p *Process) Close() error {
	old := 0 // the ptrace thread, when its exit detaches held threads
	err := p.do(func() error {
		err := p.resumeAll()
		if p.held && !p.canExit() {
			err = errors.Join(err, p.detachHeld())
		} else if p.held {
			old = p.tid
		}
		p.endHold() // held threads are detached as the ptrace thread exits
		p.closed = true
		if p.memfd >= 0 {
			unix.Close(p.memfd) // drops the lock
			p.memfd = -1
		}
		p.id.close()
		close(p.quit)
		return err
	})
	if old != 0 {
		waitThreadGone(old)
	}
	if err == ErrClosed {
		return nil
	}
	return err
}

// GetRegs reads the registers of a stopped thread.
func (p *Process) GetRegs(tid int) (Regs, error) {
	var r Regs
	err := p.do(func() error {
		if _, err := p.stoppedThread(tid); err != nil {
			return err
		}
		return p.threadErr(tid, "get registers", getRegs(tid, &r))
	})
	return r, err
}

// AllRegs reads the registers of every stopped thread in one request to the
// ptrace thread (each request is a hand-off to that locked OS thread, which
// costs tens of microseconds on a busy machine: per-thread GetRegs calls
// would add that to the pause once per thread). Keys are thread IDs.
func (p *Process) AllRegs() (map[int]Regs, error) {
	out := map[int]Regs{}
	err := p.do(func() error {
		if !p.stopped {
			return fmt.Errorf("tracee: pid %d: %w", p.pid, ErrNotStopped)
		}
		for _, tid := range p.order {
			if t := p.threads[tid]; t == nil || !t.stopped {
				continue
			}
			var r Regs
			if err := getRegs(tid, &r); err != nil {
				return p.threadErr(tid, "get registers", err)
			}
			out[tid] = r
		}
		return nil
	})
	return out, err
}

// SetRegs writes the registers of a stopped thread.
func (p *Process) SetRegs(tid int, r Regs) error {
	return p.do(func() error {
		if _, err := p.stoppedThread(tid); err != nil {
			return err
		}
		return p.threadErr(tid, "set registers", setRegs(tid, &r))
	})
}

func (p *Process) stoppedThread(tid int) (*thread, error) {
	t := p.threads[tid]
	if !p.stopped || t == nil || !t.stopped {
		return nil, fmt.Errorf("tracee: pid %d thread %d: %w", p.pid, tid, ErrNotStopped)
	}
	return t, nil
}

// threadErr decorates an error of a ptrace request on tid.
func (p *Process) threadErr(tid int, what string, err error) error {
	if err == nil {
		return nil
	}
	if err == unix.ESRCH {
		return fmt.Errorf("tracee: pid %d thread %d: %s: %w", p.pid, tid, what, ErrExited)
	}
	return fmt.Errorf("tracee: pid %d thread %d: %s: %w", p.pid, tid, what, err)
}

// Mmap maps memory in the target (see mmap(2)); addr is a hint unless flags
// contain MAP_FIXED_NOREPLACE.
func (p *Process) Mmap(addr, length uint64, prot, flags int) (uint64, error) {
	return p.Syscall("mmap", sysMmap, addr, length, uint64(prot), uint64(flags), ^uint64(0), 0)
}

// Munmap unmaps memory in the target.
func (p *Process) Munmap(addr, length uint64) error {
	_, err := p.Syscall("munmap", sysMunmap, addr, length)
	return err
}

// Mprotect changes protection of memory in the target.
func (p *Process) Mprotect(addr, length uint64, prot int) error {
	_, err := p.Syscall("mprotect", sysMprotect, addr, length, uint64(prot))
	return err
}

// MemfdCreate creates an anonymous file in the target (memfd_create(2))
// and returns its descriptor there. name is the address of its
// NUL-terminated name in the target's memory (maps show "/memfd:NAME").
func (p *Process) MemfdCreate(name uint64, flags int) (int, error) {
	fd, err := p.Syscall("memfd_create", sysMemfdCreate, name, uint64(flags))
	return int(fd), err
}

// MemfdCreateMarked is MemfdCreate whose result is recorded in the
// target before the tracer may lose it: its system call stub carries an
// intent record (see runSyscallMarked), and with the thread still stopped
// in the kernel, before the stub is put back, the descriptor plus one is
// written as 8 bytes at mark (writable memory of the target). A tracer
// killed after the call leaves the descriptor there, or the intent in
// padding (the call's name argument: where the caller keeps what finds the
// file again).
func (p *Process) MemfdCreateMarked(name uint64, flags int, mark uint64) (int, error) {
	var res uint64
	err := p.do(func() error {
		return p.borrow(0, false, func(t *thread) error {
			var err error
			res, err = p.runSyscallMarked(t, sysMemfdCreate, []uint64{name, uint64(flags)}, func(fd uint64) error {
				return p.writeMem(mark, binary.LittleEndian.AppendUint64(nil, fd+1))
			})
			return err
		})
	})
	if e := int64(res); e < 0 && e >= -4095 {
		return 0, &SyscallError{Name: "memfd_create", Errno: uint64(-e)}
	}
	return int(res), err
}

// Fcntl runs fcntl(2) on a descriptor of the target (F_ADD_SEALS, say) and
// returns its result.
func (p *Process) Fcntl(fd, cmd int, arg uint64) (uint64, error) {
	return p.Syscall("fcntl", sysFcntl, uint64(fd), uint64(cmd), arg)
}

// CloseFd closes a descriptor of the target.
func (p *Process) CloseFd(fd int) error {
	_, err := p.Syscall("close", sysClose, uint64(fd))
	return err
}

// Protection and mapping flags, re-exported so that callers need not import
// x/sys/unix.
const (
	ProtRead  = 0x1
	ProtWrite = 0x2
	ProtExec  = 0x4

	MapPrivate        = 0x02
	MapAnonymous      = 0x20
	MapFixedNoreplace = 0x100000
	MapNoreserve      = 0x4000
)
