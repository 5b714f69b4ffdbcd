//go:build linux

package patch

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"slices"
	"sort"
	"time"

	"github.com/hotpatch-dev/hotpatch/internal/consistency"
	"github.com/hotpatch-dev/hotpatch/trampoline"
)

// autoStopTries bounds the stop-and-check attempts of ModeAuto.
const autoStopTries = 50 * time.Millisecond

// Progress reports one pause of a gradual transition.
type Progress struct {
	ID string `json:"id"`
	// Event is EventTransition (the first pause: universes assigned),
	// EventProgress, EventForced, EventApplied, EventReverting,
	// EventReverted or EventTimeout; in stop mode EventRetry (a pause found
	// tasks in the functions: nothing was written, another pause follows).
	Event Event `json:"event"`
	// Pending is the number of tasks the transition still waits for.
	Pending int `json:"pending"`
	// Moved is the number of tasks this pause moved to their new universe.
	Moved       int           `json:"moved"`
	Pause       time.Duration `json:"-"`
	PauseMicros int64         `json:"pause_us"`
	// Oldest lists up to five pending tasks with their stacks.
	Oldest []TaskReport `json:"oldest"`
}

// TaskReport is a task and its symbolized stack, for progress reports.
type TaskReport struct {
	Task  string   `json:"task"`
	Stack []string `json:"stack"`
	// In is the function of the patch the task is in (its innermost frame
	// in an old function or a replacement), which is what it is waited for;
	// Stack[0] is often a runtime or libc function it blocks in.
	In string `json:"in,omitempty"`
}

// direction of a transition: toward the new code or back to the old.
type direction int

const (
	forward direction = iota
	backward
)

// taskEstimate counts the tasks of the target now (threads, plus goroutines
// of a Go target), to size the universe table.
func (t *Target) taskEstimate() int {
	n := 0
	if ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", t.pid)); err == nil {
		n = len(ents)
	}
	if src, err := t.source(); err == nil && src.Go != nil {
		var b [8]byte
		if _, err := t.proc.ReadAt(b[:], int64(src.Go.AllGLen)); err == nil {
			n += int(binary.LittleEndian.Uint64(b[:]))
		}
	}
	return n
}

// transitionRegions are the code a task must not have on its stack to leave
// the listed universe: forward, the old functions and the patch memory
// (thunks run old code, stubs are mid-decision); backward, the new functions.
func transitionRegions(rec *Record, dir direction) []consistency.Region {
	var rs []consistency.Region
	for _, f := range rec.Functions {
		if dir == forward {
			end := f.OldAddr + max(f.OldSize, 1)
			if e := f.PatchAddr + uint64(len(f.Jump)); e > end {
				end = e
			}
			rs = append(rs, consistency.Region{Name: f.Old, Start: f.OldAddr, End: end})
		} else {
			rs = append(rs, consistency.Region{Name: f.New, Start: f.NewAddr, End: f.NewAddr + max(f.NewSize, 1)})
		}
	}
	if dir == forward {
		rs = append(rs, consistency.Region{Name: "patch " + rec.ID + " memory", Start: rec.Region, End: rec.Region + rec.RegionSize})
	}
	return rs
}

// inStub reports a task stopped inside a dispatch stub: it may have looked
// the table up already, so no table or target may change under it. The
// blocker names the task and the stub.
func inStub(rec *Record, s consistency.Snapshot) (consistency.Blocker, bool) {
	if holdInStub && len(s.Tasks) > 0 {
		return stubBlocker(s.Tasks[0], rec.Functions[0]), true
	}
	for _, task := range s.Tasks {
		if len(task.Stack.Frames) == 0 {
			continue
		}
		pc := task.Stack.Frames[0].PC
		for _, f := range rec.Functions {
			if f.StubAddr != 0 && pc >= f.StubAddr && pc < f.StubAddr+f.StubSize {
				return stubBlocker(task, f), true
			}
		}
	}
	return consistency.Blocker{}, false
}

func stubBlocker(task consistency.Task, f Function) consistency.Blocker {
	name := "the dispatch stub of " + f.Old
	return consistency.Blocker{Task: task, Func: name,
		Reason: "executing in " + name + " (it may have read the universe table, so nothing may switch under it; is it stopped?)"}
}

// blockedKeys returns the keys of the tasks that must stay listed, and a
// representative task of each. A blocked task whose key is unknown (0)
// cannot be listed, so nothing may switch: it is an ErrNoTaskKey.
func blockedKeys(s consistency.Snapshot, regions []consistency.Region) (map[uint64]consistency.Task, error) {
	out := map[uint64]consistency.Task{}
	for _, b := range consistency.Check(s, regions) {
		if b.Task.Key == 0 {
			return nil, fmt.Errorf("%w: %s (%s)", ErrNoTaskKey, b.Task, b.Reason)
		}
		if _, ok := out[b.Task.Key]; !ok {
			out[b.Task.Key] = b.Task
		}
	}
	return out, nil
}

