package tracee

import (
	"golang.org/x/sys/unix"
)

// maxIov is the most iovecs one process_vm_readv takes (IOV_MAX).
const maxIov = 1024

// ReadMany fills bufs[i] from address addrs[i], with one process_vm_readv per
// 1024 regions: reading 10,000 goroutine descriptors costs ten system calls,
// not ten thousand. Regions the batch could not read are read one by one
// with ReadAt, whose error (naming the address) is returned.
func (p *Process) ReadMany(addrs []uint64, bufs [][]byte) error {
	for start := 0; start < len(addrs); start += maxIov {
		end := min(start+maxIov, len(addrs))
		local := make([]unix.Iovec, 0, end-start)
		remote := make([]unix.RemoteIovec, 0, end-start)
		for i := start; i < end; i++ {
			if len(bufs[i]) == 0 {
				continue
			}
			v := unix.Iovec{Base: &bufs[i][0]}
			v.SetLen(len(bufs[i]))
			local = append(local, v)
			remote = append(remote, unix.RemoteIovec{Base: uintptr(addrs[i]), Len: len(bufs[i])})
		}
		n, err := unix.ProcessVMReadv(p.pid, local, remote, 0)
		if err != nil {
			n = 0
		}
		// The kernel stops at the first region it cannot read: everything
		// before is complete, the rest is read one at a time.
		for i := start; i < end; i++ {
			l := len(bufs[i])
			if n >= l {
				n -= l
				continue
			}
			n = 0
			if _, err := p.ReadAt(bufs[i], int64(addrs[i])); err != nil {
				return err
			}
		}
	}
	return nil
}
