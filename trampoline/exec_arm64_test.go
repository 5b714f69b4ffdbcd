//go:build cgo

package trampoline_test

import (
	"debug/elf"
	"math"
	"testing"

	"github.com/hotpatch-dev/hotpatch/internal/execmem"
	"github.com/hotpatch-dev/hotpatch/trampoline"
)

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

// TestExecuteARM64 relocates each arm64 sample's prologue, runs the thunk,
// patches the live function, and runs everything again: the relocated code
// must behave exactly like the original. execmem.Write does the cache
// maintenance arm64 needs after writing code.
func TestExecuteARM64(t *testing.T) {
	runExecute(t, elf.EM_AARCH64, "B", execCases())
}
