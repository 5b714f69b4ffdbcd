package patch

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"sort"
	"time"

	"github.com/hotpatch-dev/hotpatch/consistency"
	"github.com/hotpatch-dev/hotpatch/trampoline"
)

// Modes of Apply (ApplyOptions.Mode).
const (
	ModeStop    = "stop"
	ModeGradual = "gradual"
	ModeAuto    = "auto"
)

// What a gradual transition does at its timeout (ApplyOptions.OnTimeout).
const (
	OnTimeoutRevert = "revert"
	OnTimeoutStay   = "stay"
)

// autoStopTries bounds the stop-and-check attempts of ModeAuto.
const autoStopTries = 50 * time.Millisecond

// Progress reports one pause of a gradual transition.
type Progress struct {
	ID string `json:"id"`
	// Event is "transition" (the first pause: universes assigned),
	// "progress", "forced", "applied", "reverting", "reverted" or "timeout".
	Event string `json:"event"`
	// Pending is the number of tasks the transition still waits for.
	Pending int `json:"pending"`
	// Moved is the number of tasks this pause moved to their new universe.
	Moved       int           `json:"moved"`
	Pause       time.Duration `json:"-"`
	PauseMicros int64         `json:"pause_us"`
	// Oldest lists up to five pending tasks with their stacks.
	Oldest []TaskReport `json:"oldest,omitempty"`
}

