package tracee

import (
	"errors"
	"fmt"
)

// A Routine is machine code of ours and its data, mapped in the target
// before a stop (MapRoutine) so that running it in the stop (Run) costs no
// system call of the target: work on the stopped target's memory that the
// target's own threads do at the speed of its memory (comparing a few
// hundred thousand scattered words), where reading it from here pins every
// page it touches. Both mappings are scratch memory (see MmapScratch): a
// tool killed before Unmap leaves pages a later one finds and removes.
type Routine struct {
	p *Process
	// Code is the address of the code, Data that of the caller's
	// DataSize bytes of data (read+write).
	Code, Data, DataSize uint64
	codeMap, dataMap     uint64
	codeSize, dataSize   uint64
}

// Layout of a routine's mappings: the code then (from routineStub) the
// return stub of its calls; the data mapping holds the call's state, then
// the routine's own stack, then the caller's data.
const (
	routineStub      = 2048
	routineCallState = 64 << 10
	routineStack     = 16 << 10
	routineData      = routineCallState + routineStack
)

// MapRoutine maps code (at most 2 KiB) and dataSize bytes of data in the
// target. The process may be running (a thread is stopped for the mmap
// calls) or stopped.
func (p *Process) MapRoutine(code []byte, dataSize uint64) (*Routine, error) {
	if len(code) == 0 || len(code) > routineStub {
		return nil, fmt.Errorf("tracee: routine of %d bytes: want 1 to %d", len(code), routineStub)
	}
	r := &Routine{p: p, codeSize: pageSize, DataSize: dataSize}
	r.dataSize = (routineData + dataSize + ScratchFooterSize + pageSize - 1) &^ (pageSize - 1)
	var err error
	if r.codeMap, err = p.MmapScratch(r.codeSize, ProtRead|ProtExec); err != nil {
		return nil, fmt.Errorf("tracee: map a routine's code: %w", err)
	}
	if r.dataMap, err = p.MmapScratch(r.dataSize, ProtRead|ProtWrite); err != nil {
		p.Munmap(r.codeMap, r.codeSize)
		return nil, fmt.Errorf("tracee: map a routine's data: %w", err)
	}
	r.Code, r.Data = r.codeMap, r.dataMap+routineData
	if err := p.do(func() error { return p.writeMem(r.Code, code) }); err != nil {
		r.Unmap()
		return nil, err
	}
	return r, nil
}

// Write writes b at offset off of the routine's data.
func (r *Routine) Write(off uint64, b []byte) error {
	if off+uint64(len(b)) > r.DataSize {
		return fmt.Errorf("tracee: write of %d bytes at %d of a routine's %d bytes of data", len(b), off, r.DataSize)
	}
	return r.p.do(func() error { return r.p.writeMem(r.Data+off, b) })
}

// Run calls the routine with args (integer registers of the platform's C
// calling convention) on one thread of the stopped process and returns its
// integer result. Only that thread runs, on the routine's own stack, and it
// runs none of its own code: once the routine returns, the thread waits in
// the return stub until it is stopped and restored exactly (registers, FP
// state, signal mask). A routine that faults returns a *CallError, the
// thread restored and the signal discarded; ErrCallRanOn means the tracer
// was too slow to stop the thread before the stub gave up waiting, and the
// result is not to be trusted.
func (r *Routine) Run(args ...uint64) (uint64, error) {
	p := r.p
	if len(args) > maxCallArgs {
		return 0, fmt.Errorf("tracee: routine: %d arguments, at most %d", len(args), maxCallArgs)
	}
	at := &callPages{
		code:     r.codeMap + routineStub,
		data:     r.dataMap,
		dataSize: routineCallState,
		stackTop: r.dataMap + routineData,
	}
	var res uint64
	err := p.do(func() error {
		if !p.stopped {
			return fmt.Errorf("tracee: pid %d: routine: %w", p.pid, ErrNotStopped)
		}
		return p.borrow(0, false, func(t *thread) error {
			var err error
			res, err = p.runCallAt(t, "routine", r.Code, 0, args, at)
			return err
		})
	})
	return res, err
}

// Unmap removes the routine's mappings from the target.
func (r *Routine) Unmap() error {
	var errs []error
	if r.dataMap != 0 {
		errs = append(errs, r.p.Munmap(r.dataMap, r.dataSize))
		r.dataMap = 0
	}
	if r.codeMap != 0 {
		errs = append(errs, r.p.Munmap(r.codeMap, r.codeSize))
		r.codeMap = 0
	}
	return errors.Join(errs...)
}
