//go:build linux

package patch

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/hotpatch-dev/hotpatch/elfsym"
	"github.com/hotpatch-dev/hotpatch/internal/consistency"
	"github.com/hotpatch-dev/hotpatch/trampoline"
)

// Apply replaces each Old by its New, all or nothing, in a single pause.
//
// It goes through the phases of a patch in turn: it checks the request
// against the records in the target, resolves and plans every replacement
// (planAll), chooses how they switch (applyMode), writes the inert patch
// memory (prepareApply), and switches in one stop-and-check pause
// (stopApply) or a gradual transition.
func (t *Target) Apply(ctx context.Context, reps []Replacement, o ApplyOptions) (_ *Result, applyErr error) {
	defer t.explain("apply", &applyErr)
	if err := t.checkApply(reps, &o); err != nil {
		return nil, err
	}
	records, err := t.Status()
	if err != nil {
		return nil, err
	}
	old1, err := t.superseded(records, o)
	if err != nil {
		return nil, err
	}
	// Refuse a library that cannot run in the target before loading it.
	chk, err := t.newChecker(reps, o)
	if err != nil {
		return nil, err
	}
	// Load the patch library, if any (its pins are checked first).
	id := newID()
	olds, lib, err := t.prepareLib(ctx, id, reps, o)
	if err != nil {
		return nil, err
	}
	if lib != nil {
		defer func() {
			if applyErr != nil {
				// Unless the patch still uses it (a transition left).
				if why := t.unloadAfterRevert(ctx, lib.ref(), o); why != "" {
					t.log.Warn("the patch library of a refused apply stays loaded", "path", lib.path, "why", why)
				}
			}
		}()
	}
	ps, err := t.planAll(reps, olds, lib, chk, livePatches(records, old1), old1, o)
	if err != nil {
		return nil, err
	}
	for _, r := range records {
		if r.State == StateTransition || r.State == StateReverting {
			return nil, t.applyErr("", ErrInTransition, fmt.Sprintf("patch %s is in a gradual %s with %d task(s) pending; finish it (Resume) or revert it first",
				r.ID, r.State, r.Pending))
		}
	}
	mode, disp, err := t.applyMode(ps, old1, o)
	if err != nil {
		return nil, err
	}
	rec, err := t.prepareApply(id, ps, lib, old1, disp)
	if err != nil {
		return nil, err
	}
	src, err := t.source()
	if err != nil {
		t.unmapUnused(rec)
		return nil, t.applyErr("", err, "")
	}
	if mode == ModeGradual {
		return t.gradualApply(ctx, rec, o)
	}
	return t.stopApply(ctx, src, rec, ps, old1, mode, disp != nil, o)
}

// applyErr is the error of an Apply refused for fn (a function's name, or
// "").
func (t *Target) applyErr(fn string, err error, hint string) error {
	return &Error{Op: "apply", Pid: t.pid, Func: fn, Err: err, Hint: hint}
}

// checkApply checks the request itself, and sets the options' defaults.
func (t *Target) checkApply(reps []Replacement, o *ApplyOptions) error {
	if len(reps) == 0 {
		return t.applyErr("", ErrBadRequest, "give at least one OLD=NEW replacement")
	}
	if err := o.check(); err != nil {
		return t.applyErr("", err, "")
	}
	if o.Timeout <= 0 {
		o.Timeout = 5 * time.Second
	}
	return nil
}

// livePatches maps the entry of every function a live patch replaces to
// that patch's ID. Records of patches nothing jumps to are left out:
// leftovers of a patcher that died before its switch or after its revert
// (a live one would hold the process's lock, which we hold), and the patch
// this Apply supersedes (old1).
func livePatches(records []Record, old1 *Record) map[uint64]string {
	patched := map[uint64]string{}
	for _, r := range records {
		if r.State == StateReverted || r.State == StatePrepared || r.State == StateSuperseded || (old1 != nil && r.ID == old1.ID) {
			continue
		}
		for _, f := range r.Functions {
			patched[f.OldAddr] = r.ID
		}
	}
	return patched
}

