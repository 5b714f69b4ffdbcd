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

// Leftover is memory a tool killed part-way left in the target that no
// record accounts for: patch memory mapped before its record was written,
// or the pages of a remote call or of a library's name ("scratch").
type Leftover struct {
	Kind LeftoverKind `json:"kind"`
	Addr uint64       `json:"addr"`
	Size uint64       `json:"size"`
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
)

// Leftovers lists the memory hotpatch mapped in the target that no record
// accounts for (see Leftover): every such mapping bears a mark from the
// moment it exists.
func (t *Target) Leftovers() (_ []Leftover, err error) {
	defer t.explain("", &err)
	maps, err := elfsym.ReadMappings(t.pid)
	if err != nil {
		return nil, &Error{Op: "status", Pid: t.pid, Err: err}
	}
	var out []Leftover
	for _, m := range maps {
		if (m.Path != "" && m.Path != "[anon:hotpatch]") || len(m.Perms) < 1 || m.Perms[0] != 'r' {
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
// pages once no task runs in or returns into them. It returns how many
// things it put right.
func (t *Target) cleanup(ctx context.Context, o ApplyOptions) (int, error) {
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
		if l.Kind == LeftoverUnmarked || l.Kind == LeftoverStub {
			continue // Recover did (a stub still running: it stays listed)
		}
		if err := t.proc.Munmap(l.Addr, l.Size); err != nil {
			return fail(fmt.Errorf("unmap %s at %#x: %w", l.Kind, l.Addr, err))
		}
		t.log.Debug("removed leftover", "kind", l.Kind, "addr", fmt.Sprintf("%#x", l.Addr), "size", l.Size)
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
