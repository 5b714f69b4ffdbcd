//go:build linux

package patch

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sort"

	"github.com/hotpatch-dev/hotpatch/elfsym"
	"github.com/hotpatch-dev/hotpatch/internal/tracee"
)

// nearMargin is kept from the edge of a direct jump's reach: 1/16 of it, for
// the size of the mapping and the code around it.
const nearMargin = 16

// lowest address we try to map at (vm.mmap_min_addr is 64 KiB by default).
const minMapAddr = 1 << 20

// mapNear maps size bytes of read+execute memory in the target, as close to
// addr as the address space allows (within direct-jump reach when
// possible), and returns its address. The memory is written through
// /proc/PID/mem, never made writable, so targets that forbid writable and
// executable mappings can still be patched.
func (t *Target) mapNear(addr, size uint64) (uint64, error) {
	maps, err := elfsym.ReadMappings(t.pid)
	if err != nil {
		return 0, err
	}
	const prot = tracee.ProtRead | tracee.ProtExec
	for _, cand := range nearGaps(maps, addr, size, t.tarch.JumpReach-t.tarch.JumpReach/nearMargin) {
		got, err := t.proc.MmapMarked(cand, size, prot, mappedHeader(size), 0)
		if err == nil {
			return got, nil
		}
		var se *tracee.SyscallError
		if !errors.As(err, &se) {
			return 0, err // not a refusal of this address: give up
		}
	}
	// No gap within reach (or MAP_FIXED_NOREPLACE unsupported): take any
	// free address; the jumps will use the long form.
	got, err := t.proc.MmapMarked(0, size, prot, mappedHeader(size), 0)
	if err != nil {
		return 0, fmt.Errorf("map %d bytes of patch memory in the target: %w", size, err)
	}
	return got, nil
}

// mappedMagic starts patch memory between its mapping and its record: the
// mark written while the mapping is made (tracee.MmapMarked), so that a
// tool killed before it wrote the record leaves memory the next one finds
// (see Leftovers). The record overwrites it.
const mappedMagic = "hotpatch-mapped\x00"

// mappedHeader is the mark of fresh patch memory of size bytes: magic, size.
func mappedHeader(size uint64) []byte {
	return binary.LittleEndian.AppendUint64([]byte(mappedMagic), size)
}

// nearGaps returns candidate page-aligned addresses for a mapping of size
// bytes in the holes between mappings, nearest to addr first, each within
// reach of addr (the target's direct jump, less a margin).
func nearGaps(maps []elfsym.Mapping, addr, size, reach uint64) []uint64 {
	sorted := append([]elfsym.Mapping(nil), maps...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].Start < sorted[j].Start })
	var cands []uint64
	prevEnd := uint64(minMapAddr)
	const guard = pageSize // leave a page between us and our neighbours
	consider := func(lo, hi uint64) {
		lo += guard
		if hi < guard+size || lo > hi-guard-size {
			return
		}
		hi -= guard + size // highest start
		// The start nearest addr within [lo, hi].
		start := addr
		if start < lo {
			start = lo
		}
		if start > hi {
			start = hi
		}
		start &^= pageSize - 1
		if start < lo {
			start += pageSize
		}
		if start > hi {
			return
		}
		if dist(start, addr) < reach && dist(start+size, addr) < reach {
			cands = append(cands, start)
		}
	}
	for _, m := range sorted {
		if m.Start > prevEnd {
			consider(prevEnd, m.Start)
		}
		if m.End > prevEnd {
			prevEnd = m.End
		}
	}
	sort.Slice(cands, func(i, j int) bool { return dist(cands[i], addr) < dist(cands[j], addr) })
	if len(cands) > 8 {
		cands = cands[:8]
	}
	return cands
}

func dist(a, b uint64) uint64 {
	if a > b {
		return a - b
	}
	return b - a
}
