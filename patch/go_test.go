//go:build linux

package patch_test

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/hotpatch-dev/hotpatch/internal/consistency"
	"github.com/hotpatch-dev/hotpatch/internal/fixture"
	"github.com/hotpatch-dev/hotpatch/patch"
)

// Toolchains are the Go releases the goroutine tests build targets with.
var Toolchains = fixture.GoToolchains

// gotasks' main loop prints "tick A B C D": A = compute(7) called directly,
// B = compute(7) through its ABI0 wrapper, C = inlineCaller(7) (addOne
// inlined), D = tiny().
var (
	tickOld = regexp.MustCompile(`^tick 14 14 80 0$`)
	tickNew = regexp.MustCompile(`^tick 22 22 80 2$`)
)

func startTasks(t testing.TB, toolchain string, flags ...string) *fixture.Proc {
	t.Helper()
	p := fixture.Start(t, fixture.BuildGo(t, "gotasks", toolchain, flags...))
	p.Expect(t, tickOld, 10*time.Second)
	return p
}

// command sends a line to gotasks and waits for its answer.
func command(t testing.TB, p *fixture.Proc, cmd string, answer *regexp.Regexp) []string {
	t.Helper()
	mark := p.Mark()
	_, err := fmt.Fprintln(p.Stdin, cmd)
	require.NoError(t, err)
	return p.ExpectAfter(t, mark, answer, 60*time.Second)
}

