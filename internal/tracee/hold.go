package tracee

import (
	"fmt"
	"os"
	"os/signal"
	"sort"
	"time"

	"golang.org/x/sys/unix"
)

// Holding a process: every thread stays seized (PTRACE_SEIZE) while the
// process runs between the stops of one operation, so that a stop is only
// interrupt, wait, continue: seizing and detaching every thread, which
// cost more than the rest of a short pause, happen once per operation,
// outside the stops.
//
// A held thread that receives a signal enters a signal-delivery-stop (and a
// group-stop for a stopping signal) and waits for its tracer. The ptrace
// goroutine services these events whenever it is not running a request:
// it wakes on SIGCHLD (the kernel sends it to the tracer at every stop of a
// tracee), and every serviceTick at least, re-injects each signal with
// PTRACE_CONT, lets a group-stop stay one with PTRACE_LISTEN, records the
// threads born meanwhile (auto-attached by PTRACE_O_TRACECLONE) and reaps
// the threads that exit.
//
// Release ends the hold by ending the ptrace thread: the kernel detaches
// every tracee of a thread that exits, running or not, without stopping
// any (exit_ptrace); a thread in a signal-delivery-stop keeps its signal (the
// kernel delivers what the tracer did not change), a group-stopped one stays
// stopped. That is also what happens when this program is killed while it
// holds a process, so the two paths are one. Requests then go to a fresh
// ptrace thread.

// testNoService, set by tests, leaves the events of held threads alone.
var testNoService bool

// serviceTick bounds the wait for an event whose SIGCHLD was missed.
const serviceTick = 10 * time.Millisecond

// Hold seizes every thread of the process without stopping it, and keeps
// them seized, across Stop and Resume, until Release (or Close). Stop then
// only interrupts the threads and Resume continues them. Signals that
// arrive for the process meanwhile are delivered (after a round trip
// through this program's ptrace thread). Hold on a stopped process keeps
// the threads Stop seized; Hold on a held process does nothing.
//
// While a process is held, no other tracer (nor another Open of it) can
// attach to it; remote system calls made while it runs stop all its
// threads for their duration rather than one.
func (p *Process) Hold() error { return p.do(p.holdAll) }

// Held reports whether the process is held (Hold without Release).
func (p *Process) Held() bool {
	var h bool
	_ = p.do(func() error { h = p.held; return nil })
	return h
}

// Release ends a hold. On a running process every thread is detached
// at once, none stopped; on a stopped one, the next Resume detaches (as
// without Hold). Release on a process not held does nothing.
func (p *Process) Release() error {
	old := 0
	err := p.do(func() error {
		if !p.held {
			return nil
		}
		if p.stopped {
			p.endHold()
			return nil
		}
		if !p.canExit() {
			return p.detachHeld()
		}
		old = p.tid
		p.letGo()
		return nil
	})
	if old != 0 {
		waitThreadGone(old)
	}
	return err
}

// holdAll is Hold, on the ptrace goroutine.
func (p *Process) holdAll() error {
	if p.held {
		return nil
	}
	if err := p.id.same(p.pid); err != nil {
		return err
	}
	p.startHold()
	if p.stopped {
		return nil
	}
	p.threads = map[int]*thread{}
	dead := map[int]bool{}
	for {
		tids, err := listTasks(p.pid)
		if err != nil {
			p.letGo()
			return p.exited()
		}
		fresh := 0
		for _, tid := range tids {
			if p.threads[tid] != nil || dead[tid] {
				continue
			}
			fresh++
			gone, err := p.seizeThread(tid, unix.PTRACE_O_TRACECLONE)
			if err != nil {
				p.letGo()
				return err
			}
			if gone {
				dead[tid] = true
			}
		}
		if fresh == 0 {
			break
		}
	}
	if len(p.threads) == 0 {
		p.letGo()
		return p.exited()
	}
	if err := p.id.same(p.pid); err != nil {
		p.letGo()
		return err
	}
	p.service()
	return nil
}