// planAll resolves every replacement and plans its jump, before the target
// is touched; patched maps the functions live patches replace.
func (t *Target) planAll(reps []Replacement, olds map[string]elfsym.Symbol, lib *loadedLib, chk *checker, patched map[uint64]string, old1 *Record, o ApplyOptions) ([]*planned, error) {
	var ps []*planned
	seen := map[uint64]string{}
	for _, rep := range reps {
		old, nw, err := t.resolve(rep, olds, lib)
		if err != nil {
			return nil, err
		}
		if prev, dup := seen[old.Addr]; dup {
			return nil, t.applyErr(rep.Old, ErrBadRequest, fmt.Sprintf("replaced twice in one patch (also as %s)", prev))
		}
		seen[old.Addr] = rep.Old
		if id, ok := patched[old.Addr]; ok {
			return nil, t.applyErr(rep.Old, ErrAlreadyApplied, fmt.Sprintf("patch %s already replaces it; revert it first", id))
		}
		p, err := t.plan(rep, old, nw, chk, old1, o)
		if err != nil {
			return nil, err
		}
		ps = append(ps, p)
	}
	return ps, nil
}

// resolve finds a replacement's two functions (the new one in the patch
// library, when there is one).
func (t *Target) resolve(rep Replacement, olds map[string]elfsym.Symbol, lib *loadedLib) (old, nw elfsym.Symbol, err error) {
	if rep.Old == "" || rep.New == "" {
		return old, nw, t.applyErr(rep.Old, ErrBadRequest, "a replacement is OLD=NEW with both names")
	}
	old, err = t.lookupOld(rep.Old, olds)
	if old, err = t.atAddr(rep.Old, rep.oldAddr, old, err); err != nil {
		return old, nw, t.applyErr(rep.Old, err, "")
	}
	nw, err = t.lookupNew(rep.New, lib)
	if nw, err = t.atAddr(rep.New, rep.newAddr, nw, err); err != nil {
		return old, nw, t.applyErr(rep.New, err, "")
	}
	if err := checkAddrs(rep, old, nw); err != nil {
		return old, nw, t.applyErr(rep.Old, err, "")
	}
	if old.Addr == nw.Addr {
		return old, nw, t.applyErr(rep.Old, ErrBadRequest, fmt.Sprintf("%s and %s are the same function", rep.Old, rep.New))
	}
	return old, nw, nil
}

// plan checks that old can be replaced by nw (inlining, the checker's
// rules, its live bytes) and plans the jump over its entry.
func (t *Target) plan(rep Replacement, old, nw elfsym.Symbol, chk *checker, old1 *Record, o ApplyOptions) (*planned, error) {
	sites, err := t.syms.InlineSites(old)
	if err != nil {
		return nil, t.applyErr(rep.Old, err, "the inlining information could not be read; without it the patch cannot be shown complete")
	}
	if len(sites) > 0 && !o.AllowInlined {
		return nil, t.applyErr(rep.Old, &InlinedError{Func: rep.Old, Sites: sites}, "")
	}
	if err := chk.check(rep, old, nw, len(sites) > 0); err != nil {
		return nil, t.applyErr(rep.Old, err, "")
	}
	p := &planned{rep: rep, old: old, new: nw, inlined: sites, superseded: old1.function(old.Addr)}
	if err := t.readCode(p); err != nil {
		return nil, t.applyErr(rep.Old, err, "")
	}
	if _, err := t.arch.Plan(p.fn(), nw.Addr, old.Addr); err != nil {
		return nil, t.applyErr(rep.Old, err, "")
	}
	return p, nil
}

