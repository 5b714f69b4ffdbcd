//go:build linux

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
	"os"
	"sort"
	"time"

	"github.com/hotpatch-dev/hotpatch/elfsym"
	"github.com/hotpatch-dev/hotpatch/internal/arch"
	"github.com/hotpatch-dev/hotpatch/internal/consistency"
	"github.com/hotpatch-dev/hotpatch/internal/gopcln"
	"github.com/hotpatch-dev/hotpatch/internal/goruntime"
	"github.com/hotpatch-dev/hotpatch/internal/tracee"
	"github.com/hotpatch-dev/hotpatch/internal/unwind"
	"github.com/hotpatch-dev/hotpatch/trampoline"
)

// Options configure a Target. The zero value is usable.
type Options struct {
	// Logger receives progress at debug level (nil: discard).
	Logger *slog.Logger
	// LockWait is how long Attach waits while another Target, in this or
	// another program, holds the process (0: DefaultLockWait; negative: do
	// not wait). Every operation on a process is serialised by that lock,
	// which the kernel drops when its holder exits, however it exits.
	LockWait time.Duration
}

// DefaultLockWait is Options.LockWait when unset.
const DefaultLockWait = 10 * time.Second

// Target is a process attached for patching.
type Target struct {
	pid  int
	proc *tracee.Process
	syms *elfsym.Table
	arch trampoline.Arch
	// tarch describes the target's architecture (from its ELF machine).
	tarch *arch.Arch
	unw   *unwind.Unwinder
	log   *slog.Logger
	// prefetch carries the pages the threads' walks read from one stop to
	// the next, which reads them in one system call.
	prefetch consistency.Prefetch

	goRT    *goruntime.Runtime // loaded on first use, Go targets only
	goRTErr error
	goRTOK  bool

	// tableSlots: the used slots of each universe table this Target wrote
	// (see usedSlots).
	tableSlots map[tableBuffer][]int
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
	if pid == os.Getpid() {
		return nil, &Error{Op: "attach", Pid: pid, Err: ErrBadRequest,
			Hint: "a process cannot trace itself; patch the calling process with Func (or FuncWith, FuncByName), which patches it through a helper process"}
	}
	wait := opts.LockWait
	if wait == 0 {
		wait = DefaultLockWait
	}
	proc, err := tracee.Open(pid, tracee.LockWait(max(wait, 0)))
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
	enc, err := trampoline.ForMachine(syms.Modules[0].Machine)
	if err != nil {
		proc.Close()
		return nil, &Error{Op: "attach", Pid: pid, Err: err}
	}
	tarch, err := arch.ForMachine(syms.Modules[0].Machine)
	if err != nil {
		proc.Close()
		return nil, &Error{Op: "attach", Pid: pid, Err: err}
	}
	unw := unwind.ForTable(syms)
	if err := unw.Prepare(); err != nil {
		// Not fatal: stacks through such a module are unreliable and block.
		log.Warn("unwind tables", "err", err)
	}
	return &Target{pid: pid, proc: proc, syms: syms, arch: enc, tarch: tarch, unw: unw, log: log}, nil
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

	// Set by the self-patching path (Func), where the caller knows the
	// addresses: the names must resolve to exactly these entries, and a
	// non-zero closure is the funcval New is entered with (its captured
	// variables), loaded into the closure context register by a
	// trampoline.ClosureEntry in the patch memory.
	oldAddr, newAddr, closure uint64
	// originalSlot, when set, is the address in the target of a word that
	// receives, before the switch, the entry of the function's original
	// (what the replacement calls to run the old code; see
	// trampoline.GoOriginal).
	originalSlot uint64
	// plugin: New is Go code of a plugin loaded by the target's own Go
	// runtime (another module, the same runtime; set by the self-patching
	// path for package agent).
	plugin bool
}

