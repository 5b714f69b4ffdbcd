package tracee

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/hotpatch-dev/hotpatch/internal/fixture"
)

// target is a running test target (a fixture.Proc) with the helpers the
// tracee tests use on its heartbeat lines.
type target struct {
	*fixture.Proc
	tb  testing.TB
	pid int
}

// startTarget starts cmd and waits for its "ready" line; the process is
// killed at the end of the test.
func startTarget(tb testing.TB, cmd *exec.Cmd) *target {
	tb.Helper()
	p := fixture.StartCmd(tb, cmd)
	return &target{Proc: p, tb: tb, pid: p.Pid}
}

// startFixture starts testdata/tracee.c of internal/fixture with the given
// number of sleeper threads.
func startFixture(tb testing.TB, sleepers int) *target {
	tb.Helper()
	return startTarget(tb, exec.Command(fixtureBin(tb), strconv.Itoa(sleepers)))
}

// fixtureBin builds testdata/tracee.c of internal/fixture.
func fixtureBin(tb testing.TB) string {
	tb.Helper()
	return fixture.BuildC(tb, "tracee", "-O2")
}

// safety is the time after which a test that waits for a line gives up: a
// safety net against hangs, not a measurement.
const safety = 60 * time.Second

func (tg *target) mark() int { return tg.Mark() }

// waitLine waits for a line at index >= from that matches, and returns it
// and its index.
func (tg *target) waitLine(from int, match func(string) bool) (string, int) {
	tg.tb.Helper()
	return tg.WaitLine(tg.tb, from, "the line the test waits for", match, safety)
}

// waitBeats waits, after line index from, for a heartbeat of every name.
func (tg *target) waitBeats(from int, names ...string) {
	tg.tb.Helper()
	for _, n := range names {
		prefix := "beat " + n + " "
		tg.WaitLine(tg.tb, from, "a heartbeat "+prefix, func(s string) bool { return strings.HasPrefix(s, prefix) }, safety)
	}
}

// errs returns the lines that report a failure in the target.
func (tg *target) errs() []string {
	var out []string
	for _, l := range tg.Lines() {
		if strings.HasPrefix(l, "ERR") || strings.Contains(l, "panic") || strings.Contains(l, "fatal") {
			out = append(out, l)
		}
	}
	return out
}

func (tg *target) linesFrom(from int) []string { return tg.Lines()[from:] }

// fixtureBeats are the heartbeat names of a C fixture with n sleepers.
func fixtureBeats(n int) []string {
	names := []string{"main", "spin"}
	for i := 0; i < n; i++ {
		names = append(names, fmt.Sprintf("s%d", i))
	}
	return names
}

// threadStates returns tid → state letter of every thread of pid.
func threadStates(tb testing.TB, pid int) map[int]byte {
	tb.Helper()
	tids, err := listTasks(pid)
	require.NoError(tb, err)
	m := map[int]byte{}
	for _, tid := range tids {
		if st := taskState(pid, tid); st != 0 {
			m[tid] = st
		}
	}
	return m
}

// requireAllStopped checks that every live thread of the target is in a
// ptrace-stop and is one of p.Threads().
func requireAllStopped(tb testing.TB, p *Process) {
	tb.Helper()
	threads := p.Threads()
	require.NotEmpty(tb, threads)
	require.Equal(tb, p.Pid(), threads[0], "leader first")
	ours := map[int]bool{}
	for _, tid := range threads {
		ours[tid] = true
	}
	live := 0
	for tid, st := range threadStates(tb, p.Pid()) {
		if st == 'Z' || st == 'X' || st == 'x' {
			require.False(tb, ours[tid], "thread %d is dead but listed", tid)
			continue
		}
		live++
		require.Equal(tb, "t", string(st), "thread %d state", tid)
		require.True(tb, ours[tid], "thread %d is stopped but not listed", tid)
	}
	require.Equal(tb, len(threads), live, "thread count")
}

// Helper processes: the test binary re-executed with helperEnv set.
const helperEnv = "TRACEE_TEST_HELPER"

