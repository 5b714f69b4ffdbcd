//go:build linux

package patch_test

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/hotpatch-dev/hotpatch/internal/tracee"
	"github.com/hotpatch-dev/hotpatch/patch"
	"github.com/hotpatch-dev/hotpatch/patch/internal/selffix"
)

//go:noinline
func answer() int { return 1 }

//go:noinline
func otherAnswer() int { return 2 }

// hammer runs n goroutines calling answer in a tight loop until stop is
// closed; every result other than 1 or 2 is counted as bad, and each
// result's count is kept.
type hammer struct {
	stop      chan struct{}
	wg        sync.WaitGroup
	ones, two atomic.Int64
	bad       atomic.Int64
	reverted  atomic.Bool  // set once Revert returned
	late      atomic.Int64 // new results after that
}

func startHammer(n int) *hammer {
	h := &hammer{stop: make(chan struct{})}
	for range n {
		h.wg.Add(1)
		go func() {
			defer h.wg.Done()
			for {
				select {
				case <-h.stop:
					return
				default:
				}
				// Counted locally, published once per batch: under -race
				// every atomic runs in the race runtime's C code, which
				// has no unwind tables, and a thread caught there blocks
				// the pause (an unreliable stack never counts as clean).
				var ones, twos, bad int64
				reverted := h.reverted.Load()
				for range 1000 {
					switch answer() {
					case 1:
						ones++
					case 2:
						twos++
					default:
						bad++
					}
				}
				h.ones.Add(ones)
				h.two.Add(twos)
				h.bad.Add(bad)
				if reverted && twos > 0 {
					h.late.Add(twos) // new results in a batch begun after Revert returned
				}
			}
		}()
	}
	return h
}

// sees waits until the hammering goroutines have returned result v again
// (counted from now), a few times each.
func (h *hammer) sees(t *testing.T, v int) {
	t.Helper()
	c := &h.ones
	if v == 2 {
		c = &h.two
	}
	start := c.Load()
	require.Eventually(t, func() bool { return c.Load() > start+100000 }, 10*time.Second, time.Millisecond,
		"the goroutines never returned %d", v)
}

// TestFuncUnderLoad patches a function while 100 goroutines call it in a
// tight loop, and reverts it likewise: every call returns the old or the new
// result, never anything else, and nothing crashes. The patch goes through
// the helper process and the same pause and transition as any Apply.
func TestFuncUnderLoad(t *testing.T) {
	h := startHammer(100)
	defer func() { close(h.stop); h.wg.Wait() }()
	h.sees(t, 1)

	// Stop mode alone rarely finds all 100 outside: on a few cores most of
	// them wait, preempted, and some inside answer. Auto mode (Func's
	// default) gives those the old code until they leave it.
	p, err := patch.FuncWith(answer, otherAnswer, patch.FuncOptions{Timeout: 20 * time.Second})
	require.NoError(t, err)
	require.Equal(t, patch.StateApplied, p.Result().State)
	t.Logf("apply: pause %v, %d attempt(s)", p.Result().Pause, p.Result().Attempts)
	require.Equal(t, 2, answer())
	h.sees(t, 2)

	require.NoError(t, p.Revert())
	require.Equal(t, patch.StateReverted, p.Result().State)
	t.Logf("revert: pause %v, %d attempt(s)", p.Result().Pause, p.Result().Attempts)
	h.reverted.Store(true)
	require.Equal(t, 1, answer())
	h.sees(t, 1)
	require.Zero(t, h.bad.Load(), "calls returned neither the old nor the new result")
	require.Zero(t, h.late.Load(), "calls after Revert returned got the new result")
	require.ErrorIs(t, p.Revert(), patch.ErrNotApplied)
}

// TestAttachSelfRefused: a process cannot ptrace itself; Attach says so at
// once and names the way that works, instead of failing later with a
// permission error.
func TestAttachSelfRefused(t *testing.T) {
	_, err := patch.Attach(os.Getpid(), nil)
	require.ErrorIs(t, err, patch.ErrBadRequest)
	require.ErrorContains(t, err, "Func")
}

