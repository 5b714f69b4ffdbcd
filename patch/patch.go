// Package patch replaces functions inside a running process and puts them
// back. Attach to a process, Apply a set of replacements (each an existing
// function of the target redirected to another function of the target), and
// Revert it, from this process or from any later one: the target itself
// holds the record of what is applied.
//
// An Apply resolves every name, plans every jump and relocated prologue, and
// maps and fills the patch memory before it stops the target; then it stops
// every thread once, proves that no thread is executing in (or will return
// into) a function being replaced, verifies the bytes it will overwrite,
// writes the jumps and resumes. Any refusal leaves the target as it was.
package patch

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"time"

	"github.com/hotpatch-dev/hotpatch/consistency"
	"github.com/hotpatch-dev/hotpatch/elfsym"
	"github.com/hotpatch-dev/hotpatch/internal/tracee"
	"github.com/hotpatch-dev/hotpatch/internal/unwind"
	"github.com/hotpatch-dev/hotpatch/trampoline"
)

// Options configure a Target. The zero value is usable.
type Options struct {
	// Logger receives progress at debug level (nil: discard).
	Logger *slog.Logger
}

// Target is a process attached for patching.
type Target struct {
	pid  int
	proc *tracee.Process
	syms *elfsym.Table
	arch trampoline.Arch
	unw  *unwind.Unwinder
	log  *slog.Logger
}

