//go:build linux

package patch_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/hotpatch-dev/hotpatch/internal/consistency"
	"github.com/hotpatch-dev/hotpatch/internal/fixture"
	"github.com/hotpatch-dev/hotpatch/patch"
)

// service describes a fixture whose main loop prints "result N", where N
// comes from the function old (before) or new (after the patch).
type service struct {
	name      string
	start     func(t testing.TB) *fixture.Proc
	old, new  string // compute and its fix
	slow, fix string // the function a thread is blocked in, and a fix for it
	tiny      string // a function shorter than any jump, without padding
	before    *regexp.Regexp
	after     *regexp.Regexp
}

var (
	resultOld = regexp.MustCompile(`^result (2[01]\d\d)$`)  // x*2 for x in 1000..1099
	resultNew = regexp.MustCompile(`^result (3[0-3]\d\d)$`) // x*3+1
)

func services() []service {
	c := func(flags ...string) func(t testing.TB) *fixture.Proc {
		return func(t testing.TB) *fixture.Proc {
			return fixture.Start(t, fixture.BuildC(t, "cservice", flags...))
		}
	}
	cs := func(name string, flags ...string) service {
		s := service{name: name, start: c(flags...), old: "compute", new: "compute_fixed",
			slow: "slow_read", fix: "slow_read_fixed", tiny: "tiny", before: resultOld, after: resultNew}
		if runtime.GOARCH == "arm64" {
			s.tiny = "" // one instruction still takes a near B on arm64
		}
		return s
	}
	return []service{
		cs("c-O2-pie", "-O2"),
		cs("c-O2-nofp", "-O2", "-fomit-frame-pointer"),
		cs("c-O0-fp-nopie", "-O0", "-fno-omit-frame-pointer", "-no-pie"),
		{name: "go", start: func(t testing.TB) *fixture.Proc {
			return fixture.Start(t, fixture.BuildGo(t, "goservice", ""))
		}, old: "main.compute", new: "main.computeFixed", slow: "main.slowRead", fix: "main.slowReadFixed",
			before: resultOld, after: resultNew},
	}
}

// attach attaches to pid as a new tool would. A tool holds its target
// until it exits, and the next one waits for it: the target attached to pid
// before is closed first, as that tool's exit would.
func attach(t testing.TB, pid int) *patch.Target {
	t.Helper()
	attachedMu.Lock()
	if prev := attached[pid]; prev != nil {
		prev.Close()
	}
	attachedMu.Unlock()
	tg, err := patch.Attach(pid, nil)
	require.NoError(t, err)
	attachedMu.Lock()
	attached[pid] = tg
	attachedMu.Unlock()
	t.Cleanup(func() { tg.Close() })
	return tg
}

var (
	attachedMu sync.Mutex
	attached   = map[int]*patch.Target{}
)

// snapshot captures what "untouched" means: the file-backed and executable
// mappings (patch memory is anonymous and executable; the heaps of the
// target itself come and go) and the bytes of the given functions.
func snapshot(t testing.TB, tg *patch.Target, pid int, funcs ...string) string {
	t.Helper()
	maps, err := os.ReadFile(fmt.Sprintf("/proc/%d/maps", pid))
	require.NoError(t, err)
	var b strings.Builder
	for _, line := range strings.SplitAfter(string(maps), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 {
			continue
		}
		if len(f) >= 6 || strings.Contains(f[1], "x") {
			b.WriteString(line)
		}
	}
	mem, err := os.Open(fmt.Sprintf("/proc/%d/mem", pid))
	require.NoError(t, err)
	defer mem.Close()
	for _, f := range funcs {
		sym, err := tg.Symbols().Lookup(f)
		require.NoError(t, err)
		code := make([]byte, sym.Size+sym.Padding)
		_, err = mem.ReadAt(code, int64(sym.Addr))
		require.NoError(t, err)
		fmt.Fprintf(&b, "%s % x\n", f, code)
	}
	return b.String()
}

