//go:build linux

package patch

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/hotpatch-dev/hotpatch/elfsym"
	"github.com/hotpatch-dev/hotpatch/internal/tracee"
)

// fakeMem is target memory at base; reads outside it fail with cause.
type fakeMem struct {
	base  uint64
	b     []byte
	cause error
}

func (m fakeMem) ReadAt(p []byte, off int64) (int, error) {
	a := uint64(off)
	if a < m.base || a+uint64(len(p)) > m.base+uint64(len(m.b)) {
		return 0, fmt.Errorf("read %d bytes at %#x: %w", len(p), a, m.cause)
	}
	return copy(p, m.b[a-m.base:]), nil
}

// header returns a record header in state st.
func header(t *testing.T, st uint32) []byte {
	t.Helper()
	b, err := encodeRecord(&Record{ID: "hp-00000000", RegionSize: pageSize}, st)
	require.NoError(t, err)
	return b
}

// TestUnreadableRecordRefused: memory that may hold a patch record but
// cannot be read is an error that keeps its cause, never "not a patch",
// "prepared" (unmap it) or "reverted".
func TestUnreadableRecordRefused(t *testing.T) {
	gone := fakeMem{base: 0x1000, cause: tracee.ErrExited}
	t.Run("readRecord", func(t *testing.T) {
		_, _, ok, err := readRecord(gone, elfsym.Mapping{Start: 0x10000, End: 0x11000})
		require.True(t, ok, "an unreadable mapping may be ours")
		require.ErrorIs(t, err, tracee.ErrExited)
	})
	t.Run("everSwitched", func(t *testing.T) {
		rec := &Record{ID: "hp-00000000", Region: 0x10000}
		_, err := everSwitched(gone, rec)
		require.ErrorIs(t, err, tracee.ErrExited)
		for st, want := range map[uint32]bool{statePrepared: false, stateApplied: true, stateReverted: true} {
			got, err := everSwitched(fakeMem{base: 0x10000, b: header(t, st)}, rec)
			require.NoError(t, err)
			require.Equal(t, want, got, stateName(st))
		}
		_, err = everSwitched(fakeMem{base: 0x10000, b: make([]byte, pageSize)}, rec)
		require.ErrorIs(t, err, ErrCodeChanged, "no record there")
	})
	t.Run("liveState", func(t *testing.T) {
		rec := &Record{ID: "hp-00000000", Functions: []Function{{Old: "f", PatchAddr: 0x20000, Original: Bytes{1, 2, 3, 4, 5}, Jump: Bytes{0xe9, 0, 0, 0, 0}}}}
		for _, st := range []uint32{statePrepared, stateApplied, stateTransition, stateReverting, stateReverted} {
			s, err := liveState(gone, rec, st)
			require.ErrorIs(t, err, tracee.ErrExited, "%s: got state %q", stateName(st), s)
			require.True(t, errors.Is(err, ErrNoProcess))
		}
	})
}

// TestLibNotExistKept: a patch library path that does not exist is a bad
// request that keeps fs.ErrNotExist as its cause.
func TestLibNotExistKept(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "libnone.so")
	tg := &Target{pid: 1}
	_, _, err := tg.prepareLib(context.Background(), "hp-test", nil, ApplyOptions{Lib: missing})
	require.ErrorIs(t, err, ErrBadRequest)
	require.ErrorIs(t, err, fs.ErrNotExist)
}
