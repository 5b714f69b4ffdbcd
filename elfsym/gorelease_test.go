package elfsym

import (
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/hotpatch-dev/hotpatch/internal/fixture"
	"github.com/hotpatch-dev/hotpatch/internal/gopcln"
	"github.com/hotpatch-dev/hotpatch/internal/goruntime"
)

// TestOldGoReleases: a Go module built by a release older than the
// supported range still resolves its symbols, but is marked unsupported by
// version (with DWARF as without), and its inline trees are refused rather
// than read from go1.19's Go 1.18-format table at the newer offsets.
func TestOldGoReleases(t *testing.T) {
	for _, tc := range fixture.OldGoToolchains {
		for _, flags := range [][]string{nil, {"-ldflags=-s -w"}} {
			t.Run(fmt.Sprint(tc, flags), func(t *testing.T) {
				tab, err := LoadFile(fixture.BuildGo(t, "gotasks", tc, flags...))
				require.NoError(t, err)
				m := tab.Modules[0]
				require.True(t, m.IsGo)
				require.Equal(t, tc, m.GoVersion)
				require.ErrorIs(t, m.GoUnsupported, ErrUnsupportedGo)
				var re *goruntime.ReleaseError
				require.ErrorAs(t, m.GoUnsupported, &re)
				require.Equal(t, tc, re.Version)
				require.ErrorContains(t, m.GoUnsupported, "go1.22–go1.26")

				sym, err := tab.Lookup("main.compute")
				require.NoError(t, err)
				_, err = tab.InlineSites(sym)
				require.ErrorIs(t, err, ErrUnsupportedGo)
				if tc == "go1.19.13" {
					require.ErrorIs(t, err, gopcln.ErrUnsupported, "the table's own refusal is the cause")
				}
			})
		}
	}
	tab, err := LoadFile(fixture.BuildGo(t, "gotasks", ""))
	require.NoError(t, err)
	require.NoError(t, tab.Modules[0].GoUnsupported)
}
