//go:build linux

package patch_test

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/hotpatch-dev/hotpatch/internal/consistency"
	"github.com/hotpatch-dev/hotpatch/internal/fixture"
	"github.com/hotpatch-dev/hotpatch/patch"
)

// universeSet is the patch set of the universe fixtures: serve and the two
// functions it calls, whose versions must agree within every task.
func universeSet(prefix string) []patch.Replacement {
	return []patch.Replacement{
		{Old: prefix + "serve", New: prefix + "serveFixed"},
		{Old: prefix + "verA", New: prefix + "verAFixed"},
		{Old: prefix + "verB", New: prefix + "verBFixed"},
	}
}

var roundRe = regexp.MustCompile(`^round v1=(\d+) v2=(\d+) mix=(\d+)$`)

func round(t testing.TB, p *fixture.Proc) (v1, v2, mix int) {
	t.Helper()
	m := command(t, p, "round", roundRe)
	fmt.Sscan(m[1], &v1)
	fmt.Sscan(m[2], &v2)
	fmt.Sscan(m[3], &mix)
	return
}

// universeCase drives one fixture through a gradual transition: n tasks are
// inside serve when the patch set applies; they keep the old versions of
// serve, verA and verB (never a mix), tasks that enter serve afterwards get
// the new ones, and once the old tasks return the transition ends by itself.
func universeCase(t *testing.T, p *fixture.Proc, prefix string, n int) {
	command(t, p, fmt.Sprintf("start %d", n), regexp.MustCompile(fmt.Sprintf(`^batch 0 started %d$`, n)))
	tg := attach(t, p.Pid)
	// Threads come and go in this test, so compare the code, not the map.
	untouched := code(t, tg, p.Pid, prefix+"serve", prefix+"verA", prefix+"verB")

	var mu sync.Mutex
	var events []patch.Progress
	started := make(chan struct{})
	type outcome struct {
		res *patch.Result
		err error
	}
	done := make(chan outcome, 1)
	go func() {
		res, err := tg.Apply(context.Background(), universeSet(prefix), patch.ApplyOptions{
			Mode: patch.ModeGradual, Timeout: 2 * time.Minute, Interval: 10 * time.Millisecond,
			Progress: func(pr patch.Progress) {
				mu.Lock()
				events = append(events, pr)
				mu.Unlock()
				if pr.Event == "transition" {
					close(started)
				}
			},
		})
		done <- outcome{res, err}
	}()
	select {
	case <-started:
	case o := <-done:
		t.Fatalf("apply ended before a transition started: %+v %v", o.res, o.err)
	case <-time.After(30 * time.Second):
		t.Fatal("no transition started")
	}
	mu.Lock()
	require.Equal(t, n, events[0].Pending, "every task inside serve stays on the old code")
	mu.Unlock()

	// In transition: the old tasks see version 1 throughout.
	v1, v2, mix := round(t, p)
	require.Equal(t, [3]int{n, 0, 0}, [3]int{v1, v2, mix})
	recs, err := tg.Status()
	require.NoError(t, err)
	require.Len(t, recs, 1)
	require.Equal(t, patch.StateTransition, recs[0].State)
	require.Equal(t, n, recs[0].Pending)

	// New tasks enter the new serve, and call the new verA and verB.
	command(t, p, "start 10", regexp.MustCompile(`^batch 1 started 10$`))
	v1, v2, mix = round(t, p)
	require.Equal(t, [3]int{n, 10, 0}, [3]int{v1, v2, mix})

	// Released, the old tasks return; the transition ends by itself.
	released := time.Now()
	command(t, p, "stop 0", regexp.MustCompile(fmt.Sprintf(`^batch 0 stopped %d$`, n)))
	var o outcome
	select {
	case o = <-done:
	case <-time.After(60 * time.Second):
		t.Fatal("the transition did not finish after the old tasks returned")
	}
	require.NoError(t, o.err)
	require.Equal(t, patch.StateApplied, o.res.State)
	t.Logf("%d tasks: transition finished %v after their release (%d pauses)", n, time.Since(released), o.res.Attempts)
	v1, v2, mix = round(t, p)
	require.Equal(t, [3]int{0, 10, 0}, [3]int{v1, v2, mix})
	recs, err = tg.Status()
	require.NoError(t, err)
	require.Equal(t, patch.StateApplied, recs[0].State)
	require.Zero(t, recs[0].Pending)

	// A revert with a task inside the new serve goes back the same way.
	rr, err := tg.Revert(context.Background(), o.res.ID, patch.ApplyOptions{Mode: patch.ModeGradual, Timeout: 200 * time.Millisecond, Interval: 10 * time.Millisecond, OnTimeout: patch.OnTimeoutStay})
	require.NoError(t, err)
	require.Equal(t, patch.StateReverting, rr.State, "the 10 new tasks are inside the new serve")
	require.Equal(t, 10, rr.Pending)
	command(t, p, "start 5", regexp.MustCompile(`^batch 2 started 5$`))
	v1, v2, mix = round(t, p)
	require.Equal(t, [3]int{5, 10, 0}, [3]int{v1, v2, mix}, "new tasks are back on the old code; the busy ones keep the new")
	command(t, p, "stop 1", regexp.MustCompile(`^batch 1 stopped 10$`))
	rr, err = tg.Resume(context.Background(), o.res.ID, patch.ApplyOptions{Timeout: time.Minute, Interval: 10 * time.Millisecond})
	require.NoError(t, err)
	require.Equal(t, patch.StateReverted, rr.State)
	v1, v2, mix = round(t, p)
	require.Equal(t, [3]int{5, 0, 0}, [3]int{v1, v2, mix})
	command(t, p, "stop 2", regexp.MustCompile(`^batch 2 stopped 5$`))
	require.Equal(t, untouched, code(t, tg, p.Pid, prefix+"serve", prefix+"verA", prefix+"verB"), "reverted: the code is as before")
	recs, err = tg.Status()
	require.NoError(t, err)
	require.Empty(t, recs, "the patch memory is unmapped")
	exited, werr := p.Exited()
	require.False(t, exited, "target died: %v", werr)
}

