//go:build linux

package patch_test

import (
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"regexp"
	"runtime"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/hotpatch-dev/hotpatch/internal/consistency"
	"github.com/hotpatch-dev/hotpatch/internal/fixture"
	"github.com/hotpatch-dev/hotpatch/internal/goruntime"
	"github.com/hotpatch-dev/hotpatch/patch"
)

// eachCgo runs f on gocgo built by every cgo toolchain and link mode.
func eachCgo(t *testing.T, f func(t *testing.T, p *fixture.Proc)) {
	eachCgoMode(t, func(t *testing.T, p *fixture.Proc, _ string) { f(t, p) })
}

// eachCgoMode is eachCgo that tells f the link mode.
func eachCgoMode(t *testing.T, f func(t *testing.T, p *fixture.Proc, mode string)) {
	for _, tc := range fixture.CgoToolchains {
		for _, mode := range []string{"external", "internal"} {
			name := tc
			if name == "" {
				name = "current"
			}
			t.Run(name+"-"+mode, func(t *testing.T) {
				f(t, fixture.Start(t, fixture.BuildGo(t, "gocgo", tc, fixture.CgoLinkModes[mode]...)), mode)
			})
		}
	}
}

// word reads a word of the target's memory.
func word(t *testing.T, pid int, addr uint64) uint64 {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/mem", pid))
	require.NoError(t, err)
	defer f.Close()
	var b [8]byte
	_, err = f.ReadAt(b[:], int64(addr))
	require.NoError(t, err)
	return binary.LittleEndian.Uint64(b[:])
}

// TestCgoThreadKeys: every thread Go created is keyed by the g it runs,
// found where the runtime keeps it (whose m runs on that very thread),
// also when C thread-local variables share the TLS block.
func TestCgoThreadKeys(t *testing.T) {
	eachCgo(t, func(t *testing.T, p *fixture.Proc) {
		command(t, p, "busy 3", regexp.MustCompile(`^busy 3$`))
		tg := attach(t, p.Pid)
		l, err := goruntime.KnownLayout(tg.Symbols().Modules[0].GoVersion)
		require.NoError(t, err)
		snap, err := patch.Snapshot(tg)
		require.NoError(t, err)
		threads := 0
		for _, task := range snap.Tasks {
			if task.Kind != "thread" {
				continue
			}
			threads++
			require.NotZero(t, task.Key, "%s: no g found", task)
			m := word(t, p.Pid, task.Key+uint64(l.GM))
			require.NotZero(t, m, "%s: key %#x is not a g with an m", task, task.Key)
			require.Equal(t, uint64(task.ID), word(t, p.Pid, m+uint64(l.MProcID)), "%s: key %#x is the g of another thread", task, task.Key)
		}
		require.NotZero(t, threads)
	})
}

// TestCgoGradualCFunction: goroutines' threads sleep inside the C function
// c_busy. A gradual apply must not report it applied with nothing pending
// (their threads could not be told apart by a dispatch stub): it is
// refused, and stop mode waits for them.
func TestCgoGradualCFunction(t *testing.T) {
	eachCgo(t, func(t *testing.T, p *fixture.Proc) {
		command(t, p, "busy 3", regexp.MustCompile(`^busy 3$`))
		tg := attach(t, p.Pid)
		untouched := code(t, tg, p.Pid, "c_busy")
		set := []patch.Replacement{{Old: "c_busy", New: "c_busy_fixed"}}
		res, err := tg.Apply(context.Background(), set, patch.ApplyOptions{Mode: patch.ModeGradual, Timeout: 300 * time.Millisecond, OnTimeout: patch.OnTimeoutStay})
		if err == nil {
			require.NotEqual(t, patch.StateApplied, res.State, "applied while 3 threads sleep inside c_busy (%d pending)", res.Pending)
			require.NotZero(t, res.Pending)
			_, err = tg.RevertAll(context.Background(), patch.ApplyOptions{Force: true})
			require.NoError(t, err)
			t.Fatalf("gradual transition of a C function started: %+v", res)
		}
		require.ErrorIs(t, err, patch.ErrGradualNotGo)
		require.Contains(t, err.Error(), "stop mode")
		require.Equal(t, untouched, code(t, tg, p.Pid, "c_busy"))

		_, err = tg.Apply(context.Background(), set, patch.ApplyOptions{Timeout: 200 * time.Millisecond})
		require.ErrorIs(t, err, patch.ErrBlocked, "stop mode: the threads are inside c_busy")
		require.Equal(t, untouched, code(t, tg, p.Pid, "c_busy"))
		command(t, p, "release", regexp.MustCompile(`^released$`))
		res, err = tg.Apply(context.Background(), set, patch.ApplyOptions{Mode: patch.ModeAuto, Timeout: 5 * time.Second})
		require.NoError(t, err)
		require.Equal(t, patch.StateApplied, res.State)
		_, err = tg.Revert(context.Background(), res.ID, patch.ApplyOptions{})
		require.NoError(t, err)
		require.Equal(t, untouched, code(t, tg, p.Pid, "c_busy"))
	})
}

