package consistency

import (
	"regexp"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/hotpatch-dev/hotpatch/internal/fixture"
	"github.com/hotpatch-dev/hotpatch/internal/tracee"
)

// The pages a Prefetch remembers are read again in every stop — a walk sees
// the stopped target's memory, never an earlier stop's — in the batch; it
// remembers the readable pages the walks read, batch or not, and forgets
// the others; a page that cannot be read spoils nothing else.
func TestStackPagesPrefetch(t *testing.T) {
	p := fixture.Start(t, fixture.BuildC(t, "cservice", "-O2"), "1", "sleep")
	p.Expect(t, regexp.MustCompile(`^result`), 10*time.Second)
	proc, err := tracee.Open(p.Pid)
	require.NoError(t, err)
	defer proc.Close()
	page, err := proc.Mmap(0, pageSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	require.NoError(t, err)
	const hole = 0x1000 // never mapped (mmap_min_addr)

	// snap stops the target and returns its pages' cache, and the bytes
	// it reads at page (nil when they cannot be read); read says whether
	// a walk reads them.
	snap := func(pf *Prefetch, read bool) (*sharedPages, []byte) {
		t.Helper()
		require.NoError(t, proc.Stop())
		defer func() { require.NoError(t, proc.Resume()) }()
		all, err := proc.AllRegs()
		require.NoError(t, err)
		c := stackPages(proc, proc.Threads(), all, pf)
		var got []byte
		if read {
			got = make([]byte, 8)
			_, err := c.ReadAt(got, int64(page)+8)
			require.NoError(t, err)
		}
		return c, got
	}
	write := func(s string) {
		require.NoError(t, proc.WriteMem(page+8, []byte(s)))
	}

	pf := &Prefetch{}
	write("first..")
	c, got := snap(pf, true)
	require.Nil(t, c.batch[page], "not remembered yet: read on demand")
	require.Equal(t, "first..\x00", string(got))
	c.done(pf)
	require.Contains(t, pf.list(), page, "read by a walk: remembered")

	write("second.")
	c, got = snap(pf, true)
	require.NotNil(t, c.batch[page], "remembered: read in the batch")
	require.Equal(t, "second.\x00", string(got), "read again in this stop")
	c.done(pf)
	require.Contains(t, pf.list(), page)

	c, _ = snap(pf, false)
	require.NotNil(t, c.batch[page])
	c.done(pf)
	require.NotContains(t, pf.list(), page, "not read by any walk: forgotten")

	// An unreadable page remembered (its mapping gone since) is left out
	// of the batch, not the pages beside it.
	pf.set([]uint64{hole, page})
	write("third..")
	c, got = snap(pf, true)
	require.Nil(t, c.batch[hole])
	require.NotNil(t, c.batch[page])
	require.Equal(t, "third..\x00", string(got))
	_, err = c.ReadAt(make([]byte, 8), hole)
	require.Error(t, err)
	c.done(pf)
	require.Equal(t, []uint64{page}, pf.list(), "only readable pages are remembered")
}
