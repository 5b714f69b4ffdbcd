package unwind

import "io"

// NewPageCache returns a reader of process memory that reads a page at a
// time and keeps the pages, for one walk of a thread's stack: a walk reads a
// few words per frame from the same few pages, and each read of another
// process's memory is a system call. (A goroutine stack read in a batch
// beforehand needs no cache.)
func NewPageCache(mem io.ReaderAt) io.ReaderAt { return newPageCache(mem) }

// pageCache is NewPageCache's reader.
type pageCache struct {
	mem   io.ReaderAt
	pages map[uint64][]byte // page address → bytes (nil: unreadable)
}

const cachePage = 4096

func newPageCache(mem io.ReaderAt) *pageCache {
	return &pageCache{mem: mem, pages: map[uint64][]byte{}}
}

// ReadAt serves reads that fit in one readable page from the cache, and
// anything else from the underlying reader.
func (c *pageCache) ReadAt(b []byte, off int64) (int, error) {
	addr := uint64(off)
	page := addr &^ (cachePage - 1)
	if addr+uint64(len(b)) > page+cachePage {
		return c.mem.ReadAt(b, off)
	}
	data, ok := c.pages[page]
	if !ok {
		data = make([]byte, cachePage)
		if n, err := c.mem.ReadAt(data, int64(page)); err != nil || n != cachePage {
			data = nil
		}
		c.pages[page] = data
	}
	if data == nil {
		return c.mem.ReadAt(b, off)
	}
	return copy(b, data[addr-page:]), nil
}
