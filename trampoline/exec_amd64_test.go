package trampoline_test

import (
	"debug/elf"
	"math"
	"testing"

	"github.com/hotpatch-dev/hotpatch/internal/execmem"
	"github.com/hotpatch-dev/hotpatch/trampoline"
)

var farRefusesRIP = map[string]error{"far": trampoline.ErrCannotRelocate}

func execCases() []execCase {
	one := func(xs ...int64) [][]int64 {
		var out [][]int64
		for _, x := range xs {
			out = append(out, []int64{x})
		}
		return out
	}
	const guardHigh = math.MaxInt64 // any rsp is below it: the morestack path runs
	return []execCase{
		{name: "hp_rip_load", inputs: one(0, 5, -3), refuse: farRefusesRIP},
		{name: "hp_rip_lea", inputs: one(0, 5, -3), refuse: farRefusesRIP},
		{name: "hp_rip_cmp", inputs: one(5, 999, 1000, 5000), refuse: farRefusesRIP},
		{name: "hp_vex", inputs: one(0, 5, -3), refuse: farRefusesRIP},
		{name: "hp_jcc8", inputs: one(-5, 0, 7)},
		{name: "hp_jcc32", inputs: one(0, 3)},
		{name: "hp_jmp8", inputs: one(1, 100)},
		{name: "hp_loop", inputs: one(0, 1, 2, 5)},
		{name: "hp_jrcxz", inputs: one(0, 3)},
		{name: "hp_call", inputs: one(1, 2)},
		{name: "hp_endbr", inputs: one(2, -3)},
		{name: "hp_short", inputs: one(4, -9)},
		{name: "hp_branch_back", inputs: [][]int64{{3, 2}}, refuse: map[string]error{
			"near": trampoline.ErrBranchIntoPatch, "far": trampoline.ErrBranchIntoPatch}},
		{
			name:    "hp_goprologue",
			inputs:  [][]int64{{1, 0}, {-8, 0}},
			reenter: [][]int64{{1, guardHigh}},
			call: func(fn uintptr, args []int64) int64 {
				return execmem.CallG(fn, args[0], uint64(args[1]))
			},
		},
		{name: "hp_c_sum", inputs: one(0, 1, 10, 100)},
		{name: "hp_c_lookup", inputs: one(0, 3, 13), refuse: farRefusesRIP}, // lea of the table at offset 3
		{name: "hp_c_mix", inputs: [][]int64{{5, 2, 3}, {2, 5, 3}, {9, 9, 1}}},
	}
}

// TestExecute relocates each sample's prologue, runs the thunk, patches the
// live function, and runs everything again: the relocated code must behave
// exactly like the original.
// TestExecute relocates each x86-64 sample's prologue, runs the thunk,
// patches the live function, and runs everything again: the relocated code
// must behave exactly like the original.
func TestExecute(t *testing.T) {
	runExecute(t, elf.EM_X86_64, "rel32", execCases())
}