// applyMode chooses how the patch switches: its mode (ModeStop unless
// asked), and the dispatcher of its stubs, or nil for plain jumps — for C
// code (a universe is a goroutine's), a supersede (one pause of plain
// jumps: the old patch's entries become the new one's directly, see
// supersede.go), or an architecture without stubs.
func (t *Target) applyMode(ps []*planned, old1 *Record, o ApplyOptions) (Mode, trampoline.Dispatcher, error) {
	mode := o.Mode
	if mode == "" {
		mode = ModeStop
	}
	disp, canDispatch := t.arch.(trampoline.Dispatcher)
	if fn := t.notGo(ps); fn != "" {
		if mode == ModeGradual {
			return mode, nil, t.applyErr(fn, ErrGradualNotGo, "")
		}
		// Plain jumps, in one stop-and-check pause (auto mode too).
		canDispatch = false
	}
	if old1 != nil {
		canDispatch = false
	}
	if !canDispatch {
		if mode == ModeGradual {
			return mode, nil, t.applyErr("", trampoline.ErrUnsupportedArch, "gradual transitions need dispatch stubs, not built for this architecture yet; use stop mode")
		}
		return mode, nil, nil
	}
	return mode, disp, nil
}

// applyLayout places a patch's parts in its region (offsets from its
// start): the record, one thunk slot per function, the closure entries
// and originals, the dispatch stubs, then the universe tables' control
// word and the two tables it switches between.
type applyLayout struct {
	slot, thunkOff, entryOff, origOff, stubOff, stubSlot, tableOff, size uint64
	capacity                                                             int // of each table, 0 without stubs
	key                                                                  trampoline.TaskKey
}

func (t *Target) layoutApply(ps []*planned, lib *loadedLib, disp trampoline.Dispatcher) applyLayout {
	n := uint64(len(ps))
	l := applyLayout{key: trampoline.KeyThread}
	l.slot = roundUp(uint64(t.arch.MaxThunkSize()), thunkSlotAlign)
	recordRoom := 2048 + 1024*n
	if lib != nil {
		recordRoom += uint64(2*(len(lib.path)+len(lib.name)) + 128) // rec.Lib
	}
	l.thunkOff = roundUp(recordHdrSize+recordRoom, pageSize)
	l.entryOff = l.thunkOff + l.slot*n                        // closure entries
	l.origOff = l.entryOff + trampoline.GoOriginalEntrySize*n // originals
	l.stubOff = l.origOff + trampoline.GoOriginalMaxSize*n
	l.tableOff = roundUp(l.stubOff, pageSize)
	if disp != nil {
		l.stubSlot = roundUp(uint64(disp.MaxStubSize()), thunkSlotAlign)
		l.tableOff = roundUp(l.stubOff+l.stubSlot*n, pageSize)
		// Room for every task there is now, twice over, plus new ones.
		l.capacity = trampoline.TableCapacity(2*t.taskEstimate() + 64)
		if src, err := t.source(); err == nil && src.Go != nil {
			l.key = trampoline.KeyG
		}
	}
	l.size = roundUp(l.tableOff+tableCtlSize+2*uint64(trampoline.TableSize(l.capacity)), pageSize)
	return l
}

// prepareApply maps patch memory near the code and writes the record (state
// prepared), the thunks, the dispatch stubs and an empty universe table. It
// is inert: nothing jumps there yet. On error nothing is left mapped.
func (t *Target) prepareApply(id string, ps []*planned, lib *loadedLib, old1 *Record, disp trampoline.Dispatcher) (*Record, error) {
	l := t.layoutApply(ps, lib, disp)
	region, err := t.mapNear(ps[0].old.Addr, l.size)
	if err != nil {
		return nil, t.applyErr(ps[0].rep.Old, err, "")
	}
	step("apply:mapped")
	rec := &Record{ID: id, Created: time.Now().UTC().Truncate(time.Second), Region: region, RegionSize: l.size, Supersedes: old1.id()}
	if lib != nil {
		rec.Lib = lib.ref()
	}
	if disp != nil {
		rec.Table, rec.TableCapacity = region+l.tableOff, l.capacity
		rec.TaskKey = map[trampoline.TaskKey]string{trampoline.KeyG: "g", trampoline.KeyThread: "thread"}[l.key]
	}
	img := &applyImage{t: t, l: l, rec: rec, disp: disp,
		// The tables' pages stay untouched (zero) but for the control
		// word and the first table's header.
		image: make([]byte, l.tableOff+tableCtlSize+trampoline.TableHeaderSize)}
	for i, p := range ps {
		if hint, err := img.add(i, p); err != nil {
			t.unmapUnused(rec)
			return nil, t.applyErr(p.rep.Old, err, hint)
		}
	}
	if err := img.write(); err != nil {
		t.unmapUnused(rec)
		return nil, t.applyErr("", err, "")
	}
	step("apply:record-written")
	return rec, nil
}

