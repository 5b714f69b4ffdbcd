//go:build linux

package patch_test

import (
	"cmp"
	"encoding/binary"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/hotpatch-dev/hotpatch/internal/consistency"
	"github.com/hotpatch-dev/hotpatch/patch"
)

// The walk in the stop reuses the walk made before it exactly when nothing
// it read changed: each word a parked goroutine's walk read is changed in
// turn, in the stopped target, and the snapshot that reuses the walks made
// before the stop must equal the one that walks everything again, with
// that goroutine walked again (and the others reused). Both ways of
// comparing: reading every input back, and the target comparing them
// itself (the native check, which also compares every word of each g:
// each word of the goroutine's g is changed in turn too).
func TestPrewalkReusesOnlyUnchangedInputs(t *testing.T) {
	p := startTasks(t, "")
	command(t, p, "park 200", regexp.MustCompile(`^parked 200$`))
	tg := attach(t, p.Pid)
	for _, tc := range []struct {
		name    string
		threads int // of the native check; 0: none
	}{{"read-back", 0}, {"native", 1}, {"native-2-threads", 2}} {
		t.Run(tc.name, func(t *testing.T) {
			testPrewalkReuse(t, tg, tc.threads)
		})
	}
}

func testPrewalkReuse(t *testing.T, tg *patch.Target, threads int) {
	src, err := patch.SourceOf(tg)
	require.NoError(t, err)
	src.NativeMin = -1
	native := threads > 0
	if native {
		src.NativeMin, src.NativeThreads = 1, threads
	}
	// A region every parked goroutine returns into (their caller's call
	// site): each is a blocker, found by the check made before the stop
	// or in it.
	require.NoError(t, src.Proc.Stop())
	first, err := src.Take()
	require.NoError(t, src.Proc.Resume())
	require.NoError(t, err)
	count := map[uint64]int{}
	var pc uint64
	for _, task := range first.Tasks {
		if task.Kind == "goroutine" && task.Stack.Reliable && len(task.Stack.Frames) > 2 {
			f := task.Stack.Frames[1].PC
			if count[f]++; count[f] > count[pc] {
				pc = f
			}
		}
	}
	require.NotZero(t, pc)
	regions := []consistency.Region{{Name: "call site", Start: pc - 1, End: pc}}
	prior, err := src.PrewalkFor(regions)
	require.NoError(t, err)
	defer func() { require.NoError(t, prior.Close()) }()

	proc := src.Proc
	require.NoError(t, proc.Stop())
	defer func() { require.NoError(t, proc.Resume()) }()
	full, again := takeBoth(t, src, prior)
	require.Equal(t, inOrder(full), inOrder(again))
	blockers := consistency.Check(full, regions)
	require.Len(t, blockers, 200, "the 200 parked goroutines")
	require.Equal(t, blockersInOrder(blockers), blockersInOrder(consistency.CheckAfter(again, regions, prior)))
	require.Greater(t, prior.Reused, 200, "the parked goroutines did not move: their walks are reused")
	require.NoError(t, prior.NativeErr)
	if native {
		// (A goroutine bound to a thread, in a system call, is compared
		// by reading it back.)
		require.Greater(t, prior.Native, 200, "the parked goroutines' walks proven by the target itself")
	} else {
		require.Zero(t, prior.Native)
	}

	// The last of the 200 parked goroutines (they never wake: the main
	// goroutine, say, sleeps in a loop, and a walk after it woke reads
	// other words; the last is in the last part of a native check split
	// for threads), and the words its walk read.
	var target consistency.Task
	for _, task := range full.Tasks {
		if task.Kind == "goroutine" && task.Stack.Reliable && len(prior.Reads(task.Key)) > 0 &&
			len(task.Stack.Frames) > 2 && task.Stack.Frames[1].PC == pc {
			target = task
		}
	}
	require.NotZero(t, target.Key, "no parked goroutine with a recorded walk")
	words := prior.Reads(target.Key)
	nRead := len(words)
	if native {
		for off := 0; off < src.Go.GBytes(); off += 8 {
			words = append(words, target.Key+uint64(off))
		}
	}
	changedWalk := false
	for _, addr := range words {
		if native {
			// The tasks Prewalk builds for the native check serve one
			// snapshot: a prewalk for each change.
			require.NoError(t, proc.Resume())
			require.NoError(t, prior.Close())
			prior, err = src.PrewalkFor(regions)
			require.NoError(t, err)
			require.NoError(t, proc.Stop())
			require.Equal(t, words[:nRead], prior.Reads(target.Key), "goroutine %d, parked, read the same words", target.ID)
		}
		var old [8]byte
		_, err := proc.ReadAt(old[:], int64(addr))
		require.NoError(t, err)
		v := binary.LittleEndian.Uint64(old[:])
		var new [8]byte
		binary.LittleEndian.PutUint64(new[:], v^0x40)
		require.NoError(t, proc.WriteMem(addr, new[:]))

		full, ferr := src.Take()
		again, aerr := src.TakeAfter(prior)
		reused, rewalked := prior.Reused, prior.Rewalked
		require.NoError(t, proc.WriteMem(addr, old[:]))
		inG := addr >= target.Key && addr < target.Key+uint64(src.Go.GBytes())
		if inG && (ferr != nil || aerr != nil) {
			// A g made unreadable (its m pointer, say) fails both alike.
			require.Equal(t, fmt.Sprint(ferr), fmt.Sprint(aerr), "word %#x of the g changed", addr)
			continue
		}
		require.NoError(t, ferr)
		require.NoError(t, aerr)
		require.Equal(t, inOrder(full), inOrder(again), "word %#x changed", addr)
		require.Equal(t, blockersInOrder(consistency.Check(full, regions)), blockersInOrder(consistency.CheckAfter(again, regions, prior)), "word %#x changed", addr)
		require.NoError(t, prior.NativeErr)
		if !inG {
			// (A changed g may no longer be walked at all.)
			require.GreaterOrEqual(t, rewalked, 1, "word %#x changed: goroutine %d walked again", addr, target.ID)
		}
		require.Greater(t, reused, 200)
		for _, task := range full.Tasks {
			if task.Key == target.Key && task.Kind == "goroutine" {
				changedWalk = changedWalk || !equalStacks(task, target)
			}
		}
	}
	require.True(t, changedWalk, "changing one of the words read changes the walk (%d words)", nRead)
}

