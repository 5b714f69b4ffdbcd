//go:build linux

package elfsym

import (
	"os"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// Current tells a table of this process from the mappings it was read
// from: a file mapped as code since makes it stale until it is unmapped;
// anonymous memory and a file mapped as data (a database) do not.
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
	db := t.TempDir() + "/db"
	require.NoError(t, os.WriteFile(db, make([]byte, 1<<16), 0o600))
	dbf, err := os.Open(db)
	require.NoError(t, err)
	defer dbf.Close()
	data, err := unix.Mmap(int(dbf.Fd()), 0, 1<<16, unix.PROT_READ, unix.MAP_SHARED)
	require.NoError(t, err)
	require.True(t, current(), "a file mapped as data")
	require.NoError(t, unix.Munmap(data))

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
