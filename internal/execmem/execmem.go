// Package execmem runs machine code in the calling process, for tests that
// must execute generated code rather than only decode it: it allocates
// executable memory (optionally within near-jump reach of an address: rel32
// on x86-64, B on arm64), copies code into it (with the instruction-cache
// maintenance arm64 needs after writing code), makes text pages temporarily writable so a function can be
// patched in place, and calls code with the platform's C calling
// convention. It also holds sample functions with chosen prologues (see
// Samples), hand-written per architecture.
//
// It is a regular package, not test code, because cgo cannot be used in
// _test.go files. It is for linux/amd64 and linux/arm64.
package execmem

/*
#include <stdint.h>
#include <sys/mman.h>
#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000
#endif

static void *em_mmap(uintptr_t hint, size_t len, int noreplace) {
	int flags = MAP_PRIVATE | MAP_ANONYMOUS | (noreplace ? MAP_FIXED_NOREPLACE : 0);
	void *p = mmap((void *)hint, len, PROT_READ | PROT_WRITE | PROT_EXEC, flags, -1, 0);
	return p == MAP_FAILED ? NULL : p;
}
static int em_munmap(uintptr_t addr, size_t len) { return munmap((void *)addr, len); }
static int em_mprotect(uintptr_t addr, size_t len, int prot) { return mprotect((void *)addr, len, prot); }

typedef long (*em_fn6)(long, long, long, long, long, long);
static long em_call6(uintptr_t fn, long a, long b, long c, long d, long e, long f) {
	return ((em_fn6)fn)(a, b, c, d, e, f);
}
*/
import "C"

import (
	"bufio"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
)

const pageSize = 4096

// Region is a private read+write+execute anonymous mapping.
type Region struct {
	Addr uintptr
	Size int
}

// Alloc maps size bytes (rounded up to pages) of RWX memory. With near != 0
// it tries, with MAP_FIXED_NOREPLACE, the free gaps of /proc/self/maps
// closest to near, so that the region is within Reach of near; if that
// fails it falls back to a plain mapping with near as a hint. The result may
// therefore be anywhere: callers that need reach must check it (Distance).
// To get memory far away, pass a near address that is far away.
func Alloc(size int, near uintptr) (*Region, error) {
	size = (size + pageSize - 1) &^ (pageSize - 1)
	if size == 0 {
		size = pageSize
	}
	if near != 0 {
		for _, c := range candidates(near&^(pageSize-1), size) {
			p, _ := C.em_mmap(C.uintptr_t(c), C.size_t(size), 1)
			if p == nil {
				continue
			}
			if got := uintptr(p); got != c { // kernel without MAP_FIXED_NOREPLACE
				C.em_munmap(C.uintptr_t(got), C.size_t(size))
				continue
			}
			return &Region{Addr: c, Size: size}, nil
		}
	}
	p, err := C.em_mmap(C.uintptr_t(near&^(pageSize-1)), C.size_t(size), 0)
	if p == nil {
		return nil, fmt.Errorf("execmem: mmap of %d bytes: %w", size, err)
	}
	return &Region{Addr: uintptr(p), Size: size}, nil
}

// candidates returns page addresses in free gaps of the address space where
// a mapping of size bytes lies within Reach of near, closest first.
func candidates(near uintptr, size int) []uintptr {
	maps, err := readMaps()
	if err != nil {
		return nil
	}
	const lo, hi = 1 << 20, 0x7fff_ffff_0000
	limit := uintptr(Reach - size - 1<<20)
	var out []uintptr
	prev := uintptr(lo)
	var gaps []mapping
	for _, m := range maps {
		if m.start >= lo && m.end <= hi {
			gaps = append(gaps, m)
		}
	}
	gaps = append(gaps, mapping{start: hi, end: hi})
	for _, m := range gaps {
		gs, ge := prev+pageSize, m.start-pageSize // keep a guard page either side
		if m.end > prev {
			prev = m.end
		}
		if ge <= gs || ge-gs < uintptr(size) {
			continue
		}
		c := min(max(near, gs), ge-uintptr(size))
		if dist(c, near) <= limit {
			out = append(out, c)
		}
	}
	sort.Slice(out, func(i, j int) bool { return dist(out[i], near) < dist(out[j], near) })
	return out
}

