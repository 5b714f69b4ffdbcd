package tracee

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// ReadAt reads target memory (process_vm_readv, falling back to
// /proc/PID/mem). It implements io.ReaderAt with off as the address; it does
// not need the process stopped. A short read returns an error naming the
// address.
func (p *Process) ReadAt(b []byte, off int64) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	addr := uint64(off)
	n := vmRead(p.pid, b, addr)
	if n < len(b) {
		// Pages process_vm_readv refuses (PROT_NONE, some special
		// mappings) can still be read through /proc/PID/mem; do it on the
		// ptrace thread, where kernels with proc_mem.force_override=ptrace
		// allow it.
		_ = p.do(func() error {
			m, _ := p.memRead(b[n:], addr+uint64(n))
			n += m
			return nil
		})
	}
	if n < len(b) {
		return n, fmt.Errorf("tracee: pid %d: read %d bytes at %#x: cannot read memory at %#x", p.pid, len(b), addr, addr+uint64(n))
	}
	return n, nil
}

// readMem is ReadAt for use on the ptrace goroutine.
func (p *Process) readMem(b []byte, addr uint64) (int, error) {
	n := vmRead(p.pid, b, addr)
	if n < len(b) {
		m, err := p.memRead(b[n:], addr+uint64(n))
		n += m
		if n < len(b) {
			return n, fmt.Errorf("tracee: pid %d: cannot read memory at %#x: %v", p.pid, addr+uint64(n), err)
		}
	}
	return n, nil
}

// vmRead reads with process_vm_readv and returns how much it read.
func vmRead(pid int, b []byte, addr uint64) int {
	local := []unix.Iovec{{Base: &b[0]}}
	local[0].SetLen(len(b))
	remote := []unix.RemoteIovec{{Base: uintptr(addr), Len: len(b)}}
	n, err := unix.ProcessVMReadv(pid, local, remote, 0)
	if err != nil || n < 0 {
		return 0
	}
	return n
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
				return fmt.Errorf("tracee: pid %d: write %d bytes at %#x: cannot write memory at %#x: %w", p.pid, len(data), addr, addr+uint64(n), err)
			}
			n += m
		}
		return nil
	})
}