// Attach opens process pid for patching: it checks that we may trace it and
// loads its symbols. It does not stop the process.
func Attach(pid int, opts *Options) (*Target, error) {
	if opts == nil {
		opts = &Options{}
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if pid <= 0 {
		return nil, &Error{Op: "attach", Pid: pid, Err: ErrBadRequest, Hint: "give the PID of a running process"}
	}
	proc, err := tracee.Open(pid)
	if err != nil {
		return nil, &Error{Op: "attach", Pid: pid, Err: err}
	}
	syms, err := elfsym.Load(pid, proc)
	if err != nil {
		proc.Close()
		return nil, &Error{Op: "attach", Pid: pid, Err: err}
	}
	if len(syms.Modules) == 0 {
		proc.Close()
		return nil, &Error{Op: "attach", Pid: pid, Err: ErrNoProcess, Hint: "the process has no mapped executable (a zombie or kernel thread?)"}
	}
	arch, err := trampoline.ForMachine(syms.Modules[0].Machine)
	if err != nil {
		proc.Close()
		return nil, &Error{Op: "attach", Pid: pid, Err: err}
	}
	unw := syms.Unwinder()
	if err := unw.Prepare(); err != nil {
		// Not fatal: stacks through such a module are unreliable and block.
		log.Warn("unwind tables", "err", err)
	}
	return &Target{pid: pid, proc: proc, syms: syms, arch: arch, unw: unw, log: log}, nil
}

// Close releases the target (it never leaves it stopped).
func (t *Target) Close() error { return t.proc.Close() }

// Pid returns the target's process ID.
func (t *Target) Pid() int { return t.pid }

// Symbols returns the target's symbol table.
func (t *Target) Symbols() *elfsym.Table { return t.syms }

// Replacement redirects the function Old to the function New; both are
// names in the target ("MODULE:NAME" selects a module).
type Replacement struct {
	Old, New string
}

// ApplyOptions tune Apply.
type ApplyOptions struct {
	// Timeout bounds how long Apply retries while threads are inside the
	// functions (default 5s).
	Timeout time.Duration
	// Lib is a shared object holding the replacement functions (C
	// targets). Apply loads it into the target with a remote dlopen before
	// the pause, then resolves each New in it first, then in the whole
	// target; the replacement may call any function the target exports.
	// The library must be pinned with HOTPATCH_PIN (patch/include/hotpatch.h)
	// to the build ID of each module holding an Old, unless Unpinned is set.
	// If the Apply is refused the library is unloaded (dlclose); after a
	// successful Apply it stays loaded, also after Revert.
	Lib string
	// Unpinned accepts a Lib that declares no HOTPATCH_PIN.
	Unpinned bool
}

// Result is a successful Apply or Revert.
type Result struct {
	ID        string     `json:"id"`
	Functions []Function `json:"functions"`
	// Pause is how long the target was stopped by the successful attempt.
	Pause time.Duration `json:"-"`
	// PauseMicros is Pause in microseconds.
	PauseMicros int64 `json:"pause_us"`
	// Attempts counts the stops, including those refused because a thread
	// was inside a function.
	Attempts int `json:"attempts"`
}

// planned is one function of an Apply being prepared.
type planned struct {
	rep      Replacement
	old, new elfsym.Symbol
	code     []byte // live bytes: the function then its padding
	plan     *trampoline.Plan
}

// Apply replaces each Old by its New, all or nothing, in a single pause.
func (t *Target) Apply(ctx context.Context, reps []Replacement, o ApplyOptions) (_ *Result, applyErr error) {
	fail := func(fn string, err error, hint string) (*Result, error) {
		return nil, &Error{Op: "apply", Pid: t.pid, Func: fn, Err: err, Hint: hint}
	}
	if len(reps) == 0 {
		return fail("", ErrBadRequest, "give at least one OLD=NEW replacement")
	}
	if o.Timeout <= 0 {
		o.Timeout = 5 * time.Second
	}
	records, err := t.Status()
	if err != nil {
		return nil, err
	}
	patched := map[uint64]string{}
	for _, r := range records {
		if r.State == "reverted" {
			continue
		}
		for _, f := range r.Functions {
			patched[f.OldAddr] = r.ID
		}
	}

	// Load the patch library, if any (its pins are checked first).
	olds, lib, err := t.prepareLib(reps, o)
	if err != nil {
		return nil, err
	}
	if lib != nil {
		defer func() {
			if applyErr != nil {
				t.dlclose(lib)
			}
		}()
	}

	// Resolve and plan, before touching the target.
	var ps []*planned
	seen := map[uint64]string{}
	for _, rep := range reps {
		if rep.Old == "" || rep.New == "" {
			return fail(rep.Old, ErrBadRequest, "a replacement is OLD=NEW with both names")
		}
		old, err := t.lookupOld(rep.Old, olds)
		if err != nil {
			return fail(rep.Old, err, "")
		}
		nw, err := t.lookupNew(rep.New, lib)
		if err != nil {
			return fail(rep.New, err, "")
		}
		if old.Addr == nw.Addr {
			return fail(rep.Old, ErrBadRequest, fmt.Sprintf("%s and %s are the same function", rep.Old, rep.New))
		}
		if prev, dup := seen[old.Addr]; dup {
			return fail(rep.Old, ErrBadRequest, fmt.Sprintf("replaced twice in one patch (also as %s)", prev))
		}
		seen[old.Addr] = rep.Old
		if id, ok := patched[old.Addr]; ok {
			return fail(rep.Old, ErrAlreadyApplied, fmt.Sprintf("patch %s already replaces it; revert it first (hotpatch revert --pid %d --id %s)", id, t.pid, id))
		}
		p := &planned{rep: rep, old: old, new: nw}
		if err := t.readCode(p); err != nil {
			return fail(rep.Old, err, "")
		}
		if _, err := t.arch.Plan(p.fn(), nw.Addr, old.Addr); err != nil {
			return fail(rep.Old, err, "")
		}
		ps = append(ps, p)
	}

	// Prepare: map patch memory near the code, write the record and the
	// thunks. It is inert: nothing jumps there yet.
	id := newID()
	slot := roundUp(uint64(t.arch.MaxThunkSize()), thunkSlotAlign)
	thunkOff := roundUp(recordHdrSize+uint64(2048+1024*len(ps)), pageSize)
	size := roundUp(thunkOff+slot*uint64(len(ps)), pageSize)
	region, err := t.mapNear(ps[0].old.Addr, size)
	if err != nil {
		return fail(ps[0].rep.Old, err, "")
	}
	unmap := func() {
		if err := t.proc.Munmap(region, size); err != nil {
			t.log.Warn("could not unmap patch memory", "addr", fmt.Sprintf("%#x", region), "err", err)
		}
	}
	rec := &Record{ID: id, Created: time.Now().UTC().Truncate(time.Second), Region: region, RegionSize: size}
	image := make([]byte, size)
	for i, p := range ps {
		thunk := region + thunkOff + uint64(i)*slot
		plan, err := t.arch.Plan(p.fn(), p.new.Addr, thunk)
		if err != nil {
			unmap()
			return fail(p.rep.Old, err, "")
		}
		p.plan = plan
		copy(image[thunk-region:], plan.Thunk)
		rec.Functions = append(rec.Functions, Function{
			Old: p.rep.Old, OldAddr: p.old.Addr, New: p.rep.New, NewAddr: p.new.Addr, NewSize: p.new.Size,
			Module: p.old.Module.Path, BuildID: p.old.Module.BuildID,
			PatchAddr: plan.Addr, Original: plan.Original, Jump: plan.Jump, ThunkAddr: thunk,
		})
	}
	hdr, err := encodeRecord(rec, statePrepared)
	if err == nil && uint64(len(hdr)) > thunkOff {
		err = fmt.Errorf("record of %d bytes does not fit its %d-byte area", len(hdr), thunkOff)
	}
	if err == nil {
		copy(image, hdr)
		err = t.proc.WriteMem(region, image)
	}
	if err != nil {
		unmap()
		return fail("", err, "")
	}

	// Pause: stop, check, verify, write, resume.
	var regions []consistency.Region
	for _, p := range ps {
		end := p.old.Addr + p.old.Size
		if e := p.plan.Addr + uint64(len(p.plan.Jump)); e > end {
			end = e
		}
		regions = append(regions, consistency.Region{Name: p.rep.Old, Start: p.old.Addr, End: end})
	}
	res, err := consistency.StopAndCheck(ctx, t.proc, t.unw, regions,
		consistency.Policy{Timeout: o.Timeout}, t.syms.Symbolize,
		func(consistency.Snapshot) error {
			var writes []write
			for _, p := range ps {
				writes = append(writes, write{name: p.rep.Old, addr: p.plan.Addr, old: p.plan.Original, new: p.plan.Jump})
			}
			return t.writeAll(region, writes, stateApplied)
		})
	if err != nil {
		unmap()
		var fn string
		var be *consistency.BlockedError
		if errors.As(err, &be) && len(be.Blockers) > 0 {
			fn = be.Blockers[0].Func
		}
		return fail(fn, err, "")
	}
	t.log.Debug("applied", "id", id, "pause", res.Pause, "attempts", res.Attempts)
	return &Result{ID: id, Functions: rec.Functions, Pause: res.Pause, PauseMicros: res.Pause.Microseconds(), Attempts: res.Attempts}, nil
}

func (p *planned) fn() trampoline.Func {
	return trampoline.Func{Name: p.rep.Old, Addr: p.old.Addr, Code: p.code[:p.old.Size], Padding: p.code[p.old.Size:]}
}

// readCode reads the function and its padding from the target and checks
// that they are the bytes of the file: anything else means someone (another
// patcher, a debugger's breakpoint) changed them, and we refuse.
func (t *Target) readCode(p *planned) error {
	n := int(p.old.Size + p.old.Padding)
	live := make([]byte, n)
	if _, err := t.proc.ReadAt(live, int64(p.old.Addr)); err != nil {
		return err
	}
	file, err := p.old.Module.Code(p.old.Addr, n)
	if err != nil {
		return err
	}
	if i := firstDiff(live, file); i >= 0 {
		return fmt.Errorf("%w: byte at %#x (%s) is %#02x in memory but %#02x in %s; another tool or a debugger breakpoint changed it — remove that first",
			ErrCodeChanged, p.old.Addr+uint64(i), t.syms.Symbolize(p.old.Addr+uint64(i)), live[i], file[i], p.old.Module.Path)
	}
	p.code = live
	return nil
}

func firstDiff(a, b []byte) int {
	for i := range a {
		if i >= len(b) || a[i] != b[i] {
			return i
		}
	}
	return -1
}

// write is one code change made during a pause.
type write struct {
	name     string
	addr     uint64
	old, new []byte
}

// writeAll verifies every expected byte first, then writes every change and
// the record's new state. The target is stopped. If a write fails, the ones
// already made are undone, so the target is all old or all new.
func (t *Target) writeAll(region uint64, ws []write, state uint32) error {
	for _, w := range ws {
		live := make([]byte, len(w.old))
		if _, err := t.proc.ReadAt(live, int64(w.addr)); err != nil {
			return err
		}
		if !bytes.Equal(live, w.old) {
			return fmt.Errorf("%w: %s at %#x is % x, expected % x; nothing was written", ErrCodeChanged, w.name, w.addr, live, []byte(w.old))
		}
	}
	for i, w := range ws {
		if err := t.proc.WriteMem(w.addr, w.new); err != nil {
			for _, u := range ws[:i] {
				if uerr := t.proc.WriteMem(u.addr, u.old); uerr != nil {
					return errors.Join(err, fmt.Errorf("undo %s failed: %w", u.name, uerr))
				}
			}
			return err
		}
	}
	var st [4]byte
	st[0], st[1], st[2], st[3] = byte(state), byte(state>>8), byte(state>>16), byte(state>>24)
	return t.proc.WriteMem(region+stateOffset, st[:])
}

// Status lists the patches recorded in the target, oldest first. A record's
// State is checked against the code bytes.
func (t *Target) Status() ([]Record, error) {
	maps, err := elfsym.ReadMappings(t.pid)
	if err != nil {
		return nil, &Error{Op: "status", Pid: t.pid, Err: err}
	}
	var out []Record
	for _, m := range maps {
		if (m.Path != "" && m.Path != "[anon:hotpatch]") || len(m.Perms) < 3 || m.Perms[2] != 'x' {
			continue
		}
		rec, state, ok, err := readRecord(t.proc, m)
		if !ok {
			continue
		}
		if err != nil {
			return nil, &Error{Op: "status", Pid: t.pid, Err: err}
		}
		rec.State = t.liveState(rec, state)
		out = append(out, *rec)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Created.Before(out[j].Created) })
	return out, nil
}