// TestFuncClosureTimeNow replaces time.Now, a standard-library function, by
// a closure that captures a variable (the common test case): the patched
// time.Now returns what the closure computes from its captures, including
// later changes to them, and the real clock is back after Revert.
func TestFuncClosureTimeNow(t *testing.T) {
	fixed := time.Date(2001, 2, 3, 4, 5, 6, 0, time.UTC)
	p, err := patch.Func(time.Now, func() time.Time { return fixed })
	require.NoError(t, err)
	require.True(t, time.Now().Equal(fixed), "time.Now() = %v", time.Now())
	fixed = fixed.Add(time.Hour)
	require.True(t, time.Now().Equal(fixed), "time.Now() = %v", time.Now())
	require.NoError(t, p.Revert())
	require.Greater(t, time.Now().Year(), 2020)
}

// TestFuncClosureCounter: a closure replacement with captures of several
// kinds (a counter it writes, a value it reads), called from many
// goroutines.
func TestFuncClosureCounter(t *testing.T) {
	var calls atomic.Int64
	base := 40
	p, err := patch.Func(answer, func() int { calls.Add(1); return base + 2 })
	require.NoError(t, err)
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 1000 {
				if v := answer(); v != 42 {
					t.Errorf("answer() = %d", v)
					return
				}
			}
		}()
	}
	wg.Wait()
	require.Equal(t, int64(8000), calls.Load())
	require.NoError(t, p.Revert())
	require.Equal(t, 1, answer())
	require.Equal(t, int64(8000), calls.Load())
}

//go:noinline
func parked(ch chan int) int { return <-ch + 100 }

//go:noinline
func parkedNew(ch chan int) int { return <-ch + 200 }

// TestFuncParkedGoroutine: a goroutine parked inside the function blocks
// the self-patch in stop mode (the same check as any Apply: the helper sees
// this process's goroutines), and in gradual mode it keeps the old code
// while every other goroutine gets the new code; Resume finishes once it
// left.
func TestFuncParkedGoroutine(t *testing.T) {
	ch := make(chan int)
	got := make(chan int)
	go func() { got <- parked(ch) }()
	time.Sleep(20 * time.Millisecond) // let it park in the receive

	_, err := patch.FuncWith(parked, parkedNew, patch.FuncOptions{Mode: patch.ModeStop, Timeout: 300 * time.Millisecond})
	require.ErrorIs(t, err, patch.ErrBlocked)
	require.ErrorContains(t, err, "parked")

	p, err := patch.FuncWith(parked, parkedNew, patch.FuncOptions{
		Mode: patch.ModeGradual, Timeout: 300 * time.Millisecond, OnTimeout: patch.OnTimeoutStay})
	require.NoError(t, err)
	require.Equal(t, patch.StateTransition, p.Result().State)
	require.Equal(t, 1, p.Result().Pending)

	ch2 := make(chan int, 1)
	ch2 <- 1
	require.Equal(t, 201, parked(ch2), "a new call gets the new code")
	ch <- 1
	require.Equal(t, 101, <-got, "the parked goroutine kept the old code")

	require.NoError(t, p.Resume())
	require.Equal(t, patch.StateApplied, p.Result().State)
	ch2 <- 1
	require.Equal(t, 201, parked(ch2))
	require.NoError(t, p.Revert())
	ch2 <- 1
	require.Equal(t, 101, parked(ch2))
}

//go:noinline
func patchesItself() error {
	_, err := patch.Func(patchesItself, func() error { return nil })
	return err
}

// TestFuncCallerInside: the calling goroutine is known; patching a function
// it is executing is refused at once, with that reason, not after the
// timeout.
func TestFuncCallerInside(t *testing.T) {
	start := time.Now()
	err := patchesItself()
	require.ErrorIs(t, err, patch.ErrBlocked)
	require.ErrorContains(t, err, "calling goroutine")
	require.Less(t, time.Since(start), time.Second)
}

const scaleName = "github.com/hotpatch-dev/hotpatch/patch/internal/selffix.scale"