// TestCgoThreadEntry: every thread the Go runtime created through cgo
// returns from runtime.mstart into C (crosscall1, threadentry,
// start_thread): a stop-mode patch of threadentry is refused.
func TestCgoThreadEntry(t *testing.T) {
	eachCgoMode(t, func(t *testing.T, p *fixture.Proc, mode string) {
		command(t, p, "busy 2", regexp.MustCompile(`^busy 2$`))
		tg := attach(t, p.Pid)
		untouched := code(t, tg, p.Pid, "threadentry")
		_, err := tg.Apply(context.Background(), []patch.Replacement{{Old: "threadentry", New: "c_value_fixed"}},
			// Another signature: the refusal under test is the threads'.
			patch.ApplyOptions{Timeout: 200 * time.Millisecond, SkipSignatureCheck: true})
		require.ErrorIs(t, err, patch.ErrBlocked, "threads return into threadentry")
		require.Equal(t, untouched, code(t, tg, p.Pid, "threadentry"))
		var be *consistency.BlockedError
		require.ErrorAs(t, err, &be)
		inside := 0
		for _, b := range be.Blockers {
			if b.Func == "threadentry" {
				inside++
			}
		}
		t.Logf("%d blockers, %d with threadentry on their stacks", len(be.Blockers), inside)
		if runtime.GOARCH == "amd64" || mode == "external" {
			// arm64 internal linking: crosscall1 has no unwind tables
			// there, the walk ends at mstart as the runtime's does
			// (the threads in C block anyway). Linked externally,
			// crosscall1's CFI defines its CFA by x29, which mstart's
			// frame saved.
			require.NotZero(t, inside, "threads created through cgo have threadentry on their stacks")
		}
	})
}

// TestCgoThreadStartInLibc: above threadentry, a cgo thread returns into
// the C library's thread start (start_thread, clone3). Linked externally the
// walk reaches it by CFI; linked by the Go linker, which keeps no unwind
// tables for C, the walk ends at threadentry, and the C library's code
// counts as on the stack: a patch of a libc function is refused there
// (blocked), never applied on a guess.
func TestCgoThreadStartInLibc(t *testing.T) {
	eachCgoMode(t, func(t *testing.T, p *fixture.Proc, mode string) {
		// No thread in C code (which, without unwind tables, would block
		// anyway): the Go runtime's threads, parked, all started in C.
		tg := attach(t, p.Pid)
		untouched := code(t, tg, p.Pid, "libc.so.6:getppid")
		res, err := tg.Apply(context.Background(), []patch.Replacement{{Old: "libc.so.6:getppid", New: "libc.so.6:getpid"}},
			patch.ApplyOptions{Timeout: 200 * time.Millisecond})
		if mode == "internal" {
			require.ErrorIs(t, err, patch.ErrBlocked, "the threads' callers above threadentry are not walked")
			require.Equal(t, untouched, code(t, tg, p.Pid, "libc.so.6:getppid"))
			return
		}
		require.NoError(t, err, "linked externally, every thread is walked into libc's thread start")
		_, err = tg.Revert(context.Background(), res.ID, patch.ApplyOptions{})
		require.NoError(t, err)
		require.Equal(t, untouched, code(t, tg, p.Pid, "libc.so.6:getppid"))
	})
}

// TestCgoRunningThreadStart: a thread that runs a goroutine at the stop is
// reported as that goroutine, and its own start frames — on its m's g0:
// mstart, and for a thread created through cgo the C code mstart returns
// into (threadentry) — are checked too, as a thread of its own.
func TestCgoRunningThreadStart(t *testing.T) {
	eachCgoMode(t, func(t *testing.T, p *fixture.Proc, mode string) {
		command(t, p, "spin 2", regexp.MustCompile(`^spinning 2$`))
		tg := attach(t, p.Pid)
		snap, err := patch.Snapshot(tg)
		require.NoError(t, err)
		threads := map[int]string{}
		for _, task := range snap.Tasks {
			if task.Kind == "thread" {
				threads[task.ID] = consistency.FormatStack(task.Stack, tg.Symbols().Symbolize, "\n    ")
			}
		}
		running := 0
		for _, task := range snap.Tasks {
			if task.Kind != "goroutine" || task.Thread == 0 {
				continue
			}
			running++
			st, ok := threads[task.Thread]
			require.True(t, ok, "thread %d runs %s: its start frames are not checked", task.Thread, task)
			require.Contains(t, st, "runtime.mstart", "thread %d", task.Thread)
			if task.Thread != p.Pid && mode == "external" {
				// Created through cgo (the main thread is not): C
				// called mstart, and the walk names that C code.
				require.Contains(t, st, "threadentry", "thread %d", task.Thread)
			}
		}
		require.NotZero(t, running, "no goroutine was running on a thread")
	})
}

