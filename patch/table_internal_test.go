//go:build linux

package patch

import (
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/hotpatch-dev/hotpatch/trampoline"
)

// slotRuns' writes turn a table laid out for one set of tasks into the
// table BuildTable lays out for another — sparse or dense, sharing slots
// or not — and write no more than the slots that change, joined when close.
func TestSlotRuns(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	entries := func(n int) []trampoline.TableEntry {
		es := make([]trampoline.TableEntry, 0, n)
		seen := map[uint64]bool{}
		for len(es) < n {
			k := 0xc000000000 + rng.Uint64N(1<<24)*8
			if !seen[k] {
				seen[k] = true
				es = append(es, trampoline.TableEntry{Key: k, ID: uint64(len(es) + 1)})
			}
		}
		return es
	}
	for _, capacity := range []int{8, 1 << 10, 1 << 16} {
		for _, n := range [][2]int{{0, 0}, {0, 3}, {3, 0}, {3, 3}, {capacity / 2, 1}, {1, capacity / 2}, {capacity / 2, capacity / 2}} {
			oldEs, newEs := entries(n[0]), entries(n[1])
			if n == [2]int{3, 3} {
				newEs = append(newEs[:1], oldEs[1:]...) // shared tasks
			}
			table, err := trampoline.BuildTable(oldEs, capacity, true)
			require.NoError(t, err)
			_, oldSlots, err := trampoline.LayoutTable(oldEs, capacity, true)
			require.NoError(t, err)
			var old []int
			for _, sl := range oldSlots {
				old = append(old, sl.Off)
			}
			hdr, slots, err := trampoline.LayoutTable(newEs, capacity, false)
			require.NoError(t, err)
			runs := slotRuns(slots, old)
			written := 0
			for i, r := range runs {
				require.GreaterOrEqual(t, r.off, trampoline.TableHeaderSize)
				require.Zero(t, (r.off-trampoline.TableHeaderSize)%trampoline.TableSlotSize)
				if i > 0 {
					require.Greater(t, r.off-(runs[i-1].off+len(runs[i-1].data)), slotRunGap, "runs this close are joined")
				}
				copy(table[r.off:], r.data)
				written += len(r.data)
			}
			copy(table, hdr)
			want, err := trampoline.BuildTable(newEs, capacity, false)
			require.NoError(t, err)
			require.Equal(t, want, table, "capacity %d, %d → %d tasks", capacity, n[0], n[1])
			if len(slots)+len(old) == 0 {
				require.Empty(t, runs)
			}
			require.LessOrEqual(t, written, (len(slots)+len(old))*(trampoline.TableSlotSize+slotRunGap))
		}
	}
}