// TestFuncByName patches an unexported function of another package by its
// name; the replacement's signature is checked against the function table.
func TestFuncByName(t *testing.T) {
	p, err := patch.FuncByName(scaleName, func(x int) int { return -x })
	require.NoError(t, err)
	require.Equal(t, -3, selffix.Scale(3))
	require.NoError(t, p.Revert())
	require.Equal(t, 30, selffix.Scale(3))

	_, err = patch.FuncByName(scaleName, func(x, y int) (int, int) { return x, y })
	require.ErrorIs(t, err, patch.ErrSignature)
	var se *patch.SignatureError
	require.ErrorAs(t, err, &se, "the typed error crosses from the helper")
	_, err = patch.FuncByName(scaleName+"Nope", func(x int) int { return x })
	require.ErrorIs(t, err, patch.ErrUnknownSymbol)
	require.Equal(t, 30, selffix.Scale(3))
}

// TestFuncMethodExpressions patches methods through method expressions,
// pointer and value receivers, and refuses the function values whose code
// callers do not run, saying what to patch instead.
func TestFuncMethodExpressions(t *testing.T) {
	c := &selffix.Counter{}
	p, err := patch.Func((*selffix.Counter).Add, func(c *selffix.Counter, x int) int { c.N -= x; return c.N })
	require.NoError(t, err)
	require.Equal(t, -5, c.Add(5))
	require.NoError(t, p.Revert())
	require.Equal(t, 0, c.Add(5))

	p, err = patch.Func(selffix.Money.Double, func(m selffix.Money) selffix.Money { return 3 * m })
	require.NoError(t, err)
	require.Equal(t, selffix.Money(21), selffix.Money(7).Double())
	require.NoError(t, p.Revert())
	require.Equal(t, selffix.Money(14), selffix.Money(7).Double())

	for _, tc := range []struct {
		name string
		err  error
		want string
	}{
		{"pointer wrapper of a value method", func() error {
			_, err := patch.Func((*selffix.Money).Double, func(*selffix.Money) selffix.Money { return 0 })
			return err
		}(), "T.M"},
		{"generic", func() error {
			_, err := patch.Func(selffix.Ident[int], func(x int) int { return x })
			return err
		}(), "generic"},
		{"method value", func() error {
			_, err := patch.Func(c.Add, func(int) int { return 0 })
			return err
		}(), "method expression"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			require.ErrorIs(t, tc.err, patch.ErrNotPatchable)
			require.ErrorContains(t, tc.err, tc.want)
		})
	}
}

// sumTo recurses with a large frame, so that a deep call grows the stack
// many times.
//
//go:noinline
func sumTo(n int) int {
	var pad [512]byte
	pad[n&511] = byte(n)
	if n == 0 {
		return int(pad[0])
	}
	return n + sumTo(n-1) + int(pad[n&511]) - int(byte(n))
}

// TestWrapDeepRecursion: a replacement that wraps the original, counting
// calls, on a recursion deep enough that the original's stack check fails
// hundreds of times (and goroutines are asked to yield through it). Every
// call is counted once: a stack growth in the original resumes in the
// original, not in the wrapper.
func TestWrapDeepRecursion(t *testing.T) {
	const n = 20000
	var calls atomic.Int64
	p, err := patch.Wrap(sumTo, func(orig func(int) int) func(int) int {
		return func(x int) int { calls.Add(1); return orig(x) }
	})
	require.NoError(t, err)
	for _, g := range []int{1, 4} {
		calls.Store(0)
		var wg sync.WaitGroup
		for range g {
			wg.Add(1)
			go func() { // a fresh goroutine starts on a small stack
				defer wg.Done()
				if got := sumTo(n); got != n*(n+1)/2 {
					t.Errorf("sumTo(%d) = %d", n, got)
				}
			}()
		}
		wg.Wait()
		require.Equal(t, int64(g*(n+1)), calls.Load(), "%d goroutine(s): every call counted exactly once", g)
	}
	require.NoError(t, p.Revert())
	calls.Store(0)
	require.Equal(t, 55, sumTo(10))
	require.Zero(t, calls.Load())
}

// TestFuncInlinedRefused: a function the compiler inlined into callers is
// refused, the callers named, with the fix spelled out (the inlined copies
// would keep the old code: the silent no-op of other patchers).
func TestFuncInlinedRefused(t *testing.T) {
	_, err := patch.Func(selffix.Small, func(x int) int { return 0 })
	require.ErrorIs(t, err, patch.ErrInlined)
	var ie *patch.InlinedError
	require.ErrorAs(t, err, &ie)
	require.ErrorContains(t, err, "selffix.Inlines")
	require.ErrorContains(t, err, "//go:noinline")
	require.ErrorContains(t, err, "-gcflags=all=-l")
	t.Log(err)
	require.Equal(t, 14, selffix.Inlines(0))
}

