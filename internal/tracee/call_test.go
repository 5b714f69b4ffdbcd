package tracee

import (
	"debug/elf"
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

func startCall(t testing.TB) *callTarget {
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
// startGPR starts the "gpr" thread's spin.
func (c *callTarget) startGPR(t *testing.T) {
	t.Helper()
	m := c.Mark()
	fmt.Fprintln(c.Stdin, "gpr")
	c.ExpectAfter(t, m, regexp.MustCompile(`^read 4 gpr$`), 5*time.Second)
}

func (c *callTarget) healthy(t *testing.T) {
	t.Helper()
	m := c.Mark()
	c.ExpectAfter(t, m, regexp.MustCompile(`^beat `), 5*time.Second)
	c.ExpectAfter(t, m, regexp.MustCompile(`^beat `), 5*time.Second)
	for _, l := range c.Lines() {
		require.NotRegexp(t, `FP CORRUPT|GPR CORRUPT|sleep EINTR|read error|usr1|ALTSTACK CHANGED|MASK CHANGED|setup failed`, l)
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

// On every thread (running user code, blocked in read, in nanosleep — from
// the second round on, continuing through restart_syscall —, one with an
// alternate signal stack and a signal blocked), the stack at the callee's
// entry is 16-byte aligned per the ABI and lies below the thread's stack
// pointer and red zone; registers, FP state, signal mask and alternate
// stack come back exactly; blocked system calls restart and sleeps are
// never cut short.
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
			checkEntrySP(t, tid, sp, before.SP())

			got, err := c.p.CallOn(tid, "clobber_fp", c.addr(t, "clobber_fp"))
			require.NoError(t, err)
			require.Equal(t, uint64(7), got)

			after, err := c.p.GetRegs(tid)
			require.NoError(t, err)
			if nr, ok := resumeSyscall(c.p, before); tid == reader && ok && nr == unix.SYS_READ {
				// Blocked in read(2) for good: it restarted the call and is
				// blocked in it again, with the same registers. (Threads in
				// a timed sleep may have woken and moved on meanwhile.)
				require.Equal(t, before.resumeState(), after.resumeState(), "thread %d: registers not restored", tid)
				var fpAfter fpState
				require.NoError(t, c.p.do(func() (err error) { fpAfter, err = saveFP(tid); return }))
				require.Equal(t, fpBefore, fpAfter, "thread %d: FP state not restored", tid)
			}
			// A thread interrupted in user code ran on a little after the
			// call; the "fp" thread checks its SIMD register never
			// changes, "sigstate" its alternate stack and mask.
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
	n := countPrefix(c.Lines()[m:], "usr1")
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
// needs): here the leader and "fp" spin, "reader", "sleeper" and
// "sigstate" sleep.
func TestCallPrefersSleepingThread(t *testing.T) {
	fp := fixture.Start(t, fixture.BuildC(t, "ccall", "-O2", "-fomit-frame-pointer"), "spin")
	p := openT(t, fp.Pid)
	syms, err := elfsym.Load(fp.Pid, p)
	require.NoError(t, err)
	c := &callTarget{fp, p, syms}
	reader := c.tid(t, "reader")
	sleepers := map[uint64]bool{uint64(reader): true, uint64(c.tid(t, "sleeper")): true, uint64(c.tid(t, "sigstate")): true}
	time.Sleep(50 * time.Millisecond) // main is past its last printf, spinning
	for i := 0; i < 10; i++ {
		// A thread released by the previous call may still wait for a CPU
		// (the spinners keep them busy) before it blocks again: wait until
		// the reader sleeps in read(2), so that there is a sleeper to pick.
		for deadline := time.Now().Add(10 * time.Second); taskState(c.Pid, reader) != 'S'; {
			require.True(t, time.Now().Before(deadline), "reader never blocked in read again")
			time.Sleep(time.Millisecond)
		}
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
		n := countPrefix(c.Lines()[m:], "usr1")
		require.Equal(t, 1, n, "round %d: delivered exactly once", round)
	}
}

// A call on a thread stopped while it continues its nanosleep through
// restart_syscall: the sleep goes on afterwards, never cut short with EINTR
// (on arm64, rt_sigreturn would reset the restart block: the stub runs the
// restart itself, and the tracer takes the thread out of it through
// ptrace).
func TestCallInRestartSyscall(t *testing.T) {
	c := startCall(t)
	sleeper := c.tid(t, "sleeper")
	still := 0
	for round := 0; round < 3; round++ {
		require.NoError(t, c.p.Stop())
		require.NoError(t, stopInRestart(c.p, sleeper))
		before, err := c.p.GetRegs(sleeper)
		require.NoError(t, err)
		got, err := c.p.CallOn(sleeper, "add6", c.addr(t, "add6"), 1, 1, 1, 1, 1, 1)
		require.NoError(t, err)
		require.Equal(t, uint64(21), got)
		after, err := c.p.GetRegs(sleeper)
		require.NoError(t, err)
		// Unless its sleep happened to end during the call, the sleeper
		// is back where it was, still continuing through restart_syscall.
		if nr, ok := resumeSyscall(c.p, after); ok && nr == sysRestartSyscall {
			still++
			require.Equal(t, before.resumeState(), after.resumeState(), "round %d: registers not restored", round)
		}
		require.NoError(t, c.p.Resume())
	}
	require.NotZero(t, still, "the sleep ended during every call: nothing was checked")
	time.Sleep(1100 * time.Millisecond) // the sleeper's current sleep ends
	c.healthy(t)
}

// The tracer is killed (SIGKILL) in the middle of a remote call: the
// borrowed thread finishes the call, restores itself and runs on, and the
// target never notices. The call runs on a thread of the running process
// (the tracer's choice), on "sigstate" (its alternate stack and signal mask
// must come back from the stub alone) and on "sleeper" stopped while it
// continues its nanosleep through restart_syscall (the stub must finish
// the sleep itself: on arm64 rt_sigreturn resets the restart block), and
// on "gpr", stopped in user code that checks every general register.
func TestCallTracerKilled(t *testing.T) {
	c := startCall(t)
	require.NoError(t, c.p.Close()) // the helper tracers hold the target, one at a time
	for _, how := range []struct{ mode, thread string }{
		{"running", ""}, {"stopped", "sigstate"}, {"restart", "sleeper"},
		{"running", ""}, {"stopped", "sigstate"}, {"restart", "sleeper"},
		{"stopped", "gpr"}, {"stopped", "gpr"}, // last: its spin takes a CPU
	} {
		if how.thread == "gpr" {
			c.startGPR(t)
		}
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), helperEnv+"=caller", fmt.Sprintf("TRACEE_TEST_PID=%d", c.Pid),
			fmt.Sprintf("TRACEE_TEST_FN=%x", c.addr(t, "spin_add")), "TRACEE_TEST_MODE="+how.mode)
		if how.thread != "" {
			cmd.Env = append(cmd.Env, fmt.Sprintf("TRACEE_TEST_TID=%d", c.tid(t, how.thread)))
		}
		m := c.Mark()
		helper := startTarget(t, cmd) // returns at "ready calling"
		require.Empty(t, helper.errs(), "%s", how)
		// Kill the tracer once the callee runs (TestSyscallTracerKilled
		// kills it during the remote system calls that set the call up).
		c.ExpectAfter(t, m, regexp.MustCompile(`^spin_add running$`), 30*time.Second)
		for _, l := range helper.Lines() {
			require.NotContains(t, l, "returned", "%s: the call ended before the kill", how)
		}
		helper.Kill()
		helper.Wait()
		time.Sleep(400 * time.Millisecond) // the call completes on its own
		m = c.Mark()
		line := fmt.Sprintf("after kill %s %s", how.mode, how.thread)
		fmt.Fprintln(c.Stdin, line)
		c.ExpectAfter(t, m, regexp.MustCompile("^read "+fmt.Sprint(len(line)+1)+" "+line+"$"), 5*time.Second)
		if how.mode == "restart" {
			time.Sleep(1100 * time.Millisecond) // the sleeper's restarted sleep ends
		}
		c.healthy(t)
		require.NoError(t, syscall.Kill(c.Pid, 0))
	}
}

// The tracer is killed (SIGKILL) after each step (ptrace request, memory
// write) of a remote system call, in turn: whatever the step, the borrowed
// thread runs on correctly — it is never left with the registers of the
// system call, nor killed by a trap meant for the tracer. The call runs on
// a thread of the running process (the tracer's choice), on "fp" stopped
// in user code with a value in a SIMD register, on "gpr" stopped in user
// code that checks every general register, on "reader" blocked in
// read(2), and on "sleeper" stopped while it continues its nanosleep
// through restart_syscall. On arm64 three are also run with the stub placed
// as if out of a branch's reach, returning through a hop (syscallHop).
func TestSyscallTracerKilled(t *testing.T) {
	c := startCall(t)
	require.NoError(t, c.p.Close()) // the helper tracers hold the target, one at a time
	helper := func(mode, thread string, hop bool, killAt int) *exec.Cmd {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), helperEnv+"=syscaller", fmt.Sprintf("TRACEE_TEST_PID=%d", c.Pid),
			"TRACEE_TEST_MODE="+mode, fmt.Sprintf("TRACEE_TEST_KILLAT=%d", killAt))
		if thread != "" {
			cmd.Env = append(cmd.Env, fmt.Sprintf("TRACEE_TEST_TID=%d", c.tid(t, thread)))
		}
		if hop {
			cmd.Env = append(cmd.Env, "TRACEE_TEST_HOP=1")
		}
		return cmd
	}
	type how struct {
		mode, thread string
		hop          bool
	}
	hows := []how{{"running", "", false}, {"stopped", "fp", false}, {"stopped", "reader", false}, {"restart", "sleeper", false}}
	if stubReach != 0 {
		// Through a hop: the thread of the tracer's choice, a restarted
		// sleep, and (below) every register checked.
		hows = append(hows, how{"running", "", true}, how{"restart", "sleeper", true})
	}
	// Last: the gpr thread's spin takes a CPU from the rest.
	hows = append(hows, how{"stopped", "gpr", false})
	if stubReach != 0 {
		hows = append(hows, how{"stopped", "gpr", true})
	}
	for _, how := range hows {
		if how.thread == "gpr" && !how.hop {
			c.startGPR(t)
		}
		// How many steps one remote system call takes.
		out, err := helper(how.mode, how.thread, how.hop, 0).Output()
		require.NoError(t, err, "%s", out)
		var steps, hops int
		_, err = fmt.Sscanf(string(regexp.MustCompile(`steps \d+ hops \d+`).Find(out)), "steps %d hops %d", &steps, &hops)
		require.NoError(t, err, "%s", out)
		require.Greater(t, steps, 2)
		require.Equal(t, how.hop, hops > 0, "%+v: hops", how)
		t.Logf("%+v: %d steps", how, steps)
		for n := 1; n <= steps+1; n++ {
			cmd := helper(how.mode, how.thread, how.hop, n)
			h := startTarget(t, cmd) // returns at "ready syscalls"
			h.Wait()
			require.Empty(t, h.errs(), "%s %s step %d", how.mode, how.thread, n)
			require.Equal(t, "signal: killed", cmd.ProcessState.String(), "%s %s step %d", how.mode, how.thread, n)
			for tid, st := range threadStates(t, c.Pid) {
				require.NotEqual(t, "t", string(st), "%s %s step %d: thread %d still traced", how.mode, how.thread, n, tid)
			}
			m := c.Mark()
			line := fmt.Sprintf("after kill %s %s %d", how.mode, how.thread, n)
			fmt.Fprintln(c.Stdin, line)
			c.ExpectAfter(t, m, regexp.MustCompile("^read "+fmt.Sprint(len(line)+1)+" "+line+"$"), 5*time.Second)
			c.healthy(t)
			require.NoError(t, syscall.Kill(c.Pid, 0))
		}
	}
	time.Sleep(1100 * time.Millisecond) // the sleeper's restarted sleep ends
	c.healthy(t)
}