// code returns the bytes of the functions (with their padding).
func code(t testing.TB, tg *patch.Target, pid int, funcs ...string) string {
	t.Helper()
	s := snapshot(t, tg, pid, funcs...)
	return s[strings.Index(s, funcs[0]+" "):]
}

// TestUniverseGo: 1,000 goroutines inside serve, in targets built by every
// supported Go release (and stripped by the current one).
func TestUniverseGo(t *testing.T) {
	for _, tc := range append(Toolchains, "stripped") {
		name, flags := tc, []string(nil)
		switch tc {
		case "":
			name = "current"
		case "stripped":
			tc, flags = "", []string{"-ldflags=-s -w"}
		}
		t.Run(name, func(t *testing.T) {
			p := fixture.Start(t, fixture.BuildGo(t, "gouniverse", tc, flags...))
			universeCase(t, p, "main.", 1000)
		})
	}
}

// TestUniverseTimeoutReverts: a transition that times out with tasks
// pending reverts, and leaves the original bytes exactly.
func TestUniverseTimeoutReverts(t *testing.T) {
	p := fixture.Start(t, fixture.BuildGo(t, "gouniverse", ""))
	command(t, p, "start 20", regexp.MustCompile(`^batch 0 started 20$`))
	tg := attach(t, p.Pid)
	untouched := snapshot(t, tg, p.Pid, "main.serve", "main.verA", "main.verB")
	_, err := tg.Apply(context.Background(), universeSet("main."), patch.ApplyOptions{Mode: patch.ModeGradual, Timeout: 300 * time.Millisecond})
	require.ErrorIs(t, err, patch.ErrBlocked)
	require.Contains(t, err.Error(), "reverted")
	require.Equal(t, untouched, snapshot(t, tg, p.Pid, "main.serve", "main.verA", "main.verB"))
	v1, v2, mix := round(t, p)
	require.Equal(t, [3]int{20, 0, 0}, [3]int{v1, v2, mix})

	// A second patch while one is in transition is refused.
	res, err := tg.Apply(context.Background(), universeSet("main."), patch.ApplyOptions{Mode: patch.ModeGradual, Timeout: 100 * time.Millisecond, OnTimeout: patch.OnTimeoutStay})
	require.NoError(t, err)
	require.Equal(t, patch.StateTransition, res.State)
	_, err = tg.Apply(context.Background(), []patch.Replacement{{Old: "main.verAFixed", New: "main.verBFixed"}}, patch.ApplyOptions{})
	require.ErrorIs(t, err, patch.ErrInTransition)
	require.Contains(t, err.Error(), res.ID)

	// Force: the 20 tasks are moved (and named), the patch is applied.
	res, err = tg.Resume(context.Background(), res.ID, patch.ApplyOptions{Timeout: 50 * time.Millisecond, Force: true})
	require.NoError(t, err)
	require.Equal(t, patch.StateApplied, res.State)
	require.Len(t, res.Forced, 20)
	require.Contains(t, res.Forced[0], "goroutine ")
	_, err = tg.RevertAll(context.Background(), patch.ApplyOptions{Mode: patch.ModeAuto})
	require.NoError(t, err)
}