// TestSelfHelperLifecycle: the helper stays warm between patches, is
// restarted after it died (killed here), and dies with its parent (a child
// test process that patched itself and exited leaves no helper behind).
func TestSelfHelperLifecycle(t *testing.T) {
	if os.Getenv("HOTPATCH_TEST_CHILD") == "1" {
		p, err := patch.Func(answer, otherAnswer)
		if err != nil {
			fmt.Println("error:", err)
			os.Exit(1)
		}
		fmt.Printf("helper=%d answer=%d\n", patch.SelfHelperPid(), answer())
		_ = p
		os.Exit(0) // still applied, helper still attached
	}
	p, err := patch.Func(answer, otherAnswer)
	require.NoError(t, err)
	pid := patch.SelfHelperPid()
	require.NotZero(t, pid)
	require.NoError(t, p.Revert())
	require.Equal(t, pid, patch.SelfHelperPid(), "kept warm")

	require.NoError(t, syscall.Kill(pid, syscall.SIGKILL))
	require.Eventually(t, func() bool { return !alive(pid) }, 5*time.Second, 10*time.Millisecond)
	p, err = patch.Func(answer, otherAnswer)
	require.NoError(t, err, "a new helper replaces the dead one")
	require.NotEqual(t, pid, patch.SelfHelperPid())
	require.Equal(t, 2, answer())
	require.NoError(t, p.Revert())

	cmd := exec.Command(os.Args[0], "-test.run=^TestSelfHelperLifecycle$", "-test.count=1")
	cmd.Env = append(os.Environ(), "HOTPATCH_TEST_CHILD=1")
	cmd.Stderr = os.Stderr // not a pipe the child's helper would hold open
	out, err := cmd.Output()
	require.NoError(t, err, "%s", out)
	var child, got int
	_, err = fmt.Sscanf(string(out), "helper=%d answer=%d", &child, &got)
	require.NoError(t, err, "%s", out)
	require.Equal(t, 2, got)
	require.Eventually(t, func() bool { return !alive(child) }, 5*time.Second, 10*time.Millisecond,
		"the child's helper %d outlived it", child)
}

// alive reports whether pid is a live process (not a zombie).
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	return len(f) > 0 && f[0] != "Z" && f[0] != "X"
}

// TestSelfHelperLetsGo: after a while without requests the helper closes
// its Target, releasing the process's lock (its /proc/PID/mem) for other
// tools, and attaches again for the next patch.
func TestSelfHelperLetsGo(t *testing.T) {
	t.Setenv("HOTPATCH_SELF_IDLE", "300ms")
	patch.StopSelfHelper() // the next one reads the setting
	p, err := patch.Func(answer, otherAnswer)
	require.NoError(t, err)
	require.NoError(t, p.Revert())
	helper := patch.SelfHelperPid()
	require.True(t, holdsMem(t, helper), "attached while requests come")
	require.Eventually(t, func() bool { return !holdsMem(t, helper) }, 5*time.Second, 50*time.Millisecond,
		"the idle helper keeps /proc/%d/mem open", os.Getpid())
	p, err = patch.Func(answer, otherAnswer)
	require.NoError(t, err)
	require.Equal(t, helper, patch.SelfHelperPid())
	require.Equal(t, 2, answer())
	require.NoError(t, p.Revert())
}

// holdsMem reports whether process pid has this process's /proc/PID/mem
// open.
func holdsMem(t *testing.T, pid int) bool {
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, err := os.ReadDir(dir)
	require.NoError(t, err)
	want := fmt.Sprintf("/proc/%d/mem", os.Getpid())
	for _, e := range ents {
		if l, err := os.Readlink(dir + "/" + e.Name()); err == nil && l == want {
			return true
		}
	}
	return false
}

// BenchmarkFuncApplyRevert: one self-patch and its revert, through the warm
// helper (the pause itself is in Result().Pause).
func BenchmarkFuncApplyRevert(b *testing.B) {
	var pause time.Duration
	for b.Loop() {
		p, err := patch.Func(answer, otherAnswer)
		if err != nil {
			b.Fatal(err)
		}
		pause += p.Result().Pause
		if err := p.Revert(); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(pause.Microseconds())/float64(b.N), "pause-µs/op")
}

