//go:build linux && (amd64 || arm64) && cgo

package trampoline_test

import (
	"runtime"
	"testing"
	"unsafe"

	"github.com/hotpatch-dev/hotpatch/internal/arch"
	"github.com/hotpatch-dev/hotpatch/internal/execmem"
	"github.com/hotpatch-dev/hotpatch/trampoline"
	"github.com/stretchr/testify/require"
)

var keep func(int) int

// funcvalOf returns the funcval pointer a func value holds.
func funcvalOf(f func(int) int) unsafe.Pointer { return *(*unsafe.Pointer)(unsafe.Pointer(&f)) }

// TestClosureEntryExecutes calls, through a Go func value, a ClosureEntry
// that enters a closure capturing variables: the closure must see its
// captures (the context register was loaded) and its argument (no argument
// register was touched), and see later writes to them (it is the same
// closure, not a copy).
func TestClosureEntryExecutes(t *testing.T) {
	m := arch.AMD64.Machine
	if runtime.GOARCH == "arm64" {
		m = arch.ARM64.Machine
	}
	base, mul := 1000, 3
	closure := func(x int) int { return base + mul*x }
	keep = closure // on the heap, as a replacement is
	fv0 := funcvalOf(closure)
	ctx, fn := uintptr(fv0), *(*uintptr)(fv0)

	reg, err := execmem.Alloc(4096, fn)
	require.NoError(t, err)
	defer reg.Free()
	code, err := trampoline.ClosureEntry(m, uint64(reg.Addr), uint64(ctx), uint64(fn))
	require.NoError(t, err)
	require.LessOrEqual(t, len(code), trampoline.ClosureEntrySize)
	reg.Write(0, code)

	// A funcval whose fn is the entry and that captures nothing: calling it
	// loads its own address into the context register, which the entry
	// must replace.
	fv := &struct{ fn uintptr }{reg.Addr}
	var viaEntry func(int) int
	*(*unsafe.Pointer)(unsafe.Pointer(&viaEntry)) = unsafe.Pointer(fv)

	for _, x := range []int{0, 1, -7, 1 << 20} {
		require.Equal(t, closure(x), viaEntry(x), "x=%d", x)
	}
	base, mul = -5, 11
	require.Equal(t, -5+11*4, viaEntry(4))
	require.Equal(t, closure(4), viaEntry(4))
	runtime.KeepAlive(fv)
	runtime.KeepAlive(closure)
}

func TestClosureEntryEncoding(t *testing.T) {
	for _, tc := range []struct {
		name string
		m    func() ([]byte, error)
		want []byte
	}{
		{"amd64 near", func() ([]byte, error) {
			return trampoline.ClosureEntry(arch.AMD64.Machine, 0x1000, 0x1122334455667788, 0x2000)
		}, []byte{0x48, 0xba, 0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11, 0xe9, 0xf1, 0x0f, 0, 0}},
		{"arm64", func() ([]byte, error) {
			return trampoline.ClosureEntry(arch.ARM64.Machine, 0x1000, 0x1122334455667788, 0x2000)
		}, []byte{0x9a, 0, 0, 0x58, 0xb0, 0, 0, 0x58, 0, 0x02, 0x1f, 0xd6, 0x1f, 0x20, 0x03, 0xd5,
			0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11, 0, 0x20, 0, 0, 0, 0, 0, 0}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := tc.m()
			require.NoError(t, err)
			require.Equal(t, tc.want, got)
		})
	}
	_, err := trampoline.ClosureEntry(arch.ARM64.Machine, 0x1002, 1, 2)
	require.ErrorIs(t, err, trampoline.ErrCannotRelocate)
}