// The universe control word is at rec.Table; the two tables follow it.
func tableAddr(rec *Record, i int) uint64 {
	return rec.Table + tableCtlSize + uint64(i*trampoline.TableSize(rec.TableCapacity))
}

const tableCtlSize = 64

// readTable returns the active table's entries and Sel.
func (t *Target) readTable(rec *Record) ([]trampoline.TableEntry, bool, error) {
	return readTable(t.proc, rec)
}

func readTable(mem readerAt, rec *Record) ([]trampoline.TableEntry, bool, error) {
	var w [8]byte
	if _, err := mem.ReadAt(w[:], int64(rec.Table)); err != nil {
		return nil, false, fmt.Errorf("patch %s: read the universe control word at %#x: %w", rec.ID, rec.Table, err)
	}
	active := binary.LittleEndian.Uint64(w[:])
	if active != tableAddr(rec, 0) && active != tableAddr(rec, 1) {
		return nil, false, fmt.Errorf("patch %s: universe control word %#x points at no table", rec.ID, active)
	}
	b := make([]byte, trampoline.TableSize(rec.TableCapacity))
	if _, err := mem.ReadAt(b, int64(active)); err != nil {
		return nil, false, fmt.Errorf("patch %s: read the universe table at %#x: %w", rec.ID, active, err)
	}
	return trampoline.ParseTable(b)
}

// writeTable makes a table with these entries and Sel active: it fills the
// inactive table, then switches the control word with one 8-byte write. Only
// the slots that change are written, and only those are built: a table is
// sized for twice the goroutines — megabytes at 100,000 — and the pause
// lists a few.
func (t *Target) writeTable(rec *Record, es []trampoline.TableEntry, unlistedNew bool) error {
	hdr, slots, err := trampoline.LayoutTable(es, rec.TableCapacity, unlistedNew)
	if err != nil {
		return err
	}
	var w [8]byte
	if _, err := t.proc.ReadAt(w[:], int64(rec.Table)); err != nil {
		return err
	}
	next := tableAddr(rec, 0)
	if binary.LittleEndian.Uint64(w[:]) == next {
		next = tableAddr(rec, 1)
	}
	old, err := t.usedSlots(rec, next)
	if err != nil {
		return err
	}
	key := tableBuffer{rec.ID, next}
	if runs := slotRuns(slots, old); len(runs) > 0 {
		delete(t.tableSlots, key) // known again once written whole
		// Mark the buffer dirty first (a non-zero count makes the next
		// writer read it whole), so a death amid the slots leaves no
		// stale key behind a header that says "empty".
		dirty := [8]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
		if err := t.writeMem(next+8, dirty[:]); err != nil {
			return err
		}
		for _, r := range runs {
			if err := t.writeMem(next+uint64(r.off), r.data); err != nil {
				return err
			}
		}
		step("transition:table-slots")
	}
	if err := t.writeMem(next, hdr); err != nil {
		return err
	}
	offs := make([]int, len(slots))
	for i, sl := range slots {
		offs[i] = sl.Off
	}
	if t.tableSlots == nil {
		t.tableSlots = map[tableBuffer][]int{}
	}
	t.tableSlots[key] = offs
	step("transition:table-written")
	binary.LittleEndian.PutUint64(w[:], next)
	if err := t.writeMem(rec.Table, w[:]); err != nil {
		return err
	}
	step("transition:table-switched")
	return nil
}

// tableBuffer names one of a patch's two universe tables.
type tableBuffer struct {
	id   string
	addr uint64
}

// usedSlots returns the offsets of the used slots of the table at addr:
// those this Target wrote there last, else read (none when its header
// counts none: slots are cleared before a count of 0 is written).
func (t *Target) usedSlots(rec *Record, addr uint64) ([]int, error) {
	if offs, ok := t.tableSlots[tableBuffer{rec.ID, addr}]; ok {
		return offs, nil
	}
	var hdr [trampoline.TableHeaderSize]byte
	if _, err := t.proc.ReadAt(hdr[:], int64(addr)); err != nil {
		return nil, err
	}
	if binary.LittleEndian.Uint64(hdr[8:]) == 0 {
		return nil, nil
	}
	b := make([]byte, trampoline.TableSize(rec.TableCapacity))
	if _, err := t.proc.ReadAt(b, int64(addr)); err != nil {
		return nil, err
	}
	var offs []int
	for off := trampoline.TableHeaderSize; off+trampoline.TableSlotSize <= len(b); off += trampoline.TableSlotSize {
		if binary.LittleEndian.Uint64(b[off:]) != 0 {
			offs = append(offs, off)
		}
	}
	return offs, nil
}

