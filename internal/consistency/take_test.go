package consistency_test

import (
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/hotpatch-dev/hotpatch/elfsym"
	"github.com/hotpatch-dev/hotpatch/internal/consistency"
	"github.com/hotpatch-dev/hotpatch/internal/fixture"
	"github.com/hotpatch-dev/hotpatch/internal/tracee"
	"github.com/hotpatch-dev/hotpatch/internal/unwind"
)

// names returns a stack's frames as function names.
func names(tab *elfsym.Table, s consistency.Task) []string {
	var out []string
	for _, f := range s.Stack.Frames {
		pc := f.PC
		if len(out) > 0 {
			pc-- // a return address: name the call
		}
		if sym, ok := tab.SymbolAt(pc); ok {
			out = append(out, sym.Name)
		} else {
			out = append(out, tab.Symbolize(pc))
		}
	}
	return out
}

func snapshot(t *testing.T, pid int) (*elfsym.Table, consistency.Snapshot) {
	t.Helper()
	p, err := tracee.Open(pid)
	require.NoError(t, err)
	defer p.Close()
	tab, err := elfsym.Load(pid, p)
	require.NoError(t, err)
	var snap consistency.Snapshot
	// A thread may be caught mid-signal or between frames: retry a few
	// times until every stack is reliable, as the apply path does.
	for i := 0; i < 20; i++ {
		require.NoError(t, p.Stop())
		snap, err = consistency.Source{Proc: p, Unwinder: unwind.ForTable(tab)}.Take()
		require.NoError(t, p.Resume())
		require.NoError(t, err)
		if len(consistency.Check(snap, nil)) == 0 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	return tab, snap
}

// threadRoot is how a thread's two outermost frames read: start_thread and
// clone3, named when libc has a .symtab, else as libc offsets.
const threadRoot = `(start_thread|libc\.so\.6\+0x[0-9a-f]+) < (clone3|libc\.so\.6\+0x[0-9a-f]+)$`

// Every thread of a C program built without frame pointers unwinds, by CFI
// alone, through libc to its start routine, and the frames are the ones
// the source says.
func TestTakeCWithoutFramePointers(t *testing.T) {
	for _, flags := range [][]string{{"-O2", "-fomit-frame-pointer"}, {"-O0", "-no-pie"}} {
		p := fixture.Start(t, fixture.BuildC(t, "cservice", flags...), "4")
		p.Expect(t, regexp.MustCompile(`^result`), 10*time.Second)
		time.Sleep(50 * time.Millisecond)
		tab, snap := snapshot(t, p.Pid)
		require.Len(t, snap.Tasks, 6, "main, 4 sleepers, 1 reader")
		var sleepers, readers, mains int
		for _, task := range snap.Tasks {
			got := names(tab, task)
			require.True(t, task.Stack.Reliable, "%v: %v: %s", flags, got, task.Stack.Reason)
			joined := strings.Join(got, " < ")
			switch {
			case task.ID == p.Pid:
				mains++
				// Between sleeps it prints its result: on a busy machine a
				// stop can catch it there, in write or anywhere in printf
				// (libc's formatting code is unnamed without its .symtab).
				require.Regexp(t, `(nanosleep.* < (nap < )?|printf < )main < .*__libc_start_main < _start$`, joined)
			case strings.Contains(joined, "slow_read"):
				readers++
				require.Regexp(t, regexp.MustCompile(`read.* < slow_read < reader < `+threadRoot), joined)
			default:
				sleepers++
				require.Regexp(t, regexp.MustCompile(`nanosleep.* < (nap < )?sleeper < `+threadRoot), joined)
			}
		}
		require.Equal(t, []int{1, 1, 4}, []int{mains, readers, sleepers})
	}
}

// Go threads unwind with the pclntab: the thread blocked in read(2) from
// main.slowRead shows it, and every thread's stack ends at a runtime root.
func TestTakeGo(t *testing.T) {
	p := fixture.Start(t, fixture.BuildGo(t, "goservice", ""))
	p.Expect(t, regexp.MustCompile(`^result`), 10*time.Second)
	time.Sleep(50 * time.Millisecond)
	tab, snap := snapshot(t, p.Pid)
	require.GreaterOrEqual(t, len(snap.Tasks), 6)
	found := false
	for _, task := range snap.Tasks {
		got := names(tab, task)
		require.True(t, task.Stack.Reliable, "%v: %s", got, task.Stack.Reason)
		joined := strings.Join(got, " < ")
		if strings.Contains(joined, "main.slowRead") {
			found = true
			require.Regexp(t, `syscall.* < main.slowRead < main.main.func2 < runtime.goexit`, joined)
		}
		require.Regexp(t, `runtime\.(goexit|mstart|rt0_go|mcall)$`, joined)
	}
	require.True(t, found, "no thread shows main.slowRead")
}

// BenchmarkTakeC measures a snapshot of a stopped C target (held stopped
// for the whole benchmark: the walks alone, not the stop), with and
// without a Prefetch carried from one snapshot to the next.
func BenchmarkTakeC(b *testing.B) {
	for _, threads := range []int{1, 64, 256} {
		proc, tab := stoppedC(b, []string{"-O2"}, strconv.Itoa(threads-1), "sleep")
		for _, prefetch := range []bool{false, true} {
			src := consistency.Source{Proc: proc, Unwinder: unwind.ForTable(tab)}
			if prefetch {
				src.Prefetch = &consistency.Prefetch{}
			}
			b.Run(fmt.Sprintf("threads-%d/prefetch-%v", threads, prefetch), func(b *testing.B) {
				// On the ptrace thread, as in a pause (Paused).
				err := proc.Exclusive(func() error {
					for b.Loop() {
						snap, err := src.Take()
						if err != nil || len(snap.Tasks) != threads {
							return fmt.Errorf("%d tasks, %v", len(snap.Tasks), err)
						}
					}
					return nil
				})
				require.NoError(b, err)
			})
		}
	}
}

// stoppedC starts cservice built with flags, with args, and returns it
// opened and stopped, with its symbols; the test's cleanup resumes it.
func stoppedC(tb testing.TB, flags []string, args ...string) (*tracee.Process, *elfsym.Table) {
	tb.Helper()
	p := fixture.Start(tb, fixture.BuildC(tb, "cservice", flags...), args...)
	p.Expect(tb, regexp.MustCompile(`^result`), 10*time.Second)
	proc, err := tracee.Open(p.Pid)
	require.NoError(tb, err)
	tab, err := elfsym.Load(p.Pid, proc)
	require.NoError(tb, err)
	require.NoError(tb, proc.Stop())
	tb.Cleanup(func() {
		if err := errors.Join(proc.Resume(), proc.Close()); err != nil {
			tb.Error(err)
		}
	})
	return proc, tab
}

// A Prefetch changes how many system calls read a snapshot's pages, never
// its stacks: in one stop, snapshots without it, with it empty and with
// what it remembered are equal, on a target built with and without frame
// pointers.
func TestTakePrefetchSameStacks(t *testing.T) {
	for _, flags := range [][]string{{"-O2", "-fomit-frame-pointer"}, {"-O0", "-no-pie"}} {
		proc, tab := stoppedC(t, flags, "4")
		src := consistency.Source{Proc: proc, Unwinder: unwind.ForTable(tab)}
		plain, err := src.Take()
		require.NoError(t, err)
		src.Prefetch = &consistency.Prefetch{}
		for round := range 2 {
			snap, err := src.Take()
			require.NoError(t, err)
			require.Equal(t, plain, snap, "%v, round %d", flags, round)
		}
	}
}
