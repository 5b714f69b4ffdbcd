package tracee

import (
	"errors"
	"fmt"
	"os"
	"sort"

	"golang.org/x/sys/unix"
)

// stopAll is Stop, on the ptrace goroutine.
func (p *Process) stopAll() error {
	if p.stopped {
		return nil
	}
	if err := p.id.same(p.pid); err != nil {
		return err
	}
	if p.held {
		if err := p.stopHeld(); err != nil {
			return err
		}
	} else {
		p.threads = map[int]*thread{}
	}
	p.order = nil
	dead := map[int]bool{} // tids that vanished while we tried to seize them
	// Held threads: once every thread seen has been through a stop since
	// it was seized, none can be inside a clone that began before (whose
	// child would not be auto-attached): later stops need not list them.
	listed := !p.complete
	for !p.complete {
		tids, err := listTasks(p.pid)
		if err != nil {
			p.abandon()
			if errors.Is(err, os.ErrNotExist) || errors.Is(err, unix.ESRCH) {
				return p.exited()
			}
			return fmt.Errorf("tracee: pid %d: list threads: %w", p.pid, err)
		}
		var fresh []int
		for _, tid := range tids {
			if p.threads[tid] == nil && !dead[tid] {
				fresh = append(fresh, tid)
			}
		}
		if len(fresh) == 0 {
			break
		}
		for _, tid := range fresh {
			gone, err := p.attach(tid, unix.PTRACE_O_TRACECLONE)
			if err != nil {
				p.abandon()
				return err
			}
			if gone {
				dead[tid] = true
			}
		}
		if err := p.waitAllStopped(); err != nil {
			p.abandon()
			return err
		}
	}
	p.complete = p.held
	if len(p.threads) == 0 {
		return p.exited()
	}
	// The threads seized are the process's own only if it did not exit
	// (and its PID go to another) since the check above. Threads held and
	// not listed again are the ones seized before, still ours: a tracee
	// that exits stays until we reap it.
	if listed {
		if err := p.id.same(p.pid); err != nil {
			p.abandon()
			return err
		}
	}
	p.order = p.order[:0]
	for tid := range p.threads {
		p.order = append(p.order, tid)
	}
	sort.Slice(p.order, func(i, j int) bool {
		a, b := p.order[i], p.order[j]
		if (a == p.pid) != (b == p.pid) {
			return a == p.pid
		}
		return a < b
	})
	p.stopped = true
	return nil
}

// attach seizes tid with opts and interrupts it. gone reports a thread that
// exited (or is a zombie) meanwhile.
func (p *Process) attach(tid, opts int) (gone bool, err error) {
	if gone, err = p.seizeThread(tid, opts); gone || err != nil {
		return gone, err
	}
	if err := interrupt(tid); err != nil && err != unix.ESRCH {
		return false, fmt.Errorf("tracee: pid %d: interrupt thread %d: %w", p.pid, tid, err)
	}
	return false, nil
}

// seizeThread seizes tid with opts, leaving it running, and records it.
func (p *Process) seizeThread(tid, opts int) (gone bool, err error) {
	// PTRACE_O_TRACESYSGOOD: remote system calls rely on it (runSyscall).
	err = seize(tid, opts|unix.PTRACE_O_TRACESYSGOOD)
	switch {
	case err == nil:
	case err == unix.ESRCH:
		return true, nil
	case err == unix.EPERM:
		// A zombie (e.g. a leader that called pthread_exit), a thread
		// traced by someone else, or a real permission problem.
		switch st := taskState(p.pid, tid); st {
		case 0, 'Z', 'X', 'x':
			return true, nil
		}
		if tr := taskTracer(p.pid, tid); tr == p.tid {
			// Ours already: the kernel attached it when a thread we
			// seized with PTRACE_O_TRACECLONE created it.
			p.threads[tid] = &thread{tid: tid}
			return false, nil
		} else if tr != 0 {
			return false, &PermissionError{Pid: p.pid, Reason: fmt.Sprintf("already traced by pid %d", tr), Err: err,
				Hint: "detach the other tracer (gdb, strace, another hotpatch) first"}
		}
		return false, &PermissionError{Pid: p.pid, Reason: fmt.Sprintf("PTRACE_SEIZE of thread %d: %v", tid, err),
			Hint: "check ptrace_scope, the target's uid and dumpable flag, and security modules", Err: err}
	default:
		return false, fmt.Errorf("tracee: pid %d: seize thread %d: %w", p.pid, tid, err)
	}
	p.threads[tid] = &thread{tid: tid}
	return false, nil
}

// waitAllStopped consumes wait events until every traced thread is in a
// stop, following clones and re-delivering signals.
func (p *Process) waitAllStopped() error {
	for {
		running := 0
		for _, t := range p.threads {
			if !t.stopped {
				running++
			}
		}
		if running == 0 {
			return nil
		}
		tid, ws, err := p.nextEvent()
		if err != nil {
			if err == unix.ECHILD {
				p.lost(tid)
				continue
			}
			return fmt.Errorf("tracee: pid %d: wait: %w", p.pid, err)
		}
		if err := p.handleStopEvent(tid, ws); err != nil {
			return err
		}
	}
}

// lost drops a thread that is no longer our tracee (tid 0: all of them).
func (p *Process) lost(tid int) {
	if tid == 0 {
		clear(p.threads)
		return
	}
	delete(p.threads, tid)
}

