package tracee

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/hotpatch-dev/hotpatch/elfsym"
	"github.com/hotpatch-dev/hotpatch/internal/fixture"
)

// callTarget is the ccall fixture, traced, with its symbols.
type callTarget struct {
	*fixture.Proc
	p    *Process
	syms *elfsym.Table
}

func startCall(t *testing.T) *callTarget {
	t.Helper()
	fp := fixture.Start(t, fixture.BuildC(t, "ccall", "-O2", "-fomit-frame-pointer"))
	p := openT(t, fp.Pid)
	syms, err := elfsym.Load(fp.Pid, p)
	require.NoError(t, err)
	return &callTarget{fp, p, syms}
}

func (c *callTarget) addr(t *testing.T, name string) uint64 {
	s, err := c.syms.Lookup(name)
	require.NoError(t, err)
	return s.Addr
}

// tid returns the thread named comm.
func (c *callTarget) tid(t *testing.T, comm string) int {
	tids, err := listTasks(c.Pid)
	require.NoError(t, err)
	for _, tid := range tids {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/comm", c.Pid, tid))
		if strings.TrimSpace(string(b)) == comm {
			return tid
		}
	}
	t.Fatalf("no thread %q", comm)
	return 0
}

// healthy checks the target still beats and never reported a broken thread.
func (c *callTarget) healthy(t *testing.T) {
	t.Helper()
	m := c.Mark()
	c.ExpectAfter(t, m, regexp.MustCompile(`^beat `), 5*time.Second)
	c.ExpectAfter(t, m, regexp.MustCompile(`^beat `), 5*time.Second)
	for _, l := range c.Lines() {
		require.NotRegexp(t, `FP CORRUPT|sleep EINTR|read error|usr1`, l)
	}
}

func TestCallRunning(t *testing.T) {
	c := startCall(t)
	for i := 0; i < 20; i++ {
		got, err := c.p.Call("add6", c.addr(t, "add6"), 1, 2, 3, 4, 5, uint64(i))
		require.NoError(t, err)
		require.Equal(t, uint64(1+4+9+16+25+6*i), got)
	}
	c.healthy(t)
}

// On every thread (running user code, blocked in read, in nanosleep), the
// stack at the callee's entry is 16-byte aligned per the ABI (rsp+8) and
// lies below the thread's red zone; registers and FP state come back
// exactly; blocked system calls restart.
func TestCallOnEveryThread(t *testing.T) {
	c := startCall(t)
	reader := c.tid(t, "reader")
	for round := 0; round < 5; round++ {
		require.NoError(t, c.p.Stop())
		for _, tid := range c.p.Threads() {
			before, err := c.p.GetRegs(tid)
			require.NoError(t, err)
			var fpBefore fpState
			require.NoError(t, c.p.do(func() (err error) { fpBefore, err = saveFP(tid); return }))

			sp, err := c.p.CallOn(tid, "entry_sp", c.addr(t, "entry_sp"))
			require.NoError(t, err)
			require.Zero(t, (sp+8)%16, "thread %d: rsp+8 at entry %#x not 16-aligned", tid, sp)
			require.LessOrEqual(t, sp+8, before.SP()-redZone, "thread %d: the call's stack overlaps the red zone", tid)

			got, err := c.p.CallOn(tid, "clobber_fp", c.addr(t, "clobber_fp"))
			require.NoError(t, err)
			require.Equal(t, uint64(7), got)

			after, err := c.p.GetRegs(tid)
			require.NoError(t, err)
			if tid == reader && before.Orig_rax == 0 /* in read(2) */ {
				// Blocked in read(2) for good: it restarted the call and is
				// blocked in it again, with the same registers. (Threads in
				// a timed sleep may have woken and moved on meanwhile.)
				require.Equal(t, before.resumeState(), after.resumeState(), "thread %d: registers not restored", tid)
				var fpAfter fpState
				require.NoError(t, c.p.do(func() (err error) { fpAfter, err = saveFP(tid); return }))
				require.Equal(t, fpBefore, fpAfter, "thread %d: FP state not restored", tid)
			}
			// A thread interrupted in user code ran on a little after the
			// call; the "fp" thread checks its SSE register never changes.
		}
		require.NoError(t, c.p.Resume())
		// The reader's read(2) restarted: it gets the line, not EINTR.
		m := c.Mark()
		line := fmt.Sprintf("round %d", round)
		fmt.Fprintln(c.Stdin, line)
		c.ExpectAfter(t, m, regexp.MustCompile("^read "+fmt.Sprint(len(line)+1)+" "+line+"$"), 5*time.Second)
	}
	time.Sleep(1100 * time.Millisecond) // a full nanosleep period of the sleeper
	c.healthy(t)
}

