//go:build cgo

package trampoline_test

import (
	"encoding/binary"
	"runtime"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/hotpatch-dev/hotpatch/internal/execmem"
	"github.com/hotpatch-dev/hotpatch/trampoline"
)

func words(ws ...uint32) []byte {
	b := make([]byte, 4*len(ws))
	for i, w := range ws {
		binary.LittleEndian.PutUint32(b[4*i:], w)
	}
	return b
}

func bl(from, to uint64) uint32 { return 0x94000000 | uint32((int64(to)-int64(from))/4)&0x3ffffff }

// arm64Lab lays out, in one region: old and new codes, a stub, a caller,
// the control word and a table.
type arm64Lab struct {
	r                                *execmem.Region
	old, new, stub, call, ctl, table uint64
	capacity                         int
}

func newARM64Lab(t *testing.T, key trampoline.TaskKey, oldCode, newCode []byte) *arm64Lab {
	r, err := execmem.Alloc(1<<16+trampoline.TableSize(2048), 0)
	require.NoError(t, err)
	t.Cleanup(func() { r.Free() })
	base := uint64(r.Addr)
	l := &arm64Lab{r: r, old: base, new: base + 0x100, stub: base + 0x200, call: base + 0x400, ctl: base + 0x1000, table: base + 0x1040, capacity: 2048}
	r.Write(0, oldCode)
	r.Write(0x100, newCode)
	s, err := trampoline.ARM64{}.Stub(key, l.stub, l.ctl, l.old, l.new)
	require.NoError(t, err)
	require.LessOrEqual(t, len(s.Code), trampoline.ARM64{}.MaxStubSize())
	r.Write(0x200, s.Code)
	if key == trampoline.KeyG {
		// call(g, x): x28 = g, x0 = x, through the stub.
		r.Write(0x400, words(0xa9bf7bfc, 0xaa0003fc, 0xaa0103e0, bl(l.call+12, l.stub), 0xa8c17bfc, 0xd65f03c0))
	} else {
		// call(a, b): through the stub with x0, x1 as given.
		r.Write(0x400, words(0xa9bf7bfd, bl(l.call+4, l.stub), 0xa8c17bfd, 0xd65f03c0))
	}
	l.set(t, nil, false)
	return l
}

func (l *arm64Lab) set(t *testing.T, es []trampoline.TableEntry, unlistedNew bool) {
	b, err := trampoline.BuildTable(es, l.capacity, unlistedNew)
	require.NoError(t, err)
	l.r.Write(int(l.table-uint64(l.r.Addr)), b)
	var w [8]byte
	binary.LittleEndian.PutUint64(w[:], l.table)
	l.r.Write(int(l.ctl-uint64(l.r.Addr)), w[:])
}

// TestDispatchARM64Thread executes the TPIDR_EL0-keyed stub; X0 and X1 (the
// arguments it saves around the lookup) reach the target intact.
func TestDispatchARM64Thread(t *testing.T) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	oldCode := words(0x8b010000, 0xd65f03c0)             // add x0, x0, x1; ret
	newCode := words(0x8b010000, 0x91019000, 0xd65f03c0) // add x0, x0, x1; add x0, x0, #100; ret
	l := newARM64Lab(t, trampoline.KeyThread, oldCode, newCode)
	tp, err := execmem.Alloc(4096, 0)
	require.NoError(t, err)
	defer tp.Free()
	tp.Write(0, words(0xd53bd040, 0xd65f03c0)) // mrs x0, tpidr_el0; ret
	me := uint64(execmem.Call(tp.Addr))
	require.NotZero(t, me)
	call := func() int64 { return execmem.Call(uintptr(l.call), 20, 1) }

	require.Equal(t, int64(21), call(), "empty, Sel 0: everyone old")
	l.set(t, nil, true)
	require.Equal(t, int64(121), call(), "empty, Sel 1: everyone new")
	others := []trampoline.TableEntry{{Key: me ^ 0x1000, ID: 1}, {Key: me + 16*2048, ID: 2}}
	l.set(t, append(others, trampoline.TableEntry{Key: me, ID: 3}), true)
	require.Equal(t, int64(21), call(), "listed, Sel 1: old")
	l.set(t, append(others, trampoline.TableEntry{Key: me, ID: 3}), false)
	require.Equal(t, int64(121), call(), "listed, Sel 0: new")
	l.set(t, others, false)
	require.Equal(t, int64(21), call(), "unlisted, Sel 0: old")
}

// TestDispatchARM64G executes the X28-keyed stub as Go code reaches it.
func TestDispatchARM64G(t *testing.T) {
	l := newARM64Lab(t, trampoline.KeyG,
		words(0x8b000000, 0xd65f03c0), // add x0, x0, x0; ret   (x*2)
		words(0x8b000400, 0xd65f03c0)) // add x0, x0, x0, lsl #1 (x*3)
	const g = 0x4000123400
	call := func(key uint64) int64 { return execmem.Call(uintptr(l.call), int64(key), 7) }
	var es []trampoline.TableEntry
	for i := uint64(1); i <= 1000; i++ {
		es = append(es, trampoline.TableEntry{Key: 0x4000000000 + i*0x1a0, ID: i})
	}
	l.set(t, es, true)
	require.Equal(t, int64(21), call(g), "unlisted: new")
	for _, e := range es[:50] {
		require.Equal(t, int64(14), call(e.Key), "listed %#x: old", e.Key)
	}
	l.set(t, es, false)
	require.Equal(t, int64(14), call(g), "Sel 0: unlisted old")
	require.Equal(t, int64(21), call(es[7].Key), "Sel 0: listed new")
}