// slotRun is bytes to write at an offset of a table.
type slotRun struct {
	off  int
	data []byte
}

// slotRunGap is the widest run of empty slots written over to join two
// runs into one write.
const slotRunGap = 4096

// slotRuns returns the writes that turn a table whose used slots are at
// old into one whose used slots are slots: each slot of slots, zeros at
// each of old that slots does not use, joined into runs where they lie
// close (the empty slots between are zeros already, and stay so).
func slotRuns(slots []trampoline.TableSlot, old []int) []slotRun {
	all := make([]slotRun, 0, len(slots)+len(old))
	used := make(map[int]bool, len(slots))
	for i := range slots {
		all = append(all, slotRun{slots[i].Off, slots[i].Data[:]})
		used[slots[i].Off] = true
	}
	var zero [trampoline.TableSlotSize]byte
	for _, off := range old {
		if !used[off] {
			all = append(all, slotRun{off, zero[:]})
		}
	}
	slices.SortFunc(all, func(a, b slotRun) int { return a.off - b.off })
	var runs []slotRun
	for _, s := range all {
		if n := len(runs); n > 0 && s.off-(runs[n-1].off+len(runs[n-1].data)) <= slotRunGap {
			r := &runs[n-1]
			r.data = append(r.data, make([]byte, s.off-(r.off+len(r.data)))...)
			r.data = append(r.data, s.data...)
			continue
		}
		runs = append(runs, slotRun{s.off, append([]byte(nil), s.data...)})
	}
	return runs
}

// entriesTo rewrites every entry whose bytes are one of from into to
// (entries already at to are left alone); any other bytes refuse, with
// nothing written. The target is stopped.
func (t *Target) entriesTo(rec *Record, to func(Function) []byte, from ...func(Function) []byte) error {
	var ws []write
	for _, f := range rec.Functions {
		live := make([]byte, len(f.Original))
		if _, err := t.proc.ReadAt(live, int64(f.PatchAddr)); err != nil {
			return err
		}
		want := to(f)
		if bytes.Equal(live, want) {
			continue
		}
		ok := false
		for _, fr := range from {
			if bytes.Equal(live, fr(f)) {
				ok = true
			}
		}
		if !ok {
			return fmt.Errorf("%w: %s at %#x is % x, not what patch %s wrote or found there; nothing was written", ErrCodeChanged, f.Old, f.PatchAddr, live, rec.ID)
		}
		ws = append(ws, write{name: f.Old, addr: f.PatchAddr, old: live, new: want})
	}
	for i, w := range ws {
		if i > 0 {
			step("entries:first-written")
		}
		if err := t.writeMem(w.addr, w.new); err != nil {
			return err
		}
	}
	return nil
}

func original(f Function) []byte { return f.Original }
func jump(f Function) []byte     { return f.Jump }
func stubJump(f Function) []byte { return f.StubJump }

func (t *Target) setState(rec *Record, state uint32) error {
	var st [4]byte
	binary.LittleEndian.PutUint32(st[:], state)
	if err := t.writeMem(rec.Region+stateOffset, st[:]); err != nil {
		return err
	}
	step("state:" + string(stateName(state)))
	return nil
}

// entries turns blocked tasks into table entries, sorted by ID.
func entries(keys map[uint64]consistency.Task) []trampoline.TableEntry {
	var es []trampoline.TableEntry
	for k, task := range keys {
		es = append(es, trampoline.TableEntry{Key: k, ID: uint64(task.ID)})
	}
	sort.Slice(es, func(i, j int) bool { return es[i].ID < es[j].ID })
	return es
}

// gradualApply starts a transition of a prepared patch: one pause assigns
// every task its universe — old for those with an old function (or patch
// memory) on their stack or whose stack is unreliable, new for the others —
// and points every entry at its stub; then drive moves the old ones over.
func (t *Target) gradualApply(ctx context.Context, rec *Record, o ApplyOptions) (*Result, error) {
	fail := func(err error) (*Result, error) {
		t.unmapUnused(rec)
		return nil, &Error{Op: "apply", Pid: t.pid, ID: rec.ID, Err: err}
	}
	src, err := t.source()
	if err != nil {
		return fail(err)
	}
	snap, old, pause, attempts, err := t.switchPause(ctx, time.Now().Add(o.Timeout), src, rec, func(snap consistency.Snapshot) (map[uint64]consistency.Task, error) {
		old, err := blockedKeys(snap, transitionRegions(rec, forward))
		if err != nil {
			return nil, err
		}
		if 2*len(old) > rec.TableCapacity {
			return nil, fmt.Errorf("%d tasks are busy in the functions, more than the universe table holds (%d)", len(old), rec.TableCapacity/2)
		}
		step("apply:paused")
		return old, t.startForward(rec, old)
	})
	if err != nil {
		return fail(err)
	}
	res := Result{ID: rec.ID, Functions: rec.Functions, Pause: pause, PauseMicros: pause.Microseconds(), Attempts: attempts, State: StateTransition, Pending: len(old)}
	t.report(o, rec, "transition", len(old), 0, pause, snap, old)
	if res.Pending == 0 {
		// Nothing was busy: the first pause already wrote direct jumps.
		t.report(o, rec, "applied", 0, 0, res.Pause, consistency.Snapshot{}, nil)
		if err := t.readBack(rec, &res, 0); err != nil {
			return &res, &Error{Op: "apply", Pid: t.pid, ID: rec.ID, Err: err}
		}
		return &res, nil
	}
	rec.State = StateTransition
	return t.drive(ctx, rec, forward, o, &res)
}

