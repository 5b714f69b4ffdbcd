package consistency

import (
	"fmt"
	"io"
	"slices"

	"github.com/hotpatch-dev/hotpatch/elfsym"
	"github.com/hotpatch-dev/hotpatch/internal/goruntime"
	"github.com/hotpatch-dev/hotpatch/internal/tracee"
	"github.com/hotpatch-dev/hotpatch/internal/unwind"
)

// Source is where a snapshot's tasks come from.
type Source struct {
	Proc     *tracee.Process
	Unwinder *unwind.Unwinder
	// Symbols, when set, is the target's symbol table, which a
	// *BlockedError carries for its caller.
	Symbols *elfsym.Table
	// Go is the runtime of a Go target, whose goroutines are tasks too;
	// nil for other targets.
	Go *goruntime.Runtime
	// NativeMin is the fewest goroutines for which Prewalk has the
	// stopped target compare their inputs itself (0: a default of 512;
	// negative: never).
	NativeMin int
	// NativeThreads is how many of the target's threads the native check
	// runs on (0: one per 20,000 goroutines, up to one per core).
	NativeThreads int
	// Prefetch, when set, carries from one snapshot of the target to the
	// next the pages its threads' walks read, for the next stop to read
	// in one batch (see Prefetch).
	Prefetch *Prefetch
}

// stackPrefetch bounds how much of a parked goroutine's stack is read in
// the batch before its walk (the rest is read on demand, a page at a time).
// Parked goroutines typically use a few hundred bytes.
const stackPrefetch = 2 << 10

// Take unwinds every thread of the stopped process and, for a Go target,
// every goroutine that is not dead: a goroutine running on a thread takes
// that thread's stack (the thread's registers are the truth), every other one
// is walked from the registers its g saved. A thread whose walk ended where
// it switched from a goroutine's stack to its system stack is complete then,
// since that goroutine is walked from its g.
func (src Source) Take() (Snapshot, error) { return src.TakeAfter(nil) }

// TakeAfter is Take reusing, for each goroutine whose inputs have not changed
// since, the walk prior recorded before the stop (see Walks); nil prior
// walks everything. With a native check, the first TakeAfter given prior
// also takes the tasks prior built for the goroutines found unchanged as
// they are (its snapshot owns them).
func (src Source) TakeAfter(prior *Walks) (Snapshot, error) {
	// First, before any register is read: the native check runs on some
	// of the threads, each then as it was — or, when one ran on
	// (tracee.ErrCallRanOn), read as it is now.
	same := prior.runNative(src.Proc)
	if prior != nil {
		prior.clean = nil
	}
	threads, err := src.threads()
	if err != nil {
		return Snapshot{}, err
	}
	if src.Go == nil {
		return Snapshot{Tasks: threads}, nil
	}
	gs, known, err := src.goroutines(prior, same)
	if err != nil {
		return Snapshot{}, fmt.Errorf("consistency: goroutines: %w", err)
	}
	// One slice for the snapshot: room for every thread's task, put there
	// once known, then the goroutines' — first those Prewalk built for the
	// goroutines the target found unchanged, where they are, then those
	// built here (copying 100,000 tasks of 200 bytes cost milliseconds).
	out, room, keptClean := prior.prebuilt(known)
	kept := len(out) - room
	usePre := out != nil
	if !usePre {
		room = len(threads)
		out = make([]Task, room, room+len(gs))
	}
	sp := splitGoroutines(threads, gs, known, usePre, out[len(out):len(out)], len(gs)-kept)
	var goClean []bool
	if prior != nil && prior.regions != nil {
		goClean = make([]bool, len(sp.tasks))
	}
	if err := src.walkFromG(sp.tasks, sp.walkOf, sp.walk, sp.walkKnown, prior, goClean); err != nil {
		return Snapshot{}, err
	}
	if kept > 0 {
		prior.Reused += kept
		prior.Native += kept
	}
	for i := range sp.tasks {
		if len(sp.tasks[i].Stack.Callbacks) > 0 {
			sp.tasks[i].Stack = src.callbackFrames(sp.tasks[i].Stack, *gs[sp.gOf[i]])
		}
	}
	threadTasks := src.threadTasks(threads, sp.covered)
	if goClean != nil {
		// Task i of the snapshot is clean when its reused walk was.
		if keptClean == nil {
			keptClean = make([]bool, kept) // not known: checked again
		}
		prior.clean = slices.Concat(make([]bool, len(threadTasks)), keptClean, goClean)
	}
	first, end := room-len(threadTasks), len(out)+len(sp.tasks)
	if first < 0 || cap(sp.tasks) != cap(out)-len(out) {
		// More threads than room, or more goroutines than slack
		// (sp.tasks grew apart): one copy.
		return Snapshot{Tasks: slices.Concat(threadTasks, out[room:], sp.tasks)}, nil
	}
	copy(out[first:], threadTasks)
	return Snapshot{Tasks: out[first:end:end]}, nil
}