// ApplyOptions tune Apply.
type ApplyOptions struct {
	// Timeout bounds how long Apply retries while threads are inside the
	// functions (default 5s).
	Timeout time.Duration
	// AllowInlined patches only the out-of-line copy of a function the
	// compiler also inlined into callers (those copies keep the old code;
	// the result lists them), or may have inlined without a trace (a small
	// Go function that nothing in the binary calls or takes the address
	// of). Without it such a function is refused with an *InlinedError.
	AllowInlined bool
	// Mode is ModeStop (the default: one pause in which no task may be in
	// the functions), ModeGradual (per-task universes: busy tasks keep the
	// old code until their stacks are clean) or ModeAuto (stop-and-check
	// first, gradual when tasks stay busy).
	Mode Mode
	// OnTimeout says what a gradual transition that has tasks pending at
	// Timeout does: OnTimeoutRevert (the default: go back, the same way,
	// with Timeout again to do it; the error says whether that finished or
	// left the patch reverting) or OnTimeoutStay (return, leaving the
	// target in transition; Resume or Revert continue it later). A gradual
	// Revert always stays; without OnTimeoutStay that is an error wrapping
	// ErrBlocked, its Result saying "reverting".
	OnTimeout OnTimeout
	// Force finishes a gradual transition at Timeout even though tasks
	// still run old code, moving them to the new code (each is reported).
	Force bool
	// Interval is the time between the short pauses of a transition
	// (default 20ms).
	Interval time.Duration
	// Progress, when set, is called after every pause of a transition.
	Progress func(Progress)
	// Lib is a shared object holding the replacement functions (C
	// targets). Apply reads it once, checks its pins, and loads exactly
	// the bytes checked into the target before the pause: through a sealed
	// memfd (maps show /memfd:NAME) and a remote dlopen of
	// /proc/self/fd/N, never the path itself, which the target may
	// resolve to another file. Then it resolves each New in it first, then
	// in the whole target; the replacement may call any function the
	// target exports.
	// The library must be pinned with HOTPATCH_PIN (patch/include/hotpatch.h)
	// to the build ID of each module holding an Old, unless Unpinned is set.
	// Each Apply loads a copy of its own, also of bytes loaded before (maps
	// show /memfd:hotpatch:ID:NAME, ID the patch's). The copy has a record
	// of its own in the target (its descriptor and handle, each written
	// before the tool could lose it), and the patch's record names it
	// (Record.Lib). It is unloaded (a remote dlclose, its mappings checked
	// gone) when the Apply is refused, and when the patch is reverted
	// (Revert, RevertAll, a Resume that ends reverted): after a pause that
	// proves no task runs in, or will return into, any of its mappings,
	// retried until Timeout. One a task stays in is left loaded and
	// recorded: Result.LibLoaded says so, Leftovers lists it, and RevertAll
	// unloads it once no task is in it.
	Lib string
	// Unpinned accepts a Lib that declares no HOTPATCH_PIN.
	Unpinned bool
	// SkipSignatureCheck accepts a New whose parameters or results differ
	// from Old's as the binaries record them (DWARF, the Go function
	// table). Without it such a replacement is refused with a
	// *SignatureError.
	SkipSignatureCheck bool
	// Supersede is the ID of an applied patch this one replaces in the
	// same pause (the kernel livepatch's "atomic replace"): no call runs
	// the original code between the two. The new patch is the complete
	// new state: it may replace the same functions, more or fewer; those
	// of the old one it leaves out get their original code back in that
	// pause. Reverting the new patch restores the original code, not the
	// old patch. Stop mode only (ModeAuto stops; ModeGradual is refused
	// with ErrGradualSupersede).
	Supersede string
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
	// State is read back from the target after the operation: "applied"
	// or "reverted" when done; after a gradual transition that timed out,
	// "transition" or "reverting", with Pending tasks left; "unknown" when
	// the target could not be read (the error says why). An error may come
	// with a Result: then it says where the target was left.
	State   State `json:"state"`
	Pending int   `json:"pending"`
	// Forced lists the tasks a Force moved to the new code while they
	// still had old code on their stacks.
	Forced []string `json:"forced"`
	// LibLoaded, after a Revert (or an Apply that superseded a patch: the
	// superseded patch's library), says why the patch library stays loaded
	// (a task was still in it): Leftovers lists it, and RevertAll unloads
	// it once no task is in it. Empty when it was unloaded, or there was
	// none.
	LibLoaded string `json:"lib_loaded,omitempty"`
	// Superseded is the ID of the patch this Apply replaced
	// (ApplyOptions.Supersede).
	Superseded string `json:"superseded,omitempty"`
}

// planned is one function of an Apply being prepared.
type planned struct {
	rep      Replacement
	old, new elfsym.Symbol
	code     []byte // live bytes: the function then its padding
	plan     *trampoline.Plan
	inlined  []elfsym.InlineSite
	// With ApplyOptions.Supersede, for a function the superseded patch
	// replaces: its entry there, and the live bytes (its jump in place).
	// code then holds the original bytes.
	superseded *Function
	live       []byte
}

