package execmem

/*
#cgo CFLAGS: -O2
#include <stdint.h>

// FUNC starts a sample; END ends it with a NAME_end label, since test
// binaries carry no symbol table to give sizes.
#define FUNC(f) ".p2align 4\n.globl " #f "\n.type " #f ",%function\n" #f ":\n"
#define END(f) ".size " #f ", .-" #f "\n.globl " #f "_end\n" #f "_end:\n"
#define CEND(f) __asm__(".pushsection .text\n.globl " #f "_end\n" #f "_end:\n.popsection\n");

// Sample functions with hand-picked prologues. Each takes integer arguments
// in x0, x1, ... and returns x0. A 4-byte B displaces the first
// instruction, the 16-byte LDR/BR/.quad the first four: the comments give
// the byte offsets the trampoline tests rely on.
__asm__(
	".pushsection .text\n"

	// Replacement target: 3*x. Position-independent, so tests may copy it.
	FUNC(hp_repl)
	"	add x0, x0, x0, lsl #1\n"
	"	ret\n"
	END(hp_repl)

	// ADRP first: x + 1000.
	FUNC(hp_adrp_load)
	"	adrp x1, hp_data\n" // 0
	"	ldr x1, [x1, :lo12:hp_data]\n"
	"	add x0, x0, x1\n"
	"	ret\n"
	END(hp_adrp_load)

	// ADR first, of a constant inside the function: x * 7.
	FUNC(hp_adr)
	"	adr x1, 1f\n" // 0
	"	ldr x1, [x1]\n"
	"	mul x0, x0, x1\n"
	"	ret\n"
	"	.p2align 3\n"
	"1:	.quad 7\n"
	END(hp_adr)

	// LDR (literal) into an X register first: x + 1000.
	FUNC(hp_ldr_lit)
	"	ldr x1, 1f\n" // 0
	"	add x0, x0, x1\n"
	"	ret\n"
	"	.p2align 3\n"
	"1:	.quad 1000\n"
	END(hp_ldr_lit)

	// LDRSW (literal) at offset 4: x - 5.
	FUNC(hp_ldrsw_lit)
	"	mov x2, x0\n"
	"	ldrsw x1, 1f\n" // 4
	"	add x0, x2, x1\n"
	"	ret\n"
	"1:	.word -5\n"
	END(hp_ldrsw_lit)

	// LDR (literal) into a D register: trunc(x * 2.5).
	FUNC(hp_ldr_lit_d)
	"	ldr d0, 1f\n" // 0
	"	scvtf d1, x0\n"
	"	fmul d1, d1, d0\n"
	"	fcvtzs x0, d1\n"
	"	ret\n"
	"	.p2align 3\n"
	"1:	.double 2.5\n"
	END(hp_ldr_lit_d)

	// LDR (literal) into a Q register: x + 77.
	FUNC(hp_ldr_lit_q)
	"	ldr q0, 1f\n" // 0
	"	mov x1, v0.d[1]\n"
	"	add x0, x0, x1\n"
	"	ret\n"
	"	.p2align 4\n"
	"1:	.quad 1, 77\n"
	END(hp_ldr_lit_q)

	// B.cond at offset 4: x < 0 ? -1 : 2x+256.
	FUNC(hp_bcond)
	"	cmp x0, #0\n"
	"	b.lt 1f\n" // 4
	"	lsl x0, x0, #1\n"
	"	add x0, x0, #256\n"
	"	ret\n"
	"1:	mov x0, #-1\n"
	"	ret\n"
	END(hp_bcond)

	// CBZ first: x == 0 ? 99 : x+1.
	FUNC(hp_cbz)
	"	cbz x0, 1f\n" // 0
	"	add x0, x0, #1\n"
	"	ret\n"
	"1:	mov x0, #99\n"
	"	ret\n"
	END(hp_cbz)

	// TBNZ first: x < 0 ? -x : 4x.
	FUNC(hp_tbnz)
	"	tbnz x0, #63, 1f\n" // 0
	"	lsl x0, x0, #2\n"
	"	ret\n"
	"1:	neg x0, x0\n"
	"	ret\n"
	END(hp_tbnz)

	// B at offset 4: x + 5.
	FUNC(hp_b)
	"	mov x1, x0\n"
	"	b 1f\n" // 4
	"	brk #0\n"
	"	brk #0\n"
	"1:	add x0, x1, #5\n"
	"	ret\n"
	END(hp_b)

	// BL at offset 8: x + 10.
	FUNC(hp_bl)
	"	stp x29, x30, [sp, #-32]!\n"
	"	str x0, [sp, #16]\n"
	"	bl hp_helper\n" // 8
	"	ldr x1, [sp, #16]\n"
	"	add x0, x0, x1\n"
	"	ldp x29, x30, [sp], #32\n"
	"	ret\n"
	END(hp_bl)
	FUNC(hp_helper)
	"	mov x0, #10\n"
	"	ret\n"
	END(hp_helper)

	// BTI c first (the jump goes after it): x*x + 3 + x.
	FUNC(hp_bti)
	"	hint #34\n" // bti c
	"	mov x1, x0\n"
	"	mul x0, x0, x1\n"
	"	add x0, x0, #3\n"
	"	add x0, x0, x1\n"
	"	ret\n"
	END(hp_bti)

	// PACIASP first (displaced: it signs LR with SP, which the thunk
	// shares), AUTIASP before the return: x + 11.
	FUNC(hp_pac)
	"	hint #25\n" // paciasp
	"	stp x29, x30, [sp, #-16]!\n"
	"	add x0, x0, #11\n"
	"	ldp x29, x30, [sp], #16\n"
	"	hint #29\n" // autiasp
	"	ret\n"
	END(hp_pac)

	// Shorter than the far jump (4 bytes), followed by NOP padding: x.
	FUNC(hp_short)
	"	ret\n"
	END(hp_short)
	"	.fill 4, 4, 0xd503201f\n"

	// A loop from offset 20 back to offset 4: refused for the far jump.
	// x * 2^y (y > 0).
	FUNC(hp_branch_back)
	"	mov x2, x0\n"
	"1:	add x0, x0, x0\n" // 4
	"	nop\n"
	"	nop\n"
	"	subs x1, x1, #1\n"
	"	b.ne 1b\n" // 20
	"	ret\n"
	END(hp_branch_back)

	// The same loop within the first 16 bytes: the far jump displaces it
	// whole and the thunk keeps the loop. x * 2^y (y > 0).
	FUNC(hp_loop_inside)
	"	mov x2, x0\n"
	"1:	add x0, x0, x0\n" // 4
	"	subs x1, x1, #1\n"
	"	b.ne 1b\n" // 12
	"	ret\n"
	END(hp_loop_inside)

	// Go's arm64 prologue: x28 is g, [x28+16] the stack guard. The
	// "morestack" tail clears the guard and branches back to the entry, as
	// Go's `bl runtime.morestack_noctxt; b entry` does. x + 7.
	FUNC(hp_goprologue)
	"	ldr x16, [x28, #16]\n" // 0
	"	cmp sp, x16\n"         // 4
	"	b.ls 2f\n"             // 8
	"	add x0, x0, #7\n"      // 12
	"	ret\n"
	"2:	str xzr, [x28, #16]\n"
	"	b hp_goprologue\n"
	END(hp_goprologue)

	// hp_call_g(fn, g, x) calls fn(x) with x28 = g (x28 is callee-saved).
	FUNC(hp_call_g)
	"	stp x29, x30, [sp, #-32]!\n"
	"	str x28, [sp, #16]\n"
	"	mov x28, x1\n"
	"	mov x16, x0\n"
	"	mov x0, x2\n"
	"	blr x16\n"
	"	ldr x28, [sp, #16]\n"
	"	ldp x29, x30, [sp], #32\n"
	"	ret\n"
	END(hp_call_g)
	".p2align 4\n"
	".popsection\n"

	".pushsection .data\n"
	".p2align 4\n.globl hp_data\nhp_data:\n"
	"	.quad 1000, 7\n"
	".popsection\n");

long hp_callg_asm(uintptr_t fn, void *g, long x) __asm__("hp_call_g");

// Ordinary compiler output; no_reorder keeps each CEND label right after
// its function.
__attribute__((noinline, no_reorder)) long hp_c_sum(long n) {
	long s = 0;
	for (long i = 0; i < n; i++)
		s += i * i ^ (s >> 3);
	return s;
}
CEND(hp_c_sum)

static const long hp_c_table[8] = {3, 1, 4, 1, 5, 9, 2, 6};

__attribute__((noinline, no_reorder)) long hp_c_lookup(long i) { return hp_c_table[i & 7] * 10 + i; }
CEND(hp_c_lookup)

__attribute__((noinline, no_reorder)) long hp_c_mix(long a, long b, long c) {
	if (a > b)
		return (a - b) * c + hp_c_table[c & 7];
	return (b - a) ^ c;
}
CEND(hp_c_mix)

static long hp_callg(uintptr_t fn, long x, unsigned long guard) {
	unsigned long g[4] = {0, 0, guard, 0};
	return hp_callg_asm(fn, g, x);
}

#define S(f) {#f, (void *)f, f##_end}
#define X(f) extern char f[], f##_end[];
X(hp_repl) X(hp_adrp_load) X(hp_adr) X(hp_ldr_lit) X(hp_ldrsw_lit) X(hp_ldr_lit_d) X(hp_ldr_lit_q)
X(hp_bcond) X(hp_cbz) X(hp_tbnz) X(hp_b) X(hp_bl) X(hp_helper) X(hp_bti) X(hp_pac) X(hp_short)
X(hp_branch_back) X(hp_loop_inside) X(hp_goprologue)
extern char hp_c_sum_end[], hp_c_lookup_end[], hp_c_mix_end[];
static const struct { const char *name; void *addr, *end; } hp_samples[] = {
	S(hp_repl), S(hp_adrp_load), S(hp_adr), S(hp_ldr_lit), S(hp_ldrsw_lit), S(hp_ldr_lit_d),
	S(hp_ldr_lit_q), S(hp_bcond), S(hp_cbz), S(hp_tbnz), S(hp_b), S(hp_bl), S(hp_helper),
	S(hp_bti), S(hp_pac), S(hp_short), S(hp_branch_back), S(hp_loop_inside), S(hp_goprologue),
	S(hp_c_sum), S(hp_c_lookup), S(hp_c_mix),
};
static int hp_nsamples(void) { return sizeof hp_samples / sizeof hp_samples[0]; }
static const char *hp_sample_name(int i) { return hp_samples[i].name; }
static uintptr_t hp_sample_addr(int i) { return (uintptr_t)hp_samples[i].addr; }
static uintptr_t hp_sample_end(int i) { return (uintptr_t)hp_samples[i].end; }
*/
import "C"

// CallG calls the Go-ABI-shaped code at fn with x in x0 and x28 pointing to
// a fake g whose stack guard (g+16) is guard, and returns x0.
func CallG(fn uintptr, x int64, guard uint64) int64 {
	return int64(C.hp_callg(C.uintptr_t(fn), C.long(x), C.ulong(guard)))
}

func sampleCount() int { return int(C.hp_nsamples()) }

func sampleAt(i int) (name string, addr, end uintptr) {
	return C.GoString(C.hp_sample_name(C.int(i))), uintptr(C.hp_sample_addr(C.int(i))), uintptr(C.hp_sample_end(C.int(i)))
}
