//go:build cgo

package trampoline_test

import (
	"debug/elf"
	"fmt"
	"math"
	"runtime"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/hotpatch-dev/hotpatch/internal/execmem"
	"github.com/hotpatch-dev/hotpatch/trampoline"
)

// execCase is a sample function of internal/execmem, with inputs to call it
// with and the refusal expected per placement ("near": thunk and
// replacement within reach of B, ±128 MiB; "far": both more than 4 GiB away).
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

func execCases() []execCase {
	one := func(xs ...int64) [][]int64 {
		var out [][]int64
		for _, x := range xs {
			out = append(out, []int64{x})
		}
		return out
	}
	const guardHigh = math.MaxInt64 // any sp is below it: the morestack path runs
	return []execCase{
		// ADRP, ADR and LDR (literal) become absolute addresses in the
		// far thunk: nothing is refused for distance.
		{name: "hp_adrp_load", inputs: one(0, 5, -3)},
		{name: "hp_adr", inputs: one(0, 5, -3)},
		{name: "hp_ldr_lit", inputs: one(0, 5, -3)},
		{name: "hp_ldrsw_lit", inputs: one(0, 5, -3)},
		{name: "hp_ldr_lit_d", inputs: one(0, 5, -3)},
		{name: "hp_ldr_lit_q", inputs: one(0, 5, -3)},
		{name: "hp_bcond", inputs: one(-5, 0, 7)},
		{name: "hp_cbz", inputs: one(0, 3)},
		{name: "hp_tbnz", inputs: one(0, 3, -3)},
		{name: "hp_b", inputs: one(1, 100)},
		{name: "hp_bl", inputs: one(1, 2)},
		{name: "hp_bti", inputs: one(2, -3)},
		{name: "hp_pac", inputs: one(2, -3)},
		{name: "hp_short", inputs: one(4, -9)},
		// The loop goes back to offset 4: inside the far jump only.
		{name: "hp_branch_back", inputs: [][]int64{{3, 2}, {5, 1}}, refuse: map[string]error{"far": trampoline.ErrBranchIntoPatch}},
		// A loop among the displaced instructions runs in the thunk.
		{name: "hp_loop_inside", inputs: [][]int64{{3, 2}, {5, 1}, {1, 10}}},
		{
			name:    "hp_goprologue",
			inputs:  [][]int64{{1, 0}, {-8, 0}},
			reenter: [][]int64{{1, guardHigh}},
			call: func(fn uintptr, args []int64) int64 {
				return execmem.CallG(fn, args[0], uint64(args[1]))
			},
		},
		{name: "hp_c_sum", inputs: one(0, 1, 10, 100)},
		{name: "hp_c_lookup", inputs: one(0, 3, 13)},
		{name: "hp_c_mix", inputs: [][]int64{{5, 2, 3}, {2, 5, 3}, {9, 9, 1}}},
	}
}

// TestExecuteARM64 relocates each sample's prologue, runs the thunk,
// patches the live function, and runs everything again: the relocated code
// must behave exactly like the original. execmem.Write does the cache
// maintenance arm64 needs after writing code.
func TestExecuteARM64(t *testing.T) {
	if runtime.GOARCH != "arm64" || runtime.GOOS != "linux" {
		t.Skip("executes arm64 code")
	}
	arch, err := trampoline.ForMachine(elf.EM_AARCH64)
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
				t.Skipf("no memory within B reach of the samples (got %#x)", region.Addr)
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
			for i, c := range execCases() {
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
