//go:build linux

package patch

import (
	"bytes"
	"errors"
	"fmt"

	"github.com/hotpatch-dev/hotpatch/internal/consistency"
)

// Superseding (ApplyOptions.Supersede) replaces an applied patch, the old
// one, by a new one in a single pause, as the kernel livepatch's atomic
// replace does: no call runs the original code between the two fixes.
//
//   - The new patch is planned against the original code: for a function
//     the old patch replaces, the live bytes must be the old patch's jump
//     (checked), which stands for the original bytes its record holds. So
//     the new record holds the original bytes, and reverting it restores
//     the original, not the old fix.
//   - The pause is a stop-and-check pause whose regions are the new
//     patch's functions (their original code), plus the old patch's
//     memory (its thunks, closure entries: unmapped after the switch), and
//     for every function whose target changes the old replacement (a task
//     in it would return into code that may go away: the patch library is
//     not unloaded by this path, but the rule is a plain apply's). The
//     functions of the old patch the new one leaves out get their original
//     bytes back in the same pause, with the original code in the check.
//   - Writes, crash-consistent step by step (a SIGKILL between any two
//     leaves a state Status reports truthfully; Revert and RevertAll end
//     clean from each): (1) the old record's state word becomes
//     "superseded" — its entries still hold its jumps, so Status derives
//     "applied" from the bytes; (2) every entry gets its new bytes (the new
//     patch's jump, or the original for a left-out function; an entry the
//     new patch has not written yet still holds the old jump, which its
//     record stores as Function.Superseded so that reverting it leaves that
//     entry to the old record); (3) the new record's state word becomes
//     "applied"; (4) after the pause, the old patch's memory is unmapped
//     (until then Status lists it "superseded", and Revert or RevertAll
//     unmap it).
//   - Unlike a plain apply, the switch does not go through dispatch stubs
//     (whose "old" universe is the original code, not another patch): the
//     entries are plain writes in the pause. So a patcher killed between
//     two entry writes of a supersede of several functions leaves each
//     function whole, some on the old patch and some on the new, which
//     Status reports ("partial"); RevertAll restores the original. A
//     supersede of one function has no such point.
//   - Gradual transitions are not supported: a task would have to move
//     from the old patch's universe to the new one's without passing
//     through the original, which the dispatch stubs, deciding between the
//     original and one replacement, cannot express.

// superseded returns the applied patch o.Supersede names (nil without
// one), or the typed error that says why it cannot be superseded.
func (t *Target) superseded(records []Record, o ApplyOptions) (*Record, error) {
	if o.Supersede == "" {
		return nil, nil
	}
	fail := func(err error, hint string) (*Record, error) {
		return nil, &Error{Op: "apply", Pid: t.pid, ID: o.Supersede, Err: err, Hint: hint}
	}
	if o.Mode == ModeGradual {
		return fail(ErrGradualSupersede, "supersede in stop mode (or auto mode, which supersedes in one pause)")
	}
	var old *Record
	for i := range records {
		if records[i].ID == o.Supersede {
			old = &records[i]
		}
	}
	switch {
	case old == nil:
		return fail(ErrNotApplied, "no patch of this process has that ID, so there is nothing to supersede; Status lists the patches")
	case old.State == StateTransition || old.State == StateReverting:
		return fail(ErrInTransition, fmt.Sprintf("it is in a gradual %s with %d task(s) pending; finish it (Resume) or revert it before superseding it", old.State, old.Pending))
	case old.State != StateApplied:
		return fail(ErrNotApplied, fmt.Sprintf("it is %s; only an applied patch can be superseded", old.State))
	}
	for _, f := range old.Functions {
		live := make([]byte, len(f.Jump))
		if _, err := t.proc.ReadAt(live, int64(f.PatchAddr)); err != nil {
			return fail(fmt.Errorf("read the entry of %s at %#x: %w", f.Old, f.PatchAddr, err), "")
		}
		if !bytes.Equal(live, f.Jump) {
			return fail(ErrInTransition, fmt.Sprintf("its entry of %s at %#x still leads to its dispatch stub (the last step of its transition was not done); revert it, then apply the new patch", f.Old, f.PatchAddr))
		}
	}
	return old, nil
}

// id is the record's ID ("" for none).
func (r *Record) id() string {
	if r == nil {
		return ""
	}
	return r.ID
}

// function returns the entry of the function at addr, if the record (which
// may be nil) replaces it.
func (r *Record) function(addr uint64) *Function {
	if r == nil {
		return nil
	}
	for i := range r.Functions {
		if r.Functions[i].OldAddr == addr {
			return &r.Functions[i]
		}
	}
	return nil
}

// unjump returns the code of a function (live bytes read at base) with the
// superseded patch's jump, which must be there, replaced by the original
// bytes its record holds.
func unjump(live []byte, base uint64, f *Function) ([]byte, error) {
	off := f.PatchAddr - base
	if f.PatchAddr < base || off+uint64(len(f.Jump)) > uint64(len(live)) || len(f.Original) != len(f.Jump) {
		return nil, fmt.Errorf("%w: the superseded patch's record of %s (jump at %#x, %d bytes) does not fit the function at %#x",
			ErrCodeChanged, f.Old, f.PatchAddr, len(f.Jump), base)
	}
	if at := live[off : off+uint64(len(f.Jump))]; !bytes.Equal(at, f.Jump) {
		return nil, fmt.Errorf("%w: the entry of %s at %#x is % x, not the superseded patch's jump % x", ErrCodeChanged, f.Old, f.PatchAddr, at, []byte(f.Jump))
	}
	code := bytes.Clone(live)
	copy(code[off:], f.Original)
	return code, nil
}

