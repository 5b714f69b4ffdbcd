//go:build linux

package patch

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/hotpatch-dev/hotpatch/internal/consistency"
	"github.com/hotpatch-dev/hotpatch/internal/unwind"
)

// A busy task without a key cannot be listed in a universe table: it makes
// the switch fail, never silently skipped (a thread of a Go target whose g
// could not be found used to be dropped, and the patch reported applied).
func TestBlockedKeys(t *testing.T) {
	region := []consistency.Region{{Name: "f", Start: 0x1000, End: 0x1100}}
	inside := unwind.Stack{Reliable: true, Frames: []unwind.Frame{{PC: 0x1010}}}
	elsewhere := unwind.Stack{Reliable: true, Frames: []unwind.Frame{{PC: 0x2010}}}
	cases := []struct {
		name  string
		tasks []consistency.Task
		keys  []uint64
		err   error
	}{
		{"keyed", []consistency.Task{{Kind: "thread", ID: 1, Key: 0xa0, Stack: inside}}, []uint64{0xa0}, nil},
		{"unkeyed inside", []consistency.Task{{Kind: "thread", ID: 1, Key: 0xa0, Stack: inside}, {Kind: "thread", ID: 2, Stack: inside}}, nil, ErrNoTaskKey},
		{"unkeyed unreliable", []consistency.Task{{Kind: "thread", ID: 2, Stack: unwind.Stack{Reason: "?"}}}, nil, ErrNoTaskKey},
		{"unkeyed elsewhere", []consistency.Task{{Kind: "thread", ID: 2, Stack: elsewhere}}, []uint64{}, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := blockedKeys(consistency.Snapshot{Tasks: c.tasks}, region)
			if c.err != nil {
				require.ErrorIs(t, err, c.err)
				require.Contains(t, err.Error(), "thread 2")
				return
			}
			require.NoError(t, err)
			var keys []uint64
			for k := range got {
				keys = append(keys, k)
			}
			require.ElementsMatch(t, c.keys, keys)
		})
	}
}
