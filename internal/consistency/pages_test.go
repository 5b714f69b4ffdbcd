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

// fakeMem is memory readable in [lo, hi), each byte its address's low
// byte; it counts the reads made.
type fakeMem struct {
	lo, hi uint64
	reads  int
}

func (m *fakeMem) ReadAt(b []byte, off int64) (int, error) {
	m.reads++
	a := uint64(off)
	if a < m.lo || a+uint64(len(b)) > m.hi {
		return 0, unix.EFAULT
	}
	for i := range b {
		b[i] = byte(a + uint64(i))
	}
	return len(b), nil
}

// A read that spans two pages is served from the cache, each page read
// once; one that touches an unreadable page, or is longer than a page, is
// made from the target (which reports what it cannot read).
func TestSharedPagesSpanning(t *testing.T) {
	mem := &fakeMem{lo: 0x10000, hi: 0x13000}
	c := onDemandPages(mem)
	want := func(addr uint64, n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(addr + uint64(i))
		}
		return b
	}
	for range 2 {
		b := make([]byte, 16)
		n, err := c.ReadAt(b, 0x10ff8)
		require.NoError(t, err)
		require.Equal(t, 16, n)
		require.Equal(t, want(0x10ff8, 16), b)
		require.Equal(t, 2, mem.reads, "each page read once")
	}
	require.True(t, c.more[0x10000].used.Load())
	require.True(t, c.more[0x11000].used.Load())

	b := make([]byte, 16)
	_, err := c.ReadAt(b, 0x12ff8)
	require.ErrorIs(t, err, unix.EFAULT, "the page past the end")

	big := make([]byte, pageSize+8)
	reads := mem.reads
	_, err = c.ReadAt(big, 0x10000)
	require.NoError(t, err)
	require.Equal(t, want(0x10000, pageSize+8), big)
	require.Equal(t, reads+1, mem.reads, "longer than a page: one read of its own")
}
