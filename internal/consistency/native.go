package consistency

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"runtime"
	"slices"

	"github.com/hotpatch-dev/hotpatch/internal/arch"
	"github.com/hotpatch-dev/hotpatch/internal/goruntime"
	"github.com/hotpatch-dev/hotpatch/internal/tracee"
)

// defaultNativeMin is the fewest goroutines for which Prewalk prepares a
// native check (Source.NativeMin): below it, mapping the routine costs more
// than the reads it saves.
const defaultNativeMin = 512

// nativeCheck has the stopped target compare, itself, every word that
// decides a goroutine's g and walk with what Prewalk read (arch.CompareWords
// run by a tracee.Routine): the same comparison TakeAfter makes by reading
// the words back, without pinning a page per read. A group is one g: its
// GBytes bytes, then every word its walk read.
type nativeCheck struct {
	routine *tracee.Routine
	groups  []gRecord
	// at[i] is groups[i]'s index in runtime.allgs (which only grows, in
	// order: a g keeps its index); allgs is runtime.allgs as Prewalk read
	// it.
	at                          []int
	allgs                       []uint64
	itemsOff, expectOff, outOff uint64
	// parts split the groups for threads side by side: each is the
	// routine's arguments (offsets in its data, and a count of groups).
	parts []nativePart
	// pre holds, from pre[room] on, the snapshot's task of each group with
	// a walk, built before the stop (prebuild): a group the target finds
	// unchanged has exactly that task, which TakeAfter then uses where it
	// is, the threads' tasks put in the room before it. preGroup[j] is the
	// group of pre[room+j], preClean[j] whether its walk had no blocker
	// (PrewalkFor). nil once a TakeAfter used it.
	pre      []Task
	room     int
	preGroup []int32
	preClean []bool
	// preGs and preKnown are, by index in allgs, the g and record of every
	// group, as goroutines returns them for groups found unchanged (nil
	// elsewhere), built before the stop; nil once a TakeAfter used them.
	preGs    []*goruntime.G
	preKnown []*gRecord
}

// preSlack is how many more tasks than it holds pre has room for: the
// goroutines found changed, born or bound to a thread since, built in the
// stop, go there without a copy of the others.
func preSlack(groups int) int { return 64 + groups/8 }

// nativePart is a run of groups for one thread.
type nativePart struct {
	items, expect, out, groups uint64
}

// gRecord is a g as Prewalk read it and its walk (nil: not walked then);
// pre is the index of its task in nativeCheck.pre (from room), -1 when it
// has none.
type gRecord struct {
	g    goruntime.G
	walk *walkRecord
	pre  int32
}

// prebuild builds, before the stop, the task of every group with a walk
// (see nativeCheck.pre), after room for threads threads and some more.
func (nc *nativeCheck) prebuild(threads int) {
	n := 0
	for k := range nc.groups {
		if nc.groups[k].walk != nil {
			n++
		}
	}
	nc.preGs, nc.preKnown = make([]*goruntime.G, len(nc.allgs)), make([]*gRecord, len(nc.allgs))
	for k, i := range nc.at {
		nc.preGs[i], nc.preKnown[i] = &nc.groups[k].g, &nc.groups[k]
	}
	nc.room = threads + 16
	nc.pre = make([]Task, nc.room, nc.room+n+preSlack(n))
	nc.preGroup = make([]int32, 0, n)
	for k := range nc.groups {
		gr := &nc.groups[k]
		gr.pre = -1
		if gr.walk == nil {
			continue
		}
		gr.pre = int32(len(nc.preGroup))
		t := goTask(gr.g)
		t.Thread = 0
		t.Stack = gr.walk.stack
		nc.pre = append(nc.pre, t)
		nc.preGroup = append(nc.preGroup, int32(k))
	}
}

// prebuilt returns the slice for the snapshot's tasks: room for the
// threads' (len room), then the tasks prebuild made for the groups the
// native check found unchanged — known, from goroutines — and whether each
// is clean (nil when PrewalkFor did not check them). Nil when there are
// none to use; used once.
func (w *Walks) prebuilt(known []*gRecord) (tasks []Task, room int, clean []bool) {
	if w == nil || w.native == nil || w.native.pre == nil || known == nil {
		return nil, 0, nil
	}
	nc := w.native
	tasks, room, clean = nc.pre, nc.room, nc.preClean
	nc.pre, nc.preClean = nil, nil // the snapshot's now
	n := len(nc.preGroup)
	for j := 0; j < n; {
		k := nc.preGroup[j]
		if i := nc.at[k]; i < len(known) && known[i] == &nc.groups[k] {
			j++
			continue
		}
		// Changed: its task is built in the stop. The last takes its place.
		n--
		tasks[room+j], nc.preGroup[j] = tasks[room+n], nc.preGroup[n]
		nc.groups[k].pre = -1
		if clean != nil {
			clean[j] = clean[n]
		}
	}
	clear(tasks[room+n:])
	if clean != nil {
		clean = clean[:n]
	}
	return tasks[:room+n], room, clean
}

