//go:build linux

package patch

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/hotpatch-dev/hotpatch/elfsym"
	"github.com/hotpatch-dev/hotpatch/internal/consistency"
	"github.com/hotpatch-dev/hotpatch/internal/tracee"
)

// Leftover is what a tool killed part-way left in the target that no
// patch's record accounts for: patch memory mapped before its record was
// written, the pages of a remote call ("scratch"), a patch library no
// patch uses and its memfd's descriptor — or a library a revert left
// loaded because a task was in it.
type Leftover struct {
	Kind LeftoverKind `json:"kind"`
	Addr uint64       `json:"addr"`
	Size uint64       `json:"size"`
	// Lib is the patch library (LeftoverLib, LeftoverLibFd), as given to
	// the Apply that loaded it, and ID that Apply's patch.
	Lib string `json:"lib,omitempty"`
	ID  string `json:"id,omitempty"`
	// Fd is the target's descriptor of the library's memfd
	// (LeftoverLibFd).
	Fd *int `json:"fd,omitempty"`
	// Loaded says a LeftoverLib's copy is still mapped (else only its
	// record is left: a tool killed after the dlclose, or before the
	// dlopen).
	Loaded bool `json:"loaded,omitempty"`
}

// LeftoverKind says what a Leftover is.
type LeftoverKind string

func (k LeftoverKind) String() string { return string(k) }

// Kinds of Leftover.
const (
	LeftoverPatchMem LeftoverKind = "unrecorded patch memory"
	LeftoverScratch  LeftoverKind = "scratch"
	// LeftoverUnmarked: a mapping a killed tool's system call made after
	// the tool died, which the intent it left in padding names.
	LeftoverUnmarked LeftoverKind = "unmarked mapping"
	// LeftoverStub: padding of an executable mapping that differs from
	// the object's file: a killed tool's system call stub.
	LeftoverStub LeftoverKind = "system call stub in padding"
	// LeftoverLib: a patch library loaded into the target that no patch
	// uses (its patch reverted while a task was inside it, or a tool
	// killed before its record or during its unload); Addr and Size
	// locate the library's record (see libRecord).
	LeftoverLib LeftoverKind = "patch library"
	// LeftoverLibFd: a descriptor of a patch library's memfd left open
	// in the target (a tool killed between memfd_create and close).
	LeftoverLibFd LeftoverKind = "patch library descriptor"
)

// Leftovers lists the memory hotpatch mapped in the target that no record
// accounts for (see Leftover): every such mapping bears a mark from the
// moment it exists; and the patch libraries no patch uses, and their open
// descriptors (see libRecord).
func (t *Target) Leftovers() (_ []Leftover, err error) {
	defer t.explain("", &err)
	maps, err := elfsym.ReadMappings(t.pid)
	if err != nil {
		return nil, &Error{Op: "status", Pid: t.pid, Err: err}
	}
	var out []Leftover
	for _, m := range maps {
		if !anonymous(m) || len(m.Perms) < 1 || m.Perms[0] != 'r' {
			continue
		}
		hdr := make([]byte, len(mappedMagic)+8)
		if n, _ := t.proc.ReadAt(hdr, int64(m.Start)); n == len(hdr) && string(hdr[:len(mappedMagic)]) == mappedMagic {
			if size := binary.LittleEndian.Uint64(hdr[len(mappedMagic):]); size <= m.End-m.Start {
				out = append(out, Leftover{Kind: LeftoverPatchMem, Addr: m.Start, Size: size})
				continue
			}
		}
		if addr, size, ok := t.proc.ScratchAt(m.End); ok {
			out = append(out, Leftover{Kind: LeftoverScratch, Addr: addr, Size: size})
		}
	}
	libs, err := t.libLeftovers()
	if err != nil {
		return nil, &Error{Op: "status", Pid: t.pid, Err: err}
	}
	out = append(out, libs...)
	stubs, orphans, err := t.proc.Leftovers()
	if err != nil {
		return nil, &Error{Op: "status", Pid: t.pid, Err: err}
	}
	for _, r := range orphans {
		out = append(out, Leftover{Kind: LeftoverUnmarked, Addr: r[0], Size: r[1] - r[0]})
	}
	for _, r := range stubs {
		out = append(out, Leftover{Kind: LeftoverStub, Addr: r[0], Size: r[1] - r[0]})
	}
	return out, nil
}