// TestCgoCallbacks: goroutines parked inside cgo callbacks — called back
// by C from goroutines and from threads C created — are walked through
// the C frames back to their Go frames: they do not block a patch of an
// unrelated function, and block one of the function they are parked in.
// Internally linked, the binary has no unwind tables for its C code: the
// callbacks' stacks stay unreliable and block every patch.
func TestCgoCallbacks(t *testing.T) {
	eachCgoMode(t, func(t *testing.T, p *fixture.Proc, mode string) {
		command(t, p, "cthreads 2", regexp.MustCompile(`^cthreads 2$`))
		command(t, p, "crelease", regexp.MustCompile(`^callbacks 2$`))
		command(t, p, "gocall 3", regexp.MustCompile(`^callbacks 5$`))
		tg := attach(t, p.Pid)
		defer command(t, p, "cbrelease", regexp.MustCompile(`^cbreleased$`))
		unrelated := []patch.Replacement{{Old: "main.compute", New: "main.computeFixed"}}
		if mode == "internal" {
			_, err := tg.Apply(context.Background(), unrelated, patch.ApplyOptions{Timeout: 100 * time.Millisecond})
			require.ErrorIs(t, err, patch.ErrBlocked)
			require.Contains(t, err.Error(), "in a cgo callback: system stack of m")
			return
		}
		snap := stableSnapshot(t, tg)
		inCallback := 0
		for _, task := range snap.Tasks {
			names := frameNames(tg, task)
			if slices.Contains(names, "main.cbPark") {
				inCallback++
				require.Contains(t, names, "crosscall2", "%s: the C frames that called back: %v", task, names)
				require.Contains(t, names, "runtime.goexit", "%s: the goroutine's own frames: %v", task, names)
				if slices.Contains(names, "main._Cfunc_c_call_back") {
					// Called back on a goroutine's m: its start frames.
					require.Contains(t, names, "runtime.mstart", "%s: %v", task, names)
				} else {
					require.Contains(t, names, "c_thread_main", "%s: the C thread's start routine: %v", task, names)
				}
			}
		}
		require.Equal(t, 5, inCallback, "goroutines in callbacks")

		res, err := tg.Apply(context.Background(), unrelated, patch.ApplyOptions{Timeout: 2 * time.Second})
		require.NoError(t, err, "parked callbacks do not block an unrelated patch")
		command(t, p, "value", regexp.MustCompile(`^value 22 1$`))
		_, err = tg.Revert(context.Background(), res.ID, patch.ApplyOptions{})
		require.NoError(t, err)

		_, err = tg.Apply(context.Background(), []patch.Replacement{{Old: "main.cbPark", New: "main.cbParkFixed"}}, patch.ApplyOptions{Timeout: 200 * time.Millisecond})
		require.ErrorIs(t, err, patch.ErrBlocked)
		var be *consistency.BlockedError
		require.ErrorAs(t, err, &be)
		parked := 0
		for _, b := range be.Blockers {
			if b.Func == "main.cbPark" {
				parked++
			}
		}
		require.Equal(t, 5, parked, "every parked callback blocks a patch of main.cbPark: %v", err)
	})
}

// TestCgoDifferential compares our snapshot with the Go runtime's own
// traceback (runtime.Stack of every goroutine; see differential):
// goroutines parked in C, in callbacks from goroutines and from C threads,
// and the runtime's own.
func TestCgoDifferential(t *testing.T) {
	eachCgoMode(t, func(t *testing.T, p *fixture.Proc, mode string) {
		command(t, p, "busy 3", regexp.MustCompile(`^busy 3$`))
		command(t, p, "cthreads 2", regexp.MustCompile(`^cthreads 2$`))
		command(t, p, "crelease", regexp.MustCompile(`^callbacks 2$`))
		command(t, p, "gocall 3", regexp.MustCompile(`^callbacks 5$`))
		defer command(t, p, "cbrelease", regexp.MustCompile(`^cbreleased$`))
		tg := attach(t, p.Pid)
		vs := differential(t, tg, stackCommand(t, p), func(class string) bool {
			// Internally linked, the C code has no unwind tables: the
			// callbacks' stacks stay unreliable (they block every patch).
			return mode == "internal" && unreliableMatch(class)
		})
		compared, _, line := tally(vs)
		t.Logf("%s: %s", mode, line)
		require.GreaterOrEqual(t, compared, 8, "3 in C, 5 in callbacks")
	})
}