func TestApplyRevert(t *testing.T) {
	for _, svc := range services() {
		t.Run(svc.name, func(t *testing.T) {
			p := svc.start(t)
			p.Expect(t, svc.before, 10*time.Second)
			tg := attach(t, p.Pid)
			untouched := snapshot(t, tg, p.Pid, svc.old)

			res, err := tg.Apply(context.Background(), []patch.Replacement{{Old: svc.old, New: svc.new}}, patch.ApplyOptions{})
			require.NoError(t, err)
			require.Regexp(t, `^hp-[0-9a-f]{8}$`, res.ID)
			require.Len(t, res.Functions, 1)
			t.Logf("%s: applied %s, pause %v, %d attempt(s)", svc.name, res.ID, res.Pause, res.Attempts)

			// Behaviour changes without a restart...
			mark := p.Mark()
			p.ExpectAfter(t, mark, svc.after, 10*time.Second)
			// ...and stays changed: no old result once a new one was printed.
			mark = p.Mark()
			p.ExpectAfter(t, mark, svc.after, 10*time.Second)
			for _, l := range p.Lines()[mark:] {
				require.NotRegexp(t, svc.before, l)
			}

			// A second, independent attachment reads the record from the target.
			recs, err := attach(t, p.Pid).Status()
			require.NoError(t, err)
			require.Len(t, recs, 1)
			require.Equal(t, res.ID, recs[0].ID)
			require.Equal(t, patch.StateApplied, recs[0].State)
			require.Equal(t, svc.old, recs[0].Functions[0].Old)

			// Applying the same function again is refused.
			_, err = tg.Apply(context.Background(), []patch.Replacement{{Old: svc.old, New: svc.new}}, patch.ApplyOptions{})
			require.ErrorIs(t, err, patch.ErrAlreadyApplied)

			// Revert from yet another attachment; behaviour changes back.
			rr, err := attach(t, p.Pid).Revert(context.Background(), res.ID, patch.ApplyOptions{})
			require.NoError(t, err)
			require.Equal(t, res.ID, rr.ID)
			mark = p.Mark()
			p.ExpectAfter(t, mark, svc.before, 10*time.Second)
			require.Equal(t, untouched, snapshot(t, tg, p.Pid, svc.old), "revert must restore the map and the code exactly")

			recs, err = tg.Status()
			require.NoError(t, err)
			require.Empty(t, recs)
			_, err = tg.Revert(context.Background(), res.ID, patch.ApplyOptions{})
			require.ErrorIs(t, err, patch.ErrNotApplied)

			exited, werr := p.Exited()
			require.False(t, exited, "target died: %v", werr)
		})
	}
}

// A thread blocked in read(2) called from slow_read: patching slow_read must
// be refused, naming that thread, with the target untouched.
func TestApplyRefusedWhileThreadInside(t *testing.T) {
	for _, svc := range services() {
		t.Run(svc.name, func(t *testing.T) {
			p := svc.start(t)
			p.Expect(t, svc.before, 10*time.Second)
			tg := attach(t, p.Pid)
			// Give the reader thread time to block in read.
			time.Sleep(100 * time.Millisecond)
			untouched := snapshot(t, tg, p.Pid, svc.slow, svc.old)

			_, err := tg.Apply(context.Background(), []patch.Replacement{{Old: svc.old, New: svc.new}, {Old: svc.slow, New: svc.fix}},
				patch.ApplyOptions{Timeout: 300 * time.Millisecond})
			require.ErrorIs(t, err, patch.ErrBlocked)
			var be *consistency.BlockedError
			require.True(t, errors.As(err, &be))
			var blocker *consistency.Blocker
			for i := range be.Blockers {
				if be.Blockers[i].Func == svc.slow {
					blocker = &be.Blockers[i]
				}
			}
			require.NotNil(t, blocker, "no blocker names %s: %v", svc.slow, err)
			require.Greater(t, blocker.Frame, 0, "the thread is in read(2), called from %s", svc.slow)
			tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", p.Pid))
			var tids []string
			for _, e := range tasks {
				tids = append(tids, e.Name())
			}
			if svc.name == "go" {
				// Named as the goroutine, found on the thread that runs it.
				require.Equal(t, "goroutine", blocker.Task.Kind)
				require.Equal(t, "syscall", blocker.Task.Status)
				require.Contains(t, tids, strconv.Itoa(blocker.Task.Thread))
				require.Contains(t, err.Error(), fmt.Sprintf("goroutine %d [syscall, on thread %d]", blocker.Task.ID, blocker.Task.Thread))
			} else {
				require.Equal(t, "thread", blocker.Task.Kind)
				require.Contains(t, tids, strconv.Itoa(blocker.Task.ID))
				require.Contains(t, err.Error(), fmt.Sprintf("thread %d", blocker.Task.ID))
			}
			require.Contains(t, err.Error(), svc.slow)

			require.Equal(t, untouched, snapshot(t, tg, p.Pid, svc.slow, svc.old), "a refusal must leave the target byte-for-byte as it was")
			recs, err := tg.Status()
			require.NoError(t, err)
			require.Empty(t, recs)

			// The target still works: the blocked read completes.
			mark := p.Mark()
			fmt.Fprintln(p.Stdin, "hello")
			p.ExpectAfter(t, mark, regexp.MustCompile(`^read 7$`), 10*time.Second)
			p.ExpectAfter(t, mark, svc.before, 10*time.Second)
		})
	}
}

