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

// Layout of a routine's mappings: the code, then (from routineStub) the
// return stub of each thread's call, in slots of routineStubSlot; the data
// mapping holds each thread's call state and stack, then the caller's data.
const (
	// MaxRoutineThreads is how many threads RunEach runs a routine on
	// at most.
	MaxRoutineThreads = 8
	routineCode       = 2 * pageSize
	routineStub       = 2048
	routineStubSlot   = 512
	routineCallState  = 64 << 10
	routineStack      = 16 << 10
	routinePerThread  = routineCallState + routineStack
	routineData       = MaxRoutineThreads * routinePerThread
)

// MapRoutine maps code (at most 2 KiB) and dataSize bytes of data in the
// target. The process may be running (a thread is stopped for the mmap
// calls) or stopped.
func (p *Process) MapRoutine(code []byte, dataSize uint64) (*Routine, error) {
	if len(code) == 0 || len(code) > routineStub {
		return nil, fmt.Errorf("tracee: routine of %d bytes: want 1 to %d", len(code), routineStub)
	}
	r := &Routine{p: p, codeSize: routineCode, DataSize: dataSize}
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
	res, err := r.RunEach([][]uint64{args})
	if err != nil {
		return 0, err
	}
	return res[0], nil
}

// RunAside is Run on a process that is neither stopped nor held: one of
// its threads is stopped for the call alone (preferably one blocked in a
// system call: see stopOne), runs the routine and is restored, while the
// others run on. It serves to run a routine before a stop whose result
// does not matter, for what the run leaves behind: the pages and cache
// lines it touched, warm for the run in the stop.
func (r *Routine) RunAside(args ...uint64) (uint64, error) {
	p := r.p
	if len(args) > maxCallArgs {
		return 0, fmt.Errorf("tracee: routine: %d arguments, at most %d", len(args), maxCallArgs)
	}
	var res uint64
	err := p.do(func() error {
		if p.stopped || p.held {
			return fmt.Errorf("tracee: pid %d: routine aside: %w", p.pid, ErrStopped)
		}
		return p.borrow(0, true, func(t *thread) error {
			c, err := p.prepareCall(t, "routine", r.Code, 0, args, r.pages(0))
			if err != nil {
				return err
			}
			res, err = p.finishCall(c, false)
			return err
		})
	})
	return res, err
}

// RunEach is Run for each of calls (at most MaxRoutineThreads), side by
// side, each on its own thread of the stopped process (the leader first):
// work split in independent parts uses the machine's cores. With fewer
// threads than calls, the rest run in further rounds. It fails when any
// call fails; every thread is put back either way.
func (r *Routine) RunEach(calls [][]uint64) ([]uint64, error) {
	p := r.p
	if len(calls) == 0 || len(calls) > MaxRoutineThreads {
		return nil, fmt.Errorf("tracee: routine: %d calls, want 1 to %d", len(calls), MaxRoutineThreads)
	}
	for _, args := range calls {
		if len(args) > maxCallArgs {
			return nil, fmt.Errorf("tracee: routine: %d arguments, at most %d", len(args), maxCallArgs)
		}
	}
	res := make([]uint64, len(calls))
	err := p.do(func() error {
		if !p.stopped {
			return fmt.Errorf("tracee: pid %d: routine: %w", p.pid, ErrNotStopped)
		}
		// Rounds of as many calls as threads take them side by side.
		for next := 0; next < len(calls); {
			n, err := p.runRound(r, calls[next:], res[next:])
			if err != nil {
				return err
			}
			next += n
		}
		return nil
	})
	return res, err
}

// runRound runs the first of calls side by side, each on its own stopped
// thread, and returns how many it ran (at least one, or an error).
func (p *Process) runRound(r *Routine, calls [][]uint64, res []uint64) (int, error) {
	var pending []*pendingCall
	var errs []error
	for _, tid := range p.order {
		if len(pending) == len(calls) {
			break
		}
		t := p.threads[tid]
		if t == nil || !t.stopped {
			continue
		}
		c, err := p.prepareCall(t, "routine", r.Code, 0, calls[len(pending)], r.pages(len(pending)))
		if err != nil {
			errs = append(errs, err) // another thread may take it
			continue
		}
		pending = append(pending, c)
	}
	if len(pending) == 0 {
		return 0, fmt.Errorf("tracee: pid %d: routine: no thread can take a call: %w", p.pid, errors.Join(errs...))
	}
	started := make([]bool, len(pending))
	for i, c := range pending {
		started[i] = contSyscall(c.t.tid) == nil // else finishCall tries again
	}
	var failed []error
	for i, c := range pending {
		var err error
		if res[i], err = p.finishCall(c, started[i]); err != nil {
			failed = append(failed, err)
		}
	}
	return len(pending), errors.Join(failed...)
}

// pages are the routine's pages for its call on the i-th thread.
func (r *Routine) pages(i int) *callPages {
	data := r.dataMap + uint64(i)*routinePerThread
	return &callPages{
		code:     r.codeMap + routineStub + uint64(i)*routineStubSlot,
		stubSize: routineStubSlot,
		data:     data,
		dataSize: routineCallState,
		stackTop: data + routinePerThread,
	}
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