// threads reads the registers of every stopped thread and walks each.
func (src Source) threads() ([]Task, error) {
	p := src.Proc
	all, err := p.AllRegs() // one hand-off to the ptrace thread, not one per thread
	if err != nil {
		return nil, fmt.Errorf("consistency: registers: %w", err)
	}
	tids := p.Threads()
	for _, tid := range tids {
		if _, ok := all[tid]; !ok {
			return nil, fmt.Errorf("consistency: registers of thread %d: %w", tid, tracee.ErrNotStopped)
		}
	}
	// The walks share one cache of the stopped target's pages (threads
	// run the same code, which a walk reads), seeded with the page each
	// thread's stack pointer is in and the pages the last snapshot's
	// walks read (src.Prefetch), read in one batch; the walks,
	// independent, spread over cores.
	pages := stackPages(p, tids, all, src.Prefetch)
	tasks := make([]Task, len(tids))
	parallel(len(tids), parallelThreads, func(i int) {
		tasks[i] = src.thread(tids[i], all[tids[i]], pages)
	})
	pages.done(src.Prefetch)
	return tasks, nil
}

// goSplit is what TakeAfter does with each goroutine not among the
// prebuilt tasks: its task (tasks[i], for gs[gOf[i]]), and whether it is
// walked from its g (walk[walkOf[i]], with its record when proven
// unchanged, walkKnown) or takes its stack from elsewhere (walkOf[i] < 0).
// covered maps a thread to the goroutine it runs, whose task has the
// thread's stack.
type goSplit struct {
	tasks     []Task
	walkOf    []int
	gOf       []int32
	walk      []*goruntime.G
	walkKnown []*gRecord
	covered   map[int]goruntime.G
}

// splitGoroutines builds the task of every live goroutine of gs but those
// prebuilt (usePre, known[i].pre >= 0), appending to tasks (room for n).
// A goroutine on one of threads takes that thread's stack; a running one on
// a thread we did not stop, or one whose stack is being moved, is not
// walked (unreliable); the others are walked from their g.
func splitGoroutines(threads []Task, gs []*goruntime.G, known []*gRecord, usePre bool, tasks []Task, n int) goSplit {
	byTID := make(map[int]int, len(threads)) // tid → index in threads
	for i, t := range threads {
		byTID[t.ID] = i
	}
	sp := goSplit{tasks: tasks, walkOf: make([]int, 0, n), gOf: make([]int32, 0, n), walk: make([]*goruntime.G, 0, len(gs)), covered: map[int]goruntime.G{}}
	if known != nil {
		sp.walkKnown = make([]*gRecord, 0, n)
	}
	add := func(gi int, t Task, walk int) {
		sp.tasks, sp.walkOf, sp.gOf = append(sp.tasks, t), append(sp.walkOf, walk), append(sp.gOf, int32(gi))
	}
	for gi, gp := range gs {
		if usePre && known[gi] != nil && known[gi].pre >= 0 {
			continue // its task is among the prebuilt
		}
		g := *gp
		if !g.Live() {
			continue
		}
		t := goTask(g)
		// The thread of a goroutine on one (most are parked: no lookup).
		onThread := g.Status == goruntime.Running || g.Status == goruntime.Syscall
		i, seen := 0, false
		if onThread {
			i, seen = byTID[g.Thread]
		}
		switch {
		case seen && onStack(threads[i].Stack, g):
			t.Stack = threads[i].Stack
			sp.covered[g.Thread] = g
			add(gi, t, -1)
		case g.Status == goruntime.Running && !seen:
			// Its saved registers are stale while it runs, and the
			// thread that runs it is not one we stopped: nothing can be
			// proven.
			t.Stack = unwind.Stack{Reason: fmt.Sprintf("running on thread %d, which is not among the stopped threads", g.Thread)}
			add(gi, t, -1)
		case g.Status == goruntime.CopyStack:
			t.Thread = 0
			t.Stack = unwind.Stack{Reason: "its stack is being moved"}
			add(gi, t, -1)
		default:
			t.Thread = 0
			add(gi, t, len(sp.walk))
			sp.walk = append(sp.walk, gp)
			if known != nil {
				sp.walkKnown = append(sp.walkKnown, known[gi])
			}
		}
	}
	return sp
}

