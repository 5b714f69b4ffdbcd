package consistency

import (
	"fmt"
	"io"

	"github.com/hotpatch-dev/hotpatch/internal/goruntime"
	"github.com/hotpatch-dev/hotpatch/internal/tracee"
	"github.com/hotpatch-dev/hotpatch/internal/unwind"
)

// Source is where a snapshot's tasks come from.
type Source struct {
	Proc     *tracee.Process
	Unwinder *unwind.Unwinder
	// Go is the runtime of a Go target, whose goroutines are tasks too;
	// nil for other targets.
	Go *goruntime.Runtime
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
// walks everything.
func (src Source) TakeAfter(prior *Walks) (Snapshot, error) {
	p, u := src.Proc, src.Unwinder
	var s Snapshot
	s.Tasks = make([]Task, 0, len(p.Threads()))
	threads := map[int]int{} // tid → index in s.Tasks
	all, err := p.AllRegs()  // one hand-off to the ptrace thread, not one per thread
	if err != nil {
		return Snapshot{}, fmt.Errorf("consistency: registers: %w", err)
	}
	for _, tid := range p.Threads() {
		regs, ok := all[tid]
		if !ok {
			return Snapshot{}, fmt.Errorf("consistency: registers of thread %d: %w", tid, tracee.ErrNotStopped)
		}
		threads[tid] = len(s.Tasks)
		key := regs.ThreadPointer()
		if src.Go != nil {
			// The g the thread runs, where the runtime keeps it (a TLS
			// slot; R14 only holds it in Go code). Unknown: 0, and such
			// a task cannot be listed in a universe table.
			_, goCode := u.GoFunc(regs.PC())
			if key, err = src.Go.ThreadG(p, regs.ThreadPointer(), regs.DWARF(), goCode); err != nil {
				key = 0
			}
		}
		st := u.Unwind(unwind.NewPageCache(p), regs.DWARF())
		if src.Go != nil && st.Reliable && st.Root == "runtime.mcall" {
			st = src.g0Frames(st, key)
		}
		s.Tasks = append(s.Tasks, Task{Kind: "thread", ID: tid, Key: key, Stack: st})
	}
	if src.Go == nil {
		return s, nil
	}
	gs, err := src.Go.Goroutines(parallelReader{p})
	if err != nil {
		return Snapshot{}, fmt.Errorf("consistency: goroutines: %w", err)
	}
	covered := map[int]bool{}
	walk := make([]goruntime.G, 0, len(gs))
	goTasks := make([]Task, 0, len(gs))
	walkOf := make([]int, 0, len(gs)) // goTasks index → walk index, -1 when not walked from its g
	gOf := make([]goruntime.G, 0, len(gs))
	for _, g := range gs {
		if !g.Live() {
			continue
		}
		gOf = append(gOf, g)
		t := Task{Kind: "goroutine", ID: int(g.ID), Status: goruntime.StatusName(g.Status), Wait: g.Wait, Thread: g.Thread, Key: g.Addr}
		if g.Status == goruntime.Waiting && t.Wait == "" {
			t.Wait = fmt.Sprintf("wait reason %d", g.WaitReason)
		}
		if i, ok := threads[g.Thread]; ok && (g.Status == goruntime.Running || g.Status == goruntime.Syscall) &&
			onStack(s.Tasks[i].Stack, g) {
			t.Stack = s.Tasks[i].Stack
			covered[g.Thread] = true
			goTasks, walkOf = append(goTasks, t), append(walkOf, -1)
			continue
		}
		if _, seen := threads[g.Thread]; g.Status == goruntime.Running && !seen {
			// Its saved registers are stale while it runs, and the thread
			// that runs it is not one we stopped: nothing can be proven.
			t.Stack = unwind.Stack{Reason: fmt.Sprintf("running on thread %d, which is not among the stopped threads", g.Thread)}
			goTasks, walkOf = append(goTasks, t), append(walkOf, -1)
			continue
		}
		t.Thread = 0
		if g.Status == goruntime.CopyStack {
			t.Stack = unwind.Stack{Reason: "its stack is being moved"}
			goTasks, walkOf = append(goTasks, t), append(walkOf, -1)
			continue
		}
		goTasks, walkOf = append(goTasks, t), append(walkOf, len(walk))
		walk = append(walk, g)
	}
	if err := src.walkFromG(goTasks, walkOf, walk, prior); err != nil {
		return Snapshot{}, err
	}
	for i := range goTasks {
		if len(goTasks[i].Stack.Callbacks) > 0 {
			goTasks[i].Stack = src.callbackFrames(goTasks[i].Stack, gOf[i])
		}
	}
	// A covered thread is reported as its goroutine.
	out := Snapshot{Tasks: make([]Task, 0, len(s.Tasks)+len(goTasks))}
	for _, t := range s.Tasks {
		if covered[t.ID] {
			continue
		}
		if !t.Stack.Reliable && t.Stack.SwitchedAt != "" {
			t.Stack.Reliable = true
			t.Stack.Reason = "system stack, entered at " + t.Stack.SwitchedAt + " (the goroutine's own frames are checked from its g)"
		}
		out.Tasks = append(out.Tasks, t)
	}
	out.Tasks = append(out.Tasks, goTasks...)
	return out, nil
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

// walkFromG sets the stack of goTasks[i] for every walkOf[i] >= 0 by walking
// walk[walkOf[i]] from its g, reusing prior's walks where their inputs are
// unchanged.
func (src Source) walkFromG(goTasks []Task, walkOf []int, walk []goruntime.G, prior *Walks) error {
	stacks, reused := prior.reuse(src, walk)
	var again []goruntime.G
	var at []int
	for j, g := range walk {
		if !reused[j] && g.SP >= g.StackLo && g.SP < g.StackHi {
			again, at = append(again, g), append(at, j)
		}
	}
	walked, _, err := src.walkGs(again, false)
	if err != nil {
		return err
	}
	for k, j := range at {
		stacks[j] = walked[k]
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
			continue
		}
		goTasks[i].Stack = stacks[j]
	}
	return nil
}
