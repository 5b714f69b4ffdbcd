package unwind

import (
	"encoding/binary"
	"testing"
	"time"

	"github.com/hotpatch-dev/hotpatch/internal/cfi"
)

// FuzzUnwindLibc walks mutated captured stacks through the machine's libc
// by its CFI: a function at entry whose caller's return address leads to
// a frame whose CFI marks the return address undefined (an outermost
// frame: clone's child, say). The fuzzer changes the pc (any FDE), the
// stack words and the frame pointer. A walk never panics or loops, and a
// stack it calls reliable is consistent.
func FuzzUnwindLibc(f *testing.F) {
	m, tab := libcModule(f)
	u := &Unwinder{Arch: AMD64, Modules: []*Module{m}}
	ranges := tab.FuncRanges()
	var outer uint64
	for _, r := range ranges {
		for pc := r[0]; pc < r[1] && pc < r[0]+64 && outer == 0; pc++ {
			if row, ok, err := tab.RowAt(pc); ok && err == nil && row.Regs[16].Kind == cfi.RuleUndefined {
				outer = pc
			}
		}
	}
	if outer == 0 {
		f.Skip("libc has no FDE that marks the return address undefined")
	}
	normal := normalFunc(f, tab, 3)
	fdeOf := func(pc uint64) uint16 {
		for i, r := range ranges {
			if pc >= r[0] && pc < r[1] {
				return uint16(i)
			}
		}
		f.Fatalf("no FDE covers %#x", pc)
		return 0
	}
	const sp0 = 0x7000_0000
	stack := make([]byte, 8*64)
	binary.LittleEndian.PutUint64(stack, outer+1)
	if s := u.Unwind(wordMem{sp0, stack}, pcAt(AMD64, normal)); !s.Reliable || len(s.Frames) != 2 {
		f.Fatalf("the seed stack does not walk: %s %+v", s.Reason, s.Frames)
	}
	spray := make([]byte, len(stack))
	for i := 0; i+8 <= len(spray); i += 8 {
		binary.LittleEndian.PutUint64(spray[i:], outer+1)
	}
	f.Add(fdeOf(normal), uint16(normal-ranges[fdeOf(normal)][0]), uint8(0), uint64(0), false, stack)
	f.Add(fdeOf(normal), uint16(1), uint8(8), uint64(sp0+64), false, spray)
	f.Add(fdeOf(outer)+1, uint16(5), uint8(16), uint64(sp0+128), true, spray)
	f.Fuzz(func(t *testing.T, fi, pcOff uint16, spOff uint8, rbp uint64, ret bool, words []byte) {
		defer watchdog(10 * time.Second)()
		r := ranges[int(fi)%len(ranges)]
		regs := pcAt(AMD64, r[0]+uint64(pcOff)%max(r[1]-r[0], 1))
		regs[7] = sp0 + uint64(spOff)
		regs[6] = rbp
		mem := wordMem{sp0, words}
		var s Stack
		if ret {
			s = u.UnwindReturn(mem, regs)
		} else {
			s = u.Unwind(mem, regs)
		}
		consistent(t, u, s, sp0, sp0+uint64(len(words)))
	})
}
