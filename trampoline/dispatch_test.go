package trampoline

import (
	"encoding/binary"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/arch/x86/x86asm"
)

func TestTableCapacity(t *testing.T) {
	for n, want := range map[int]int{0: 4, 1: 4, 2: 4, 3: 8, 4: 8, 5: 16, 1000: 2048, 1024: 2048} {
		require.Equal(t, want, TableCapacity(n), "n=%d", n)
	}
}

// TestLayoutTable: the header and the used slots alone, where the probe
// puts each key (keys sharing a first slot probe on); with no entry, the
// header of an all-zero table.
func TestLayoutTable(t *testing.T) {
	entries := []TableEntry{{0xc000001000, 1}, {0xc000002000, 2}, {0xc000003000, 3}, {0xc000001010, 4}, {0x7f0000000040, 5}}
	hdr, slots, err := LayoutTable(entries, 16, true)
	require.NoError(t, err)
	require.Equal(t, []byte{0xf0, 0, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, hdr)
	var offs []int
	for i, sl := range slots {
		offs = append(offs, sl.Off)
		require.Equal(t, entries[i].Key, binary.LittleEndian.Uint64(sl.Data[:]))
		require.Equal(t, entries[i].ID, binary.LittleEndian.Uint64(sl.Data[8:]))
	}
	// 0x1000, 0x2000 and 0x3000 share slot 0; 0x1010's slot 1 is taken by
	// then; 0x40 is slot 4.
	require.Equal(t, []int{32, 48, 64, 80, 96}, offs)

	for _, capacity := range []int{4, 1 << 18} {
		hdr, slots, err := LayoutTable(nil, capacity, false)
		require.NoError(t, err)
		require.Empty(t, slots)
		full, err := BuildTable(nil, capacity, false)
		require.NoError(t, err)
		require.Equal(t, full[:TableHeaderSize], hdr)
		require.Equal(t, make([]byte, len(full)-TableHeaderSize), full[TableHeaderSize:])
	}
	_, _, err = LayoutTable(nil, 6, true)
	require.ErrorContains(t, err, "power of two")
	_, _, err = LayoutTable(entries[:3], 4, true)
	require.ErrorContains(t, err, "at most half full")
	_, _, err = LayoutTable([]TableEntry{{7, 1}, {7, 2}}, 8, true)
	require.ErrorContains(t, err, "listed twice")
}

func TestBuildParseTable(t *testing.T) {
	// Keys that share their first slot (same bits under the mask) probe on.
	entries := []TableEntry{{0xc000001000, 1}, {0xc000002000, 2}, {0xc000003000, 3}, {0xc000001010, 4}, {0x7f0000000040, 5}}
	capacity := TableCapacity(len(entries))
	b, err := BuildTable(entries, capacity, true)
	require.NoError(t, err)
	require.Len(t, b, TableSize(capacity))
	got, sel, err := ParseTable(b)
	require.NoError(t, err)
	require.True(t, sel)
	require.ElementsMatch(t, entries, got)

	empty, err := BuildTable(nil, 4, false)
	require.NoError(t, err)
	got, sel, err = ParseTable(empty)
	require.NoError(t, err)
	require.False(t, sel)
	require.Empty(t, got)

	_, err = BuildTable(entries, 6, true)
	require.ErrorContains(t, err, "power of two")
	_, err = BuildTable(entries, 8, true)
	require.ErrorContains(t, err, "half full")
	_, err = BuildTable([]TableEntry{{0, 1}}, 4, true)
	require.ErrorContains(t, err, "key is 0")
	_, err = BuildTable([]TableEntry{{5, 1}, {5, 2}}, 4, true)
	require.ErrorContains(t, err, "twice")

	for _, bad := range [][]byte{nil, b[:8], b[:TableSize(capacity)-1]} {
		_, _, err := ParseTable(bad)
		require.Error(t, err, "%d bytes", len(bad))
	}
	corrupt := append([]byte(nil), b...)
	corrupt[8]++ // count
	_, _, err = ParseTable(corrupt)
	require.ErrorContains(t, err, "says")
}

// TestStubRegisters decodes the stubs and checks that they touch only the
// registers the ABI frees at function entry (plus what they save).
func TestStubRegisters(t *testing.T) {
	allowed := map[TaskKey]map[x86asm.Reg]bool{
		KeyG:      {x86asm.R12: true, x86asm.R13: true, x86asm.R14: true, x86asm.RIP: true},
		KeyThread: {x86asm.RAX: true, x86asm.RCX: true, x86asm.R11: true, x86asm.RIP: true, x86asm.FS: true},
	}
	for key, ok := range allowed {
		s, err := AMD64{}.Stub(key, 0x10000, 0x20000, 0x30000, 0x40000)
		require.NoError(t, err)
		require.LessOrEqual(t, len(s.Code), AMD64{}.MaxStubSize())
		code := s.Code[:len(s.Code)-16] // the two targets follow the code
		for off := 0; off < len(code); {
			in, err := x86asm.Decode(code[off:], 64)
			require.NoError(t, err, "offset %d", off)
			if in.Op == x86asm.INT {
				break // alignment filler before the targets
			}
			for _, a := range in.Args {
				switch a := a.(type) {
				case x86asm.Reg:
					require.True(t, ok[a], "key %d: %v at %d uses %v", key, in, off, a)
				case x86asm.Mem:
					for _, r := range []x86asm.Reg{a.Base, a.Index, a.Segment} {
						require.True(t, r == 0 || ok[r], "key %d: %v at %d uses %v", key, in, off, r)
					}
				}
			}
			off += in.Len
		}
	}
	_, err := AMD64{}.Stub(TaskKey(9), 0, 0, 0, 0)
	require.Error(t, err)
	_, err = AMD64{}.Stub(KeyG, 0x10000, 0x10000+3<<30, 0, 0)
	require.ErrorIs(t, err, ErrCannotRelocate)
}