// supersededBytes is what the superseded patch left where the new jump
// goes (Function.Superseded).
func (p *planned) supersededBytes() (Bytes, error) {
	if p.plan.Addr != p.superseded.PatchAddr {
		return nil, fmt.Errorf("%w: the new jump goes at %#x, the superseded patch's is at %#x", ErrCodeChanged, p.plan.Addr, p.superseded.PatchAddr)
	}
	off := p.plan.Addr - p.old.Addr
	return Bytes(bytes.Clone(p.live[off : off+uint64(len(p.plan.Original))])), nil
}

// supersedeRegions are what no task may be in (or return into) when old is
// superseded by the planned functions ps, beyond ps's original code: the
// old patch's memory, its replacement of every function whose replacement
// changes, and the original code of the functions ps leaves out.
func supersedeRegions(old *Record, ps []*planned) []consistency.Region {
	if old == nil {
		return nil
	}
	rs := []consistency.Region{{Name: "patch " + old.ID + " memory", Start: old.Region, End: old.Region + old.RegionSize}}
	newAt := map[uint64]uint64{}
	for _, p := range ps {
		newAt[p.old.Addr] = p.new.Addr
	}
	for _, f := range old.Functions {
		nw, kept := newAt[f.OldAddr]
		if !kept || nw != f.NewAddr {
			rs = append(rs, consistency.Region{Name: f.New, Start: f.NewAddr, End: f.NewAddr + max(f.NewSize, 1)})
		}
		if !kept {
			end := max(f.OldAddr+max(f.OldSize, 1), f.PatchAddr+uint64(len(f.Jump)))
			rs = append(rs, consistency.Region{Name: f.Old, Start: f.OldAddr, End: end})
		}
	}
	return rs
}

// supersedeWrites are the writes of the switch: each planned entry from
// what is there (the original, or the old patch's jump) to its jump, and
// each entry of the old patch the new one leaves out back to its original.
func supersedeWrites(old *Record, ps []*planned) []write {
	var ws []write
	kept := map[uint64]bool{}
	for _, p := range ps {
		f := p.superseded
		if f == nil {
			ws = append(ws, write{name: p.rep.Old, addr: p.plan.Addr, old: p.plan.Original, new: p.plan.Jump})
			continue
		}
		kept[f.OldAddr] = true
		off := p.plan.Addr - p.old.Addr
		end := off + uint64(max(len(p.plan.Jump), len(f.Jump)))
		nw := append(bytes.Clone(p.plan.Jump), p.code[off+uint64(len(p.plan.Jump)):end]...)
		ws = append(ws, write{name: p.rep.Old, addr: p.plan.Addr, old: p.live[off:end], new: nw})
	}
	for _, f := range old.Functions {
		if !kept[f.OldAddr] {
			ws = append(ws, write{name: f.Old, addr: f.PatchAddr, old: f.Jump, new: f.Original})
		}
	}
	return ws
}

// supersedeSwitch switches from old to the new patch rec, target stopped
// and checked (see the steps above). A refused write leaves both records
// as they were.
func (t *Target) supersedeSwitch(rec, old *Record, ps []*planned) error {
	if err := t.setState(old, stateSuperseded); err != nil {
		return err
	}
	err := t.writeAll(rec.Region, supersedeWrites(old, ps), stateApplied)
	if err != nil {
		// writeAll wrote nothing, or undid what it wrote.
		if serr := t.setState(old, stateApplied); serr != nil {
			return errors.Join(err, fmt.Errorf("patch %s: restoring its state word failed (Status still derives \"applied\" from its jumps): %w", old.ID, serr))
		}
	}
	return err
}

// dropSuperseded unmaps the memory of a superseded patch, after the pause
// that switched: no task was in it then, and nothing leads there any
// more. If the unmap fails the record stays, "superseded", for Revert or
// RevertAll to unmap.
func (t *Target) dropSuperseded(old *Record) {
	step("supersede:switched")
	if err := t.proc.Munmap(old.Region, old.RegionSize); err != nil {
		t.log.Warn("could not unmap the superseded patch's memory", "id", old.ID, "err", err)
	}
	step("supersede:unmapped")
}

// supersedeOrder moves each record after the one it superseded (both may
// have been created in the same second), so that a walk newest first, as
// RevertAll's, reverts the newer first.
func supersedeOrder(recs []Record) []Record {
	for moves, i := 0, 0; i < len(recs) && moves < len(recs)*len(recs); i++ {
		for j := i + 1; j < len(recs); j++ {
			if recs[i].Supersedes != "" && recs[i].Supersedes == recs[j].ID {
				r := recs[i]
				copy(recs[i:], recs[i+1:j+1])
				recs[j] = r
				moves++
				i--
				break
			}
		}
	}
	return recs
}
