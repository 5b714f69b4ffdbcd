package tracee

import (
	"sort"

	"golang.org/x/sys/unix"
)

const (
	// maxIov is the most iovecs one process_vm_readv takes (IOV_MAX).
	maxIov = 1024
	// mergeGap: regions closer than this are read as one (the kernel's
	// cost is per region, pinning pages; copying a gap is cheap).
	mergeGap = 4096
	// maxRun bounds one merged read.
	maxRun = 1 << 20
)

// ReadMany fills bufs[i] from address addrs[i]. Regions are sorted and those
// close together merged, then read with process_vm_readv 1024 runs at a
// time: the 10,000 goroutine descriptors of a Go target, which the runtime
// allocates side by side, cost a handful of system calls. A run the kernel
// cannot read wholly is read region by region with ReadAt, whose error
// (naming the address) is returned.
func (p *Process) ReadMany(addrs []uint64, bufs [][]byte) error {
	if err := p.readMany(addrs, bufs); err != nil {
		return err
	}
	// process_vm_readv names the process by PID: what it read is the
	// process's own only if that one has not exited since.
	return p.id.same(p.pid)
}

func (p *Process) readMany(addrs []uint64, bufs [][]byte) error {
	idx := make([]int, 0, len(addrs))
	for i := range addrs {
		if len(bufs[i]) > 0 {
			idx = append(idx, i)
		}
	}
	sort.Slice(idx, func(a, b int) bool { return addrs[idx[a]] < addrs[idx[b]] })
	type run struct {
		addr, end uint64
		members   []int
	}
	var runs []run
	for _, i := range idx {
		a, e := addrs[i], addrs[i]+uint64(len(bufs[i]))
		if n := len(runs); n > 0 && a <= runs[n-1].end+mergeGap && max(e, runs[n-1].end)-runs[n-1].addr <= maxRun {
			r := &runs[n-1]
			r.end = max(r.end, e)
			r.members = append(r.members, i)
			continue
		}
		runs = append(runs, run{addr: a, end: e, members: []int{i}})
	}
	for start := 0; start < len(runs); start += maxIov {
		batch := runs[start:min(start+maxIov, len(runs))]
		size := uint64(0)
		for _, r := range batch {
			size += r.end - r.addr
		}
		data := make([]byte, size)
		local := make([]unix.Iovec, len(batch))
		remote := make([]unix.RemoteIovec, len(batch))
		off := uint64(0)
		for k, r := range batch {
			n := r.end - r.addr
			local[k] = unix.Iovec{Base: &data[off]}
			local[k].SetLen(int(n))
			remote[k] = unix.RemoteIovec{Base: uintptr(r.addr), Len: int(n)}
			off += n
		}
		got, err := unix.ProcessVMReadv(p.pid, local, remote, 0)
		if err != nil {
			got = 0
		}
		// The kernel stops at the first run it cannot read: the runs
		// before it are complete, the rest is read region by region.
		off = 0
		for _, r := range batch {
			n := r.end - r.addr
			whole := uint64(got) >= off+n
			for _, i := range r.members {
				if whole {
					copy(bufs[i], data[off+addrs[i]-r.addr:])
					continue
				}
				if _, err := p.ReadAt(bufs[i], int64(addrs[i])); err != nil {
					return err
				}
			}
			off += n
		}
	}
	return nil
}

// ReadPages fills bufs[i] from addrs[i], each region read straight into its
// buffer (no copy), up to 1024 regions a process_vm_readv, and reports in
// ok which regions were read wholly. A region the kernel cannot read is
// left out, not an error: for reads ahead of need (pages a walk may read),
// where ReadMany would fall back to reading every later region one by one.
// The error is the process's exit (what was read would not be its own).
func (p *Process) ReadPages(addrs []uint64, bufs [][]byte) (ok []bool, err error) {
	ok = make([]bool, len(addrs))
	local := make([]unix.Iovec, 0, min(len(addrs), maxIov))
	remote := make([]unix.RemoteIovec, 0, cap(local))
	for i := 0; i < len(addrs); {
		local, remote = local[:0], remote[:0]
		for j := i; j < len(addrs) && len(local) < maxIov; j++ {
			if len(bufs[j]) == 0 {
				break
			}
			v := unix.Iovec{Base: &bufs[j][0]}
			v.SetLen(len(bufs[j]))
			local = append(local, v)
			remote = append(remote, unix.RemoteIovec{Base: uintptr(addrs[j]), Len: len(bufs[j])})
		}
		if len(local) == 0 { // an empty buffer: nothing to read
			ok[i] = true
			i++
			continue
		}
		got, rerr := unix.ProcessVMReadv(p.pid, local, remote, 0)
		if rerr == unix.ESRCH {
			return ok, p.exited()
		}
		if rerr != nil {
			got = 0
		}
		// The kernel stops at the first region it cannot read: those
		// before it are whole; that one is skipped.
		whole := 0
		for _, v := range local {
			if got < int(v.Len) {
				break
			}
			got -= int(v.Len)
			ok[i+whole] = true
			whole++
		}
		i += whole
		if whole < len(local) {
			i++
		}
	}
	return ok, p.id.same(p.pid)
}