func TestMain(m *testing.M) {
	switch os.Getenv(helperEnv) {
	case "gotarget":
		goTarget()
		os.Exit(0)
	case "tracer":
		tracerChild()
		os.Exit(0)
	case "caller":
		callerChild()
		os.Exit(0)
	case "syscaller":
		syscallerChild()
		os.Exit(0)
	case "marker":
		markerChild()
		os.Exit(0)
	case "holder":
		holderChild()
		os.Exit(0)
	case "routiner":
		routinerChild()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// goTarget is a Go target: goroutines locked to threads that sleep and spin
// (and thus get SIGURG preemption signals), plus a goroutine that creates and
// destroys threads in a tight loop (a goroutine that exits while locked
// terminates its thread).
func goTarget() {
	runtime.GOMAXPROCS(4)
	var mu sync.Mutex
	say := func(format string, args ...any) {
		mu.Lock()
		fmt.Printf(format+"\n", args...)
		mu.Unlock()
	}
	var churned sync.Map
	for i := 0; i < 3; i++ {
		go func() {
			runtime.LockOSThread()
			for j := 0; ; j++ {
				time.Sleep(10 * time.Millisecond)
				if j%10 == 0 {
					say("beat sleeper%d %d", i, j)
				}
			}
		}()
	}
	go func() {
		runtime.LockOSThread()
		x := 0
		last := time.Now()
		for j := 0; ; x++ {
			if x&0xffff == 0 && time.Since(last) > 100*time.Millisecond {
				last = time.Now()
				say("beat spin %d", j)
				j++
			}
		}
	}()
	go func() {
		for n := 0; ; n++ {
			done := make(chan struct{})
			go func() {
				runtime.LockOSThread()
				close(done)
			}()
			<-done
			churned.Store(0, n)
		}
	}()
	say("ready %d", os.Getpid())
	for j := 0; ; j++ {
		time.Sleep(50 * time.Millisecond)
		n, _ := churned.Load(0)
		say("beat main %d churn=%v", j, n)
	}
}

func startGoTarget(tb testing.TB) *target {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"=gotarget")
	return startTarget(tb, cmd)
}

// callerChild calls the function at TRACEE_TEST_FN (hex) in TRACEE_TEST_PID
// with the arguments 400, 1, 2 (spin_add: 400 ms), saying "ready calling"
// first; the test kills it during the call. TRACEE_TEST_MODE says on which
// thread: "running", a thread of the running process chosen by Call;
// "stopped", thread TRACEE_TEST_TID of the stopped process; "restart", the
// same once it is stopped while it continues a system call through
// restart_syscall (stopped, resumed and stopped again inside a sleep).
func callerChild() {
	fn, _ := strconv.ParseUint(os.Getenv("TRACEE_TEST_FN"), 16, 64)
	p, tid := childTarget()
	call := func() (uint64, error) { return p.Call("spin_add", fn, 400, 1, 2) }
	if store, _ := strconv.ParseUint(os.Getenv("TRACEE_TEST_STORE"), 16, 64); store != 0 {
		call = func() (res uint64, err error) {
			err = p.Borrow(0, func(th *Thread) error {
				res, err = th.CallStore("spin_add", fn, store, 400, 1, 2)
				return err
			})
			return res, err
		}
	}
	if os.Getenv("TRACEE_TEST_MODE") != "running" {
		call = func() (uint64, error) { return p.CallOn(tid, "spin_add", fn, 400, 1, 2) }
	}
	fmt.Println("ready calling")
	res, err := call()
	fmt.Println("returned", res, err)
	select {}
}

// stopInRestart resumes and stops the stopped process p until its thread tid
// is stopped while it continues a system call through restart_syscall (a
// sleep interrupted by a stop continues that way once resumed).
func stopInRestart(p *Process, tid int) error {
	for try := 0; try < 50; try++ {
		r, err := p.GetRegs(tid)
		if err != nil {
			return err
		}
		if nr, ok := resumeSyscall(p, r); ok && nr == sysRestartSyscall {
			return nil
		}
		if err := p.Resume(); err != nil {
			return err
		}
		time.Sleep(20 * time.Millisecond)
		if err := p.Stop(); err != nil {
			return err
		}
	}
	return fmt.Errorf("thread %d never stopped inside restart_syscall", tid)
}

// tracerChild stops TRACEE_TEST_PID, says so, and waits to be killed.
func tracerChild() {
	pid, _ := strconv.Atoi(os.Getenv("TRACEE_TEST_PID"))
	p, err := Open(pid)
	if err == nil {
		err = p.Stop()
	}
	if err != nil {
		fmt.Println("ERR", err)
		os.Exit(1)
	}
	fmt.Printf("ready stopped %d\n", len(p.Threads()))
	select {}
}

// childTarget opens TRACEE_TEST_PID and puts it in the state of
// TRACEE_TEST_MODE (childMode) for thread TRACEE_TEST_TID, which it returns;
// on an error it prints "ERR ..." and exits 1.
func childTarget() (*Process, int) {
	pid, _ := strconv.Atoi(os.Getenv("TRACEE_TEST_PID"))
	tid, _ := strconv.Atoi(os.Getenv("TRACEE_TEST_TID"))
	p, err := Open(pid)
	if err == nil {
		err = childMode(p, tid)
	}
	if err != nil {
		fmt.Println("ERR", err)
		os.Exit(1)
	}
	return p, tid
}

// childMode puts p in the state TRACEE_TEST_MODE names: "running" (as
// it is), "stopped" (every thread stopped), or "restart" (stopped, with
// thread tid stopped while it continues a sleep through restart_syscall).
func childMode(p *Process, tid int) error {
	switch mode := os.Getenv("TRACEE_TEST_MODE"); mode {
	case "running":
		return nil
	case "stopped", "restart":
		if err := p.Stop(); err != nil {
			return err
		}
		if mode == "restart" {
			return stopInRestart(p, tid)
		}
		return nil
	default:
		return fmt.Errorf("TRACEE_TEST_MODE %q", mode)
	}
}

// syscallerChild runs remote mmap/munmap system calls in TRACEE_TEST_PID
// and SIGKILLs itself at the TRACEE_TEST_KILLAT-th step of them
// (testHookSyscallStep), so that a test can kill the tracer after every
// ptrace request of a remote system call. With TRACEE_TEST_KILLAT=0 it runs
// one mmap, prints "steps N" (the steps one remote system call takes) and
// exits. TRACEE_TEST_MODE picks the thread as for callerChild;
// TRACEE_TEST_HOP places every stub out of reach, with a hop (arm64).
func syscallerChild() {
	killAt, _ := strconv.Atoi(os.Getenv("TRACEE_TEST_KILLAT"))
	p, tid := childTarget()
	if os.Getenv("TRACEE_TEST_MODE") == "running" {
		tid = 0
	}
	steps := 0
	testForceHop = os.Getenv("TRACEE_TEST_HOP") != ""
	testHookSyscallStep = func() {
		steps++
		if steps == killAt {
			_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
			select {}
		}
	}
	fmt.Println("ready syscalls")
	mmap := func() {
		if _, err := p.syscallOn(tid, "mmap", sysMmap, 0, 4096, ProtRead|ProtWrite, MapPrivate|MapAnonymous, ^uint64(0), 0); err != nil {
			fmt.Println("ERR", err)
			os.Exit(1)
		}
	}
	if killAt == 0 {
		mmap()
		fmt.Println("steps", steps, "hops", testHops)
		p.Close()
		os.Exit(0)
	}
	for {
		mmap()
	}
}

// markerChild maps a page of scratch memory in TRACEE_TEST_PID (running)
// and SIGKILLs itself at the first pass of step TRACEE_TEST_STEP
// (StepHook).
func markerChild() {
	at := os.Getenv("TRACEE_TEST_STEP")
	StepHook = func(s string) {
		if s == at {
			_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
			select {}
		}
	}
	testForceHop = os.Getenv("TRACEE_TEST_HOP") != ""
	p, _ := childTarget()
	fmt.Println("ready marker")
	if _, err := p.MmapScratch(pageSize, ProtRead|ProtWrite); err != nil {
		fmt.Println("ERR", err)
		os.Exit(1)
	}
	fmt.Println("mapped")
	p.Close()
}