// TestUniverseC: 50 threads inside serve of a C program built without frame
// pointers.
func TestUniverseC(t *testing.T) {
	p := fixture.Start(t, fixture.BuildC(t, "cuniverse", "-O2", "-fomit-frame-pointer"))
	universeCase(t, p, "", 50)
}

// TestDeathAtEveryWrite kills the patcher (an injected panic, then a
// detach, as the kernel does for a dead tracer) before each write of an
// apply and of a revert, in stop and gradual mode. After each death the
// target runs on, no task ever sees a mix of versions, the record is never
// "partial", and a new tool reverts everything to the original bytes.
func TestDeathAtEveryWrite(t *testing.T) {
	for _, mode := range []patch.Mode{patch.ModeStop, patch.ModeGradual} {
		for _, phase := range []string{"apply", "revert"} {
			t.Run(string(mode)+"-"+phase, func(t *testing.T) {
				for n := 1; n < 100; n++ {
					if !deathCase(t, mode, phase, n) {
						t.Logf("%s %s: survived a death before each of %d writes", mode, phase, n-1)
						return
					}
				}
				t.Fatal("more than 100 writes?")
			})
		}
	}
}

// deathCase dies before the n-th write; it reports whether it died.
func deathCase(t *testing.T, mode patch.Mode, phase string, n int) (died bool) {
	t.Helper()
	p := fixture.Start(t, fixture.BuildGo(t, "gouniverse", ""))
	defer p.Kill()
	busy := 0
	if mode == patch.ModeGradual {
		busy = 20 // inside the old serve for the whole case
		command(t, p, "start 20", regexp.MustCompile(`^batch 0 started 20$`))
	}
	tg := attach(t, p.Pid)
	base := code(t, tg, p.Pid, "main.serve", "main.verA", "main.verB")
	opts := patch.ApplyOptions{Mode: mode, Timeout: 150 * time.Millisecond, OnTimeout: patch.OnTimeoutStay, Interval: 5 * time.Millisecond}
	if phase == "revert" {
		res, err := tg.Apply(context.Background(), universeSet("main."), opts)
		require.NoError(t, err)
		require.Contains(t, []patch.State{patch.StateApplied, patch.StateTransition}, res.State)
	}
	func() {
		defer func() {
			if v := recover(); v != nil {
				if !patch.IsInjectedDeath(v) {
					panic(v)
				}
				died = true
				require.NoError(t, patch.Abandon(tg))
			}
		}()
		patch.DieAfterWrites(n)
		defer patch.DieAfterWrites(0)
		if phase == "apply" {
			tg.Apply(context.Background(), universeSet("main."), opts)
		} else {
			tg.RevertAll(context.Background(), opts)
		}
	}()
	// Alive and consistent: old tasks and new ones each see one version.
	command(t, p, "start 5", regexp.MustCompile(`^batch \d+ started 5$`))
	v1, v2, mix := round(t, p)
	require.Zero(t, mix, "death before write %d: a task saw a mix", n)
	require.Equal(t, busy+5, v1+v2)

	if !died {
		require.NoError(t, tg.Close()) // the new tool needs the process's lock
	}
	// A new tool finds a state it understands, and reverts it all.
	tg2 := attach(t, p.Pid)
	recs, err := tg2.Status()
	require.NoError(t, err)
	for _, r := range recs {
		require.NotEqual(t, patch.StatePartial, r.State, "death before write %d", n)
	}
	last := 0
	if busy > 0 {
		command(t, p, "stop 0", regexp.MustCompile(`^batch 0 stopped 20$`))
		last = 1
	}
	command(t, p, fmt.Sprintf("stop %d", last), regexp.MustCompile(fmt.Sprintf(`^batch %d stopped 5$`, last)))
	_, err = tg2.RevertAll(context.Background(), patch.ApplyOptions{Mode: patch.ModeGradual, Timeout: 10 * time.Second, Interval: 5 * time.Millisecond})
	require.NoError(t, err, "death before write %d", n)
	recs, err = tg2.Status()
	require.NoError(t, err)
	require.Empty(t, recs, "death before write %d", n)
	require.Equal(t, base, code(t, tg2, p.Pid, "main.serve", "main.verA", "main.verB"), "death before write %d", n)
	return died
}

