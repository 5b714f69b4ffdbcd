package execmem

/*
#include <stdint.h>
#include <string.h>

// em_write copies bytes that may be code: on arm64 the data and
// instruction caches are not coherent, so the written range is cleaned to
// the point of unification and invalidated in the instruction cache
// (DC CVAU, IC IVAU, DSB ISH, ISB, as __builtin___clear_cache does) before
// anything executes it. On x86-64 this is a no-op.
static void em_write(uintptr_t dst, const void *src, size_t n) {
	memcpy((void *)dst, src, n);
	__builtin___clear_cache((char *)dst, (char *)dst + n);
}
static void em_read(void *dst, uintptr_t src, size_t n) { memcpy(dst, (const void *)src, n); }
*/
import "C"

import "unsafe"

// Write copies b to addr, which must be writable.
func Write(addr uintptr, b []byte) {
	if len(b) > 0 {
		C.em_write(C.uintptr_t(addr), unsafe.Pointer(&b[0]), C.size_t(len(b)))
	}
}

// Read returns a copy of the n bytes at addr, which must be readable.
func Read(addr uintptr, n int) []byte {
	b := make([]byte, n)
	if n > 0 {
		C.em_read(unsafe.Pointer(&b[0]), C.uintptr_t(addr), C.size_t(n))
	}
	return b
}