// stableSnapshot takes snapshots until every task's stack is reliable (a
// thread can be caught between frames), as Apply's retries do.
func stableSnapshot(t *testing.T, tg *patch.Target) consistency.Snapshot {
	t.Helper()
	var snap consistency.Snapshot
	for i := 0; i < 50; i++ {
		var err error
		snap, err = patch.Snapshot(tg)
		require.NoError(t, err)
		if len(consistency.Check(snap, nil)) == 0 {
			return snap
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("stacks stay unreliable: %v", consistency.Check(snap, nil))
	return snap
}

func frameNames(tg *patch.Target, task consistency.Task) []string {
	var out []string
	for i, f := range task.Stack.Frames {
		pc := f.PC
		if i > 0 {
			pc--
		}
		if s, ok := tg.Symbols().SymbolAt(pc); ok {
			out = append(out, s.Name)
		} else {
			out = append(out, fmt.Sprintf("%#x", f.PC))
		}
	}
	return out
}

// TestGoToolchains: for targets built by every supported Go release, with
// DWARF and stripped (-ldflags=-s -w): every goroutine is listed with a stack
// walked to runtime.goexit, and a patch set (a direct call, a call through
// the ABI0 wrapper, a function shorter than a jump) changes what the target
// prints, then reverts.
func TestGoToolchains(t *testing.T) {
	for _, tc := range Toolchains {
		for _, stripped := range []bool{false, true} {
			name := tc
			if name == "" {
				name = "current"
			}
			var flags []string
			if stripped {
				name += "-stripped"
				flags = append(flags, "-ldflags=-s -w")
			}
			t.Run(name, func(t *testing.T) {
				p := startTasks(t, tc, flags...)
				tg := attach(t, p.Pid)
				if tc != "" {
					require.Contains(t, tg.Symbols().Modules[0].GoVersion, tc)
				}

				snap := stableSnapshot(t, tg)
				var mainG *consistency.Task
				goroutines := 0
				for i, task := range snap.Tasks {
					if task.Kind != "goroutine" {
						continue
					}
					goroutines++
					require.True(t, task.Stack.Reliable, "%s: %s", task, task.Stack.Reason)
					names := frameNames(tg, task)
					if task.Thread == 0 {
						require.Equal(t, "runtime.goexit", names[len(names)-1], "%s: %v", task, names)
					}
					if task.ID == 1 {
						mainG = &snap.Tasks[i]
					}
				}
				require.GreaterOrEqual(t, goroutines, 6, "main, the stdin reader, 3 sleepers, runtime helpers")
				require.NotNil(t, mainG, "goroutine 1 is listed")
				require.Contains(t, frameNames(tg, *mainG), "main.main")
				require.Contains(t, frameNames(tg, *mainG), "runtime.main")

				res, err := tg.Apply(context.Background(), []patch.Replacement{
					{Old: "main.compute", New: "main.computeFixed"},
					{Old: "main.tiny", New: "main.tinyFixed"},
				}, patch.ApplyOptions{})
				require.NoError(t, err)
				p.ExpectAfter(t, p.Mark(), tickNew, 10*time.Second)
				_, err = tg.Revert(context.Background(), res.ID, patch.ApplyOptions{})
				require.NoError(t, err)
				p.ExpectAfter(t, p.Mark(), tickOld, 10*time.Second)
				exited, werr := p.Exited()
				require.False(t, exited, "target died: %v", werr)
			})
		}
	}
}

// TestGoToolchainsUnsupported: a target built by a Go release older than the
// supported range, with DWARF (whose g layout would read) or stripped, is
// refused by version as soon as its goroutines are needed: listing them and
// applying a patch fail with an error that names the release and the
// supported range, and the target runs on untouched.
func TestGoToolchainsUnsupported(t *testing.T) {
	for _, tc := range fixture.OldGoToolchains {
		for _, flags := range [][]string{nil, {"-ldflags=-s -w"}} {
			t.Run(fmt.Sprint(tc, flags), func(t *testing.T) {
				p := startTasks(t, tc, flags...)
				tg := attach(t, p.Pid)
				refused := func(err error) {
					t.Helper()
					require.ErrorIs(t, err, patch.ErrUnsupportedGo)
					var re *patch.GoReleaseError
					require.ErrorAs(t, err, &re)
					require.Equal(t, tc, re.Version)
					require.ErrorContains(t, err, "go1.22–go1.26")
				}
				_, err := tg.Threads()
				refused(err)
				_, err = tg.Apply(context.Background(), []patch.Replacement{{Old: "main.compute", New: "main.computeFixed"}}, patch.ApplyOptions{})
				refused(err)
				p.ExpectAfter(t, p.Mark(), tickOld, 10*time.Second)
			})
		}
	}
}

// TestGoParkedGoroutines: 10,000 goroutines parked (chan receive) inside
// main.hold block a patch of main.hold, and the report names them; once they
// return, the patch applies.
func TestGoParkedGoroutines(t *testing.T) {
	for _, stripped := range []bool{false, true} {
		t.Run(fmt.Sprintf("stripped=%v", stripped), func(t *testing.T) {
			var flags []string
			if stripped {
				flags = append(flags, "-ldflags=-s -w")
			}
			p := startTasks(t, "", flags...)
			command(t, p, "park 10000", regexp.MustCompile(`^parked 10000$`))
			tg := attach(t, p.Pid)
			untouched := snapshot(t, tg, p.Pid, "main.hold")

			reps := []patch.Replacement{{Old: "main.hold", New: "main.holdFixed"}}
			_, err := tg.Apply(context.Background(), reps, patch.ApplyOptions{Timeout: 200 * time.Millisecond})
			require.ErrorIs(t, err, patch.ErrBlocked)
			var be *consistency.BlockedError
			require.True(t, errors.As(err, &be))
			parked := 0
			for _, b := range be.Blockers {
				if b.Task.Kind == "goroutine" && b.Func == "main.hold" {
					parked++
					require.Greater(t, b.Frame, 0, "parked in gopark, main.hold is a caller")
					// Named in stripped binaries too, on both arches.
					require.Equal(t, "chan receive", b.Task.Wait)
				}
			}
			require.Equal(t, 10000, parked)
			msg := err.Error()
			require.Regexp(t, `goroutine \d+ \[(chan receive|wait reason \d+)\]: main\.hold is on its stack`, msg)
			require.Contains(t, msg, "main.hold")
			require.Less(t, len(msg), 20000, "a report of 10,000 blockers stays readable")
			require.Equal(t, untouched, snapshot(t, tg, p.Pid, "main.hold"), "refused: the target is untouched")

			command(t, p, "release", regexp.MustCompile(`^released 10000$`))
			res, err := tg.Apply(context.Background(), reps, patch.ApplyOptions{})
			require.NoError(t, err)
			// New goroutines now run the fix, which does not park.
			command(t, p, "park 3", regexp.MustCompile(`^parked 0$`))
			_, err = tg.Revert(context.Background(), res.ID, patch.ApplyOptions{})
			require.NoError(t, err)
		})
	}
}

// TestGoParkedInCallee: goroutines parked in main.inner, called by
// main.outer, block a patch of main.outer (it is on their stacks) but not of
// an unrelated function.
func TestGoParkedInCallee(t *testing.T) {
	p := startTasks(t, "")
	command(t, p, "nest 5", regexp.MustCompile(`^parked 5$`))
	tg := attach(t, p.Pid)
	reps := []patch.Replacement{{Old: "main.outer", New: "main.outerFixed"}}
	_, err := tg.Apply(context.Background(), reps, patch.ApplyOptions{Timeout: 100 * time.Millisecond})
	require.ErrorIs(t, err, patch.ErrBlocked)
	var be *consistency.BlockedError
	require.True(t, errors.As(err, &be))
	n := 0
	for _, b := range be.Blockers {
		if b.Func == "main.outer" {
			n++
			names := frameNames(tg, b.Task)
			require.Equal(t, "main.inner", names[b.Frame-1], "inner is the callee of outer: %v", names)
		}
	}
	require.Equal(t, 5, n)

	res, err := tg.Apply(context.Background(), []patch.Replacement{{Old: "main.compute", New: "main.computeFixed"}}, patch.ApplyOptions{})
	require.NoError(t, err, "compute is not on their stacks")
	_, err = tg.Revert(context.Background(), res.ID, patch.ApplyOptions{})
	require.NoError(t, err)

	command(t, p, "release", regexp.MustCompile(`^released 5$`))
	res, err = tg.Apply(context.Background(), reps, patch.ApplyOptions{})
	require.NoError(t, err)
	_, err = tg.Revert(context.Background(), res.ID, patch.ApplyOptions{})
	require.NoError(t, err)
}

// TestGoInlined: main.addOne was inlined into main.inlineCaller. A patch is
// refused naming that caller; with AllowInlined only the out-of-line copy
// changes (inlineCaller keeps printing 80), and the result says so.
func TestGoInlined(t *testing.T) {
	for _, stripped := range []bool{false, true} {
		t.Run(fmt.Sprintf("stripped=%v", stripped), func(t *testing.T) {
			var flags []string
			if stripped {
				flags = append(flags, "-ldflags=-s -w")
			}
			p := startTasks(t, "", flags...)
			tg := attach(t, p.Pid)
			untouched := snapshot(t, tg, p.Pid, "main.addOne")
			reps := []patch.Replacement{{Old: "main.addOne", New: "main.addOneFixed"}}
			_, err := tg.Apply(context.Background(), reps, patch.ApplyOptions{})
			require.ErrorIs(t, err, patch.ErrInlined)
			var ie *patch.InlinedError
			require.True(t, errors.As(err, &ie))
			var callers []string
			for _, s := range ie.Sites {
				callers = append(callers, s.Caller)
			}
			require.Contains(t, callers, "main.inlineCaller")
			require.Contains(t, err.Error(), "main.inlineCaller")
			require.Equal(t, untouched, snapshot(t, tg, p.Pid, "main.addOne"))

			res, err := tg.Apply(context.Background(), reps, patch.ApplyOptions{AllowInlined: true})
			require.NoError(t, err)
			require.Contains(t, res.Functions[0].InlinedInto, "main.inlineCaller")
			p.ExpectAfter(t, p.Mark(), tickOld, 10*time.Second) // the inlined copy is unchanged
			_, err = tg.Revert(context.Background(), res.ID, patch.ApplyOptions{})
			require.NoError(t, err)
		})
	}
}

// TestGoStackGrowth: the replacement of main.recurse recurses 5,000 levels
// deep with 1 KiB frames, through the patched entry, so the runtime grows
// (copies) the stack many times under it.
func TestGoStackGrowth(t *testing.T) {
	p := startTasks(t, "")
	command(t, p, "deep 5000", regexp.MustCompile(`^deep 5000$`))
	tg := attach(t, p.Pid)
	res, err := tg.Apply(context.Background(), []patch.Replacement{{Old: "main.recurse", New: "main.recurseFixed"}}, patch.ApplyOptions{})
	require.NoError(t, err)
	for i := 0; i < 3; i++ {
		command(t, p, "deep 5000", regexp.MustCompile(`^deep 1005000$`))
	}
	_, err = tg.Revert(context.Background(), res.ID, patch.ApplyOptions{})
	require.NoError(t, err)
	command(t, p, "deep 5000", regexp.MustCompile(`^deep 5000$`))
	exited, werr := p.Exited()
	require.False(t, exited, "target died: %v", werr)
}

// TestGoSnapshotsUnderLoad: snapshots of a target whose goroutines spin (and
// are preempted asynchronously), grow their stacks and take signals. Every
// snapshot is taken; each stack that is reliable ends where it must (a
// parked goroutine at runtime.goexit); the patch still applies and reverts,
// retrying past the moments nothing can be proven.
func TestGoSnapshotsUnderLoad(t *testing.T) {
	p := startTasks(t, "")
	command(t, p, "storm 4", regexp.MustCompile(`^storming 4$`))
	tg := attach(t, p.Pid)
	reliable, total, signal, switched := 0, 0, 0, 0
	for i := 0; i < 100; i++ {
		snap, err := patch.Snapshot(tg)
		require.NoError(t, err)
		for _, task := range snap.Tasks {
			total++
			for _, f := range task.Stack.Frames {
				if f.Method == "signal" {
					signal++
				}
			}
			if strings.Contains(task.Stack.Reason, "system stack, entered at") {
				switched++
			}
			if !task.Stack.Reliable {
				continue
			}
			reliable++
			names := frameNames(tg, task)
			last := names[len(names)-1]
			switch {
			case task.Kind == "goroutine":
				require.Equal(t, "runtime.goexit", last, "%s: %v", task, names)
			case task.Stack.SwitchedAt != "":
				require.Equal(t, task.Stack.SwitchedAt, last, "%s: %v", task, names)
			default:
				require.Contains(t, []string{"runtime.mstart", "runtime.rt0_go", "runtime.mcall", "runtime.goexit"}, last, "%s: %v (%s)", task, names, task.Stack.Reason)
			}
		}
	}
	t.Logf("%d stacks: %d reliable; %d crossed a signal frame; %d threads on a system stack", total, reliable, signal, switched)
	require.Greater(t, reliable, total*9/10, "most stacks can be proven")
	res, err := tg.Apply(context.Background(), []patch.Replacement{{Old: "main.compute", New: "main.computeFixed"}}, patch.ApplyOptions{})
	require.NoError(t, err)
	p.ExpectAfter(t, p.Mark(), regexp.MustCompile(`^tick 22 `), 10*time.Second)
	_, err = tg.Revert(context.Background(), res.ID, patch.ApplyOptions{})
	require.NoError(t, err)
	exited, werr := p.Exited()
	require.False(t, exited, "target died: %v", werr)
}

// BenchmarkApplyGo10k measures the pause of an apply against a Go target
// with 10,000 parked goroutines (report: apply-pause-median-us,
// apply-pause-us, threads, goroutines).
func BenchmarkApplyGo10k(b *testing.B) {
	p := startTasks(b, "")
	command(b, p, "park 10000", regexp.MustCompile(`^parked 10000$`))
	tg := attach(b, p.Pid)
	var apply []time.Duration
	for i := 0; i < b.N; i++ {
		res, err := tg.Apply(context.Background(), []patch.Replacement{{Old: "main.compute", New: "main.computeFixed"}}, patch.ApplyOptions{})
		if err != nil {
			b.Fatal(err)
		}
		apply = append(apply, res.Pause)
		if _, err := tg.Revert(context.Background(), res.ID, patch.ApplyOptions{}); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	tasks, err := patch.Snapshot(tg)
	if err != nil {
		b.Fatal(err)
	}
	threads, gs := 0, 0
	for _, t := range tasks.Tasks {
		if t.Kind == "thread" || t.Thread != 0 {
			threads++
		}
		if t.Kind == "goroutine" {
			gs++
		}
	}
	reportPauses(b, "apply-pause", apply)
	b.ReportMetric(float64(threads), "threads")
	b.ReportMetric(float64(gs), "goroutines")
}