// unmapUnused unmaps the memory of a patch after a failed apply, but only
// when every entry still holds its original bytes (or, superseding, the
// superseded patch's jump): otherwise something jumps there, and the
// record stays for status and revert.
func (t *Target) unmapUnused(rec *Record) {
	for _, f := range rec.Functions {
		live := make([]byte, len(f.Original))
		_, err := t.proc.ReadAt(live, int64(f.PatchAddr))
		if err != nil || !(bytes.Equal(live, f.Original) || (f.Superseded != nil && bytes.Equal(live, f.Superseded))) {
			t.log.Warn("patch memory left mapped: an entry leads there", "id", rec.ID, "func", f.Old)
			return
		}
	}
	if err := t.proc.Munmap(rec.Region, rec.RegionSize); err != nil {
		t.log.Warn("could not unmap patch memory", "id", rec.ID, "err", err)
	}
}

// switchPause stops the target, takes a snapshot and runs sw on it, then
// resumes the target. A task inside a dispatch stub may have read the table
// already, so while one is there nothing is switched: the pause is retried
// (tasks leave stubs within nanoseconds; one that stays, a stopped one say,
// makes it fail with a *consistency.BlockedError naming it after
// stubRetries pauses or at the deadline, whichever comes first). A
// cancelled ctx ends the retries at once.
func (t *Target) switchPause(ctx context.Context, deadline time.Time, src consistency.Source, rec *Record, sw func(consistency.Snapshot) (map[uint64]consistency.Task, error)) (consistency.Snapshot, map[uint64]consistency.Task, time.Duration, int, error) {
	var stuck []consistency.Blocker
	for attempt := 1; ; attempt++ {
		if err := ctx.Err(); err != nil {
			return consistency.Snapshot{}, nil, 0, attempt, cancelled(err, t.blocked(stuck, attempt-1))
		}
		if attempt > stubRetries || (attempt > 1 && time.Now().After(deadline)) {
			err := t.blocked(stuck, attempt-1)
			if err == nil {
				err = ErrBlocked
			}
			return consistency.Snapshot{}, nil, 0, attempt - 1, fmt.Errorf("%w; nothing was switched", err)
		}
		var snap consistency.Snapshot
		var keep map[uint64]consistency.Task
		ran := false
		pause, err := t.proc.Paused(func() error {
			var err error
			if snap, err = src.Take(); err != nil {
				return err
			}
			b, in := inStub(rec, snap)
			if stuck = nil; in {
				stuck = []consistency.Blocker{b}
				return nil
			}
			keep, err = sw(snap)
			ran = true
			return err
		})
		if err != nil {
			return snap, nil, pause, attempt, err
		}
		if ran {
			return snap, keep, pause, attempt, nil
		}
		if err := sleep(ctx, time.Millisecond); err != nil {
			return consistency.Snapshot{}, nil, 0, attempt, cancelled(err, t.blocked(stuck, attempt))
		}
	}
}

// startForward switches a prepared patch, target stopped. Every step leaves
// the target consistent if we die after it: entries jump to their stubs
// (whose active table sends everyone to the old code); one word switches to
// a table listing the busy tasks (old code) and sending all others to the
// new; with none busy, the entries then get their direct jumps.
func (t *Target) startForward(rec *Record, old map[uint64]consistency.Task) error {
	if err := t.setState(rec, stateTransition); err != nil {
		return err
	}
	if err := t.entriesTo(rec, stubJump, original); err != nil {
		return err
	}
	if err := t.writeTable(rec, entries(old), true); err != nil {
		return err
	}
	if len(old) > 0 {
		return nil
	}
	if err := t.entriesTo(rec, jump, stubJump); err != nil {
		return err
	}
	return t.setState(rec, stateApplied)
}