// takeBoth takes, in the stopped target, a snapshot that walks everything
// and one that reuses prior.
func takeBoth(t *testing.T, src consistency.Source, prior *consistency.Walks) (full, again consistency.Snapshot) {
	t.Helper()
	full, err := src.Take()
	require.NoError(t, err)
	again, err = src.TakeAfter(prior)
	require.NoError(t, err)
	return full, again
}

// inOrder returns s's tasks sorted (a snapshot lists the threads, then
// the goroutines, in no particular order).
func inOrder(s consistency.Snapshot) []consistency.Task {
	tasks := slices.Clone(s.Tasks)
	slices.SortStableFunc(tasks, taskOrder)
	return tasks
}

// blockersInOrder returns bs sorted by task (Check lists them in the
// snapshot's order).
func blockersInOrder(bs []consistency.Blocker) []consistency.Blocker {
	bs = slices.Clone(bs)
	slices.SortStableFunc(bs, func(a, b consistency.Blocker) int { return taskOrder(a.Task, b.Task) })
	return bs
}

func taskOrder(a, b consistency.Task) int {
	return cmp.Or(strings.Compare(b.Kind, a.Kind), cmp.Compare(a.Key, b.Key), cmp.Compare(a.ID, b.ID))
}

func equalStacks(a, b consistency.Task) bool {
	if a.Stack.Reliable != b.Stack.Reliable || a.Stack.Reason != b.Stack.Reason || len(a.Stack.Frames) != len(b.Stack.Frames) {
		return false
	}
	for i := range a.Stack.Frames {
		if a.Stack.Frames[i] != b.Stack.Frames[i] {
			return false
		}
	}
	return true
}

// TestPrewalkGoroutinesBornAfter: more goroutines born between the prewalk
// and the stop than the room Prewalk left after the tasks it built before
// the stop (TakeAfter then copies them all into one slice, once): the
// snapshot still equals a full walk, and the unchanged goroutines' walks
// are still the target's own check.
func TestPrewalkGoroutinesBornAfter(t *testing.T) {
	p := startTasks(t, "")
	command(t, p, "park 600", regexp.MustCompile(`^parked 600$`))
	tg := attach(t, p.Pid)
	src, err := patch.SourceOf(tg)
	require.NoError(t, err)
	src.NativeMin = 1
	prior, err := src.PrewalkFor(nil)
	require.NoError(t, err)
	defer func() { require.NoError(t, prior.Close()) }()
	// Room for 64 + 600/8 more: 400 is more.
	command(t, p, "park 400", regexp.MustCompile(`^parked \d+$`))

	proc := src.Proc
	require.NoError(t, proc.Stop())
	defer func() { require.NoError(t, proc.Resume()) }()
	full, again := takeBoth(t, src, prior)
	require.NoError(t, prior.NativeErr)
	require.Equal(t, inOrder(full), inOrder(again))
	require.Greater(t, len(again.Tasks), 1000)
	// (A collection in the target may have moved some of the 600 since.)
	require.Positive(t, prior.Native, "goroutines parked before the prewalk, proven unchanged by the target")
	require.GreaterOrEqual(t, prior.Rewalked, 400, "the 400 born after it, walked in the stop")
}