// checkAddrs checks that the names of a self-patch resolved to the very
// functions the caller holds.
func checkAddrs(rep Replacement, old, nw elfsym.Symbol) error {
	for _, c := range []struct {
		name      string
		want, got uint64
	}{{rep.Old, rep.oldAddr, old.Addr}, {rep.New, rep.newAddr, nw.Addr}} {
		if c.want != 0 && c.want != c.got {
			return fmt.Errorf("%w: %s resolves to %#x, but the function value is at %#x", ErrAmbiguous, c.name, c.got, c.want)
		}
	}
	return nil
}

// padJump pads a jump with the target's trap instruction to n bytes (nil
// when it is longer, or the rest is no whole number of traps).
func padJump(a *arch.Arch, j []byte, n int) []byte {
	fill, err := a.Fill(n - len(j))
	if err != nil {
		return nil
	}
	return append(append([]byte(nil), j...), fill...)
}

func inlineCallers(sites []elfsym.InlineSite) []string {
	var out []string
	seen := map[string]bool{}
	for _, s := range sites {
		if !seen[s.Caller] {
			seen[s.Caller] = true
			out = append(out, s.Caller)
		}
	}
	return out
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
	if p.superseded != nil {
		// The superseded patch's jump, checked, stands for the original
		// bytes its record holds; the rest must be the file's.
		p.live = live
		if live, err = unjump(live, p.old.Addr, p.superseded); err != nil {
			return err
		}
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
		if i > 0 {
			step("write:entry-written")
		}
		if err := t.writeMem(w.addr, w.new); err != nil {
			for _, u := range ws[:i] {
				if uerr := t.writeMem(u.addr, u.old); uerr != nil {
					return errors.Join(err, fmt.Errorf("undo %s failed: %w", u.name, uerr))
				}
			}
			return err
		}
	}
	var st [4]byte
	st[0], st[1], st[2], st[3] = byte(state), byte(state>>8), byte(state>>16), byte(state>>24)
	return t.writeMem(region+stateOffset, st[:])
}

// Status lists the patches recorded in the target, oldest first. A record's
// State is checked against the code bytes.
func (t *Target) Status() (_ []Record, err error) {
	defer t.explain("", &err)
	maps, err := elfsym.ReadMappings(t.pid)
	if err != nil {
		return nil, &Error{Op: "status", Pid: t.pid, Err: err}
	}
	var out []Record
	for _, m := range maps {
		if !anonymous(m) || len(m.Perms) < 3 || m.Perms[2] != 'x' {
			continue
		}
		rec, state, ok, err := readRecord(t.proc, m)
		if !ok {
			continue
		}
		if err != nil {
			return nil, &Error{Op: "status", Pid: t.pid, Err: err}
		}
		if rec.State, err = liveState(t.proc, rec, state); err != nil {
			return nil, &Error{Op: "status", Pid: t.pid, ID: rec.ID, Err: err}
		}
		if (rec.State == StateTransition || rec.State == StateReverting) && rec.Table != 0 {
			es, _, err := t.readTable(rec)
			if err != nil {
				return nil, &Error{Op: "status", Pid: t.pid, ID: rec.ID, Err: err}
			}
			rec.Pending = len(es)
			kind := "thread"
			if rec.TaskKey == "g" {
				kind = "goroutine"
			}
			for _, e := range es {
				rec.PendingTasks = append(rec.PendingTasks, PendingTask{Kind: TaskKind(kind), ID: e.ID, Key: e.Key})
			}
		}
		out = append(out, *rec)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Created.Before(out[j].Created) })
	return supersedeOrder(out), nil
}

// liveState derives a record's state from the code bytes: the header's state
// says what the writer meant, the bytes say what happened (the writer may have
// been killed between the two). Bytes it cannot read are an error: no state
// is guessed without them.
// anonymous reports whether m can hold memory we mapped: no file behind it
// ("", or named by us), or "[heap]" — the kernel's name for any mapping
// that covers the program break, even one made by mmap: a Go program never
// moves its break, and memory we map near its data (within a jump's reach
// of its code) can cover it (Status then missed a patch: "not applied").
func anonymous(m elfsym.Mapping) bool {
	return m.Path == "" || m.Path == "[anon:hotpatch]" || m.Path == "[heap]"
}