// stopBackward reverts an applied patch at once, target stopped and no task
// in the new code or the patch memory: entries to stubs (everyone new), one
// word sends everyone to the old code, then the original bytes.
func (t *Target) stopBackward(rec *Record) error {
	if err := t.setState(rec, stateReverting); err != nil {
		return err
	}
	if err := t.entriesTo(rec, stubJump, jump); err != nil {
		return err
	}
	if err := t.writeTable(rec, nil, false); err != nil {
		return err
	}
	if err := t.entriesTo(rec, original, stubJump); err != nil {
		return err
	}
	return t.setState(rec, stateReverted)
}

// drive runs the short pauses of a transition until no task is pending,
// then finishes it; at the timeout it follows the options. Every return
// reports the state read back from the target. The loop is bounded: by the
// deadline (one last pause after it), by stubRetries pauses in a row that
// find a task inside a dispatch stub, and by ctx.
func (t *Target) drive(ctx context.Context, rec *Record, dir direction, o ApplyOptions, res *Result) (*Result, error) {
	o = o.withDefaults()
	op := map[direction]string{forward: "apply", backward: "revert"}[dir]
	waiting := 0
	fail := func(err error) (*Result, error) {
		if rerr := t.readBack(rec, res, waiting); rerr != nil {
			err = fmt.Errorf("%w; reading the state back failed too: %w", err, rerr)
		}
		return res, &Error{Op: op, Pid: t.pid, ID: rec.ID, Err: err, Hint: stateHint(res)}
	}
	src, err := t.source()
	if err != nil {
		return fail(err)
	}
	deadline := time.Now().Add(o.Timeout)
	regions := transitionRegions(rec, dir)
	var last []consistency.Blocker // what the last pause waited for
	retries := 0
	for {
		timedOut := time.Now().After(deadline)
		wait := o.Interval
		if retries > 0 {
			wait = time.Millisecond
		} else if timedOut {
			wait = 0
		}
		if err := sleep(ctx, wait); err != nil {
			return fail(cancelled(err, t.blocked(last, res.Attempts)))
		}
		pr, err := t.drivePause(src, rec, dir, regions, timedOut && o.Force && dir == forward)
		if err != nil {
			return fail(err)
		}
		if pr.stub != nil {
			// Nothing was switched: pause again, a bounded number of times.
			last, retries = []consistency.Blocker{*pr.stub}, retries+1
			if retries >= stubRetries || timedOut {
				return fail(fmt.Errorf("%w; %d pause(s) in a row found it there, nothing was switched", t.blocked(last, res.Attempts+retries), retries))
			}
			continue
		}
		retries, last, waiting = 0, pr.blockers, pr.waiting()
		res.Attempts++
		res.Forced = append(res.Forced, pr.forced...)
		res.Pending = waiting
		if pr.finished {
			return t.finished(rec, dir, o, res, pr)
		}
		event := "progress"
		if len(pr.forced) > 0 {
			event = "forced"
		}
		t.report(o, rec, event, waiting, pr.moved, pr.pause, pr.snap, pr.keep)
		if !timedOut {
			continue
		}
		t.report(o, rec, "timeout", waiting, 0, 0, pr.snap, pr.keep)
		return t.timedOut(ctx, rec, dir, o, res, t.blocked(last, res.Attempts), waiting)
	}
}

// finished reports a transition that ended, with the state read back.
func (t *Target) finished(rec *Record, dir direction, o ApplyOptions, res *Result, pr pauseResult) (*Result, error) {
	event := map[direction]string{forward: "applied", backward: "reverted"}[dir]
	res.Pause, res.PauseMicros = pr.pause, pr.pause.Microseconds()
	t.report(o, rec, event, 0, pr.moved, pr.pause, pr.snap, nil)
	if err := t.readBack(rec, res, 0); err != nil {
		return res, &Error{Op: map[direction]string{forward: "apply", backward: "revert"}[dir], Pid: t.pid, ID: rec.ID, Err: err}
	}
	return res, nil
}

// timedOut ends a transition that still waits for tasks at its deadline.
// Forward, unless told to stay (or to force, which never gets here), it
// reverts the same way, and reports where that left the target: reverted,
// or still reverting when tasks keep the new code on their stacks.
// Backward, it stays; that is an error unless OnTimeoutStay asked for it.
func (t *Target) timedOut(ctx context.Context, rec *Record, dir direction, o ApplyOptions, res *Result, blocked error, waiting int) (*Result, error) {
	if blocked == nil {
		blocked = ErrBlocked
	}
	if err := t.readBack(rec, res, waiting); err != nil {
		return res, &Error{Op: map[direction]string{forward: "apply", backward: "revert"}[dir], Pid: t.pid, ID: rec.ID, Err: err}
	}
	if dir == forward && o.OnTimeout != OnTimeoutStay {
		rec.State = res.State // what startBackward starts from
		back := o
		back.OnTimeout = OnTimeoutStay // this revert's timeout is reported below
		rr, err := t.gradualRevert(ctx, rec, back)
		if rr == nil {
			rr = &Result{ID: rec.ID, Functions: rec.Functions}
			if rerr := t.readBack(rec, rr, 0); rerr != nil {
				err = fmt.Errorf("%w; reading the state back failed too: %w", err, rerr)
			}
		}
		rr.Forced = res.Forced
		cause := fmt.Errorf("%w; at the timeout a revert the same way began", blocked)
		if err != nil {
			cause = fmt.Errorf("%w; the timeout passed, and the revert that followed failed: %w", blocked, err)
		}
		hint := stateHint(rr)
		if rr.State == StateReverted {
			hint = "the patch was reverted, the original bytes are back (retry with a longer timeout, or stay in transition, or force)"
		}
		return rr, &Error{Op: "apply", Pid: t.pid, ID: rec.ID, Err: cause, Hint: hint}
	}
	if o.OnTimeout == OnTimeoutStay {
		return res, nil
	}
	return res, &Error{Op: "revert", Pid: t.pid, ID: rec.ID, Err: blocked, Hint: stateHint(res)}
}

