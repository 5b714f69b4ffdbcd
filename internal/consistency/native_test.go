package consistency

import (
	"testing"

	"github.com/stretchr/testify/require"
)

// splitParts covers every group once, in order, in contiguous runs that
// start where their first group starts, as even as whole groups allow.
func TestSplitParts(t *testing.T) {
	for _, tc := range []struct {
		sizes []int // expected words per group (items: sizes[i]/3+2)
		n     int
		want  []uint64 // groups per part
	}{
		{[]int{10, 10, 10, 10}, 2, []uint64{2, 2}},
		{[]int{10, 10, 10, 10}, 1, []uint64{4}},
		{[]int{10, 10, 10, 10}, 8, []uint64{1, 1, 1, 1}},
		{[]int{30, 10, 10, 10}, 2, []uint64{1, 3}},
		{[]int{10}, 2, []uint64{1}},
		{[]int{27, 33, 31, 29, 35, 30}, 3, []uint64{2, 2, 2}},
	} {
		nc := &nativeCheck{itemsOff: 0, expectOff: 1000, outOff: 5000}
		var starts [][2]int
		items, words := 0, 0
		for _, n := range tc.sizes {
			starts = append(starts, [2]int{items, words})
			items += n/3 + 2
			words += n
		}
		parts := splitParts(nc, starts, words, tc.n)
		var got []uint64
		g := 0
		for _, p := range parts {
			require.Equal(t, nc.itemsOff+uint64(8*starts[g][0]), p.items)
			require.Equal(t, nc.expectOff+uint64(8*starts[g][1]), p.expect)
			require.Equal(t, nc.outOff+uint64(g), p.out)
			got = append(got, p.groups)
			g += int(p.groups)
		}
		require.Equal(t, tc.want, got, "%v in %d", tc.sizes, tc.n)
	}
}