// The padding system call stubs are written to lies in private executable
// mappings and outside every allocated section of the object's file, for a
// C target (with its libraries) and a static Go one; the executable itself
// has some (through its section gaps, when its last segment's tail is too
// short).
func TestSyscallStubPadding(t *testing.T) {
	for _, bin := range []string{
		fixture.BuildC(t, "ccall", "-O2", "-fomit-frame-pointer"),
		fixture.BuildGo(t, "gotasks", ""),
	} {
		fp := fixture.Start(t, bin)
		p := openT(t, fp.Pid)
		maps, err := readMaps(fp.Pid)
		require.NoError(t, err)
		var pads []pad
		require.NoError(t, p.do(func() error { pads = p.findPads(maps, syscallStubSize); return nil }))
		require.NotEmpty(t, pads)
		inExe := false
		for _, pd := range pads {
			var m *mapping
			for i := range maps {
				if maps[i].start <= pd.addr && pd.addr+pd.size <= maps[i].end {
					m = &maps[i]
				}
			}
			require.NotNil(t, m, "pad %#x+%d in no mapping", pd.addr, pd.size)
			require.Equal(t, "xp", m.perms[2:4], "pad %#x in %v", pd.addr, *m)
			if m.path == "[vdso]" {
				continue
			}
			f, err := elf.Open(m.path)
			require.NoError(t, err)
			var bias uint64
			for i := range maps {
				if maps[i].path == m.path && maps[i].off == 0 {
					for _, pr := range f.Progs {
						if pr.Type == elf.PT_LOAD && pr.Off == 0 {
							bias = maps[i].start - pr.Vaddr
						}
					}
					break
				}
			}
			for _, s := range f.Sections {
				if s.Flags&elf.SHF_ALLOC == 0 || s.Size == 0 {
					continue
				}
				lo, hi := bias+s.Addr, bias+s.Addr+s.Size
				require.False(t, lo < pd.addr+pd.size && pd.addr < hi, "%s: pad %#x+%d overlaps %s", m.path, pd.addr, pd.size, s.Name)
			}
			f.Close()
			if m.path == bin {
				inExe = true
			}
		}
		t.Logf("%s: %+v", bin, pads)
		require.True(t, inExe, "%s: no padding in the executable: %+v", bin, pads)
	}
}