// BenchmarkTransition1000 measures how long a gradual transition takes to
// finish after the 1,000 goroutines that held the old serve return
// (release-ms), and the pause that assigned the universes (first-pause-us).
func BenchmarkTransition1000(b *testing.B) {
	p := fixture.Start(b, fixture.BuildGo(b, "gouniverse", ""))
	tg := attach(b, p.Pid)
	var release, first time.Duration
	for i := 0; i < b.N; i++ {
		command(b, p, "start 1000", regexp.MustCompile(`^batch \d+ started 1000$`))
		started := make(chan time.Duration, 1)
		done := make(chan error, 1)
		var res *patch.Result
		go func() {
			var err error
			res, err = tg.Apply(context.Background(), universeSet("main."), patch.ApplyOptions{
				Mode: patch.ModeGradual, Timeout: time.Minute, Interval: 10 * time.Millisecond,
				Progress: func(pr patch.Progress) {
					if pr.Event == "transition" {
						started <- pr.Pause
					}
				}})
			done <- err
		}()
		first += <-started
		t0 := time.Now()
		command(b, p, fmt.Sprintf("stop %d", 2*i), regexp.MustCompile(`stopped 1000$`))
		if err := <-done; err != nil {
			b.Fatal(err)
		}
		release += time.Since(t0)
		// Put it back for the next round (batch 2i+1 keeps nobody busy).
		command(b, p, "start 1", regexp.MustCompile(`started 1$`))
		command(b, p, fmt.Sprintf("stop %d", 2*i+1), regexp.MustCompile(`stopped 1$`))
		if _, err := tg.Revert(context.Background(), res.ID, patch.ApplyOptions{}); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(release.Microseconds())/1000/float64(b.N), "release-ms")
	b.ReportMetric(float64(first.Microseconds())/float64(b.N), "first-pause-us")
}

