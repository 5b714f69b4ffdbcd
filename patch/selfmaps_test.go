//go:build linux

package patch_test

import (
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/hotpatch-dev/hotpatch/internal/fixture"
	"github.com/hotpatch-dev/hotpatch/patch"
)

// TestFuncSeesLibrariesMappedLater: the self-patch helper reads this
// process's symbols once and keeps them, also across its idle close, but a
// library the process maps after a patch (as dlopen does) must be found
// by name at the next one, and one it unmaps must no longer resolve. The
// library's function is C code, so the patch by a Go function is refused
// as such (ErrABI): it was resolved; a stale table would answer
// ErrUnknownSymbol for the new library and resolve the unmapped one.
func TestFuncSeesLibrariesMappedLater(t *testing.T) {
	lib := fixture.BuildSO(t, "foo", "-O2", "-fomit-frame-pointer")
	for _, c := range []struct {
		name string
		idle string // the helper's idle time: it closes its Target in between
	}{
		{"warm", "1m"},
		{"reopened", "100ms"},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Setenv("HOTPATCH_SELF_IDLE", c.idle)
			patch.StopSelfHelper() // the next one reads the setting
			t.Cleanup(patch.StopSelfHelper)
			h, err := patch.Func(answer, otherAnswer)
			require.NoError(t, err)
			require.NoError(t, h.Revert())
			pause := func() {
				if c.idle != "1m" {
					helper := patch.SelfHelperPid()
					require.Eventually(t, func() bool { return !holdsMem(t, helper) }, 5*time.Second, 20*time.Millisecond)
				}
			}
			byName := func() error {
				_, err := patch.FuncByName("libfoo.so:foo_value", func(x int64) int64 { return x })
				return err
			}

			pause()
			unmap := mapLibrary(t, lib)
			err = byName()
			require.ErrorIs(t, err, patch.ErrABI, "libfoo.so, mapped after the first patch, is resolved")
			require.NotErrorIs(t, err, patch.ErrUnknownSymbol)

			pause()
			unmap()
			err = byName()
			require.ErrorIs(t, err, patch.ErrUnknownSymbol, "libfoo.so is unmapped")

			h, err = patch.Func(answer, otherAnswer)
			require.NoError(t, err)
			require.Equal(t, 2, answer())
			require.NoError(t, h.Revert())
		})
	}
}

// mapLibrary maps a shared object's file into this process as code, the
// way the dynamic loader's first mapping of it does, and returns the unmap.
func mapLibrary(t *testing.T, path string) func() {
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	st, err := f.Stat()
	require.NoError(t, err)
	b, err := unix.Mmap(int(f.Fd()), 0, int(st.Size()), unix.PROT_READ|unix.PROT_EXEC, unix.MAP_PRIVATE)
	require.NoError(t, err)
	done := false
	unmap := func() {
		if !done {
			done = true
			require.NoError(t, unix.Munmap(b))
		}
	}
	t.Cleanup(func() {
		if !done {
			done = true
			_ = unix.Munmap(b) // not from a finished test's require
		}
	})
	return unmap
}
