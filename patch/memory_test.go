//go:build linux

package patch

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/hotpatch-dev/hotpatch/elfsym"
	"github.com/hotpatch-dev/hotpatch/internal/arch"
)

// TestNearGapsReach: patch memory is placed within the reach of the
// target's direct jump, which is ±2 GiB on x86-64 but ±128 MiB on arm64 (a
// gap 1 GiB away is near for one and far for the other).
func TestNearGapsReach(t *testing.T) {
	const code = 0x4000_0000_0000
	maps := []elfsym.Mapping{
		{Start: code - 1<<30 - 1<<20, End: code - 1<<30 + 4<<20}, // its neighbours leave a gap below
		{Start: code - 64<<20, End: code + 8<<20},                // the code, and no gap within 64 MiB
		{Start: code + 8<<20 + 2*pageSize + 64<<10, End: code + 2<<30},
	}
	tests := []struct {
		a        *arch.Arch
		wantNear bool // the gap just above the code's mapping
		wantFar  bool // the gap 1 GiB below
	}{
		{arch.AMD64, true, true},
		{arch.ARM64, true, false},
	}
	for _, tc := range tests {
		t.Run(tc.a.Name, func(t *testing.T) {
			cands := nearGaps(maps, code, 64<<10, tc.a.JumpReach-tc.a.JumpReach/nearMargin)
			var near, far bool
			for _, c := range cands {
				assert.True(t, tc.a.Reaches(code, c) && tc.a.Reaches(code, c+64<<10), "candidate %#x out of reach", c)
				near = near || c > code
				far = far || c < code-512<<20
			}
			assert.Equal(t, tc.wantNear, near, "candidates %x", cands)
			assert.Equal(t, tc.wantFar, far, "candidates %x", cands)
		})
	}
}

// TestPadJumpTrap: the bytes after a short jump in a longer overwritten
// range are the target's trap instruction (BRK #0 on arm64, int3 on
// x86-64), never another architecture's.
func TestPadJumpTrap(t *testing.T) {
	b := []byte{0x01, 0x00, 0x00, 0x14} // B .+4
	got := padJump(arch.ARM64, b, 16)
	require.Len(t, got, 16)
	assert.Equal(t, []byte{0x01, 0x00, 0x00, 0x14, 0, 0, 0x20, 0xd4, 0, 0, 0x20, 0xd4, 0, 0, 0x20, 0xd4}, got)
	assert.Nil(t, padJump(arch.ARM64, b, 10), "no whole number of BRKs")
	assert.Nil(t, padJump(arch.ARM64, append(b, b...), 4), "longer than the range")
	got = padJump(arch.AMD64, []byte{0xe9, 1, 2, 3, 4}, 8)
	assert.Equal(t, []byte{0xe9, 1, 2, 3, 4, 0xcc, 0xcc, 0xcc}, got)
}
