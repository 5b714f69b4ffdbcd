//go:build cgo && (amd64 || arm64)

package trampoline_test

import (
	"debug/elf"
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/hotpatch-dev/hotpatch/internal/execmem"
	"github.com/hotpatch-dev/hotpatch/trampoline"
)

// execCase is a sample function of internal/execmem, with inputs to call it
// with and the refusal expected per placement ("near": thunk and
// replacement within reach of the near jump; "far": both more than 4 GiB away).
type execCase struct {
	name   string
	inputs [][]int64
	refuse map[string]error
	// reenter: inputs on which the original jumps back to its entry, so that
	// once the entry is patched even the thunk ends up in the replacement.
	reenter [][]int64
	// call overrides execmem.Call.
	call func(fn uintptr, args []int64) int64
}

// runExecute relocates each sample of cases for machine, runs the thunk,
// patches the live function, and runs everything again, with the thunk and
// replacement near the sample and far from it ("reach" names the near
// jump's range in skip messages).
func runExecute(t *testing.T, machine elf.Machine, reach string, cases []execCase) {
	arch, err := trampoline.ForMachine(machine)
	require.NoError(t, err)
	repl, err := execmem.Lookup("hp_repl")
	require.NoError(t, err)
	replCode := repl.Code()

	for _, mode := range []string{"near", "far"} {
		t.Run(mode, func(t *testing.T) {
			hint := repl.Addr
			if mode == "far" {
				hint += 1 << 36
			}
			region, err := execmem.Alloc(1<<16, hint)
			require.NoError(t, err)
			defer region.Free()
			d := execmem.Distance(region.Addr, repl.Addr)
			if mode == "near" && d > execmem.Reach-(1<<20) {
				t.Skipf("no memory within %s reach of the samples (got %#x)", reach, region.Addr)
			}
			if mode == "far" && d < 1<<32 {
				t.Skipf("could not map memory far from the samples (got %#x)", region.Addr)
			}
			newAddr := uint64(repl.Addr)
			if mode == "far" {
				// The replacement is position-independent: run a copy far away.
				region.Write(1<<15, replCode)
				newAddr = uint64(region.Addr + 1<<15)
			}
			for i, c := range cases {
				t.Run(c.name, func(t *testing.T) {
					thunkAddr := uint64(region.Addr) + uint64(i)*256
					runExecCase(t, arch, c, mode, region, thunkAddr, newAddr)
				})
			}
		})
	}
}

func runExecCase(t *testing.T, arch trampoline.Arch, c execCase, mode string, region *execmem.Region, thunkAddr, newAddr uint64) {
	s, err := execmem.Lookup(c.name)
	require.NoError(t, err)
	call := c.call
	if call == nil {
		call = func(fn uintptr, args []int64) int64 { return execmem.Call(fn, args...) }
	}
	fn := trampoline.Func{Name: s.Name, Addr: uint64(s.Addr), Code: s.Code(), Padding: s.Padding()}
	p, err := arch.Plan(fn, newAddr, thunkAddr)
	if want := c.refuse[mode]; want != nil {
		require.ErrorIs(t, err, want)
		var e *trampoline.Error
		require.ErrorAs(t, err, &e)
		require.Equal(t, s.Name, e.Func)
		t.Logf("refused as expected: %v", err)
		return
	}
	require.NoError(t, err)
	require.LessOrEqual(t, len(p.Thunk), arch.MaxThunkSize())
	require.Equal(t, len(p.Jump), len(p.Original))
	require.Equal(t, execmem.Read(uintptr(p.Addr), len(p.Original)), p.Original, "Original must be the live bytes at Addr")
	require.Equal(t, arch.Jump(p.Addr, newAddr), p.Jump[:len(arch.Jump(p.Addr, newAddr))])
	t.Logf("jump % x\nthunk % x", p.Jump, p.Thunk)

	region.Write(int(thunkAddr-uint64(region.Addr)), p.Thunk)
	thunk := uintptr(thunkAddr)
	want := make([]int64, len(c.inputs))
	for j, in := range c.inputs {
		want[j] = call(s.Addr, in)
		require.Equal(t, want[j], call(thunk, in), "thunk(%v) before patching", in)
	}

	restoreProt, err := execmem.MakeWritable(uintptr(p.Addr), len(p.Jump))
	require.NoError(t, err)
	patched := true
	unpatch := func() {
		if patched {
			execmem.Write(uintptr(p.Addr), p.Original)
			require.NoError(t, restoreProt())
			patched = false
		}
	}
	t.Cleanup(unpatch)
	execmem.Write(uintptr(p.Addr), p.Jump)

	for j, in := range c.inputs {
		require.Equal(t, 3*in[0], call(s.Addr, in), "patched %s(%v) must reach the replacement", s.Name, in)
		require.Equal(t, want[j], call(thunk, in), "thunk(%v) while patched", in)
	}
	for _, in := range c.reenter {
		require.Equal(t, 3*in[0], call(thunk, in), "thunk(%v) re-enters the patched entry", in)
	}
	unpatch()
	for j, in := range c.inputs {
		require.Equal(t, want[j], call(s.Addr, in), "%s(%v) after restoring", s.Name, in)
	}
	for _, in := range c.reenter {
		require.Equal(t, call(thunk, in), call(s.Addr, in), fmt.Sprintf("thunk(%v) after restoring", in))
	}
}