func liveState(mem readerAt, rec *Record, state uint32) (State, error) {
	var orig, jumps, stubs int
	for _, f := range rec.Functions {
		live := make([]byte, len(f.Original))
		if _, err := mem.ReadAt(live, int64(f.PatchAddr)); err != nil {
			return "", fmt.Errorf("patch %s: read the entry of %s at %#x: %w", rec.ID, f.Old, f.PatchAddr, err)
		}
		switch {
		case bytes.Equal(live, f.Original):
			orig++
		case bytes.Equal(live, f.Jump):
			jumps++
		case f.StubJump != nil && bytes.Equal(live, f.StubJump):
			stubs++
		}
	}
	n := len(rec.Functions)
	if stubs > 0 && orig+jumps+stubs == n && rec.Table != 0 {
		// What the stubs do is what the active table says.
		es, unlistedNew, err := readTable(mem, rec)
		if err != nil {
			return "", err
		}
		switch {
		case len(es) > 0 && unlistedNew && orig == 0:
			return stateName(stateTransition), nil
		case len(es) > 0 && !unlistedNew && orig == 0:
			return stateName(stateReverting), nil
		case len(es) == 0 && unlistedNew && orig == 0:
			return stateName(stateApplied), nil // everyone new; direct jumps pending
		case len(es) == 0 && !unlistedNew && jumps == 0:
			// Everyone old, but entries still lead to the stubs: a switch
			// that had not happened, or a revert whose original bytes are
			// not all back. Reverting (Revert or Resume) finishes either.
			return stateName(stateReverting), nil
		}
		return "partial", nil
	}
	switch {
	case jumps == n && n > 0:
		return stateName(stateApplied), nil
	case jumps > 0:
		return "partial", nil
	case state == stateSuperseded:
		// Another patch replaced it in one pause; its memory goes next.
		return stateName(stateSuperseded), nil
	case state == stateApplied || state == stateTransition || state == stateReverting:
		// The header says a switch began, but all the original bytes are
		// there.
		return stateName(stateReverted), nil
	}
	return stateName(state), nil
}

// Revert restores the original code of the functions of patch id, in one
// pause, after checking that no thread is executing in the replacement
// functions. Then it unloads the patch's library, if any, once no task is
// in it (within o.Timeout): one that stays loaded is said so by the
// result's LibLoaded, and a later RevertAll unloads it.
func (t *Target) Revert(ctx context.Context, id string, o ApplyOptions) (_ *Result, err error) {
	defer t.explain("revert", &err)
	var lib *LibRef
	if rec, err := t.record(id); err == nil {
		lib = rec.Lib
	}
	res, err := t.revert(ctx, id, o)
	if err == nil && res != nil && res.State == StateReverted {
		res.LibLoaded = t.unloadAfterRevert(ctx, lib, o)
	}
	return res, err
}

func (t *Target) revert(ctx context.Context, id string, o ApplyOptions) (*Result, error) {
	fail := func(err error, hint string) (*Result, error) {
		return nil, &Error{Op: "revert", Pid: t.pid, ID: id, Err: err, Hint: hint}
	}
	if err := o.check(); err != nil {
		return fail(err, "")
	}
	o = o.withDefaults()
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
	if rec != nil && (rec.State == StateTransition || rec.State == StateReverting ||
		(rec.State == StateApplied && rec.Table != 0 && (o.Mode == ModeGradual || o.Mode == ModeAuto))) {
		if rec.State == StateApplied && o.Mode == ModeAuto {
			res, err := t.stopRevert(ctx, rec, o, min(o.Timeout, autoStopTries))
			if err == nil || !errors.Is(err, ErrBlocked) || ctx.Err() != nil {
				return res, err
			}
		}
		return t.gradualRevert(ctx, rec, o)
	}
	if rec == nil || (rec.State != StateApplied && rec.State != StatePartial) {
		if rec != nil && (rec.State == StatePrepared || rec.State == StateReverted || rec.State == StateSuperseded) {
			// Leftovers of a patcher that died: drop them.
			if err := t.discard(ctx, rec, o); err != nil {
				return nil, err
			}
		}
		return fail(ErrNotApplied, "Status lists the patches and their states")
	}
	return t.stopRevert(ctx, rec, o, o.Timeout)
}