// TestUniverseTimeoutRevertUnfinished: a goroutine that runs the
// replacement directly, not through the patched entry, keeps the revert
// that follows a timed-out apply from finishing. The apply says so — the
// patch is reverting, one task pending, as the target holds it — and never
// that the original bytes are back; a Resume finishes once the task leaves.
func TestUniverseTimeoutRevertUnfinished(t *testing.T) {
	t.Run("go", func(t *testing.T) {
		revertUnfinished(t, fixture.Start(t, fixture.BuildGo(t, "gouniverse", "")), "main.")
	})
	t.Run("c", func(t *testing.T) {
		revertUnfinished(t, fixture.Start(t, fixture.BuildC(t, "cuniverse", "-O2", "-fomit-frame-pointer")), "")
	})
}

func revertUnfinished(t *testing.T, p *fixture.Proc, prefix string) {
	command(t, p, "start 5", regexp.MustCompile(`^batch 0 started 5$`))
	command(t, p, "direct 1", regexp.MustCompile(`^batch 1 started 1$`))
	tg := attach(t, p.Pid)
	untouched := code(t, tg, p.Pid, prefix+"serve", prefix+"verA", prefix+"verB")
	opts := patch.ApplyOptions{Mode: patch.ModeGradual, Timeout: 300 * time.Millisecond, Interval: 10 * time.Millisecond}

	res, err := tg.Apply(context.Background(), universeSet(prefix), opts)
	require.ErrorIs(t, err, patch.ErrBlocked)
	require.NotContains(t, err.Error(), "original bytes are back")
	require.Contains(t, err.Error(), "reverting")
	require.NotNil(t, res, "the result says where the target was left")
	require.Equal(t, patch.StateReverting, res.State)
	require.Equal(t, 1, res.Pending)
	recs, err := tg.Status()
	require.NoError(t, err)
	require.Len(t, recs, 1)
	require.Equal(t, patch.StateReverting, recs[0].State)
	require.Equal(t, 1, recs[0].Pending)
	v1, v2, mix := round(t, p)
	require.Equal(t, [3]int{5, 1, 0}, [3]int{v1, v2, mix}, "the direct goroutine keeps the new verA and verB")

	// A Resume while it is still there times out and says so again.
	res, err = tg.Resume(context.Background(), recs[0].ID, patch.ApplyOptions{Timeout: 100 * time.Millisecond, Interval: 10 * time.Millisecond})
	require.ErrorIs(t, err, patch.ErrBlocked)
	require.Contains(t, err.Error(), "reverting")
	require.NotNil(t, res)
	require.Equal(t, patch.StateReverting, res.State)
	require.Equal(t, 1, res.Pending)

	command(t, p, "stop 1", regexp.MustCompile(`^batch 1 stopped 1$`))
	res, err = tg.Resume(context.Background(), recs[0].ID, patch.ApplyOptions{Timeout: 10 * time.Second, Interval: 10 * time.Millisecond})
	require.NoError(t, err)
	require.Equal(t, patch.StateReverted, res.State)
	require.Equal(t, untouched, code(t, tg, p.Pid, prefix+"serve", prefix+"verA", prefix+"verB"))
	recs, err = tg.Status()
	require.NoError(t, err)
	require.Empty(t, recs)
	v1, v2, mix = round(t, p)
	require.Equal(t, [3]int{5, 0, 0}, [3]int{v1, v2, mix})
}