// countPrefix counts the lines that start with prefix.
func countPrefix(lines []string, prefix string) int {
	n := 0
	for _, l := range lines {
		if strings.HasPrefix(l, prefix) {
			n++
		}
	}
	return n
}

// The tracer is killed at each step of a marked mmap (MmapScratch): with
// its thread on the stub (the thread then makes the mapping by itself),
// after the mmap returned, and after the mark. A new tracer's Leftovers
// names the stub left in padding and the unmarked mapping its intent
// names, ScratchAt finds the marked one, and Recover puts the padding back
// and unmaps the unmarked mapping; the target runs on. On arm64 also with
// the stub out of reach, returning through a hop: two runs, maybe.
func TestMarkedMmapTracerKilled(t *testing.T) {
	for _, bin := range []string{
		fixture.BuildC(t, "ccall", "-O2", "-fomit-frame-pointer"),
		fixture.BuildGo(t, "gotasks", ""),
	} {
		type testCase struct {
			step    string
			orphans int
			hop     bool
		}
		tcs := []testCase{{"syscall:on-stub", 1, false}, {"syscall:returned", 1, false}, {"syscall:marked", 0, false}}
		if stubReach != 0 {
			for _, tc := range tcs[:len(tcs):len(tcs)] {
				tc.hop = true
				tcs = append(tcs, tc)
			}
		}
		for _, tc := range tcs {
			fp := fixture.Start(t, bin)
			cmd := exec.Command(os.Args[0], "-test.run=^$")
			cmd.Env = append(os.Environ(), helperEnv+"=marker", fmt.Sprintf("TRACEE_TEST_PID=%d", fp.Pid),
				"TRACEE_TEST_MODE=running", "TRACEE_TEST_STEP="+tc.step)
			if tc.hop {
				cmd.Env = append(cmd.Env, "TRACEE_TEST_HOP=1")
			}
			h := startTarget(t, cmd)
			h.Wait()
			require.Empty(t, h.errs(), tc.step)
			require.Equal(t, "signal: killed", cmd.ProcessState.String(), tc.step)
			time.Sleep(100 * time.Millisecond) // the thread runs the stub by itself

			p := openT(t, fp.Pid)
			stubs, orphans, err := p.Leftovers()
			require.NoError(t, err)
			// With a hop: one run, or two when the hop lies in another.
			require.NotEmpty(t, stubs, "%+v: the stub is left in padding", tc)
			require.LessOrEqual(t, len(stubs), map[bool]int{false: 1, true: 2}[tc.hop], "%+v", tc)
			require.Len(t, orphans, tc.orphans, tc.step)
			before := orphans
			maps, err := readMaps(fp.Pid)
			require.NoError(t, err)
			var scratch []uint64
			for _, m := range maps {
				if addr, size, ok := p.ScratchAt(m.end); ok {
					require.Equal(t, uint64(pageSize), size)
					scratch = append(scratch, addr)
				}
			}
			require.Len(t, scratch, 1-tc.orphans, "%s: the marked mapping is found by its footer", tc.step)

			pads, unmapped, err := p.Recover()
			require.NoError(t, err)
			require.Equal(t, [2]int{len(stubs), tc.orphans}, [2]int{pads, unmapped}, tc.step)
			stubs, orphans, err = p.Leftovers()
			require.NoError(t, err)
			require.Empty(t, stubs, tc.step)
			require.Empty(t, orphans, tc.step)
			maps, err = readMaps(fp.Pid)
			require.NoError(t, err)
			for _, m := range maps {
				for _, o := range orphansBefore(before) {
					require.NotEqual(t, o, m.start, "%s: the unmarked mapping is gone", tc.step)
				}
			}
			require.NoError(t, p.Close())
			require.NoError(t, syscall.Kill(fp.Pid, 0), "%s: the target runs on", tc.step)
			fp.Kill()
		}
	}
}