// applyImage builds the bytes of a patch's region, and its record's
// functions.
type applyImage struct {
	t         *Target
	l         applyLayout
	rec       *Record
	disp      trampoline.Dispatcher
	image     []byte
	origSlots [][2]uint64 // {slot, original's entry}
}

// add lays out function i: its thunk, closure entry and original, and
// dispatch stub. An error may come with a hint for its *Error.
func (b *applyImage) add(i int, p *planned) (hint string, err error) {
	t, l, region := b.t, b.l, b.rec.Region
	thunk := region + l.thunkOff + uint64(i)*l.slot
	entry := p.new.Addr
	if p.rep.closure != 0 {
		entry = region + l.entryOff + uint64(i)*trampoline.GoOriginalEntrySize
	}
	plan, err := t.arch.Plan(p.fn(), entry, thunk)
	if err != nil {
		return "", err
	}
	if p.rep.closure != 0 {
		orig := region + l.origOff + uint64(i)*trampoline.GoOriginalMaxSize
		code, origCode, origAddr, err := t.closureEntry(p, plan, entry, orig, thunk)
		if err != nil {
			return "", err
		}
		copy(b.image[entry-region:], code)
		copy(b.image[orig-region:], origCode)
		if origAddr != 0 {
			b.origSlots = append(b.origSlots, [2]uint64{p.rep.originalSlot, origAddr})
		}
	}
	p.plan = plan
	copy(b.image[thunk-region:], plan.Thunk)
	f := Function{
		Old: p.rep.Old, OldAddr: p.old.Addr, OldSize: p.old.Size, New: p.rep.New, NewAddr: p.new.Addr, NewSize: p.new.Size,
		Module: p.old.Module.Path, BuildID: p.old.Module.BuildID,
		PatchAddr: plan.Addr, Original: plan.Original, Jump: plan.Jump, ThunkAddr: thunk,
		InlinedInto: inlineCallers(p.inlined),
	}
	if p.superseded != nil {
		if f.Superseded, err = p.supersededBytes(); err != nil {
			return "", err
		}
	}
	if b.disp != nil {
		at := region + l.stubOff + uint64(i)*l.stubSlot
		stub, err := b.disp.Stub(l.key, at, b.rec.Table, thunk, entry)
		if err != nil {
			return "", err
		}
		copy(b.image[at-region:], stub.Code)
		f.StubAddr, f.StubSize = at, uint64(len(stub.Code))
		f.StubJump = padJump(t.tarch, t.arch.Jump(plan.Addr, at), len(plan.Original))
		if f.StubJump == nil {
			return "the jump to the dispatch stub does not fit", trampoline.ErrTooShort
		}
	}
	b.rec.Functions = append(b.rec.Functions, f)
	return "", nil
}

// write adds the record (state prepared) and, with stubs, the active
// table (the first, empty: everyone on the old code), and writes the image
// and the originals' slots to the target.
func (b *applyImage) write() error {
	l := b.l
	if b.disp != nil {
		tbl, err := trampoline.BuildTable(nil, l.capacity, false)
		if err != nil {
			return err
		}
		binary.LittleEndian.PutUint64(b.image[l.tableOff:], tableAddr(b.rec, 0))
		copy(b.image[l.tableOff+tableCtlSize:], tbl[:trampoline.TableHeaderSize])
	}
	hdr, err := encodeRecord(b.rec, statePrepared)
	if err != nil {
		return err
	}
	if uint64(len(hdr)) > l.thunkOff {
		return fmt.Errorf("record of %d bytes does not fit its %d-byte area", len(hdr), l.thunkOff)
	}
	copy(b.image, hdr)
	if err := b.t.writeMem(b.rec.Region, b.image); err != nil {
		return err
	}
	for _, o := range b.origSlots {
		if err := b.t.writeMem(o[0], binary.LittleEndian.AppendUint64(nil, o[1])); err != nil {
			return err
		}
	}
	return nil
}

