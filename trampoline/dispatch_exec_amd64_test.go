package trampoline_test

import (
	"encoding/binary"
	"runtime"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/hotpatch-dev/hotpatch/internal/execmem"
	"github.com/hotpatch-dev/hotpatch/trampoline"
)

// Machine code used by the dispatch tests (System V unless said otherwise).
var (
	// rax += rdi + rcx; the listed target of the thread-keyed test.
	codeListed = []byte{0x48, 0x01, 0xf8, 0x48, 0x01, 0xc8, 0xc3}
	// rax += rdi + rcx + 100.
	codeUnlisted = []byte{0x48, 0x01, 0xf8, 0x48, 0x01, 0xc8, 0x48, 0x83, 0xc0, 0x64, 0xc3}
	// mov rax, fs:[0]; ret — the calling thread's key.
	codeThreadPointer = []byte{0x64, 0x48, 0x8b, 0x04, 0x25, 0, 0, 0, 0, 0xc3}
)

// callThrough returns code that sets rax = rsi and calls the stub at to
// (placed at addr): Call(addr, a1, a2, _, a4) = a2 + a1 + a4 (+100).
func callThrough(addr, to uint64) []byte {
	b := []byte{0x48, 0x89, 0xf0, 0xe8, 0, 0, 0, 0, 0xc3} // mov rax, rsi; call to; ret
	binary.LittleEndian.PutUint32(b[4:], uint32(int32(int64(to)-int64(addr+8))))
	return b
}

// goCall returns code that runs the stub as Go code would reach it: R14 =
// rdi (the g), rax = rsi (Go's first argument register), then calls it;
// R12-R14 are callee-saved in the C ABI, so they are saved around it.
func goCall(addr, to uint64) []byte {
	b := []byte{
		0x41, 0x56, 0x41, 0x54, 0x41, 0x55, // push r14; push r12; push r13
		0x49, 0x89, 0xfe, // mov r14, rdi
		0x48, 0x89, 0xf0, // mov rax, rsi
		0xe8, 0, 0, 0, 0, // call to
		0x41, 0x5d, 0x41, 0x5c, 0x41, 0x5e, // pop r13; pop r12; pop r14
		0xc3,
	}
	binary.LittleEndian.PutUint32(b[13:], uint32(int32(int64(to)-int64(addr+17))))
	return b
}

// Go targets: rax = rax*2 (listed) and rax*3 (unlisted).
var (
	goListed   = []byte{0x48, 0x01, 0xc0, 0xc3}       // add rax, rax; ret
	goUnlisted = []byte{0x48, 0x8d, 0x04, 0x40, 0xc3} // lea rax, [rax+rax*2]; ret
)

// dispatchLab: "listed" and "unlisted" name the codes the first tests send
// listed and unlisted tasks to (table Sel 1: listed tasks run the old code).
type dispatchLab struct {
	region                             *execmem.Region
	listed, unlisted, stub, ctl, table uint64
	call                               uint64
	s                                  *trampoline.Stub
	capacity                           int
}

func newLab(t testing.TB, key trampoline.TaskKey, capacity int) *dispatchLab {
	r, err := execmem.Alloc(1<<16+trampoline.TableSize(capacity), 0)
	require.NoError(t, err)
	t.Cleanup(func() { r.Free() })
	l := &dispatchLab{region: r, capacity: capacity}
	base := uint64(r.Addr)
	l.listed, l.unlisted, l.stub, l.call, l.ctl, l.table = base, base+0x100, base+0x200, base+0x400, base+0x1000, base+0x1040
	lc, uc := codeListed, codeUnlisted
	if key == trampoline.KeyG {
		lc, uc = goListed, goUnlisted
	}
	r.Write(0, lc)
	r.Write(0x100, uc)
	s, err := trampoline.AMD64{}.Stub(key, l.stub, l.ctl, l.listed, l.unlisted)
	require.NoError(t, err)
	l.s = s
	r.Write(0x200, s.Code)
	if key == trampoline.KeyG {
		r.Write(0x400, goCall(l.call, l.stub))
	} else {
		r.Write(0x400, callThrough(l.call, l.stub))
	}
	l.setTable(t, nil)
	return l
}

// setTable makes a table with Sel 1 (unlisted tasks to "unlisted", the new
// code) active.
func (l *dispatchLab) setTable(t testing.TB, e []trampoline.TableEntry) { l.setTableSel(t, e, true) }

func (l *dispatchLab) setTableSel(t testing.TB, e []trampoline.TableEntry, unlistedNew bool) {
	b, err := trampoline.BuildTable(e, l.capacity, unlistedNew)
	require.NoError(t, err)
	l.region.Write(int(l.table-uint64(l.region.Addr)), b)
	var w [8]byte
	binary.LittleEndian.PutUint64(w[:], l.table)
	l.region.Write(int(l.ctl-uint64(l.region.Addr)), w[:])
}