// TaskReport is a task and its symbolized stack, for progress reports.
type TaskReport struct {
	Task  string   `json:"task"`
	Stack []string `json:"stack"`
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
// the table up already, so no table or target may change under it.
func inStub(rec *Record, s consistency.Snapshot) bool {
	for _, task := range s.Tasks {
		if len(task.Stack.Frames) == 0 {
			continue
		}
		pc := task.Stack.Frames[0].PC
		for _, f := range rec.Functions {
			if f.StubAddr != 0 && pc >= f.StubAddr && pc < f.StubAddr+f.StubSize {
				return true
			}
		}
	}
	return false
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
	var w [8]byte
	if _, err := t.proc.ReadAt(w[:], int64(rec.Table)); err != nil {
		return nil, false, err
	}
	active := binary.LittleEndian.Uint64(w[:])
	if active != tableAddr(rec, 0) && active != tableAddr(rec, 1) {
		return nil, false, fmt.Errorf("patch %s: universe control word %#x points at no table", rec.ID, active)
	}
	b := make([]byte, trampoline.TableSize(rec.TableCapacity))
	if _, err := t.proc.ReadAt(b, int64(active)); err != nil {
		return nil, false, err
	}
	return trampoline.ParseTable(b)
}

// writeTable makes a table with these entries and Sel active: it fills the
// inactive table, then switches the control word with one 8-byte write. Only
// the slots that change are written (an empty table over an empty one is
// its header alone), so a stop-mode switch stays cheap however large the
// tables were sized.
func (t *Target) writeTable(rec *Record, es []trampoline.TableEntry, unlistedNew bool) error {
	b, err := trampoline.BuildTable(es, rec.TableCapacity, unlistedNew)
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
	// The byte range of slots used by the new table or the old content.
	lo, hi := len(b), 0
	mark := func(buf []byte) {
		for off := trampoline.TableHeaderSize; off+trampoline.TableSlotSize <= len(buf); off += trampoline.TableSlotSize {
			if binary.LittleEndian.Uint64(buf[off:]) != 0 {
				lo, hi = min(lo, off), max(hi, off+trampoline.TableSlotSize)
			}
		}
	}
	mark(b)
	var hdr [trampoline.TableHeaderSize]byte
	if _, err := t.proc.ReadAt(hdr[:], int64(next)); err != nil {
		return err
	}
	if binary.LittleEndian.Uint64(hdr[8:]) != 0 {
		old := make([]byte, len(b))
		if _, err := t.proc.ReadAt(old, int64(next)); err != nil {
			return err
		}
		mark(old)
	}
	if hi > lo {
		// Mark the buffer dirty first (a non-zero count makes the next
		// writer read it whole), so a death amid the slots leaves no
		// stale key behind a header that says "empty".
		dirty := [8]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
		if err := t.writeMem(next+8, dirty[:]); err != nil {
			return err
		}
		if err := t.writeMem(next+uint64(lo), b[lo:hi]); err != nil {
			return err
		}
	}
	if err := t.writeMem(next, b[:trampoline.TableHeaderSize]); err != nil {
		return err
	}
	binary.LittleEndian.PutUint64(w[:], next)
	return t.writeMem(rec.Table, w[:])
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
	for _, w := range ws {
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
	return t.writeMem(rec.Region+stateOffset, st[:])
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
	snap, old, pause, attempts, err := t.switchPause(ctx, src, rec, func(snap consistency.Snapshot) (map[uint64]consistency.Task, error) {
		old, err := blockedKeys(snap, transitionRegions(rec, forward))
		if err != nil {
			return nil, err
		}
		if 2*len(old) > rec.TableCapacity {
			return nil, fmt.Errorf("%d tasks are busy in the functions, more than the universe table holds (%d)", len(old), rec.TableCapacity/2)
		}
		return old, t.startForward(rec, old)
	})
	if err != nil {
		return fail(err)
	}
	res := Result{ID: rec.ID, Functions: rec.Functions, Pause: pause, PauseMicros: pause.Microseconds(), Attempts: attempts, State: "transition", Pending: len(old)}
	t.report(o, rec, "transition", len(old), 0, pause, snap, old)
	if res.Pending == 0 {
		// Nothing was busy: the first pause already wrote direct jumps.
		res.State = "applied"
		t.report(o, rec, "applied", 0, 0, res.Pause, consistency.Snapshot{}, nil)
		return &res, nil
	}
	return t.drive(ctx, rec, forward, o, &res)
}

// unmapUnused unmaps the memory of a patch after a failed apply, but only
// when every entry still holds its original bytes: otherwise something
// jumps there, and the record stays for status and revert.
func (t *Target) unmapUnused(rec *Record) {
	for _, f := range rec.Functions {
		live := make([]byte, len(f.Original))
		if _, err := t.proc.ReadAt(live, int64(f.PatchAddr)); err != nil || !bytes.Equal(live, f.Original) {
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
// makes it fail after a thousand pauses).
func (t *Target) switchPause(ctx context.Context, src consistency.Source, rec *Record, sw func(consistency.Snapshot) (map[uint64]consistency.Task, error)) (consistency.Snapshot, map[uint64]consistency.Task, time.Duration, int, error) {
	for attempt := 1; attempt <= 1000; attempt++ {
		if err := ctx.Err(); err != nil {
			return consistency.Snapshot{}, nil, 0, attempt, err
		}
		start := time.Now()
		if err := t.proc.Stop(); err != nil {
			return consistency.Snapshot{}, nil, 0, attempt, err
		}
		snap, err := src.Take()
		var keep map[uint64]consistency.Task
		ran := false
		if err == nil && !inStub(rec, snap) {
			keep, err = sw(snap)
			ran = true
		}
		rerr := t.proc.Resume()
		pause := time.Since(start)
		if err != nil || rerr != nil {
			return snap, nil, pause, attempt, joinErr(err, rerr)
		}
		if ran {
			return snap, keep, pause, attempt, nil
		}
		time.Sleep(time.Millisecond)
	}
	return consistency.Snapshot{}, nil, 0, 1000, fmt.Errorf("a task stayed inside a dispatch stub of patch %s for 1000 pauses (is it stopped?); nothing was switched", rec.ID)
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
// then finishes it; at the timeout it follows the options.
func (t *Target) drive(ctx context.Context, rec *Record, dir direction, o ApplyOptions, res *Result) (*Result, error) {
	op := "apply"
	if dir == backward {
		op = "revert"
	}
	fail := func(err error) (*Result, error) {
		return res, &Error{Op: op, Pid: t.pid, ID: rec.ID, Err: err}
	}
	if o.Timeout <= 0 {
		o.Timeout = 5 * time.Second
	}
	interval := o.Interval
	if interval <= 0 {
		interval = 20 * time.Millisecond
	}
	src, err := t.source()
	if err != nil {
		return fail(err)
	}
	deadline := time.Now().Add(o.Timeout)
	regions := transitionRegions(rec, dir)
	for {
		timedOut := time.Now().After(deadline)
		force := timedOut && o.Force && dir == forward
		if !timedOut {
			select {
			case <-ctx.Done():
				return fail(fmt.Errorf("%w; the target stays in transition, consistent (hotpatch apply --resume or revert continue it)", ctx.Err()))
			case <-time.After(interval):
			}
		}
		start := time.Now()
		if err := t.proc.Stop(); err != nil {
			return fail(err)
		}
		var (
			pending  []trampoline.TableEntry
			moved    int
			finished bool
			snap     consistency.Snapshot
			keep     map[uint64]consistency.Task
		)
		err := func() error {
			var err error
			if snap, err = src.Take(); err != nil {
				return err
			}
			if inStub(rec, snap) {
				return errRetry
			}
			listed, _, err := t.readTable(rec)
			if err != nil {
				return err
			}
			busy, err := blockedKeys(snap, regions)
			if err != nil {
				return err
			}
			keep = map[uint64]consistency.Task{}
			for _, e := range listed {
				if task, ok := busy[e.Key]; ok && !force {
					keep[e.Key] = task
				} else if ok && force {
					res.Forced = append(res.Forced, task.String())
				}
			}
			moved = len(listed) - len(keep)
			pending = entries(keep)
			if len(keep) == 0 {
				finished, err = t.finish(rec, dir, snap)
				return err
			}
			if moved > 0 {
				return t.writeTable(rec, pending, dir == forward)
			}
			return nil
		}()
		rerr := t.proc.Resume()
		pause := time.Since(start)
		if err == errRetry {
			continue
		}
		if err != nil || rerr != nil {
			return fail(joinErr(err, rerr))
		}
		res.Attempts++
		res.Pending = len(pending)
		event := "progress"
		if force && len(res.Forced) > 0 {
			event = "forced"
		}
		if finished {
			event = "applied"
			res.State = "applied"
			if dir == backward {
				event, res.State = "reverted", "reverted"
			}
			res.Pause, res.PauseMicros = pause, pause.Microseconds()
			t.report(o, rec, event, 0, moved, pause, snap, nil)
			return res, nil
		}
		t.report(o, rec, event, len(pending), moved, pause, snap, keep)
		if !timedOut {
			continue
		}
		// Timed out with tasks pending.
		t.report(o, rec, "timeout", len(pending), 0, 0, snap, keep)
		if dir == forward && o.OnTimeout != OnTimeoutStay && !o.Force {
			rr, err := t.gradualRevert(ctx, rec, o)
			if err != nil {
				return rr, err
			}
			return rr, &Error{Op: "apply", Pid: t.pid, ID: rec.ID, Err: ErrBlocked,
				Hint: fmt.Sprintf("%d task(s) kept old code on their stacks until the timeout; the patch was reverted, the original bytes are back (raise --timeout, use --on-timeout stay, or --force)", len(pending))}
		}
		if dir == forward && o.Force {
			continue // the next pause forces
		}
		res.State = map[direction]string{forward: "transition", backward: "reverting"}[dir]
		return res, nil
	}
}

// errRetry: a task was inside a stub; pause again.
var errRetry = fmt.Errorf("retry")

// finish ends a transition whose table is empty, target stopped. Forward:
// every entry gets its direct jump. Backward: the original bytes come back —
// but only once no task executes in, or will return into, the patch memory
// or the new functions (the caller then unmaps it); until then it reports
// not finished.
func (t *Target) finish(rec *Record, dir direction, snap consistency.Snapshot) (bool, error) {
	if err := t.writeTable(rec, nil, dir == forward); err != nil {
		return false, err
	}
	if dir == forward {
		if err := t.entriesTo(rec, jump, stubJump); err != nil {
			return false, err
		}
		return true, t.setState(rec, stateApplied)
	}
	rs := transitionRegions(rec, backward)
	rs = append(rs, consistency.Region{Name: "patch " + rec.ID + " memory", Start: rec.Region, End: rec.Region + rec.RegionSize})
	if len(consistency.Check(snap, rs)) > 0 {
		return false, nil
	}
	if err := t.entriesTo(rec, original, stubJump); err != nil {
		return false, err
	}
	return true, t.setState(rec, stateReverted)
}

// gradualRevert reverts a patch the same way it may have been applied: one
// pause lists the tasks that have new code on their stacks (they keep it),
// everyone else goes back to the old code at once; the listed ones follow
// as their stacks clear. It works from "applied", "transition" (tasks still
// on the old code stay there) and "reverting" (resumes).
func (t *Target) gradualRevert(ctx context.Context, rec *Record, o ApplyOptions) (*Result, error) {
	fail := func(err error) (*Result, error) {
		return nil, &Error{Op: "revert", Pid: t.pid, ID: rec.ID, Err: err}
	}
	src, err := t.source()
	if err != nil {
		return fail(err)
	}
	res := &Result{ID: rec.ID, Functions: rec.Functions, State: "reverting"}
	if rec.State != "reverting" {
		snap, newTasks, pause, attempts, err := t.switchPause(ctx, src, rec, func(snap consistency.Snapshot) (map[uint64]consistency.Task, error) {
			return t.startBackward(rec, snap)
		})
		if err != nil {
			return fail(err)
		}
		res.Pause, res.PauseMicros, res.Attempts, res.Pending = pause, pause.Microseconds(), attempts, len(newTasks)
		t.report(o, rec, "reverting", len(newTasks), 0, pause, snap, newTasks)
	}
	res, err = t.drive(ctx, rec, backward, o, res)
	if err != nil {
		return res, err
	}
	if res.State == "reverted" {
		if err := t.proc.Munmap(rec.Region, rec.RegionSize); err != nil {
			t.log.Warn("could not unmap patch memory", "id", rec.ID, "err", err)
		}
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
	if rec.State == "transition" {
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
	if rec.State != "transition" {
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
	rec.State = "reverting"
	return keep, nil
}

// Resume drives the transition of patch id (left by a tool that stopped or
// died, or by OnTimeoutStay) to its end: "transition" toward applied,
// "reverting" toward reverted.
func (t *Target) Resume(ctx context.Context, id string, o ApplyOptions) (*Result, error) {
	rec, err := t.record(id)
	if err != nil {
		return nil, &Error{Op: "resume", Pid: t.pid, ID: id, Err: err}
	}
	switch rec.State {
	case "transition":
		res := &Result{ID: rec.ID, Functions: rec.Functions, State: "transition"}
		return t.drive(ctx, rec, forward, o, res)
	case "reverting":
		return t.gradualRevert(ctx, rec, o)
	}
	return nil, &Error{Op: "resume", Pid: t.pid, ID: id, Err: ErrNoTransition,
		Hint: fmt.Sprintf("patch %s is %s; hotpatch status --pid %d lists the patches", id, rec.State, t.pid)}
}

// record finds a patch by ID ("" picks the one in transition).
func (t *Target) record(id string) (*Record, error) {
	recs, err := t.Status()
	if err != nil {
		return nil, err
	}
	for i := range recs {
		r := &recs[i]
		if r.ID == id || (id == "" && (r.State == "transition" || r.State == "reverting")) {
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
	p := Progress{ID: rec.ID, Event: event, Pending: pending, Moved: moved, Pause: pause, PauseMicros: pause.Microseconds()}
	es := entries(keep)
	for i, e := range es {
		if i == 5 {
			break
		}
		task := keep[e.Key]
		var frames []string
		for j, f := range task.Stack.Frames {
			pc := f.PC
			if j > 0 {
				pc--
			}
			frames = append(frames, t.syms.Symbolize(pc))
		}
		p.Oldest = append(p.Oldest, TaskReport{Task: task.String(), Stack: frames})
	}
	o.Progress(p)
}

func joinErr(a, b error) error {
	switch {
	case a == nil:
		return b
	case b == nil:
		return a
	}
	return fmt.Errorf("%w (and: %v)", a, b)
}

// faultCountdown, when positive, counts target writes down and panics with
// errInjectedDeath at zero: tests use it to stop the patcher between any two
// writes, as a SIGKILL would.
var faultCountdown int

var errInjectedDeath = fmt.Errorf("injected death of the patcher")

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