func dist(a, b uintptr) uintptr {
	if a > b {
		return a - b
	}
	return b - a
}

// Distance is |a-b|.
func Distance(a, b uintptr) uintptr { return dist(a, b) }

// Write copies b to the start of the region plus off.
func (r *Region) Write(off int, b []byte) {
	if off < 0 || off+len(b) > r.Size {
		panic(fmt.Sprintf("execmem: write of %d bytes at offset %d overruns a %d-byte region", len(b), off, r.Size))
	}
	Write(r.Addr+uintptr(off), b)
}

// Free unmaps the region.
func (r *Region) Free() error {
	if _, err := C.em_munmap(C.uintptr_t(r.Addr), C.size_t(r.Size)); err != nil {
		return fmt.Errorf("execmem: munmap %#x: %w", r.Addr, err)
	}
	return nil
}

// Call calls the code at fn with up to six integer arguments, in the C
// calling convention (rdi.. on x86-64, x0.. on arm64), and returns its
// integer result (rax, x0).
func Call(fn uintptr, args ...int64) int64 {
	if len(args) > 6 {
		panic("execmem: Call takes at most 6 arguments")
	}
	var a [6]C.long
	for i, v := range args {
		a[i] = C.long(v)
	}
	return int64(C.em_call6(C.uintptr_t(fn), a[0], a[1], a[2], a[3], a[4], a[5]))
}

// MakeWritable makes the pages holding [addr, addr+n) readable, writable
// and executable, and returns a function that restores their original
// protection (from /proc/self/maps).
func MakeWritable(addr uintptr, n int) (restore func() error, err error) {
	start := addr &^ (pageSize - 1)
	end := (addr + uintptr(n) + pageSize - 1) &^ (pageSize - 1)
	maps, err := readMaps()
	if err != nil {
		return nil, err
	}
	prot := -1
	for _, m := range maps {
		if m.start <= start && end <= m.end {
			prot = m.prot
		}
	}
	if prot < 0 {
		return nil, fmt.Errorf("execmem: [%#x, %#x) is not inside one mapping", start, end)
	}
	const rwx = C.PROT_READ | C.PROT_WRITE | C.PROT_EXEC
	if _, err := C.em_mprotect(C.uintptr_t(start), C.size_t(end-start), rwx); err != nil {
		return nil, fmt.Errorf("execmem: mprotect %#x RWX: %w", start, err)
	}
	return func() error {
		if _, err := C.em_mprotect(C.uintptr_t(start), C.size_t(end-start), C.int(prot)); err != nil {
			return fmt.Errorf("execmem: mprotect %#x back to %#x: %w", start, prot, err)
		}
		return nil
	}, nil
}

type mapping struct {
	start, end uintptr
	prot       int
}

// readMaps parses /proc/self/maps, sorted by address.
func readMaps() ([]mapping, error) {
	f, err := os.Open("/proc/self/maps")
	if err != nil {
		return nil, fmt.Errorf("execmem: %w", err)
	}
	defer f.Close()
	var out []mapping
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 2 {
			continue
		}
		lohi := strings.SplitN(fields[0], "-", 2)
		if len(lohi) != 2 {
			continue
		}
		lo, err1 := strconv.ParseUint(lohi[0], 16, 64)
		hi, err2 := strconv.ParseUint(lohi[1], 16, 64)
		if err1 != nil || err2 != nil {
			continue
		}
		m := mapping{start: uintptr(lo), end: uintptr(hi)}
		perms := fields[1]
		if strings.Contains(perms, "r") {
			m.prot |= C.PROT_READ
		}
		if strings.Contains(perms, "w") {
			m.prot |= C.PROT_WRITE
		}
		if strings.Contains(perms, "x") {
			m.prot |= C.PROT_EXEC
		}
		out = append(out, m)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].start < out[j].start })
	return out, sc.Err()
}