// stopRevert restores the original bytes of an applied (or partial) patch in
// one pause in which no task executes in, or returns into, the new
// functions, the overwritten bytes or the patch memory. The result, also
// with an error, holds the state read back from the target.
func (t *Target) stopRevert(ctx context.Context, rec *Record, o ApplyOptions, timeout time.Duration) (*Result, error) {
	id := rec.ID
	out := &Result{ID: id, Functions: rec.Functions}
	fail := func(err error) (*Result, error) {
		if rerr := t.readBack(rec, out, 0); rerr != nil {
			err = fmt.Errorf("%w; reading the state back failed too: %w", err, rerr)
		}
		return out, &Error{Op: "revert", Pid: t.pid, ID: id, Err: err, Hint: stateHint(out)}
	}
	regions := []consistency.Region{{Name: "patch " + id + " memory", Start: rec.Region, End: rec.Region + rec.RegionSize}}
	var writes []write
	stubbed := false // an entry leads to its dispatch stub
	for _, f := range rec.Functions {
		regions = append(regions,
			consistency.Region{Name: f.New, Start: f.NewAddr, End: f.NewAddr + max(f.NewSize, 1)},
			consistency.Region{Name: f.Old, Start: f.PatchAddr + 1, End: f.PatchAddr + uint64(len(f.Jump))})
		live := make([]byte, len(f.Jump))
		if _, err := t.proc.ReadAt(live, int64(f.PatchAddr)); err != nil {
			return fail(fmt.Errorf("read the entry of %s at %#x: %w", f.Old, f.PatchAddr, err))
		}
		if bytes.Equal(live, f.Original) || (f.Superseded != nil && bytes.Equal(live, f.Superseded)) {
			// partial: this one was never written (the entry is the
			// original's, or still the superseded patch's, which that
			// patch's record reverts)
			continue
		}
		stubbed = stubbed || f.StubJump != nil && bytes.Equal(live, f.StubJump)
		writes = append(writes, write{name: f.Old, addr: f.PatchAddr, old: f.Jump, new: f.Original})
	}
	src, err := t.source()
	if err != nil {
		return fail(err)
	}
	release := t.hold(src)
	res, err := consistency.StopAndCheck(ctx, src, regions,
		consistency.Policy{Timeout: timeout, Retry: t.retryReport(o, rec.ID)}, t.syms.Symbolize,
		func(consistency.Snapshot) error {
			step("revert:paused")
			if rec.Table != 0 && rec.State == StateApplied && (len(rec.Functions) > 1 || stubbed) {
				// Through the stubs, so that the set switches back with
				// one write (one function's jump is one write).
				return t.stopBackward(rec)
			}
			return t.writeAll(rec.Region, writes, stateReverted)
		})
	release()
	out.Pause, out.PauseMicros, out.Attempts = res.Pause, res.Pause.Microseconds(), res.Attempts
	if err != nil {
		return fail(err)
	}
	step("revert:restored")
	// Nothing jumps into the patch memory any more.
	if err := t.proc.Munmap(rec.Region, rec.RegionSize); err != nil {
		t.log.Warn("could not unmap patch memory", "id", id, "err", err)
	}
	step("revert:unmapped")
	if err := t.readBack(rec, out, 0); err != nil {
		return out, &Error{Op: "revert", Pid: t.pid, ID: id, Err: err}
	}
	return out, nil
}

// discard unmaps the memory of a patch whose entries all hold their
// original bytes, once no task executes in it or will return into it (a
// patch that never switched needs no check).
func (t *Target) discard(ctx context.Context, rec *Record, o ApplyOptions) error {
	switched, err := everSwitched(t.proc, rec)
	if err != nil {
		return &Error{Op: "revert", Pid: t.pid, ID: rec.ID, Err: err, Hint: "its memory stays mapped"}
	}
	if switched {
		src, err := t.source()
		if err != nil {
			return &Error{Op: "revert", Pid: t.pid, ID: rec.ID, Err: err}
		}
		regions := []consistency.Region{{Name: "patch " + rec.ID + " memory", Start: rec.Region, End: rec.Region + rec.RegionSize}}
		if _, err := consistency.StopAndCheck(ctx, src, regions, consistency.Policy{Timeout: o.withDefaults().Timeout}, t.syms.Symbolize,
			func(consistency.Snapshot) error { return nil }); err != nil {
			return &Error{Op: "revert", Pid: t.pid, ID: rec.ID, Err: err}
		}
	}
	step("revert:discard-checked")
	// Nothing jumps there any more: no task can enter it after the check.
	if err := t.proc.Munmap(rec.Region, rec.RegionSize); err != nil {
		return &Error{Op: "revert", Pid: t.pid, ID: rec.ID, Err: err}
	}
	return nil
}