// liveState derives a record's state from the code bytes: the header's state
// says what the writer meant, the bytes say what happened (the writer may have
// been killed between the two).
func (t *Target) liveState(rec *Record, state uint32) string {
	jumps := 0
	for _, f := range rec.Functions {
		live := make([]byte, len(f.Jump))
		if _, err := t.proc.ReadAt(live, int64(f.PatchAddr)); err == nil && bytes.Equal(live, f.Jump) {
			jumps++
		}
	}
	switch {
	case jumps == len(rec.Functions) && jumps > 0:
		return stateName(stateApplied)
	case jumps > 0:
		return "partial"
	case state == stateApplied: // the record says applied but no jump is there
		return stateName(stateReverted)
	}
	return stateName(state)
}

// Revert restores the original code of the functions of patch id, in one
// pause, after checking that no thread is executing in the replacement
// functions.
func (t *Target) Revert(ctx context.Context, id string, o ApplyOptions) (*Result, error) {
	fail := func(err error, hint string) (*Result, error) {
		return nil, &Error{Op: "revert", Pid: t.pid, ID: id, Err: err, Hint: hint}
	}
	if o.Timeout <= 0 {
		o.Timeout = 5 * time.Second
	}
	records, err := t.Status()
	if err != nil {
		return nil, err
	}
	var rec *Record
	for i := range records {
		if records[i].ID == id {
			rec = &records[i]
		}
	}
	if rec == nil || (rec.State != "applied" && rec.State != "partial") {
		if rec != nil && rec.State == "prepared" {
			// Inert leftovers of an apply that died before writing: drop them.
			t.proc.Munmap(rec.Region, rec.RegionSize)
		}
		return fail(ErrNotApplied, fmt.Sprintf("hotpatch status --pid %d lists the applied patches", t.pid))
	}
	var regions []consistency.Region
	var writes []write
	for _, f := range rec.Functions {
		regions = append(regions,
			consistency.Region{Name: f.New, Start: f.NewAddr, End: f.NewAddr + max(f.NewSize, 1)},
			consistency.Region{Name: f.Old, Start: f.PatchAddr + 1, End: f.PatchAddr + uint64(len(f.Jump))})
		live := make([]byte, len(f.Jump))
		if _, err := t.proc.ReadAt(live, int64(f.PatchAddr)); err != nil {
			return fail(err, "")
		}
		if bytes.Equal(live, f.Original) {
			continue // partial: this one was never written
		}
		writes = append(writes, write{name: f.Old, addr: f.PatchAddr, old: f.Jump, new: f.Original})
	}
	res, err := consistency.StopAndCheck(ctx, t.proc, t.unw, regions,
		consistency.Policy{Timeout: o.Timeout}, t.syms.Symbolize,
		func(consistency.Snapshot) error { return t.writeAll(rec.Region, writes, stateReverted) })
	if err != nil {
		return fail(err, "")
	}
	// Nothing jumps into the patch memory any more.
	if err := t.proc.Munmap(rec.Region, rec.RegionSize); err != nil {
		t.log.Warn("could not unmap patch memory", "id", id, "err", err)
	}
	return &Result{ID: id, Functions: rec.Functions, Pause: res.Pause, PauseMicros: res.Pause.Microseconds(), Attempts: res.Attempts}, nil
}