// threadTasks are the snapshot's thread tasks. A thread covered by the
// goroutine it runs is reported as that goroutine, and, apart, with the
// frames of its own start on its m's g0 (mstart and, for a thread created
// through cgo, the C code that mstart returns into when the m exits):
// those are on no goroutine's stack. A thread whose walk ended where it
// switched to its system stack is complete: the goroutine's own frames are
// checked from its g.
func (src Source) threadTasks(threads []Task, covered map[int]goruntime.G) []Task {
	out := make([]Task, 0, len(threads))
	for _, t := range threads {
		if g, ok := covered[t.ID]; ok {
			if st, ok := src.startFrames(g.M); ok {
				t.Stack = st
				out = append(out, t)
			}
			continue
		}
		if !t.Stack.Reliable && t.Stack.SwitchedAt != "" {
			t.Stack.Reliable = true
			t.Stack.Reason = "system stack, entered at " + t.Stack.SwitchedAt + " (the goroutine's own frames are checked from its g)"
		}
		out = append(out, t)
	}
	return out
}

// goTask is the task of goroutine g, its stack not set.
func goTask(g goruntime.G) Task {
	t := Task{Kind: "goroutine", ID: int(g.ID), Status: goruntime.StatusName(g.Status), Wait: g.Wait, Thread: g.Thread, Key: g.Addr}
	if g.Status == goruntime.Waiting && t.Wait == "" {
		t.Wait = fmt.Sprintf("wait reason %d", g.WaitReason)
	}
	return t
}

// goroutines returns every g of the stopped target and, where the native
// check proved a g and its walk's inputs unchanged (same, from runNative),
// its record (known[i]), the others read from the target.
func (src Source) goroutines(prior *Walks, same []bool) (gs []*goruntime.G, known []*gRecord, err error) {
	mem := parallelReader{src.Proc}
	if same == nil {
		read, err := src.Go.Goroutines(mem)
		return pointers(read), nil, err
	}
	nc := prior.native
	addrs, held, err := src.Go.AllGsAfter(mem, nc.allgs)
	if err != nil {
		return nil, nil, err
	}
	if held && nc.preGs != nil {
		// The groups' g's where allgs has them, built before the stop:
		// only those found changed are taken out.
		gs, known = nc.preGs, nc.preKnown
		nc.preGs, nc.preKnown = nil, nil // the snapshot's now
		if more := len(addrs) - len(gs); more > 0 {
			gs, known = append(gs, make([]*goruntime.G, more)...), append(known, make([]*gRecord, more)...)
		}
		for k, i := range nc.at {
			if !same[k] {
				gs[i], known[i] = nil, nil
			}
		}
	} else {
		gs, known = make([]*goruntime.G, len(addrs)), make([]*gRecord, len(addrs))
		for k, i := range nc.at {
			if same[k] && i < len(addrs) && addrs[i] == nc.groups[k].g.Addr {
				gs[i], known[i] = &nc.groups[k].g, &nc.groups[k]
			}
		}
	}
	var fresh []uint64
	var at []int
	for i, a := range addrs {
		if known[i] == nil {
			fresh, at = append(fresh, a), append(at, i)
		}
	}
	read, err := src.Go.GoroutinesAt(mem, fresh)
	if err != nil {
		return nil, nil, err
	}
	for k, i := range at {
		gs[i] = &read[k]
	}
	return gs, known, nil
}

// pointers returns a pointer to each of gs.
func pointers(gs []goruntime.G) []*goruntime.G {
	out := make([]*goruntime.G, len(gs))
	for i := range gs {
		out[i] = &gs[i]
	}
	return out
}

