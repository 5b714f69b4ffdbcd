package consistency

import (
	"io"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/hotpatch-dev/hotpatch/internal/tracee"
)

const pageSize = 4096

// maxPrefetch bounds the pages a Prefetch remembers (4 MiB read ahead).
const maxPrefetch = 1024

// Prefetch remembers the pages the threads' walks of one snapshot read —
// the stack pages, code pages (a walk reads the code at return addresses
// to recognise assembly without unwind tables, and the arm64 vDSO's signal
// trampoline) — so that the next snapshot of the same target reads them
// all in one system call with the stack pointers' pages, instead of one
// call per page on demand. They are read again in every stop, never reused
// from an earlier one: what a walk sees is the stopped target's memory;
// only fewer system calls fetch it. Safe for concurrent use; the zero value
// is empty.
type Prefetch struct {
	mu    sync.Mutex
	pages []uint64 // sorted page addresses
}

// list returns the pages to read ahead (nil for a nil Prefetch).
func (f *Prefetch) list() []uint64 {
	if f == nil {
		return nil
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.pages)
}

// set replaces the pages to read ahead by used (sorted), at most
// maxPrefetch of them.
func (f *Prefetch) set(used []uint64) {
	if f == nil {
		return
	}
	f.mu.Lock()
	f.pages = used[:min(len(used), maxPrefetch)]
	f.mu.Unlock()
}

// arenas recycles the memory that holds a snapshot's pages (256 threads:
// a megabyte, which, allocated anew in every stop, cost page faults and
// garbage collections inside the pause).
var arenas sync.Pool

// stackPages returns a cache of the stopped target's pages holding, read
// in one batch, the page each thread's stack pointer is in and the pages
// pf remembers (a page that cannot be read is left out: a walk that needs
// it reads it on its own).
func stackPages(p *tracee.Process, tids []int, all map[int]tracee.Regs, pf *Prefetch) *sharedPages {
	ahead := pf.list()
	addrs := make([]uint64, 0, len(tids)+len(ahead))
	for _, tid := range tids {
		regs := all[tid]
		addrs = append(addrs, regs.SP()&^(pageSize-1))
	}
	addrs = append(addrs, ahead...)
	slices.Sort(addrs)
	addrs = slices.Compact(addrs)
	c := onDemandPages(p)
	c.batch = make(map[uint64]*cachedPage, len(addrs))
	need := pageSize * len(addrs)
	if a, ok := arenas.Get().(*[]byte); ok && cap(*a) >= need {
		c.arena = a
	} else {
		b := make([]byte, need)
		c.arena = &b
	}
	arena := (*c.arena)[:need]
	bufs := make([][]byte, len(addrs))
	for i := range addrs {
		bufs[i] = arena[i*pageSize : (i+1)*pageSize : (i+1)*pageSize]
	}
	ok, err := p.ReadPages(addrs, bufs)
	if err != nil {
		return c // the walks read on their own, and fail as the process did
	}
	for i, a := range addrs {
		if ok[i] {
			c.batch[a] = &cachedPage{data: bufs[i]}
		}
	}
	return c
}

// sharedPages reads a stopped target's memory a page at a time and keeps
// the pages, for every walk of one snapshot (safe for concurrent use):
// while the target is stopped its memory does not change. The pages read
// in the batch are looked up without a lock (their map does not change
// during the walks: with 256 threads walked on two cores, a read lock's
// shared counter cost a sixth of the walks); those read on demand, under
// a mutex.
type sharedPages struct {
	mem   io.ReaderAt
	arena *[]byte                // the pages read ahead, returned to arenas by done
	batch map[uint64]*cachedPage // read ahead; not changed during the walks
	mu    sync.Mutex
	more  map[uint64]*cachedPage // read on demand
}

// onDemandPages returns a sharedPages with no batch: each page is read the
// first time a walk needs it.
func onDemandPages(mem io.ReaderAt) *sharedPages {
	return &sharedPages{mem: mem, more: map[uint64]*cachedPage{}}
}

// cachedPage is a page of sharedPages.
type cachedPage struct {
	data []byte      // nil: unreadable
	used atomic.Bool // a walk read it
}

// ReadAt serves reads of up to a page from the cache, page by page (a g
// read whole spans two pages as often as not); a longer one, or one that
// touches an unreadable page, is made from the underlying reader, which
// reports what it cannot read.
func (c *sharedPages) ReadAt(b []byte, off int64) (int, error) {
	if len(b) > pageSize {
		return c.mem.ReadAt(b, off)
	}
	addr := uint64(off)
	for n := 0; n < len(b); {
		a := addr + uint64(n)
		page := a &^ (pageSize - 1)
		cp := c.batch[page]
		if cp == nil {
			cp = c.onDemand(page)
		}
		if !cp.used.Load() { // stored once: the line stays shared between cores
			cp.used.Store(true)
		}
		if cp.data == nil {
			return c.mem.ReadAt(b, off)
		}
		n += copy(b[n:], cp.data[a-page:])
	}
	return len(b), nil
}

// onDemand returns a page not read in the batch, reading it the first time.
func (c *sharedPages) onDemand(page uint64) *cachedPage {
	c.mu.Lock()
	defer c.mu.Unlock()
	if cp := c.more[page]; cp != nil {
		return cp
	}
	data := make([]byte, pageSize)
	if n, err := c.mem.ReadAt(data, int64(page)); err != nil || n != pageSize {
		data = nil
	}
	cp := &cachedPage{data: data}
	c.more[page] = cp
	return cp
}

// done tells pf which readable pages the walks read, for the next
// snapshot to read ahead, and recycles the arena: the cache must not be
// read after it.
func (c *sharedPages) done(pf *Prefetch) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var used []uint64
	for _, m := range []map[uint64]*cachedPage{c.batch, c.more} {
		for a, cp := range m {
			if cp.used.Load() && cp.data != nil {
				used = append(used, a)
			}
		}
	}
	slices.Sort(used)
	pf.set(used)
	c.batch, c.more = nil, nil
	if c.arena != nil {
		arenas.Put(c.arena)
		c.arena = nil
	}
}