// canExit reports whether the ptrace thread ends when its goroutine does:
// the Go runtime never ends the process's main thread (it parks it
// instead), on which the ptrace goroutine may have been started.
func (p *Process) canExit() bool { return p.tid != os.Getpid() }

// detachHeld ends the hold of a running process by stopping every thread
// and detaching it (when the ptrace thread cannot exit, see canExit).
func (p *Process) detachHeld() error {
	if err := p.stopHeld(); err != nil {
		return err
	}
	p.endHold()
	p.stopped = true
	return p.resumeAll()
}

// startHold marks the process held and starts listening for SIGCHLD.
func (p *Process) startHold() {
	p.held = true
	p.complete = false
	p.sigch = make(chan os.Signal, 1)
	signal.Notify(p.sigch, unix.SIGCHLD)
}

// endHold forgets the hold (the threads stay seized: Resume detaches them).
func (p *Process) endHold() {
	p.held = false
	p.complete = false
	if p.sigch != nil {
		signal.Stop(p.sigch)
		p.sigch = nil
	}
}

// letGo ends the hold of a running process: the ptrace thread exits after
// this request (loop), which detaches every thread it traces.
func (p *Process) letGo() {
	p.endHold()
	clear(p.threads)
	p.order = nil
	p.stopped = false
	p.respawn = true
}

// waitThreadGone waits (up to a second) until the OS thread tid of this
// program has exited: the kernel detaches its tracees before the thread
// can no longer be signalled.
func waitThreadGone(tid int) {
	deadline := time.Now().Add(time.Second)
	for d := 5 * time.Microsecond; time.Now().Before(deadline); d = min(2*d, time.Millisecond) {
		if unix.Tgkill(os.Getpid(), tid, 0) == unix.ESRCH {
			return
		}
		time.Sleep(d)
	}
}

// service handles every pending event of the held threads, without
// blocking.
func (p *Process) service() {
	if testNoService {
		return
	}
	for {
		tid, ws, ok := p.pollEvent()
		if !ok {
			return
		}
		p.serviceEvent(tid, ws)
	}
}

// pollEvent consumes one pending event of our tracees, if any.
func (p *Process) pollEvent() (int, unix.WaitStatus, bool) {
	for len(p.threads) > 0 {
		if p.pollMode {
			for tid := range p.threads {
				wpid, ws, err := wait4(tid, unix.WNOHANG)
				if err == unix.ECHILD {
					delete(p.threads, tid)
					return 0, 0, false
				}
				if err == nil && wpid == tid {
					return tid, ws, true
				}
			}
			return 0, 0, false
		}
		var si sigchld
		switch e := peekWaitOpts(&si, unix.WNOHANG); {
		case e == unix.EINTR:
			continue
		case e != 0 || si.pid == 0:
			return 0, 0, false
		}
		tid := int(si.pid)
		if p.threads[tid] == nil && !p.adopt(tid) {
			p.pollMode = true
			continue
		}
		wpid, ws, err := wait4(tid, unix.WNOHANG)
		if err == unix.ECHILD {
			delete(p.threads, tid)
			continue
		}
		if err == nil && wpid == tid {
			return tid, ws, true
		}
	}
	return 0, 0, false
}

// adopt records tid, a thread of the process reporting before its
// parent's clone event was seen: a child of this OS thread that is a
// thread of the target was auto-attached by us.
func (p *Process) adopt(tid int) bool {
	if taskState(p.pid, tid) == 0 {
		return false
	}
	p.threads[tid] = &thread{tid: tid}
	return true
}