// pauseResult is what one pause of a transition found and did.
type pauseResult struct {
	snap consistency.Snapshot
	// stub is a task found inside a dispatch stub: nothing was done.
	stub *consistency.Blocker
	// keep are the listed tasks that stay listed, blockers why; when the
	// table is empty, blockers are the tasks the last step waits for.
	keep     map[uint64]consistency.Task
	blockers []consistency.Blocker
	moved    int
	forced   []string
	finished bool
	pause    time.Duration
}

// waiting counts the tasks the transition still waits for.
func (pr pauseResult) waiting() int {
	if len(pr.keep) > 0 {
		return len(pr.keep)
	}
	type task struct {
		kind string
		id   int
	}
	n := map[task]bool{}
	for _, b := range pr.blockers {
		n[task{b.Task.Kind, b.Task.ID}] = true
	}
	return len(n)
}

// drivePause is one pause of a transition: tasks listed in the table whose
// stacks are clean leave it (all of them when forced); with the table
// empty, finish tries the last step.
func (t *Target) drivePause(src consistency.Source, rec *Record, dir direction, regions []consistency.Region, force bool) (pauseResult, error) {
	var pr pauseResult
	var err error
	pr.pause, err = t.proc.Paused(func() error {
		return t.drivePauseStopped(&pr, src, rec, dir, regions, force)
	})
	return pr, err
}

func (t *Target) drivePauseStopped(pr *pauseResult, src consistency.Source, rec *Record, dir direction, regions []consistency.Region, force bool) error {
	var err error
	if pr.snap, err = src.Take(); err != nil {
		return err
	}
	if b, in := inStub(rec, pr.snap); in {
		pr.stub = &b
		return nil
	}
	listed, _, err := t.readTable(rec)
	if err != nil {
		return err
	}
	all := consistency.Check(pr.snap, regions)
	busy := map[uint64]consistency.Task{}
	for _, b := range all {
		if _, ok := busy[b.Task.Key]; !ok && b.Task.Key != 0 {
			busy[b.Task.Key] = b.Task
		}
	}
	pr.keep = map[uint64]consistency.Task{}
	for _, e := range listed {
		if task, ok := busy[e.Key]; ok && !force {
			pr.keep[e.Key] = task
		} else if ok && force {
			pr.forced = append(pr.forced, task.String())
		}
	}
	for _, b := range all {
		if _, ok := pr.keep[b.Task.Key]; ok && b.Task.Key != 0 {
			pr.blockers = append(pr.blockers, b)
		}
	}
	pr.moved = len(listed) - len(pr.keep)
	if len(pr.keep) == 0 {
		if pr.blockers, err = t.finish(rec, dir, pr.snap); err != nil {
			return err
		}
		pr.finished = len(pr.blockers) == 0
		return nil
	}
	if pr.moved > 0 {
		return t.writeTable(rec, entries(pr.keep), dir == forward)
	}
	return nil
}

// finish ends a transition whose table is empty, target stopped. Forward:
// every entry gets its direct jump. Backward: the original bytes come back —
// but only once no task executes in, or will return into, the patch memory
// or the new functions (the caller then unmaps it); until then it returns
// the tasks that do, and the transition goes on waiting for them.
func (t *Target) finish(rec *Record, dir direction, snap consistency.Snapshot) ([]consistency.Blocker, error) {
	if err := t.writeTable(rec, nil, dir == forward); err != nil {
		return nil, err
	}
	if dir == forward {
		if err := t.entriesTo(rec, jump, stubJump); err != nil {
			return nil, err
		}
		step("finalize:jumps")
		return nil, t.setState(rec, stateApplied)
	}
	rs := transitionRegions(rec, backward)
	rs = append(rs, consistency.Region{Name: "patch " + rec.ID + " memory", Start: rec.Region, End: rec.Region + rec.RegionSize})
	if bs := consistency.Check(snap, rs); len(bs) > 0 {
		return bs, nil
	}
	if err := t.entriesTo(rec, original, stubJump); err != nil {
		return nil, err
	}
	return nil, t.setState(rec, stateReverted)
}

