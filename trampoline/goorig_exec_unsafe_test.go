//go:build linux && (amd64 || arm64) && cgo

package trampoline_test

import (
	"os"
	"reflect"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"unsafe"

	"github.com/stretchr/testify/require"

	"github.com/hotpatch-dev/hotpatch/elfsym"
	"github.com/hotpatch-dev/hotpatch/internal/execmem"
	"github.com/hotpatch-dev/hotpatch/trampoline"
)

// recur recurses with a large frame: a deep call grows the goroutine's
// stack many times.
//
//go:noinline
func recur(n int) int {
	var pad [512]byte
	pad[n&511] = byte(n)
	if n == 0 {
		return int(pad[0])
	}
	return n + recur(n-1) + int(pad[n&511]) - int(byte(n))
}

// symbols finds the named functions in this test binary (stripped: from
// its Go function table) at their file addresses.
func symbols(t *testing.T, names ...string) map[string]elfsym.Symbol {
	exe, err := os.Executable()
	require.NoError(t, err)
	tab, err := elfsym.LoadFile(exe)
	require.NoError(t, err)
	out := map[string]elfsym.Symbol{}
	for _, n := range names {
		s, err := tab.Lookup(n)
		if err != nil {
			s, err = tab.Lookup(strings.TrimSuffix(n, ".abi0"))
		}
		require.NoError(t, err, n)
		out[n] = s
	}
	return out
}

// TestGoOriginalExecutes patches recur in this process with a wrapper that
// counts calls and calls the original built by GoOriginal, entered through
// GoOriginalEntry, and recurses deep in fresh goroutines (small stacks):
// the Go runtime grows the stack from the original's stack check hundreds
// of times, and every call is counted exactly once.
func TestGoOriginalExecutes(t *testing.T) {
	const recurName = "github.com/hotpatch-dev/hotpatch/trampoline_test.recur"
	syms := symbols(t, recurName, "runtime.morestack.abi0", "runtime.morestack_noctxt.abi0")
	entry := reflect.ValueOf(recur).Pointer()
	bias := uint64(entry) - syms[recurName].Addr
	var a trampoline.GoOriginaler = trampoline.AMD64{}
	plan := trampoline.Arch(trampoline.AMD64{})
	if runtime.GOARCH == "arm64" {
		a, plan = trampoline.ARM64{}, trampoline.ARM64{}
	}
	fn := trampoline.Func{Name: "recur", Addr: uint64(entry), Code: execmem.Read(entry, int(syms[recurName].Size))}

	reg, err := execmem.Alloc(4096, entry)
	require.NoError(t, err)
	defer reg.Free()
	entryAt, origAt, thunkAt := uint64(reg.Addr), uint64(reg.Addr)+256, uint64(reg.Addr)+1024
	p, err := plan.Plan(fn, entryAt, thunkAt)
	require.NoError(t, err)
	orig, err := a.GoOriginal(fn, origAt, origAt, syms["runtime.morestack.abi0"].Addr+bias,
		syms["runtime.morestack_noctxt.abi0"].Addr+bias, len(p.Jump))
	require.NoError(t, err)

	var calls atomic.Int64
	origFV := &struct{ fn uintptr }{uintptr(origAt)}
	var origF func(int) int
	*(*unsafe.Pointer)(unsafe.Pointer(&origF)) = unsafe.Pointer(origFV)
	wrapper := func(x int) int { calls.Add(1); return origF(x) }
	ctx := *(*unsafe.Pointer)(unsafe.Pointer(&wrapper))
	reg.Write(0, a.GoOriginalEntry(entryAt, uint64(uintptr(ctx)), uint64(*(*uintptr)(ctx)), origAt, origAt))
	reg.Write(256, orig)

	restore, err := execmem.MakeWritable(entry, len(p.Jump))
	require.NoError(t, err)
	execmem.Write(entry, p.Jump)
	defer func() {
		execmem.Write(entry, p.Original)
		require.NoError(t, restore())
	}()

	const n = 20000
	for _, g := range []int{1, 4} {
		calls.Store(0)
		var wg sync.WaitGroup
		for range g {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if got := recur(n); got != n*(n+1)/2 {
					t.Errorf("recur(%d) = %d", n, got)
				}
			}()
		}
		wg.Wait()
		require.Equal(t, int64(g*(n+1)), calls.Load(), "%d goroutine(s)", g)
	}
	runtime.KeepAlive(origFV)
	runtime.KeepAlive(wrapper)
}
