package main

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestParse(t *testing.T) {
	for _, c := range []struct {
		name, in string
		want     []result
	}{
		{"custom metrics", "BenchmarkPause/c-sleep-8-2   \t 20\t 6836197 ns/op\t 711.0 apply-pause-median-us\t 170.0 floor-median-us\n",
			[]result{{"BenchmarkPause/c-sleep-8", map[string]float64{"ns/op": 6836197, "apply-pause-median-us": 711, "floor-median-us": 170}}}},
		{"median of counts", "BenchmarkDispatch/jump-2 1000 3.3 ns/op\nBenchmarkDispatch/jump-2 1000 0.8 ns/op\nBenchmarkDispatch/jump-2 1000 1.1 ns/op\nPASS\n",
			[]result{{"BenchmarkDispatch/jump", map[string]float64{"ns/op": 1.1}}}},
		{"no benchmarks", "goos: linux\nok x 1s\n", nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, err := parse(strings.NewReader(c.in))
			require.NoError(t, err)
			require.Equal(t, c.want, got)
		})
	}
}

// The goals of the issue, judged on the medians.
func TestGoals(t *testing.T) {
	for _, c := range []struct {
		row      pauseRow
		has, met bool
	}{
		{pauseRow{lang: "c", mode: "sleep", n: 8, m: map[string]float64{"apply-pause-median-us": 120, "floor-median-us": 100}}, true, true},
		{pauseRow{lang: "c", mode: "sleep", n: 64, m: map[string]float64{"apply-pause-median-us": 130, "floor-median-us": 100}}, true, false},
		{pauseRow{lang: "c", mode: "sleep", n: 256, m: map[string]float64{"apply-pause-median-us": 140, "floor-median-us": 100}}, true, true},
		{pauseRow{lang: "go", n: 10000, m: map[string]float64{"apply-pause-median-us": 3500}}, true, false},
		{pauseRow{lang: "go", n: 100000, m: map[string]float64{"apply-pause-median-us": 19000}}, true, true},
		{pauseRow{lang: "go", n: 1000, m: map[string]float64{"apply-pause-median-us": 19000}}, false, false},
	} {
		_, met, has := c.row.goal()
		require.Equal(t, []bool{c.has, c.met}, []bool{has, met}, "%s", c.row.label())
	}
}