// gradualRevert reverts a patch the same way it may have been applied: one
// pause lists the tasks that have new code on their stacks (they keep it),
// everyone else goes back to the old code at once; the listed ones follow
// as their stacks clear. It works from "applied", "transition" (tasks still
// on the old code stay there) and "reverting" (resumes).
func (t *Target) gradualRevert(ctx context.Context, rec *Record, o ApplyOptions) (*Result, error) {
	o = o.withDefaults()
	res := &Result{ID: rec.ID, Functions: rec.Functions}
	fail := func(err error) (*Result, error) {
		if rerr := t.readBack(rec, res, 0); rerr != nil {
			err = fmt.Errorf("%w; reading the state back failed too: %w", err, rerr)
		}
		return res, &Error{Op: "revert", Pid: t.pid, ID: rec.ID, Err: err, Hint: stateHint(res)}
	}
	src, err := t.source()
	if err != nil {
		return fail(err)
	}
	if rec.State != StateReverting {
		snap, newTasks, pause, attempts, err := t.switchPause(ctx, time.Now().Add(o.Timeout), src, rec, func(snap consistency.Snapshot) (map[uint64]consistency.Task, error) {
			return t.startBackward(rec, snap)
		})
		if err != nil {
			return fail(err)
		}
		res.Pause, res.PauseMicros, res.Attempts, res.Pending = pause, pause.Microseconds(), attempts, len(newTasks)
		t.report(o, rec, "reverting", len(newTasks), 0, pause, snap, newTasks)
	}
	res, err = t.drive(ctx, rec, backward, o, res)
	if err != nil || res.State != StateReverted {
		return res, err
	}
	step("revert:restored")
	if err := t.proc.Munmap(rec.Region, rec.RegionSize); err != nil {
		t.log.Warn("could not unmap patch memory", "id", rec.ID, "err", err)
	}
	step("revert:unmapped")
	if err := t.readBack(rec, res, 0); err != nil {
		return res, &Error{Op: "revert", Pid: t.pid, ID: rec.ID, Err: err}
	}
	return res, nil
}

// startBackward starts a backward transition, target stopped. The tasks
// listed are those that run the new code now (not listed in a forward
// table) and have new code on their stacks, or an unreliable stack: they
// keep the new code. Everyone else gets the old code at once; tasks that
// ran the old code keep it.
func (t *Target) startBackward(rec *Record, snap consistency.Snapshot) (map[uint64]consistency.Task, error) {
	onOld := map[uint64]bool{}
	if rec.State == StateTransition {
		es, _, err := t.readTable(rec)
		if err != nil {
			return nil, err
		}
		for _, e := range es {
			onOld[e.Key] = true
		}
	}
	keep := map[uint64]consistency.Task{}
	busy, err := blockedKeys(snap, transitionRegions(rec, backward))
	if err != nil {
		return nil, err
	}
	for k, task := range busy {
		if !onOld[k] {
			keep[k] = task
		}
	}
	if 2*len(keep) > rec.TableCapacity {
		return nil, fmt.Errorf("%d tasks are busy in the new functions, more than the universe table holds (%d)", len(keep), rec.TableCapacity/2)
	}
	if err := t.setState(rec, stateReverting); err != nil {
		return nil, err
	}
	// From "applied" the entries jump to New: to the stubs first, whose
	// table (empty, or the forward one) keeps everyone where they are.
	if rec.State != StateTransition {
		if err := t.writeTable(rec, nil, true); err != nil {
			return nil, err
		}
	}
	if err := t.entriesTo(rec, stubJump, jump); err != nil {
		return nil, err
	}
	if err := t.writeTable(rec, entries(keep), false); err != nil {
		return nil, err
	}
	rec.State = StateReverting
	return keep, nil
}