// TestTransitionStubRetriesBounded: while a task stays inside a dispatch
// stub (simulated: every pause sees one), a transition cannot switch; it
// returns within its deadline plus a bounded number of retries, or soon
// after its context is cancelled, with the blocking task as the cause and
// the target still in transition.
func TestTransitionStubRetriesBounded(t *testing.T) {
	p := fixture.Start(t, fixture.BuildGo(t, "gouniverse", ""))
	command(t, p, "start 5", regexp.MustCompile(`^batch 0 started 5$`))
	tg := attach(t, p.Pid)
	res, err := tg.Apply(context.Background(), universeSet("main."), patch.ApplyOptions{Mode: patch.ModeGradual,
		Timeout: 100 * time.Millisecond, Interval: 10 * time.Millisecond, OnTimeout: patch.OnTimeoutStay})
	require.NoError(t, err)
	require.Equal(t, patch.StateTransition, res.State)
	id := res.ID

	tests := []struct {
		name     string
		timeout  time.Duration
		cancel   time.Duration // 0: never
		retries  int
		canceled bool
	}{
		{"retries", time.Minute, 0, 50, false},
		{"deadline", 200 * time.Millisecond, 0, 1 << 30, false},
		{"cancelled", time.Minute, 100 * time.Millisecond, 1 << 30, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			defer patch.HoldInStub(tt.retries)()
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			if tt.cancel > 0 {
				time.AfterFunc(tt.cancel, cancel)
			}
			type outcome struct {
				res *patch.Result
				err error
			}
			done := make(chan outcome, 1)
			start := time.Now()
			go func() {
				res, err := tg.Resume(ctx, id, patch.ApplyOptions{Timeout: tt.timeout, Interval: 10 * time.Millisecond, OnTimeout: patch.OnTimeoutStay})
				done <- outcome{res, err}
			}()
			var o outcome
			select {
			case o = <-done:
			case <-time.After(10 * time.Second):
				t.Fatal("the transition still retries 10s later")
			}
			took := time.Since(start)
			bound := tt.timeout
			if tt.cancel > 0 {
				bound = tt.cancel
			}
			if tt.retries < 1000 {
				bound = 0 // the retries end it
			}
			require.Less(t, took, bound+2*time.Second)
			require.Error(t, o.err)
			require.Equal(t, tt.canceled, errors.Is(o.err, context.Canceled), "%v", o.err)
			var be *consistency.BlockedError
			require.ErrorAs(t, o.err, &be, "the cause is kept")
			require.ErrorIs(t, o.err, patch.ErrBlocked)
			require.Contains(t, o.err.Error(), "stub")
			recs, err := tg.Status()
			require.NoError(t, err)
			require.Equal(t, patch.StateTransition, recs[0].State)
			require.Equal(t, 5, recs[0].Pending)
			if o.res != nil {
				require.Equal(t, patch.StateTransition, o.res.State)
			}
		})
	}
}

// TestRevertCancelledKeepsCause: a stop-mode revert blocked by tasks inside
// the replacement, cancelled, returns at once with both the cancellation
// and the blocking tasks as causes; the patch stays applied.
func TestRevertCancelledKeepsCause(t *testing.T) {
	p := fixture.Start(t, fixture.BuildGo(t, "gouniverse", ""))
	tg := attach(t, p.Pid)
	res, err := tg.Apply(context.Background(), universeSet("main."), patch.ApplyOptions{})
	require.NoError(t, err)
	command(t, p, "start 3", regexp.MustCompile(`^batch 0 started 3$`))
	// Once they have served a round they wait inside serveFixed (before,
	// a goroutine not yet started has no new code on its stack).
	_, v2, _ := round(t, p)
	require.Equal(t, 3, v2)
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(200*time.Millisecond, cancel)
	start := time.Now()
	_, err = tg.Revert(ctx, res.ID, patch.ApplyOptions{Timeout: time.Minute})
	require.Less(t, time.Since(start), 5*time.Second)
	require.ErrorIs(t, err, context.Canceled)
	var be *consistency.BlockedError
	require.ErrorAs(t, err, &be, "the blocking tasks are kept as the cause")
	require.Len(t, be.Blockers, 3)
	recs, err := tg.Status()
	require.NoError(t, err)
	require.Equal(t, patch.StateApplied, recs[0].State)
	command(t, p, "stop 0", regexp.MustCompile(`^batch 0 stopped 3$`))
	_, err = tg.Revert(context.Background(), res.ID, patch.ApplyOptions{})
	require.NoError(t, err)
}