// prepareNative builds the groups of every g not bound to an m (whose
// thread would have to be read in the stop) and maps them with the routine
// in the target; nil when too few goroutines make it worth it.
func (src Source) prepareNative(a *arch.Arch, addrs []uint64, raw [][]byte, gs []goruntime.G, byG map[uint64]*walkRecord) (*nativeCheck, error) {
	least := src.NativeMin
	if least == 0 {
		least = defaultNativeMin
	}
	if least < 0 || len(addrs) < least || a == nil || len(a.CompareWords) == 0 {
		return nil, nil
	}
	nc := &nativeCheck{}
	gWords := src.Go.GWords()
	var items, expect []uint64
	// Where each group starts in items and expect, to split them.
	var starts [][2]int
	for i, addr := range addrs {
		if gs[i].M != 0 {
			continue
		}
		rec := byG[addr]
		its, exp, ok := groupItems(addr, raw[i], gWords, rec)
		if !ok {
			continue
		}
		starts = append(starts, [2]int{len(items), len(expect)})
		items = append(append(items, its...), 0)
		expect = append(expect, exp...)
		nc.groups = append(nc.groups, gRecord{g: gs[i], walk: rec, pre: -1})
		nc.at = append(nc.at, i)
	}
	if len(nc.groups) < least {
		return nil, nil
	}
	nc.allgs = addrs
	// The routine reads arch.CompareLookahead words past each item.
	items = append(items, make([]uint64, arch.CompareLookahead)...)
	nc.itemsOff = 0
	nc.expectOff = uint64(8 * len(items))
	nc.outOff = nc.expectOff + uint64(8*len(expect))
	threads := src.NativeThreads
	if threads <= 0 {
		threads = nativeThreads(len(nc.groups))
	}
	nc.parts = splitParts(nc, starts, len(expect), threads)
	r, err := src.Proc.MapRoutine(a.CompareWords, nc.outOff+uint64(len(nc.groups)))
	if err != nil {
		return nil, err
	}
	nc.routine = r
	if err := r.Write(nc.itemsOff, wordBytes(items)); err != nil {
		return nil, errors.Join(err, nc.close())
	}
	if err := r.Write(nc.expectOff, wordBytes(expect)); err != nil {
		return nil, errors.Join(err, nc.close())
	}
	nc.warm()
	return nc, nil
}

// groupItems returns the items and expected words of the g at addr, read
// as raw — the words at gWords, those its decoding reads — and of every
// read of its walk rec (nil: none); not ok when a read is not of whole
// aligned words or an address does not fit an item.
func groupItems(addr uint64, raw []byte, gWords []int, rec *walkRecord) (items, expect []uint64, ok bool) {
	if addr%8 != 0 || addr >= 1<<48 {
		return nil, nil, false
	}
	var ws []cmpWord
	for _, off := range gWords {
		if off+8 > len(raw) {
			return nil, nil, false
		}
		ws = append(ws, cmpWord{addr + uint64(off), binary.LittleEndian.Uint64(raw[off:])})
	}
	items, expect = appendRuns(items, expect, ws)
	if rec == nil {
		return items, expect, true
	}
	ws = ws[:0]
	for _, r := range rec.reads {
		a := rec.spans[r.span].addr + uint64(r.off)
		if a%8 != 0 || r.n%8 != 0 || a+uint64(r.n) >= 1<<48 {
			return nil, nil, false
		}
		for k := 0; k < r.n; k += 8 {
			ws = append(ws, cmpWord{a + uint64(k), binary.LittleEndian.Uint64(rec.spans[r.span].data[r.off+k:])})
		}
	}
	slices.SortFunc(ws, func(x, y cmpWord) int { return cmp.Compare(x.addr, y.addr) })
	ws = slices.CompactFunc(ws, func(x, y cmpWord) bool { return x.addr == y.addr })
	items, expect = appendRuns(items, expect, ws)
	return items, expect, true
}

// cmpWord is a word of the target to compare and the value it held.
type cmpWord struct{ addr, v uint64 }

// appendRuns appends to items one item per run of consecutive words of ws
// (sorted by address) and to expect their values.
func appendRuns(items, expect []uint64, ws []cmpWord) ([]uint64, []uint64) {
	for i := 0; i < len(ws); {
		j := i + 1
		for j < len(ws) && ws[j].addr == ws[j-1].addr+8 && j-i < arch.MaxCompareWords {
			j++
		}
		items = append(items, arch.CompareItem(ws[i].addr, j-i))
		for _, w := range ws[i:j] {
			expect = append(expect, w.v)
		}
		i = j
	}
	return items, expect
}