// RevertAll reverts every applied patch, newest first.
func (t *Target) RevertAll(ctx context.Context, o ApplyOptions) ([]*Result, error) {
	records, err := t.Status()
	if err != nil {
		return nil, err
	}
	var out []*Result
	for i := len(records) - 1; i >= 0; i-- {
		if s := records[i].State; s != "applied" && s != "partial" {
			continue
		}
		r, err := t.Revert(ctx, records[i].ID, o)
		if err != nil {
			return out, err
		}
		out = append(out, r)
	}
	return out, nil
}

func newID() string {
	var b [4]byte
	rand.Read(b[:])
	return "hp-" + hex.EncodeToString(b[:])
}

func roundUp(n, to uint64) uint64 { return (n + to - 1) / to * to }

// Threads stops the target once, unwinds every thread and resumes it.
func (t *Target) Threads() (consistency.Snapshot, error) {
	if err := t.proc.Stop(); err != nil {
		return consistency.Snapshot{}, &Error{Op: "threads", Pid: t.pid, Err: err}
	}
	snap, err := consistency.Take(t.proc, t.unw)
	if rerr := t.proc.Resume(); err == nil {
		err = rerr
	}
	if err != nil {
		return consistency.Snapshot{}, &Error{Op: "threads", Pid: t.pid, Err: err}
	}
	return snap, nil
}

// FormatStack renders a stack of the target with symbol names, one frame
// per line.
func FormatStack(t *Target, s unwind.Stack) string {
	return consistency.FormatStack(s, t.syms.Symbolize, "\n    ")
}
