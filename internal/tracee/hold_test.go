package tracee

import (
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// tracerPids returns tid → TracerPid of every live thread of pid.
func tracerPids(tb testing.TB, pid int) map[int]int {
	tb.Helper()
	tids, err := listTasks(pid)
	require.NoError(tb, err)
	m := map[int]int{}
	for _, tid := range tids {
		if st := taskState(pid, tid); st != 0 && st != 'Z' {
			m[tid] = taskTracer(pid, tid)
		}
	}
	return m
}

// requireUntraced checks that no thread of pid is traced any more.
func requireUntraced(tb testing.TB, pid int) {
	tb.Helper()
	for tid, tr := range tracerPids(tb, pid) {
		require.Zero(tb, tr, "thread %d still traced", tid)
	}
}

// pauses stops and resumes p every interval until stop is closed, checking
// each stop; the first error is sent on the returned channel (nil at the
// end).
func pauses(tb testing.TB, p *Process, interval time.Duration, stop <-chan struct{}) <-chan error {
	done := make(chan error, 1)
	go func() {
		for n := 0; ; n++ {
			select {
			case <-stop:
				done <- nil
				return
			case <-time.After(interval):
			}
			if err := p.Stop(); err != nil {
				done <- fmt.Errorf("stop %d: %w", n, err)
				return
			}
			if err := p.Resume(); err != nil {
				done <- fmt.Errorf("resume %d: %w", n, err)
				return
			}
		}
	}()
	return done
}

// TestHoldSignals: a held process gets every signal sent to it, one at a
// time at the rate it takes them, both while it is paused over and over and
// while no pause runs (the ptrace thread services the signal-delivery-stops
// on its own), and a SIGSTOP/SIGCONT stops and continues it as untraced;
// Release leaves no thread traced.
func TestHoldSignals(t *testing.T) {
	tg := startFixture(t, 2)
	p := openT(t, tg.pid)
	require.NoError(t, p.Hold())
	require.True(t, p.Held())
	for tid, tr := range tracerPids(t, tg.pid) {
		require.NotZero(t, tr, "thread %d not held", tid)
	}
	sent := 0
	signals := func(n int) {
		for i := 0; i < n; i++ {
			m := tg.mark()
			require.NoError(t, syscall.Kill(tg.pid, syscall.SIGUSR1))
			sent++
			want := fmt.Sprintf("usr1 %d", sent)
			got, _ := tg.WaitLine(t, m, want, func(s string) bool { return strings.HasPrefix(s, "usr1 ") }, 5*time.Second)
			require.Equal(t, want, got)
		}
	}
	signals(200) // no pause: serviced between requests
	stop := make(chan struct{})
	done := pauses(t, p, 200*time.Microsecond, stop)
	signals(500)
	close(stop)
	require.NoError(t, <-done)

	require.NoError(t, syscall.Kill(tg.pid, syscall.SIGSTOP))
	waitStates(t, tg.pid, 't') // group-stopped, listening
	require.NoError(t, p.Stop())
	requireAllStopped(t, p)
	require.NoError(t, p.Resume())
	m := tg.mark()
	time.Sleep(100 * time.Millisecond)
	assert.Empty(t, tg.linesFrom(m), "the group-stopped target ran")
	require.NoError(t, syscall.Kill(tg.pid, syscall.SIGCONT))
	tg.waitBeats(m, fixtureBeats(2)...)
	signals(20)

	require.NoError(t, p.Release())
	require.False(t, p.Held())
	requireUntraced(t, tg.pid)
	tg.waitBeats(tg.mark(), fixtureBeats(2)...)
	signals(5)
	assert.Empty(t, tg.errs())
}

// TestHoldStops: held Stops stop every thread, also threads a Go target
// creates and ends all the time, and the target runs (with its SIGURG
// preemption) between them; a remote system call while held and running
// works; Release while stopped detaches at Resume, Close detaches a held
// process.
func TestHoldStops(t *testing.T) {
	tests := []struct {
		name  string
		start func(testing.TB) *target
		beats []string
	}{
		{"C", func(tb testing.TB) *target { return startFixture(tb, 3) }, fixtureBeats(3)},
		{"Go", startGoTarget, []string{"main", "spin", "sleeper0"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tg := tc.start(t)
			p, err := Open(tg.pid)
			require.NoError(t, err)
			defer p.Close()
			require.NoError(t, p.Hold())
			for i := 0; i < 200; i++ {
				require.NoError(t, p.Stop(), "iteration %d", i)
				if i%20 == 0 {
					requireAllStopped(t, p)
				}
				require.NoError(t, p.Resume(), "iteration %d", i)
			}
			pid, err := p.Syscall("getpid", sysGetpid)
			require.NoError(t, err)
			require.Equal(t, uint64(tg.pid), pid)
			tg.waitBeats(tg.mark(), tc.beats...)

			require.NoError(t, p.Stop())
			require.NoError(t, p.Release())
			requireAllStopped(t, p)
			require.NoError(t, p.Resume())
			requireUntraced(t, tg.pid)
			tg.waitBeats(tg.mark(), tc.beats...)

			require.NoError(t, p.Hold())
			require.NoError(t, p.Close())
			requireUntraced(t, tg.pid)
			tg.waitBeats(tg.mark(), tc.beats...)
			assert.Empty(t, tg.errs())
		})
	}
}

// TestHolderDeath: a tracer that holds the process and is killed while a
// thread of it waits in a signal-delivery-stop (the holder does not service
// it) leaves the process running, and the signal is delivered.
func TestHolderDeath(t *testing.T) {
	tg := startFixture(t, 2)
	for round := 1; round <= 3; round++ {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), helperEnv+"=holder", fmt.Sprintf("TRACEE_TEST_PID=%d", tg.pid))
		startTarget(t, cmd) // returns once the holder says "ready"
		m := tg.mark()
		require.NoError(t, syscall.Kill(tg.pid, syscall.SIGUSR1))
		// The thread that takes it stops for the tracer, which never
		// answers: no "usr1" line until the tracer is gone.
		waitTraced(t, tg.pid)
		require.NoError(t, cmd.Process.Kill()) // fixture waits for it
		want := fmt.Sprintf("usr1 %d", round)
		got, _ := tg.WaitLine(t, m, want, func(s string) bool { return strings.HasPrefix(s, "usr1 ") }, safety)
		require.Equal(t, want, got)
		tg.waitBeats(tg.mark(), fixtureBeats(2)...)
		requireUntraced(t, tg.pid)
	}
	assert.Empty(t, tg.errs())
}

// waitTraced waits until some thread of pid is in a ptrace-stop.
func waitTraced(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(safety)
	for {
		for _, st := range threadStates(t, pid) {
			if st == 't' {
				return
			}
		}
		require.True(t, time.Now().Before(deadline), "no thread stopped for its tracer")
		time.Sleep(time.Millisecond)
	}
}

// holderChild holds TRACEE_TEST_PID without servicing it, says so, and
// waits to be killed.
func holderChild() {
	pid, _ := strconv.Atoi(os.Getenv("TRACEE_TEST_PID"))
	testNoService = true
	p, err := Open(pid)
	if err == nil {
		err = p.Hold()
	}
	if err != nil {
		fmt.Println("ERR", err)
		os.Exit(1)
	}
	fmt.Println("ready holding")
	select {}
}