func orphansBefore(rs [][2]uint64) []uint64 {
	var out []uint64
	for _, r := range rs {
		out = append(out, r[0])
	}
	return out
}

// CallStore's result is written by the target itself at the address given
// (the return stub stores it before the tracer reads it), and the call
// returns it as Call does.
func TestCallStore(t *testing.T) {
	c := startCall(t)
	page, err := c.p.Mmap(0, pageSize, ProtRead|ProtWrite, MapPrivate|MapAnonymous)
	require.NoError(t, err)
	defer func() { require.NoError(t, c.p.Munmap(page, pageSize)) }()
	for i := uint64(0); i < 3; i++ {
		var got uint64
		require.NoError(t, c.p.Borrow(0, func(th *Thread) error {
			got, err = th.CallStore("add6", c.addr(t, "add6"), page+8*(i+1), 1, 2, 3, 4, 5, i)
			return err
		}))
		require.Equal(t, 1+4+9+16+25+6*i, got)
		b := make([]byte, 32)
		_, err := c.p.ReadAt(b, int64(page))
		require.NoError(t, err)
		for k := uint64(0); k < 4; k++ {
			want := uint64(0)
			if k >= 1 && k <= i+1 {
				want = 1 + 4 + 9 + 16 + 25 + 6*(k-1)
			}
			require.Equal(t, want, binaryLE(b[8*k:]), "word %d after call %d", k, i)
		}
	}
	c.healthy(t)
}