// cleanup removes what a tool killed part-way left behind: system call
// stubs in padding (the object's file has the bytes) and mappings made
// but never marked (tracee.Recover), unrecorded patch memory (nothing
// jumps there: entries are written only after the record), and scratch
// pages once no task runs in or returns into them (a thread a killed tool
// left in a remote dlopen or dlclose has returned then); with libs, also
// the patch libraries no patch uses, once no task is in them (one a task
// stays in is left loaded and recorded, and logged). It returns how many
// things it put right.
func (t *Target) cleanup(ctx context.Context, o ApplyOptions, libs bool) (int, error) {
	fail := func(err error) (int, error) {
		return 0, &Error{Op: "cleanup", Pid: t.pid, Err: err, Hint: "what was left stays; Leftovers lists it"}
	}
	pads, orphans, err := t.proc.Recover()
	if err != nil {
		return fail(fmt.Errorf("restore padding: %w", err))
	}
	if pads+orphans > 0 {
		t.log.Debug("restored padding a system call stub was left in", "runs", pads, "unmapped", orphans)
	}
	left, err := t.Leftovers()
	if err != nil {
		return 0, err
	}
	var regions []consistency.Region
	for _, l := range left {
		if l.Kind == LeftoverScratch {
			regions = append(regions, consistency.Region{Name: fmt.Sprintf("scratch memory at %#x", l.Addr), Start: l.Addr, End: l.Addr + l.Size})
		}
	}
	if len(regions) > 0 {
		// A tool killed amid a remote call leaves a thread that may still
		// run the callee, which returns into the scratch code.
		src, err := t.source()
		if err != nil {
			return fail(err)
		}
		if _, err := consistency.StopAndCheck(ctx, src, regions, consistency.Policy{Timeout: o.withDefaults().Timeout}, t.syms.Symbolize,
			func(consistency.Snapshot) error { return nil }); err != nil {
			return fail(err)
		}
	}
	for _, l := range left {
		if l.Kind == LeftoverUnmarked || l.Kind == LeftoverStub || l.Kind == LeftoverLib || l.Kind == LeftoverLibFd {
			continue // Recover did (a stub still running: it stays listed); libraries below
		}
		if err := t.proc.Munmap(l.Addr, l.Size); err != nil {
			return fail(fmt.Errorf("unmap %s at %#x: %w", l.Kind, l.Addr, err))
		}
		t.log.Debug("removed leftover", "kind", l.Kind, "addr", fmt.Sprintf("%#x", l.Addr), "size", l.Size)
	}
	if libs {
		if err := t.unloadUnused(ctx, o); err != nil {
			t.log.Warn("a patch library stays loaded", "err", err)
		}
	}
	return pads + orphans + len(left), nil
}

// explain makes an error of a target that exited meanwhile say so (match
// ErrNoProcess): whatever failed first — a file under /proc gone, a read
// of its memory — the cause is the exit. An operation that seemed to
// succeed (op, not "") on a target that exited meanwhile fails with
// ErrNoProcess: its writes went into memory on its way out.
func (t *Target) explain(op string, errp *error) {
	err := *errp
	if errors.Is(err, tracee.ErrExited) || (err == nil && op == "") {
		return
	}
	gone := t.proc.Alive()
	if gone == nil || !errors.Is(gone, tracee.ErrExited) {
		return
	}
	if err == nil {
		*errp = &Error{Op: op, Pid: t.pid, Err: gone, Hint: "the process exited while the tool worked on it"}
		return
	}
	var e *Error
	if errors.As(err, &e) {
		e.Err = fmt.Errorf("%w (%w)", gone, e.Err)
		return
	}
	*errp = fmt.Errorf("%w (%w)", gone, err)
}

// libLeftovers lists the patch libraries no patch uses, and every open
// descriptor of a library's memfd.
func (t *Target) libLeftovers() ([]Leftover, error) {
	lrs, err := t.libRecords()
	if err != nil || len(lrs) == 0 {
		return nil, err
	}
	recs, err := t.Status()
	if err != nil {
		return nil, err
	}
	maps, err := elfsym.ReadMappings(t.pid)
	if err != nil {
		return nil, err
	}
	byRec, byHandle := libUsers(recs)
	var out []Leftover
	for _, lr := range lrs {
		if byRec[lr.addr] == "" && (lr.handle == 0 || byHandle[lr.handle] == "") {
			out = append(out, Leftover{Kind: LeftoverLib, Addr: lr.addr, Size: libRecSize, Lib: lr.path, ID: lr.id,
				Loaded: len(copyMappings(lr, maps)) > 0})
		}
		for _, fd := range t.libFds(lr) {
			out = append(out, Leftover{Kind: LeftoverLibFd, Addr: lr.addr, Size: libRecSize, Lib: lr.path, ID: lr.id, Fd: &fd})
		}
	}
	return out, nil
}
