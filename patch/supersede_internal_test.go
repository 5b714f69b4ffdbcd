//go:build linux

package patch

import (
	"testing"

	"github.com/stretchr/testify/require"
)

// supersedeOrder puts a record after the one it superseded, whatever the
// order of their (same-second) creation times left them in, and leaves
// other orders alone.
func TestSupersedeOrder(t *testing.T) {
	for _, tt := range []struct {
		name string
		in   []Record
		want []string
	}{
		{"none", nil, nil},
		{"unrelated", []Record{{ID: "a"}, {ID: "b"}}, []string{"a", "b"}},
		{"in order", []Record{{ID: "v1"}, {ID: "v2", Supersedes: "v1"}}, []string{"v1", "v2"}},
		{"swapped", []Record{{ID: "v2", Supersedes: "v1"}, {ID: "v1"}}, []string{"v1", "v2"}},
		{"swapped around another", []Record{{ID: "v2", Supersedes: "v1"}, {ID: "x"}, {ID: "v1"}}, []string{"x", "v1", "v2"}},
		{"chain", []Record{{ID: "v3", Supersedes: "v2"}, {ID: "v2", Supersedes: "v1"}, {ID: "v1"}}, []string{"v1", "v2", "v3"}},
		{"cycle (corrupt) ends", []Record{{ID: "a", Supersedes: "b"}, {ID: "b", Supersedes: "a"}}, nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			out := supersedeOrder(tt.in)
			if tt.want == nil {
				require.Len(t, out, len(tt.in))
				return
			}
			var ids []string
			for _, r := range out {
				ids = append(ids, r.ID)
			}
			require.Equal(t, tt.want, ids)
		})
	}
}