// serviceEvent handles one event of a held thread while the process runs:
// it lets the thread go on with the signal it stopped for.
func (p *Process) serviceEvent(tid int, ws unix.WaitStatus) {
	t := p.threads[tid]
	if ws.Exited() || ws.Signaled() {
		delete(p.threads, tid)
		return
	}
	if !ws.Stopped() || t == nil {
		return
	}
	sig := int(ws.StopSignal())
	switch ev := int(ws >> 16); ev {
	case unix.PTRACE_EVENT_STOP:
		if isStopSignal(sig) {
			// A group-stop: stay stopped as the process would untraced,
			// but report SIGCONT (and a later interrupt).
			t.groupStop = sig
			_ = listen(tid)
			return
		}
		// A stale interrupt, the first stop of a new thread, or the end
		// of a group-stop (after PTRACE_LISTEN).
		t.groupStop = 0
		sig = 0
	case unix.PTRACE_EVENT_CLONE:
		p.cloned(tid)
		sig = 0
	case 0:
		// A signal-delivery-stop: deliver it.
		if sig == syscallStop {
			sig = 0
		}
	default:
		sig = 0
	}
	_ = cont(tid, sig) // ESRCH: killed, its exit will be reported
}

// stopHeld interrupts every held thread and waits until all are stopped;
// the first stop of a hold also seizes the threads Hold could not see (see
// stopAll).
func (p *Process) stopHeld() error {
	for _, t := range p.threads {
		if !t.stopped {
			err := interrupt(t.tid)
			if err == unix.ESRCH && taskState(p.pid, t.tid) == 'Z' {
				// A leader that ended (pthread_exit) stays a zombie,
				// never reported while other threads live.
				delete(p.threads, t.tid)
				continue
			}
			if err != nil && err != unix.ESRCH {
				p.abandon()
				return fmt.Errorf("tracee: pid %d: interrupt thread %d: %w", p.pid, t.tid, err)
			}
		}
	}
	if err := p.waitHeldStopped(); err != nil {
		p.abandon()
		return err
	}
	return nil
}

// waitHeldStopped waits for each interrupted thread in turn (wait4 of its
// own tid, as cheap as the floor's; a wait for any tracee makes the kernel
// scan them all, once per thread), handling what each reports on the way
// (a signal, a clone: the new thread is waited for too).
func (p *Process) waitHeldStopped() error {
	for {
		var running []int
		for tid, t := range p.threads {
			if !t.stopped {
				running = append(running, tid)
			}
		}
		if len(running) == 0 {
			return nil
		}
		// The leader last: once it has exited (a killed process), its
		// exit is reported only after every other thread's is reaped.
		sort.Slice(running, func(i, j int) bool { return running[j] == p.pid && running[i] != p.pid })
		for _, tid := range running {
			for t := p.threads[tid]; t != nil && !t.stopped; t = p.threads[tid] {
				_, ws, err := wait4(tid, 0)
				if err == unix.ECHILD {
					delete(p.threads, tid)
					break
				}
				if err != nil {
					return fmt.Errorf("tracee: pid %d: wait for thread %d: %w", p.pid, tid, err)
				}
				if err := p.handleStopEvent(tid, ws); err != nil {
					return err
				}
			}
		}
	}
}

// resumeHeld continues every stopped held thread, delivering the signals it
// owes; a group-stopped one is left in its group-stop (PTRACE_LISTEN).
func (p *Process) resumeHeld() error {
	p.stopped = false
	p.order = nil
	var firstErr error
	for _, t := range p.threads {
		if !t.stopped {
			continue
		}
		sig := p.owed(t)
		var err error
		if t.groupStop != 0 && !t.inSigStop && sig == 0 {
			err = listen(t.tid)
		} else {
			err = cont(t.tid, sig)
		}
		t.stopped, t.inSigStop = false, false
		if err != nil && err != unix.ESRCH && firstErr == nil {
			firstErr = fmt.Errorf("tracee: pid %d: continue thread %d: %w", p.pid, t.tid, err)
		}
	}
	if len(p.threads) == 0 {
		return p.exited()
	}
	return firstErr
}