// applyRegions are the code a stop-mode apply must find no task in: each
// function and its jump's bytes, and what a superseded patch leads to.
func applyRegions(ps []*planned, old1 *Record) []consistency.Region {
	var regions []consistency.Region
	for _, p := range ps {
		end := p.old.Addr + p.old.Size
		if e := p.plan.Addr + uint64(len(p.plan.Jump)); e > end {
			end = e
		}
		regions = append(regions, consistency.Region{Name: p.rep.Old, Start: p.old.Addr, End: end})
	}
	return append(regions, supersedeRegions(old1, ps)...)
}

// stopApply switches the prepared patch in one stop-and-check pause: stop,
// check, verify, write, resume. In auto mode, a few quick tries; then the
// tasks that stay get their universe (a gradual transition).
func (t *Target) stopApply(ctx context.Context, src consistency.Source, rec *Record, ps []*planned, old1 *Record, mode Mode, dispatch bool, o ApplyOptions) (*Result, error) {
	pol := consistency.Policy{Timeout: o.Timeout, Retry: t.retryReport(o, rec.ID)}
	if mode == ModeAuto && dispatch {
		pol.Timeout = min(o.Timeout, autoStopTries)
	}
	release := t.hold(src)
	res, err := consistency.StopAndCheck(ctx, src, applyRegions(ps, old1), pol, t.syms.Symbolize,
		func(consistency.Snapshot) error {
			step("apply:paused")
			return t.switchApply(rec, ps, old1, dispatch)
		})
	release()
	if mode == ModeAuto && errors.Is(err, consistency.ErrBlocked) && dispatch && ctx.Err() == nil {
		t.log.Debug("stop-and-check blocked; switching to a gradual transition", "id", rec.ID)
		return t.gradualApply(ctx, rec, o)
	}
	if err != nil {
		t.unmapUnused(rec)
		var fn string
		var be *consistency.BlockedError
		if errors.As(err, &be) && len(be.Blockers) > 0 {
			fn = be.Blockers[0].Func
		}
		return nil, t.applyErr(fn, err, "")
	}
	out := &Result{ID: rec.ID, Functions: rec.Functions, Pause: res.Pause, PauseMicros: res.Pause.Microseconds(), Attempts: res.Attempts, State: StateApplied}
	if old1 != nil {
		t.dropSuperseded(old1)
		out.Superseded = old1.ID
		// The superseded patch's library, which nothing leads to any more.
		out.LibLoaded = t.unloadAfterRevert(ctx, old1.Lib, o)
	}
	step("apply:done")
	t.log.Debug("applied", "id", rec.ID, "pause", res.Pause, "attempts", res.Attempts, "superseded", out.Superseded)
	return out, nil
}

// switchApply makes the switch, the target stopped: through the stubs, so
// that a set switches with one write of the table whatever happens to us
// meanwhile; one function, with one write of its jump (no stub needed,
// and four fewer system calls in the pause); a supersede, by rewriting the
// old patch's jumps.
func (t *Target) switchApply(rec *Record, ps []*planned, old1 *Record, dispatch bool) error {
	if dispatch && len(ps) > 1 {
		return t.startForward(rec, nil)
	}
	if old1 != nil {
		return t.supersedeSwitch(rec, old1, ps)
	}
	var writes []write
	for _, p := range ps {
		writes = append(writes, write{name: p.rep.Old, addr: p.plan.Addr, old: p.plan.Original, new: p.plan.Jump})
	}
	return t.writeAll(rec.Region, writes, stateApplied)
}