// TestDispatchThread executes the thread-keyed stub: a thread whose thread
// pointer is listed reaches the listed target, any other the unlisted one,
// with rax and rcx (variadic count, fourth argument) intact.
func TestDispatchThread(t *testing.T) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	l := newLab(t, trampoline.KeyThread, 64)
	tpRegion, err := execmem.Alloc(4096, 0)
	require.NoError(t, err)
	defer tpRegion.Free()
	tpRegion.Write(0, codeThreadPointer)
	me := uint64(execmem.Call(tpRegion.Addr))
	require.NotZero(t, me)

	call := func() int64 { return execmem.Call(uintptr(l.call), 1, 20, 0, 300) }
	require.Equal(t, int64(421), call(), "empty table: unlisted")
	// Others, some colliding with our first slot.
	others := []trampoline.TableEntry{{Key: me ^ 0x1000, ID: 1}, {Key: me + 0x10*64, ID: 2}, {Key: 0x7777000, ID: 3}}
	l.setTable(t, others)
	require.Equal(t, int64(421), call(), "not listed")
	l.setTable(t, append(others, trampoline.TableEntry{Key: me, ID: 4}))
	require.Equal(t, int64(321), call(), "listed")
	// Sel 0: unlisted tasks run the old code, listed ones the new.
	l.setTableSel(t, append(others, trampoline.TableEntry{Key: me, ID: 4}), false)
	require.Equal(t, int64(421), call(), "listed, Sel 0")
	l.setTableSel(t, others, false)
	require.Equal(t, int64(321), call(), "unlisted, Sel 0")
	l.setTableSel(t, nil, false)
	require.Equal(t, int64(321), call(), "empty, Sel 0: everyone old")
}

// TestDispatchG executes the g-keyed stub as Go code reaches it.
func TestDispatchG(t *testing.T) {
	l := newLab(t, trampoline.KeyG, 2048)
	const g = 0xc000123400
	call := func(key uint64) int64 { return execmem.Call(uintptr(l.call), int64(key), 7) }
	require.Equal(t, int64(21), call(g), "empty: unlisted")
	var es []trampoline.TableEntry
	for i := uint64(1); i <= 1000; i++ {
		es = append(es, trampoline.TableEntry{Key: 0xc000000000 + i*0x1a0, ID: i})
	}
	l.setTable(t, es)
	require.Equal(t, int64(21), call(g), "1000 others listed")
	for _, e := range es[:50] {
		require.Equal(t, int64(14), call(e.Key), "listed %#x", e.Key)
	}
	require.Equal(t, int64(21), call(g+8))
	l.setTableSel(t, es, false)
	require.Equal(t, int64(14), call(g), "Sel 0: unlisted run the old code")
	require.Equal(t, int64(21), call(es[3].Key), "Sel 0: listed run the new code")
}

// benchLoop returns code that calls `to` n (rdi) times with R14 = rsi.
func benchLoop(addr, to uint64) []byte {
	b := []byte{
		0x41, 0x56, 0x41, 0x54, 0x41, 0x55, 0x53, // push r14, r12, r13, rbx
		0x49, 0x89, 0xf6, // mov r14, rsi
		0x48, 0x89, 0xfb, // mov rbx, rdi
		// loop:
		0x48, 0x89, 0xd8, // mov rax, rbx
		0xe8, 0, 0, 0, 0, // call to
		0x48, 0xff, 0xcb, // dec rbx
		0x75, 0xf3, // jnz loop
		0x5b, 0x41, 0x5d, 0x41, 0x5c, 0x41, 0x5e, // pop rbx, r13, r12, r14
		0xc3,
	}
	binary.LittleEndian.PutUint32(b[17:], uint32(int32(int64(to)-int64(addr+21))))
	return b
}

// BenchmarkDispatch measures the cost of one call through a patched entry:
// "direct" calls the function; "jump" goes through a finalized patch (a jmp
// rel32 at the entry); the stub cases go through a dispatch stub keyed by g
// with an empty table (everyone migrated), with 1,000 other tasks listed
// (the task is not: one probe), and with the task listed.
func BenchmarkDispatch(b *testing.B) {
	l := newLab(b, trampoline.KeyG, 2048)
	base := uint64(l.region.Addr)
	// A patched entry with a finalized jump to the listed target.
	jmpAt := base + 0x600
	l.region.Write(0x600, trampoline.AMD64{}.Jump(jmpAt, l.listed))
	loopAt := base + 0x800
	var es []trampoline.TableEntry
	for i := uint64(1); i <= 1000; i++ {
		es = append(es, trampoline.TableEntry{Key: 0xc000000000 + i*0x1a0, ID: i})
	}
	const g = 0xc000123458
	for _, c := range []struct {
		name  string
		to    uint64
		table []trampoline.TableEntry
		key   uint64
	}{
		{"direct", l.listed, nil, g},
		{"jump", jmpAt, nil, g},
		{"stub-empty", l.stub, nil, g},
		{"stub-unlisted-1000", l.stub, es, g},
		{"stub-listed-1000", l.stub, es, es[500].Key},
	} {
		b.Run(c.name, func(b *testing.B) {
			l.setTable(b, c.table)
			l.region.Write(int(loopAt-base), benchLoop(loopAt, c.to))
			b.ResetTimer()
			execmem.Call(uintptr(loopAt), int64(b.N), int64(c.key))
		})
	}
}