func TestBadInput(t *testing.T) {
	_, err := patch.Attach(1<<22+12345, nil)
	require.ErrorIs(t, err, patch.ErrNoProcess)
	require.Contains(t, err.Error(), strconv.Itoa(1<<22+12345))

	for _, svc := range services() {
		t.Run(svc.name, func(t *testing.T) {
			p := svc.start(t)
			tg := attach(t, p.Pid)
			untouched := snapshot(t, tg, p.Pid, svc.old)
			ctx := context.Background()
			cases := []struct {
				name string
				reps []patch.Replacement
				want error
			}{
				{"unknown old", []patch.Replacement{{Old: "no_such_function", New: svc.new}}, patch.ErrUnknownSymbol},
				{"unknown new", []patch.Replacement{{Old: svc.old, New: "no_such_function"}}, patch.ErrUnknownSymbol},
				{"same function", []patch.Replacement{{Old: svc.old, New: svc.old}}, patch.ErrBadRequest},
				{"empty", nil, patch.ErrBadRequest},
				{"twice", []patch.Replacement{{Old: svc.old, New: svc.new}, {Old: svc.old, New: svc.fix}}, patch.ErrBadRequest},
			}
			if svc.tiny != "" {
				cases = append(cases, struct {
					name string
					reps []patch.Replacement
					want error
				}{"too short", []patch.Replacement{{Old: svc.tiny, New: svc.new}}, patch.ErrTooShort})
			}
			for _, c := range cases {
				_, err := tg.Apply(ctx, c.reps, patch.ApplyOptions{})
				require.ErrorIs(t, err, c.want, c.name)
				var pe *patch.Error
				require.True(t, errors.As(err, &pe), "%s: %T is not a *patch.Error", c.name, err)
				require.Equal(t, untouched, snapshot(t, tg, p.Pid, svc.old), "%s left the target changed", c.name)
			}
			_, err := tg.Revert(ctx, "hp-00000000", patch.ApplyOptions{})
			require.ErrorIs(t, err, patch.ErrNotApplied)
			require.Equal(t, untouched, snapshot(t, tg, p.Pid, svc.old))
		})
	}
}

// BenchmarkApplyC measures the pause of an apply (and of the revert) on the
// C fixture. The median of 20:
//
//	go test ./patch -run '^$' -bench ApplyC -benchtime 1x -count 20 | benchstat -
func BenchmarkApplyC(b *testing.B) {
	p := fixture.Start(b, fixture.BuildC(b, "cservice", "-O2"))
	tg := attach(b, p.Pid)
	benchComputePauses(b, tg)
}

// reportPauses reports the median and the mean of pauses as
// NAME-median-us and NAME-us (the median is what users feel on a typical
// apply; the mean shows the tail).
func reportPauses(b *testing.B, name string, pauses []time.Duration) {
	if len(pauses) == 0 {
		return
	}
	sorted := slices.Clone(pauses)
	slices.Sort(sorted)
	med := sorted[len(sorted)/2]
	if len(sorted)%2 == 0 {
		med = (sorted[len(sorted)/2-1] + sorted[len(sorted)/2]) / 2
	}
	var sum time.Duration
	for _, p := range pauses {
		sum += p
	}
	b.ReportMetric(float64(med.Microseconds()), name+"-median-us")
	b.ReportMetric(float64(sum.Microseconds())/float64(len(pauses)), name+"-us")
}

// benchComputePauses applies and reverts compute → compute_fixed b.N times
// and reports the pauses (apply-pause-median-us, apply-pause-us,
// revert-pause-median-us, revert-pause-us).
func benchComputePauses(b *testing.B, tg *patch.Target) {
	var apply, revert []time.Duration
	for i := 0; i < b.N; i++ {
		res, err := tg.Apply(context.Background(), []patch.Replacement{{Old: "compute", New: "compute_fixed"}}, patch.ApplyOptions{})
		if err != nil {
			b.Fatal(err)
		}
		rr, err := tg.Revert(context.Background(), res.ID, patch.ApplyOptions{})
		if err != nil {
			b.Fatal(err)
		}
		apply = append(apply, res.Pause)
		revert = append(revert, rr.Pause)
	}
	reportPauses(b, "apply-pause", apply)
	reportPauses(b, "revert-pause", revert)
}