// handleStopEvent processes one wait event of tid while stopping.
func (p *Process) handleStopEvent(tid int, ws unix.WaitStatus) error {
	t := p.threads[tid]
	if ws.Exited() || ws.Signaled() {
		delete(p.threads, tid)
		if tid == p.pid {
			// The leader is reported only once the whole group is gone.
			return p.exited()
		}
		return nil
	}
	if !ws.Stopped() || t == nil {
		return nil
	}
	sig := int(ws.StopSignal())
	switch ev := int(ws >> 16); ev {
	case unix.PTRACE_EVENT_STOP:
		// Our interrupt (SIGTRAP) or a group-stop (SIGSTOP & co).
		t.stopped = true
		t.inSigStop = false
		t.groupStop = 0
		if isStopSignal(sig) {
			t.groupStop = sig
		}
		return nil
	case unix.PTRACE_EVENT_CLONE:
		// The new thread is auto-attached (PTRACE_O_TRACECLONE) and
		// reports a PTRACE_EVENT_STOP on its own.
		p.cloned(tid)
		sig = 0
	case 0:
		// Signal-delivery-stop: deliver the signal now (sig), keep going.
	default:
		sig = 0
	}
	// Any ptrace trap clears a pending PTRACE_INTERRUPT (kernel/signal.c
	// ptrace_stop: "any trap clears pending STOP trap"), so interrupt again.
	if err := cont(tid, sig); err != nil {
		if err == unix.ESRCH {
			return nil // killed; its exit will be reported
		}
		return fmt.Errorf("tracee: pid %d: continue thread %d: %w", p.pid, tid, err)
	}
	if err := interrupt(tid); err != nil && err != unix.ESRCH {
		return fmt.Errorf("tracee: pid %d: interrupt thread %d: %w", p.pid, tid, err)
	}
	return nil
}

func (p *Process) exited() error {
	return fmt.Errorf("tracee: pid %d: %w", p.pid, ErrExited)
}

// abandon detaches every thread after a failed Stop, so that nothing is left
// stopped. Threads still running are interrupted first (PTRACE_DETACH needs
// a stopped tracee).
func (p *Process) abandon() {
	p.stopped = true // let resumeAll work on whatever is attached
	_ = p.waitAllStoppedQuiet()
	_ = p.resumeAll()
}

// waitAllStoppedQuiet is waitAllStopped that ignores everything but the
// bookkeeping (used while cleaning up).
func (p *Process) waitAllStoppedQuiet() error {
	for {
		running := false
		for _, t := range p.threads {
			if !t.stopped {
				running = true
			}
		}
		if !running {
			return nil
		}
		tid, ws, err := p.nextEvent()
		if err != nil {
			if err == unix.ECHILD {
				p.lost(tid)
				continue
			}
			return err
		}
		_ = p.handleStopEvent(tid, ws)
	}
}

// resumeAll is Resume, on the ptrace goroutine.
func (p *Process) resumeAll() error {
	if !p.stopped {
		return nil
	}
	if p.held {
		return p.resumeHeld()
	}
	p.stopped = false
	p.order = nil
	var firstErr error
	for _, t := range p.threads {
		err := p.release(t)
		if err == nil {
			delete(p.threads, t.tid)
			continue
		}
		if err != unix.ESRCH && firstErr == nil {
			firstErr = fmt.Errorf("tracee: pid %d: detach thread %d: %w", p.pid, t.tid, err)
		}
	}
	// Whatever is left could not be detached: it is dying (SIGKILL wakes a
	// traced thread) or dead. Reap it, so that no zombie stays ours;
	// sub-threads are reported first, the leader once the group is empty.
	leaderDied := false
	for len(p.threads) > 0 {
		tid, ws, err := p.nextEvent()
		if err != nil {
			if err == unix.ECHILD {
				p.lost(tid)
				continue
			}
			if firstErr == nil {
				firstErr = fmt.Errorf("tracee: pid %d: wait: %w", p.pid, err)
			}
			break
		}
		switch {
		case ws.Exited() || ws.Signaled():
			delete(p.threads, tid)
			if tid == p.pid {
				leaderDied = true
			}
		case ws.Stopped():
			// A late stop of a thread that is not dead after all: let it go.
			if detach(tid, 0) == nil {
				delete(p.threads, tid)
			}
		}
	}
	clear(p.threads)
	if leaderDied && firstErr == nil {
		return p.exited()
	}
	return firstErr
}

// cloned records the new thread of a PTRACE_EVENT_CLONE of tid. The new
// thread may have reported (as an unknown thread, see adopt) and exited
// before this event was seen: one whose task is gone is not recorded, as
// it would never report again.
func (p *Process) cloned(tid int) {
	msg, err := getEventMsg(tid)
	if err != nil || msg == 0 || p.threads[int(msg)] != nil || taskState(p.pid, int(msg)) == 0 {
		return
	}
	p.threads[int(msg)] = &thread{tid: int(msg)}
}

// release detaches a stopped thread, delivering the signals it owes.
func (p *Process) release(t *thread) error {
	return detach(t.tid, p.owed(t))
}

// owed sends a stopped thread the signals it holds back (see pending) but
// one, which it returns to be injected as it is restarted when it stopped
// for it, with its own siginfo.
func (p *Process) owed(t *thread) int {
	sig := 0
	if len(t.pending) > 0 {
		first := t.pending[0]
		for _, ps := range t.pending[1:] {
			_ = unix.Tgkill(p.pid, t.tid, unix.Signal(ps.sig))
		}
		if t.inSigStop {
			// Injected at a signal-delivery-stop, with its own siginfo.
			if first.ok {
				_ = setSiginfo(t.tid, &first.info)
			}
			sig = first.sig
		} else {
			_ = unix.Tgkill(p.pid, t.tid, unix.Signal(first.sig))
		}
		t.pending = nil
	}
	return sig
}
