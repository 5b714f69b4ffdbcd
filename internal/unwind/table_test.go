package unwind_test

import (
	"debug/elf"
	"os"
	"runtime"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/hotpatch-dev/hotpatch/elfsym"
	"github.com/hotpatch-dev/hotpatch/internal/unwind"
)

// TestForTable: the unwinder of a symbol table has the architecture of its
// executable and, per module, its range, bias, tables and Go refusal.
func TestForTable(t *testing.T) {
	exe, err := os.Executable()
	require.NoError(t, err)
	tab, err := elfsym.LoadFile(exe)
	require.NoError(t, err)
	u := unwind.ForTable(tab)
	want := map[string]unwind.Arch{"amd64": unwind.AMD64, "arm64": unwind.ARM64}[runtime.GOARCH]
	require.Equal(t, want.Target, u.Arch.Target)
	require.Equal(t, want.CalleeSaved, u.Arch.CalleeSaved)
	require.Equal(t, [4]int{want.PtrSize, want.SPReg, want.RAReg, want.LRReg}, [4]int{u.Arch.PtrSize, u.Arch.SPReg, u.Arch.RAReg, u.Arch.LRReg})
	require.Len(t, u.Modules, len(tab.Modules))
	for i, um := range u.Modules {
		m := tab.Modules[i]
		require.Equal(t, m.Path, um.Name)
		require.Equal(t, m.Bias, um.Bias)
		require.Equal(t, [2]uint64{m.TextStart, m.TextEnd}, [2]uint64{um.Start, um.End})
		require.Equal(t, m.GoUnsupported, um.Refused)
		tabs := m.UnwindTables()
		require.Equal(t, tabs.Pclntab, um.Pclntab)
		require.Equal(t, tabs.EHFrame, um.EHFrame)
	}
	require.NotEmpty(t, u.Modules[0].Pclntab, "a Go test binary has a function table")
	require.Equal(t, map[string]elf.Machine{"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64}[runtime.GOARCH], tab.Modules[0].Machine)
}
