//go:build linux

package patch_test

import (
	"fmt"
	"os"
	"runtime"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
)

// attachedFloor measures the floor of a pause as it would be for threads
// attached before it: every thread of pid is seized (PTRACE_SEIZE, the
// threads keep running) outside the measure, then interrupting them all,
// waiting until each has stopped and resuming them all is timed; then they
// are detached again (the Target attaches on its own). It must not run
// while the Target has the process stopped.
func attachedFloor(pid int) (time.Duration, error) {
	runtime.LockOSThread() // ptrace requests come from the tracer thread
	defer runtime.UnlockOSThread()
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return 0, err
	}
	var tids []int
	for _, e := range ents {
		tid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if err := unix.PtraceSeize(tid); err != nil {
			detachAll(tids)
			return 0, fmt.Errorf("seize thread %d: %w", tid, err)
		}
		tids = append(tids, tid)
	}
	start := time.Now()
	err = stopAll(tids)
	if err == nil {
		for _, tid := range tids {
			if err = unix.PtraceCont(tid, 0); err != nil {
				break
			}
		}
	}
	floor := time.Since(start)
	if err == nil {
		err = stopAll(tids)
	}
	detachAll(tids)
	return floor, err
}

// stopAll interrupts every thread and waits until each is in an
// interrupt stop (a signal that stops one meanwhile is delivered).
func stopAll(tids []int) error {
	for _, tid := range tids {
		if err := unix.PtraceInterrupt(tid); err != nil {
			return fmt.Errorf("interrupt thread %d: %w", tid, err)
		}
	}
	for _, tid := range tids {
		for {
			var ws unix.WaitStatus
			if _, err := unix.Wait4(tid, &ws, unix.WALL, nil); err != nil {
				return fmt.Errorf("wait thread %d: %w", tid, err)
			}
			if !ws.Stopped() {
				return fmt.Errorf("thread %d: not stopped (%#x)", tid, ws)
			}
			if int(ws>>16) == unix.PTRACE_EVENT_STOP {
				break
			}
			if err := unix.PtraceCont(tid, int(ws.StopSignal())); err != nil {
				return fmt.Errorf("continue thread %d: %w", tid, err)
			}
			if err := unix.PtraceInterrupt(tid); err != nil {
				return fmt.Errorf("interrupt thread %d: %w", tid, err)
			}
		}
	}
	return nil
}

// detachAll detaches stopped threads (best effort).
func detachAll(tids []int) {
	for _, tid := range tids {
		_ = unix.PtraceDetach(tid)
	}
}
