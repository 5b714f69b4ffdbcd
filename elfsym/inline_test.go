package elfsym

import (
	"sort"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/hotpatch-dev/hotpatch/internal/fixture"
)

func callers(sites []InlineSite) []string {
	seen := map[string]bool{}
	var out []string
	for _, s := range sites {
		if !seen[s.Caller] {
			seen[s.Caller] = true
			out = append(out, s.Caller)
		}
	}
	sort.Strings(out)
	return out
}

// TestInlineSitesGo: main.addOne is inlined into main.inlineCaller (and kept
// out of line too). The pclntab's inline trees find it in a debug build and
// in a stripped one alike (Go's DWARF has no DW_TAG_inlined_subroutine for
// it: its one instruction merged into the caller's), and the two builds
// agree on the callers of every function of the main package.
func TestInlineSitesGo(t *testing.T) {
	dbg, err := LoadFile(fixture.BuildGo(t, "gotasks", ""))
	require.NoError(t, err)
	stripped, err := LoadFile(fixture.BuildGo(t, "gotasks", "", "-ldflags=-s -w"))
	require.NoError(t, err)

	for _, tab := range []*Table{dbg, stripped} {
		sym, err := tab.Lookup("main.addOne")
		require.NoError(t, err)
		sites, err := tab.InlineSites(sym)
		require.NoError(t, err)
		require.Contains(t, callers(sites), "main.inlineCaller")
		for _, s := range sites {
			require.Contains(t, []string{"pclntab", "dwarf"}, s.Source)
			if s.Source == "dwarf" {
				// The address lies inside the caller.
				c, err := tab.Lookup(s.Caller)
				require.NoError(t, err)
				require.True(t, s.Addr >= c.Addr && s.Addr < c.Addr+c.Size, "site %#x outside %s", s.Addr, s.Caller)
			}
		}
		sym, err = tab.Lookup("main.compute")
		require.NoError(t, err)
		sites, err = tab.InlineSites(sym)
		require.NoError(t, err)
		require.Empty(t, sites, "main.compute is //go:noinline")
	}

	// Both sources name the same callers for every main.* function.
	for _, s := range dbg.Search("main.") {
		if s.Module != dbg.Modules[0] {
			continue
		}
		a, err := dbg.InlineSites(s)
		require.NoError(t, err)
		s2, err := stripped.Lookup(s.Name)
		if err != nil {
			continue
		}
		b, err := stripped.InlineSites(s2)
		require.NoError(t, err)
		require.Equal(t, callers(a), callers(b), "callers of %s", s.Name)
	}
}

// TestInlineSitesC: gcc -O2 inlines a static helper into its callers; DWARF
// names them.
func TestInlineSitesC(t *testing.T) {
	tab, err := LoadFile(fixture.BuildC(t, "cservice", "-O2"))
	require.NoError(t, err)
	sym, err := tab.Lookup("scale")
	require.NoError(t, err)
	sites, err := tab.InlineSites(sym)
	require.NoError(t, err)
	require.Contains(t, callers(sites), "compute_scaled")
	for _, s := range sites {
		require.Equal(t, "dwarf", s.Source)
		require.NotZero(t, s.Addr)
	}
}

// The Go inline trees are read from the file once, not with an open and a
// read per function: the first self-patch of a test binary spent 20 ms
// of its 90 ms there.
func TestPclntabInlinesOneRead(t *testing.T) {
	tab, err := LoadFile(fixture.BuildGo(t, "goabi", "", "-ldflags=-s -w"))
	require.NoError(t, err)
	before := codeOpens.Load()
	sites, err := tab.Modules[0].pclntabInlines()
	require.NoError(t, err)
	require.NotEmpty(t, sites)
	require.LessOrEqual(t, codeOpens.Load()-before, int64(1), "files opened")
}