func wordBytes(ws []uint64) []byte {
	b := make([]byte, 8*len(ws))
	for i, w := range ws {
		binary.LittleEndian.PutUint64(b[8*i:], w)
	}
	return b
}

// nativeThreads is how many of the target's threads the native check of
// groups goroutines runs on: one per groupsPerThread, up to one per core of
// the machine (the tracer sleeps while they run: see tracee.Routine).
// tracee.Routine.RunEach runs the rest in further rounds when the target
// has fewer threads.
func nativeThreads(groups int) int {
	return max(1, min(groups/groupsPerThread, runtime.NumCPU(), tracee.MaxRoutineThreads))
}

// groupsPerThread is the fewest goroutines worth another thread for the
// native check. A thread borrowed costs 0.1-0.3 ms (its state saved and put
// back, its stop); on this project's 2-core machine (A/B of
// BenchmarkPause, apply-pause medians) two threads made 1,000 goroutines
// slower (1.03-1.04 ms against 0.82-0.93), 10,000 no faster (2.78-2.93
// against 2.59-2.83) and 100,000 faster (13.9-15.6 against 16.4-17.3).
const groupsPerThread = 20_000

// splitParts splits nc's groups into n runs of about as many expected
// words each (the work), starts[i] being where group i starts in items and
// expect.
func splitParts(nc *nativeCheck, starts [][2]int, words, n int) []nativePart {
	var parts []nativePart
	first := 0
	for k := 1; k <= n && first < len(starts); k++ {
		end := len(starts)
		if k < n {
			// The group boundary nearest k/n of the words.
			want := words * k / n
			end, _ = slices.BinarySearchFunc(starts, want, func(s [2]int, w int) int { return cmp.Compare(s[1], w) })
			if end > first+1 && (end == len(starts) || want-starts[end-1][1] < starts[end][1]-want) {
				end--
			}
			end = max(end, first+1)
		}
		parts = append(parts, nativePart{
			items:  nc.itemsOff + uint64(8*starts[first][0]),
			expect: nc.expectOff + uint64(8*starts[first][1]),
			out:    nc.outOff + uint64(first),
			groups: uint64(end - first),
		})
		first = end
	}
	return parts
}

// warm runs the check once before the stop, on one thread of the running
// target (tracee.Routine.RunAside, the other threads running on), for
// what that leaves behind: the pages of the g's, the stacks and the
// routine's lists touched through the target's own page tables. On this
// project's virtual machines the first such touch of a page costs about a
// microsecond: the stop's run took 7-9 ms for 10,000 goroutines cold and
// 2 ms warm (BenchmarkPause/go-10000 timed inside). Its result does not
// matter: the stop's run compares again, and a failure here (a stopped
// or held target, which RunAside refuses; one that exits) only leaves
// that run cold.
func (nc *nativeCheck) warm() {
	r := nc.routine
	for _, pt := range nc.parts {
		if _, err := r.RunAside(r.Data+pt.items, r.Data+pt.expect, r.Data+pt.out, pt.groups); err != nil {
			return
		}
	}
}

// run compares, in the stopped target, every group with what Prewalk
// read, and returns which are unchanged.
func (nc *nativeCheck) run(p *tracee.Process) ([]bool, error) {
	r := nc.routine
	calls := make([][]uint64, len(nc.parts))
	for i, pt := range nc.parts {
		calls[i] = []uint64{r.Data + pt.items, r.Data + pt.expect, r.Data + pt.out, pt.groups}
	}
	each, err := r.RunEach(calls)
	if err != nil {
		return nil, err
	}
	changed := uint64(0)
	for _, n := range each {
		changed += n
	}
	out := make([]byte, len(nc.groups))
	if _, err := p.ReadAt(out, int64(r.Data+nc.outOff)); err != nil {
		return nil, err
	}
	same := make([]bool, len(out))
	n := uint64(0)
	for i, b := range out {
		switch b {
		case 0:
			same[i] = true
		case 1:
			n++
		default:
			return nil, fmt.Errorf("consistency: native check: flag %d of group %d", b, i)
		}
	}
	if n != changed {
		return nil, fmt.Errorf("consistency: native check: %d groups flagged, the routine counted %d", n, changed)
	}
	return same, nil
}

func (nc *nativeCheck) close() error {
	if nc == nil || nc.routine == nil {
		return nil
	}
	err := nc.routine.Unmap()
	nc.routine = nil
	return err
}
