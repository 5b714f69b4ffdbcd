//go:build linux

package elfsym

import (
	"os"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// Current tells a table of this process from the mappings it was read
// from: a file mapped as code since makes it stale, and so does its
// unmapping's absence; anonymous memory does not.
func TestCurrent(t *testing.T) {
	tab, err := Load(os.Getpid(), nil)
	require.NoError(t, err)
	current := func() bool {
		maps, err := ReadMappings(os.Getpid())
		require.NoError(t, err)
		return tab.Current(maps)
	}
	require.True(t, current())

	anon, err := unix.Mmap(-1, 0, 1<<16, unix.PROT_READ|unix.PROT_EXEC, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	require.NoError(t, err)
	defer unix.Munmap(anon)
	require.True(t, current(), "anonymous memory")

	exe, err := os.Executable()
	require.NoError(t, err)
	f, err := os.Open(exe)
	require.NoError(t, err)
	defer f.Close()
	code, err := unix.Mmap(int(f.Fd()), 0, 1<<16, unix.PROT_READ|unix.PROT_EXEC, unix.MAP_PRIVATE)
	require.NoError(t, err)
	require.False(t, current(), "a file mapped as code since")
	require.NoError(t, unix.Munmap(code))
	require.True(t, current(), "unmapped again")

	file, err := LoadFile(exe)
	require.NoError(t, err)
	maps, err := ReadMappings(os.Getpid())
	require.NoError(t, err)
	require.False(t, file.Current(maps), "a table of a file is no process's")
}