// A tracer killed during a CallStore: the thread finishes the call by
// itself and the result is at the store address all the same.
func TestCallStoreTracerKilled(t *testing.T) {
	c := startCall(t)
	page, err := c.p.Mmap(0, pageSize, ProtRead|ProtWrite, MapPrivate|MapAnonymous)
	require.NoError(t, err)
	require.NoError(t, c.p.Close())
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"=caller", fmt.Sprintf("TRACEE_TEST_PID=%d", c.Pid),
		fmt.Sprintf("TRACEE_TEST_FN=%x", c.addr(t, "spin_add")), "TRACEE_TEST_MODE=running", fmt.Sprintf("TRACEE_TEST_STORE=%x", page+16))
	m := c.Mark()
	helper := startTarget(t, cmd)
	c.ExpectAfter(t, m, regexp.MustCompile(`^spin_add running$`), 30*time.Second)
	for _, l := range helper.Lines() {
		require.NotContains(t, l, "returned", "the call ended before the kill")
	}
	helper.Kill()
	helper.Wait()
	time.Sleep(600 * time.Millisecond) // the call completes on its own
	p := openT(t, c.Pid)
	b := make([]byte, 8)
	_, err = p.ReadAt(b, int64(page+16))
	require.NoError(t, err)
	require.Equal(t, uint64(3), binaryLE(b), "the target stored the result of the call the killed tracer made")
	c.p = p
	c.healthy(t)
}
