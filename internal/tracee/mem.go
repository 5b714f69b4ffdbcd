package tracee

import (
	"errors"
	"fmt"
	"io/fs"

	"golang.org/x/sys/unix"
)

// ReadAt reads target memory (process_vm_readv, falling back to
// /proc/PID/mem). It implements io.ReaderAt with off as the address; it does
// not need the process stopped. A short read returns an error naming the
// address and wrapping the cause: ErrExited once the process has exited,
// else the kernel's (EIO for an unmapped page).
func (p *Process) ReadAt(b []byte, off int64) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	addr := uint64(off)
	n, vmErr := vmRead(p.pid, b, addr)
	var memErr error
	if n < len(b) && (!p.exclusive.Load() || p.onLoop()) {
		// Pages process_vm_readv refuses (PROT_NONE, some special
		// mappings) can still be read through /proc/PID/mem; do it on the
		// ptrace thread, where kernels with proc_mem.force_override=ptrace
		// allow it (not while it runs an Exclusive f, which may be
		// waiting for us).
		if err := p.do(func() error {
			m, err := p.memRead(b[n:], addr+uint64(n))
			n += m
			return err
		}); err != nil {
			memErr = err
		}
	}
	if n < len(b) {
		return n, fmt.Errorf("tracee: pid %d: read %d bytes at %#x: cannot read memory at %#x: %w", p.pid, len(b), addr, addr+uint64(n), p.memCause(memErr, vmErr))
	}
	return n, nil
}

// readMem is ReadAt for use on the ptrace goroutine.
func (p *Process) readMem(b []byte, addr uint64) (int, error) {
	n, vmErr := vmRead(p.pid, b, addr)
	if n < len(b) {
		m, err := p.memRead(b[n:], addr+uint64(n))
		n += m
		if n < len(b) {
			return n, fmt.Errorf("tracee: pid %d: cannot read memory at %#x: %w", p.pid, addr+uint64(n), p.memCause(err, vmErr))
		}
	}
	return n, nil
}

// memCause is the cause of a failed memory access, given the errors of the
// ways tried (most telling first): ErrClosed after Close; ErrExited when the
// process has exited (its memory is gone: /proc/PID/mem reads and writes
// nothing, and process_vm_readv finds no process); else the first error.
func (p *Process) memCause(errs ...error) error {
	for _, err := range errs {
		if errors.Is(err, ErrClosed) {
			return err
		}
	}
	if processGone(p.pid) {
		return ErrExited
	}
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return unix.EIO
}

// processGone reports whether every thread of pid has exited (the process
// is a zombie, or reaped). A leader that exited alone (pthread_exit in
// main) leaves the process alive.
func processGone(pid int) bool {
	tids, err := listTasks(pid)
	if err != nil {
		return errors.Is(err, fs.ErrNotExist)
	}
	for _, tid := range tids {
		if s := taskState(pid, tid); s != 0 && s != 'Z' && s != 'X' {
			return false
		}
	}
	return true
}

// vmRead reads with process_vm_readv and returns how much it read.
func vmRead(pid int, b []byte, addr uint64) (int, error) {
	local := []unix.Iovec{{Base: &b[0]}}
	local[0].SetLen(len(b))
	remote := []unix.RemoteIovec{{Base: uintptr(addr), Len: len(b)}}
	n, err := unix.ProcessVMReadv(pid, local, remote, 0)
	if err != nil || n < 0 {
		return 0, err
	}
	return n, nil
}

// memRead preads /proc/PID/mem.
func (p *Process) memRead(b []byte, addr uint64) (int, error) {
	n := 0
	for n < len(b) {
		if p.memfd < 0 {
			return n, ErrClosed
		}
		m, err := pread(p.memfd, b[n:], addr+uint64(n))
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return n, err
		}
		if m <= 0 {
			return n, unix.EIO
		}
		n += m
	}
	return n, nil
}

// WriteMem writes target memory through /proc/PID/mem, which also writes
// read-only and executable pages without changing their protection.
// It runs on the ptrace thread: kernels booted with
// proc_mem.force_override=ptrace allow forced writes only from the tracer,
// so on those WriteMem into read-only pages needs the process stopped.
func (p *Process) WriteMem(addr uint64, data []byte) error {
	if len(data) == 0 {
		return nil
	}
	return p.do(func() error {
		n := 0
		for n < len(data) {
			m, err := pwrite(p.memfd, data[n:], addr+uint64(n))
			if err == unix.EINTR {
				continue
			}
			if err == nil && m <= 0 {
				err = unix.EIO
			}
			if err != nil {
				return fmt.Errorf("tracee: pid %d: write %d bytes at %#x: cannot write memory at %#x: %w", p.pid, len(data), addr, addr+uint64(n), p.memCause(err))
			}
			n += m
		}
		return nil
	})
}