// RevertAll reverts every applied patch, newest first, and removes the
// memory of patches whose patcher died before switching them or after
// reverting them, and what a patcher killed part-way left without a
// record (see Leftovers; stubs in padding too); last, it unloads every
// patch library no patch uses, once no task is in it. A library a task
// stays in until o.Timeout is left loaded and recorded: the error matches
// ErrBlocked.
func (t *Target) RevertAll(ctx context.Context, o ApplyOptions) (_ []*Result, err error) {
	defer t.explain("revert", &err)
	if err := o.check(); err != nil {
		return nil, &Error{Op: "revert", Pid: t.pid, Err: err}
	}
	if _, err := t.cleanup(ctx, o, false); err != nil {
		return nil, err
	}
	records, err := t.Status()
	if err != nil {
		return nil, err
	}
	var out []*Result
	for i := len(records) - 1; i >= 0; i-- {
		if err := ctx.Err(); err != nil {
			return out, &Error{Op: "revert", Pid: t.pid, Err: err, Hint: "the patches not listed in the results were left as they were"}
		}
		if s := records[i].State; s == "prepared" || s == "reverted" || s == "superseded" {
			// Leftovers of a patcher that died before its switch, or
			// after its revert (or a supersede) but before unmapping.
			if err := t.discard(ctx, &records[i], o); err != nil {
				return out, err
			}
			continue
		}
		if s := records[i].State; s != "applied" && s != "partial" && s != "transition" && s != "reverting" {
			continue
		}
		r, err := t.Revert(ctx, records[i].ID, o)
		if r != nil {
			out = append(out, r) // also on error: where it was left
		}
		if err != nil {
			return out, err
		}
	}
	if err := t.unloadUnused(ctx, o); err != nil {
		return out, &Error{Op: "revert", Pid: t.pid, Err: err,
			Hint: "the patches are reverted; a patch library stays loaded and recorded (Leftovers lists it): revert all again once no task is in it"}
	}
	return out, nil
}

func newID() string {
	var b [4]byte
	rand.Read(b[:])
	return "hp-" + hex.EncodeToString(b[:])
}

func roundUp(n, to uint64) uint64 { return (n + to - 1) / to * to }

// source returns where tasks come from: the threads, and for a Go target its
// goroutines.
func (t *Target) source() (consistency.Source, error) {
	src := consistency.Source{Proc: t.proc, Unwinder: t.unw, Symbols: t.syms, Prefetch: &t.prefetch}
	if !t.goRTOK {
		t.goRTOK = true
		t.goRT, t.goRTErr = t.loadGoRuntime()
	}
	if t.goRTErr != nil {
		return src, t.goRTErr
	}
	src.Go = t.goRT
	return src, nil
}

// loadGoRuntime finds the goroutine list of a Go target (nil, nil for other
// targets).
func (t *Target) loadGoRuntime() (*goruntime.Runtime, error) {
	main := t.syms.Modules[0]
	if !main.IsGo {
		return nil, nil
	}
	ef, err := main.Open()
	if err != nil {
		return nil, err
	}
	defer ef.Close()
	var funcs *gopcln.Table
	for _, m := range t.unw.Modules {
		if m.Name == main.Path && m.Pclntab != nil {
			if funcs, err = m.GoTable(t.unw.Arch); err != nil {
				return nil, err
			}
		}
	}
	rt, err := goruntime.Load(goruntime.Binary{ELF: ef, Bias: main.Bias, Version: main.GoVersion, Funcs: funcs, DWARF: main.DWARF}, t.proc)
	if err != nil {
		return nil, fmt.Errorf("%w (without the goroutine list no patch can be proven safe)", err)
	}
	return rt, nil
}

// snapshot stops the target once, unwinds every thread (and every
// goroutine of a Go target) and resumes it (Threads names its frames).
func (t *Target) snapshot() (consistency.Snapshot, error) {
	src, err := t.source()
	if err != nil {
		return consistency.Snapshot{}, &Error{Op: "threads", Pid: t.pid, Err: err}
	}
	var snap consistency.Snapshot
	_, err = t.proc.Paused(func() error {
		var err error
		snap, err = src.Take()
		return err
	})
	if err != nil {
		return consistency.Snapshot{}, &Error{Op: "threads", Pid: t.pid, Err: err}
	}
	return snap, nil
}