// onStack reports whether a walk ran on g's stack.
func onStack(s unwind.Stack, g goruntime.G) bool {
	for _, f := range s.Frames {
		if f.SP >= g.StackLo && f.SP < g.StackHi {
			return true
		}
	}
	return false
}

// prefetched serves reads of a goroutine's stack from a buffer read
// beforehand; a read beyond it extends the buffer by at least a page (up to
// the stack's top, hi).
type prefetched struct {
	base io.ReaderAt
	addr uint64
	buf  []byte
	hi   uint64
}

func (m *prefetched) ReadAt(b []byte, off int64) (int, error) {
	a, end := uint64(off), uint64(off)+uint64(len(b))
	have := m.addr + uint64(len(m.buf))
	if a >= m.addr && end <= have {
		return copy(b, m.buf[a-m.addr:]), nil
	}
	if a >= m.addr && a <= have && end <= m.hi {
		more := make([]byte, min(max(end-have, 4096), m.hi-have))
		if _, err := m.base.ReadAt(more, int64(have)); err == nil {
			m.buf = append(m.buf, more...)
			return copy(b, m.buf[a-m.addr:]), nil
		}
	}
	return m.base.ReadAt(b, off)
}

// thread walks one stopped thread from its registers, reading the target
// through pages (its g from its TLS, and an idle thread's g0 and start
// frames, too: no read of its own in the stop, and the Prefetch
// remembers them for the next).
func (src Source) thread(tid int, regs tracee.Regs, pages *sharedPages) Task {
	u := src.Unwinder
	key := regs.ThreadPointer()
	if src.Go != nil {
		// The g the thread runs, where the runtime keeps it (a TLS
		// slot; R14 only holds it in Go code). Unknown: 0, and such
		// a task cannot be listed in a universe table.
		_, goCode := u.GoFunc(regs.PC())
		var err error
		if key, err = src.Go.ThreadG(pages, regs.ThreadPointer(), regs.DWARF(), goCode); err != nil {
			key = 0
		}
	}
	st := u.Unwind(pages, regs.DWARF())
	if src.Go != nil && st.Reliable && st.Root == "runtime.mcall" {
		st = src.g0Frames(pages, st, key)
	}
	return Task{Kind: "thread", ID: tid, Key: key, Stack: st}
}

// parallelThreads is the fewest thread walks worth handing to another core
// (a thread's walk, by CFI through libc, costs more than a goroutine's).
const parallelThreads = 8

// walkFromG sets the stack of goTasks[i] for every walkOf[i] >= 0 by walking
// walk[walkOf[i]] from its g, reusing prior's walks where their inputs are
// unchanged (known[j], when set, is walk[j]'s record proven unchanged by the
// native check).
//
// clean, when not nil, is set for each task whose reused walk PrewalkFor
// found clean.
func (src Source) walkFromG(goTasks []Task, walkOf []int, walk []*goruntime.G, known []*gRecord, prior *Walks, clean []bool) error {
	taskOf := make([]int, len(walk)) // walk index → goTasks index
	for i, j := range walkOf {
		if j >= 0 {
			taskOf[j] = i
		}
	}
	reused := prior.reuse(src, walk, known, func(j int, rec *walkRecord) {
		goTasks[taskOf[j]].Stack = rec.stack
		if clean != nil {
			clean[taskOf[j]] = rec.clean
		}
	})
	var again []goruntime.G
	var at []int
	for j, g := range walk {
		if !reused[j] && g.SP >= g.StackLo && g.SP < g.StackHi {
			again, at = append(again, *g), append(at, j)
		}
	}
	walked, _, err := src.walkGs(again, false)
	if err != nil {
		return err
	}
	for k, j := range at {
		goTasks[taskOf[j]].Stack = walked[k]
	}
	if prior != nil {
		prior.Reused, prior.Rewalked = 0, len(again)
		for _, ok := range reused {
			if ok {
				prior.Reused++
			}
		}
	}
	for i, j := range walkOf {
		if j < 0 {
			continue
		}
		if g := walk[j]; g.SP < g.StackLo || g.SP >= g.StackHi {
			goTasks[i].Stack = unwind.Stack{Reason: fmt.Sprintf("saved sp %#x is outside its stack [%#x, %#x)", g.SP, g.StackLo, g.StackHi)}
		}
	}
	return nil
}