// Resume drives the transition of patch id (left by a tool that stopped or
// died, or by OnTimeoutStay) to its end: "transition" toward applied,
// "reverting" toward reverted. What a killed tool left without a record
// goes first (see Leftovers).
func (t *Target) Resume(ctx context.Context, id string, o ApplyOptions) (_ *Result, err error) {
	defer t.explain("resume", &err)
	if err := o.check(); err != nil {
		return nil, &Error{Op: "resume", Pid: t.pid, ID: id, Err: err}
	}
	o = o.withDefaults()
	if _, err := t.cleanup(ctx, o, true); err != nil {
		return nil, err
	}
	rec, err := t.record(id)
	if err != nil {
		return nil, &Error{Op: "resume", Pid: t.pid, ID: id, Err: err}
	}
	var res *Result
	switch rec.State {
	case "transition":
		res, err = t.drive(ctx, rec, forward, o, &Result{ID: rec.ID, Functions: rec.Functions, State: StateTransition})
	case "reverting":
		res, err = t.gradualRevert(ctx, rec, o)
	}
	if res != nil || err != nil {
		if err == nil && res.State == StateReverted {
			res.LibLoaded = t.unloadAfterRevert(ctx, rec.Lib, o)
		}
		return res, err
	}
	return nil, &Error{Op: "resume", Pid: t.pid, ID: id, Err: ErrNoTransition,
		Hint: fmt.Sprintf("patch %s is %s, not in a transition; Status lists the patches", id, rec.State)}
}

// record finds a patch by ID ("" picks the one in transition).
func (t *Target) record(id string) (*Record, error) {
	recs, err := t.Status()
	if err != nil {
		return nil, err
	}
	for i := range recs {
		r := &recs[i]
		if r.ID == id || (id == "" && (r.State == StateTransition || r.State == StateReverting)) {
			return r, nil
		}
	}
	if id == "" {
		return nil, ErrNoTransition
	}
	return nil, ErrNotApplied
}

// report calls the Progress callback.
func (t *Target) report(o ApplyOptions, rec *Record, event string, pending, moved int, pause time.Duration, snap consistency.Snapshot, keep map[uint64]consistency.Task) {
	if o.Progress == nil {
		return
	}
	p := Progress{ID: rec.ID, Event: Event(event), Pending: pending, Moved: moved, Pause: pause, PauseMicros: pause.Microseconds()}
	es := entries(keep)
	for i, e := range es {
		if i == 5 {
			break
		}
		r := t.taskReport(keep[e.Key])
		r.In = patchedFrame(rec, keep[e.Key])
		p.Oldest = append(p.Oldest, r)
	}
	o.Progress(p)
}

// taskReport is a task with its symbolized stack.
func (t *Target) taskReport(task consistency.Task) TaskReport {
	var frames []string
	for j, f := range task.Stack.Frames {
		pc := f.PC
		if j > 0 {
			pc--
		}
		frames = append(frames, t.syms.Symbolize(pc))
	}
	return TaskReport{Task: task.String(), Stack: frames}
}

// patchedFrame names the function of rec that task's innermost frame in
// one lies in: an old function or its replacement ("" if none does).
func patchedFrame(rec *Record, task consistency.Task) string {
	for j, f := range task.Stack.Frames {
		pc := f.PC
		if j > 0 {
			pc-- // a return address: the call is before it
		}
		for _, fn := range rec.Functions {
			switch {
			case pc >= fn.OldAddr && pc < fn.OldAddr+fn.OldSize:
				return fn.Old
			case pc >= fn.NewAddr && pc < fn.NewAddr+fn.NewSize:
				return fn.New
			}
		}
	}
	return ""
}

// retryReport reports the refused pauses of stop mode as "retry" events
// (nil without a Progress callback).
func (t *Target) retryReport(o ApplyOptions, id string) func(int, time.Duration, []consistency.Blocker) {
	if o.Progress == nil {
		return nil
	}
	return func(_ int, pause time.Duration, blockers []consistency.Blocker) {
		p := Progress{ID: id, Event: "retry", Pending: len(blockers), Pause: pause, PauseMicros: pause.Microseconds()}
		for i, b := range blockers {
			if i == 5 {
				break
			}
			r := t.taskReport(b.Task)
			r.In = b.Func
			p.Oldest = append(p.Oldest, r)
		}
		o.Progress(p)
	}
}

// faultCountdown, when positive, counts target writes down and panics with
// errInjectedDeath at zero: tests use it to stop the patcher between any two
// writes, as a SIGKILL would.
var faultCountdown int

var errInjectedDeath = fmt.Errorf("injected death of the patcher")

// holdInStub, when set, makes every pause see a task inside a dispatch stub
// (tests: a task stopped there, which no pause can wait out).
var holdInStub bool

// stubRetries bounds the pauses retried in a row because a task was inside
// a dispatch stub.
var stubRetries = 1000

// writeMem writes target memory (every write of this package goes here).
func (t *Target) writeMem(addr uint64, b []byte) error {
	if faultCountdown > 0 {
		faultCountdown--
		if faultCountdown == 0 {
			panic(errInjectedDeath)
		}
	}
	return t.proc.WriteMem(addr, b)
}

// testHookStep, when set (by tests), is called with the name of each
// numbered step of apply, transition, finalize, revert and library loading
// as the tool passes it (see docs/reliability.md), so that a test can kill
// the tool there.
var testHookStep func(step string)

func step(name string) {
	if testHookStep != nil {
		testHookStep(name)
	}
}