// A signal sent to the thread during the call is held, and delivered once
// after the call.
func TestCallSignalDuringCall(t *testing.T) {
	c := startCall(t)
	reader := c.tid(t, "reader")
	require.NoError(t, c.p.Stop())
	done := make(chan struct{})
	go func() {
		defer close(done)
		time.Sleep(100 * time.Millisecond)
		unix.Tgkill(c.Pid, reader, unix.SIGUSR1)
	}()
	m := c.Mark()
	got, err := c.p.CallOn(reader, "slow_add", c.addr(t, "slow_add"), 300, 40, 2)
	<-done
	require.NoError(t, err)
	require.Equal(t, uint64(42), got)
	for _, l := range c.Lines()[m:] {
		require.NotContains(t, l, "usr1", "delivered during the call")
	}
	require.NoError(t, c.p.Resume())
	c.ExpectAfter(t, m, regexp.MustCompile(`^usr1 on reader$`), 5*time.Second)
	time.Sleep(100 * time.Millisecond)
	n := 0
	for _, l := range c.Lines()[m:] {
		if strings.HasPrefix(l, "usr1") {
			n++
		}
	}
	require.Equal(t, 1, n, "delivered exactly once")
	fmt.Fprintln(c.Stdin, "after")
	c.ExpectAfter(t, m, regexp.MustCompile(`^read 6 after$`), 5*time.Second)
}

// A call that faults or aborts is reported with the signal and the fault
// address; the target is restored and keeps running.
func TestCallCrash(t *testing.T) {
	c := startCall(t)
	_, err := c.p.Call("crash", c.addr(t, "crash"), 0x10)
	var ce *CallError
	require.ErrorAs(t, err, &ce)
	require.True(t, errors.Is(err, ErrCallCrashed))
	require.Equal(t, unix.SIGSEGV, ce.Sig)
	require.Equal(t, uint64(0x10), ce.Addr)
	require.NotZero(t, ce.PC)

	_, err = c.p.Call("do_abort", c.addr(t, "do_abort"))
	require.ErrorAs(t, err, &ce)
	require.Equal(t, unix.SIGABRT, ce.Sig)

	// Still working, and still callable.
	got, err := c.p.Call("add6", c.addr(t, "add6"), 1, 0, 0, 0, 0, 0)
	require.NoError(t, err)
	require.Equal(t, uint64(1), got)
	c.healthy(t)
	require.NoError(t, syscall.Kill(c.Pid, 0))
}

// A call on a running process borrows a thread blocked in a system call,
// not one interrupted in user code (which could hold a lock the callee
// needs): here the leader and "fp" spin, "reader" and "sleeper" sleep.
func TestCallPrefersSleepingThread(t *testing.T) {
	fp := fixture.Start(t, fixture.BuildC(t, "ccall", "-O2", "-fomit-frame-pointer"), "spin")
	p := openT(t, fp.Pid)
	syms, err := elfsym.Load(fp.Pid, p)
	require.NoError(t, err)
	c := &callTarget{fp, p, syms}
	sleepers := map[uint64]bool{uint64(c.tid(t, "reader")): true, uint64(c.tid(t, "sleeper")): true}
	time.Sleep(50 * time.Millisecond) // main is past its last printf, spinning
	for i := 0; i < 10; i++ {
		tid, err := c.p.Call("my_tid", c.addr(t, "my_tid"))
		require.NoError(t, err)
		require.True(t, sleepers[tid], "ran on thread %d, not a sleeping one", tid)
	}
}

// A signal that arrived while the process was stopped, before the call, is
// delivered once after Resume, not lost to the call.
func TestCallSignalPendingBefore(t *testing.T) {
	c := startCall(t)
	reader := c.tid(t, "reader")
	for round := 0; round < 3; round++ {
		m := c.Mark()
		require.NoError(t, c.p.Stop())
		require.NoError(t, unix.Tgkill(c.Pid, reader, unix.SIGUSR1))
		time.Sleep(20 * time.Millisecond)
		got, err := c.p.CallOn(reader, "add6", c.addr(t, "add6"), 2, 0, 0, 0, 0, 0)
		require.NoError(t, err)
		require.Equal(t, uint64(2), got)
		require.NoError(t, c.p.Resume())
		c.ExpectAfter(t, m, regexp.MustCompile(`^usr1 on reader$`), 5*time.Second)
		time.Sleep(50 * time.Millisecond)
		n := 0
		for _, l := range c.Lines()[m:] {
			if strings.HasPrefix(l, "usr1") {
				n++
			}
		}
		require.Equal(t, 1, n, "round %d: delivered exactly once", round)
	}
}

// The tracer is killed (SIGKILL) in the middle of a remote call: the
// borrowed thread finishes the call, restores itself and runs on, and the
// target never notices.
func TestCallTracerKilled(t *testing.T) {
	c := startCall(t)
	for round := 0; round < 3; round++ {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), helperEnv+"=caller", fmt.Sprintf("TRACEE_TEST_PID=%d", c.Pid),
			fmt.Sprintf("TRACEE_TEST_FN=%x", c.addr(t, "slow_add")))
		helper := startTarget(t, cmd) // returns at "ready calling"
		time.Sleep(150 * time.Millisecond)
		for _, l := range helper.Lines() {
			require.NotContains(t, l, "returned", "the call ended before the kill")
		}
		helper.Kill()
		helper.Wait()
		time.Sleep(400 * time.Millisecond) // the call completes on its own
		m := c.Mark()
		line := fmt.Sprintf("after kill %d", round)
		fmt.Fprintln(c.Stdin, line)
		c.ExpectAfter(t, m, regexp.MustCompile("^read "+fmt.Sprint(len(line)+1)+" "+line+"$"), 5*time.Second)
		c.healthy(t)
		require.NoError(t, syscall.Kill(c.Pid, 0))
	}
}
