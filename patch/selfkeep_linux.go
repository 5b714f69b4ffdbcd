//go:build linux

package patch

import (
	"github.com/hotpatch-dev/hotpatch/elfsym"
	"github.com/hotpatch-dev/hotpatch/internal/tracee"
)

// selfTarget is the self-patch helper's Target of its parent. It is
// attached at the first request; when idle the helper closes it, letting go
// of the process (its lock, /proc/PID/mem), and the next request reopens
// it. What Attach and the first patch read from the process's files (the
// symbol table with its DWARF and inline trees, the unwind tables, the
// goroutine list's layout: hundreds of milliseconds for a test binary) is
// kept for the helper's lifetime, that is the process's, and checked
// against the process's mappings before each request (refresh).
type selfTarget struct {
	t      *Target
	closed bool
}

// get returns the Target, attached, reopened or refreshed as needed.
func (s *selfTarget) get(pid int) (*Target, error) {
	switch {
	case s.t == nil:
		t, err := Attach(pid, &Options{})
		if err != nil {
			return nil, err
		}
		s.t = t
	case s.closed:
		if err := s.t.reopen(); err != nil {
			return nil, err
		}
		s.closed = false
	default:
		if err := s.t.refresh(); err != nil {
			return nil, &Error{Op: "attach", Pid: pid, Err: err}
		}
	}
	return s.t, nil
}

// idle closes the Target and keeps what it read.
func (s *selfTarget) idle() {
	if s.t != nil && !s.closed {
		s.t.Close()
		s.closed = true
	}
}

// reopen opens a closed Target's process again (the same checks and lock
// as Attach) and refreshes its symbols. Only the helper reopens: its
// process cannot be another one under the same PID, since the helper dies
// with it.
func (t *Target) reopen() error {
	proc, err := tracee.Open(t.pid, tracee.LockWait(DefaultLockWait))
	if err != nil {
		return &Error{Op: "attach", Pid: t.pid, Err: err}
	}
	t.proc = proc
	if err := t.refresh(); err != nil {
		proc.Close()
		return &Error{Op: "attach", Pid: t.pid, Err: err}
	}
	return nil
}

// refresh loads the symbols again when the process mapped, unmapped or
// moved an object since they were read (a library dlopen loaded or
// dlclose unloaded): names must resolve, code be checked and stacks be
// walked with the tables of the address space as it is. Unchanged, they
// stay with every cache they carry. The goroutine list's layout is the
// main executable's, which a process keeps.
func (t *Target) refresh() error {
	maps, err := elfsym.ReadMappings(t.pid)
	if err != nil {
		return err
	}
	if t.syms.Current(maps) {
		return nil
	}
	t.log.Debug("the process's mappings changed; reloading its symbols", "pid", t.pid)
	return t.reloadSymbols()
}