// yamaChildEnv marks the copy of the test binary TestFuncUnderYama runs
// as another user.
const yamaChildEnv = "HOTPATCH_YAMA_CHILD"

// TestFuncUnderYama: with Yama's ptrace_scope 1 a process may trace only
// its descendants unless the traced process names its tracer, and the
// self-patch helper is the patched process's child: the process names it
// with PR_SET_PTRACER. The patching process runs as an unprivileged user
// (root's CAP_SYS_PTRACE passes Yama), from a copy of this test binary it
// may execute. Kernels without Yama skip it (the arm64 VM lane's Debian
// kernel has it).
func TestFuncUnderYama(t *testing.T) {
	if os.Getenv(yamaChildEnv) != "" {
		h, err := patch.Func(answer, otherAnswer)
		if err != nil {
			fmt.Println("patch:", err)
			return
		}
		fmt.Println("patched answer", answer())
		if err := h.Revert(); err != nil {
			fmt.Println("revert:", err)
			return
		}
		fmt.Println("reverted answer", answer())
		return
	}
	const scope = "/proc/sys/kernel/yama/ptrace_scope"
	old, err := os.ReadFile(scope)
	if err != nil {
		t.Skipf("kernel without Yama (%v): PR_SET_PTRACER has nothing to allow", err)
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root: to set ptrace_scope, and to run the patching process as another user")
	}
	if v := strings.TrimSpace(string(old)); v == "3" {
		t.Skip("ptrace_scope is 3 (no attach at all), which cannot be lowered until reboot")
	}
	require.NoError(t, os.WriteFile(scope, []byte("1"), 0o644))
	t.Cleanup(func() { os.WriteFile(scope, old, 0o644) })

	self, err := os.Executable()
	require.NoError(t, err)
	dir, err := os.MkdirTemp("", "hotpatch-yama-")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	require.NoError(t, os.Chmod(dir, 0o755))
	data, err := os.ReadFile(self)
	require.NoError(t, err)
	bin := dir + "/self.test"
	require.NoError(t, os.WriteFile(bin, data, 0o755))

	cmd := exec.Command(bin, "-test.run=^TestFuncUnderYama$")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), yamaChildEnv+"=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "%s", out)
	require.Contains(t, string(out), "patched answer 2", "%s", out)
	require.Contains(t, string(out), "reverted answer 1", "%s", out)
}

// TestDonatedPadding: where a system call stub must lie near the thread's
// pc (arm64), the self-patching program maps a page for the stubs within
// reach of its whole text, starting with tracee.DonatedPadMagic, read-only
// and executable; elsewhere it maps none.
func TestDonatedPadding(t *testing.T) {
	patch.DonatePadding()
	maps, err := os.ReadFile("/proc/self/maps")
	require.NoError(t, err)
	exe, err := os.Readlink("/proc/self/exe")
	require.NoError(t, err)
	var textLo, textHi, padAt uint64
	for _, l := range strings.Split(string(maps), "\n") {
		fs := strings.Fields(l)
		if len(fs) < 5 {
			continue
		}
		var lo, hi uint64
		fmt.Sscanf(fs[0], "%x-%x", &lo, &hi)
		switch {
		case len(fs) >= 6 && fs[5] == exe && strings.Contains(fs[1], "x"):
			textLo, textHi = lo, hi
		case len(fs) == 5 && fs[1] == "r-xp" && hi-lo == 64<<10:
			b := make([]byte, len(tracee.DonatedPadMagic))
			f, err := os.Open("/proc/self/mem")
			require.NoError(t, err)
			f.ReadAt(b, int64(lo))
			f.Close()
			if string(b) == tracee.DonatedPadMagic {
				padAt = lo
			}
		}
	}
	require.NotZero(t, textLo, "the program's text mapping")
	if tracee.StubReach == 0 {
		require.Zero(t, padAt, "no page where any padding will do")
		return
	}
	require.NotZero(t, padAt, "a donated page:\n%s", maps)
	far := max(padAt+64<<10, textHi) - min(padAt, textLo)
	require.Less(t, far, uint64(tracee.StubReach), "within reach of the whole text")
}
