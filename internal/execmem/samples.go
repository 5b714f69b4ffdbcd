//go:build amd64

package execmem

/*
#cgo CFLAGS: -O2
#include <stdint.h>

// FUNC starts a sample; END ends it with a NAME_end label, since test
// binaries carry no symbol table to give sizes.
#define FUNC(f) ".p2align 4, 0xcc\n.globl " #f "\n.type " #f ",@function\n" #f ":\n"
#define END(f) ".size " #f ", .-" #f "\n.globl " #f "_end\n" #f "_end:\n"
#define CEND(f) __asm__(".pushsection .text\n.globl " #f "_end\n" #f "_end:\n.popsection\n");

// Sample functions with hand-picked prologues. Each takes integer arguments
// in rdi, rsi, ... and returns rax. The comments give the byte offsets the
// trampoline tests rely on: a 5-byte (near) or 14-byte (far) jump displaces
// the instructions that start before offset 5 or 14.
__asm__(
	".pushsection .text\n"
	".intel_syntax noprefix\n"

	// Replacement target: 3*x. Position-independent, so tests may copy it.
	FUNC(hp_repl)
	"	lea rax, [rdi + rdi*2]\n"
	"	ret\n"
	END(hp_repl)

	// RIP-relative load first: x + 1000.
	FUNC(hp_rip_load)
	"	mov rax, qword ptr [rip + hp_data]\n" // 0: 7 bytes
	"	add rax, rdi\n"
	"	ret\n"
	END(hp_rip_load)

	// RIP-relative lea: x * 7.
	FUNC(hp_rip_lea)
	"	lea rax, [rip + hp_data]\n" // 0: 7 bytes
	"	mov rax, qword ptr [rax + 8]\n"
	"	imul rax, rdi\n"
	"	ret\n"
	END(hp_rip_lea)

	// RIP-relative cmp then jl: x < 1000 ? x-1 : 2x+256.
	FUNC(hp_rip_cmp)
	"	cmp rdi, qword ptr [rip + hp_data]\n" // 0: 7 bytes
	"	jl 1f\n"                              // 7
	"	lea rax, [rdi + rdi]\n"               // 9
	"	add rax, 0x100\n"                     // 13
	"	ret\n"
	"1:	lea rax, [rdi - 1]\n" // 20
	"	ret\n"
	END(hp_rip_cmp)

	// VEX RIP-relative load (x86asm sets no PCRel for it): x + 1000.
	FUNC(hp_vex)
	"	vmovdqu xmm0, xmmword ptr [rip + hp_data]\n" // 0: 8 bytes
	"	vmovq rax, xmm0\n"
	"	add rax, rdi\n"
	"	vzeroupper\n"
	"	ret\n"
	END(hp_vex)

	// jcc rel8 at offset 3: x < 0 ? -1 : 2x+256.
	FUNC(hp_jcc8)
	"	test rdi, rdi\n" // 0
	"	js 1f\n"         // 3
	"	lea rax, [rdi + rdi]\n"
	"	add rax, 0x100\n"
	"	ret\n"
	"1:	mov rax, -1\n" // 16
	"	ret\n"
	END(hp_jcc8)

	// jcc rel32 (0f 84) at offset 3: x == 0 ? 99 : x+1.
	FUNC(hp_jcc32)
	"	test rdi, rdi\n"           // 0
	"	.byte 0x0f, 0x84\n"        // 3: je rel32
	"	.long 1f - 2f\n"
	"2:	lea rax, [rdi + 1]\n" // 9
	"	ret\n"
	"	.fill 8, 1, 0xcc\n"
	"1:	mov eax, 99\n" // 22
	"	ret\n"
	END(hp_jcc32)

	// jmp rel8 at offset 3: x + 5.
	FUNC(hp_jmp8)
	"	mov rax, rdi\n" // 0
	"	jmp 1f\n"       // 3
	"	.fill 12, 1, 0xcc\n"
	"1:	add rax, 5\n" // 17
	"	ret\n"
	END(hp_jmp8)

	// loop at offset 3: x == 1 ? 777 : x-1+100.
	FUNC(hp_loop)
	"	mov rcx, rdi\n" // 0
	"	loop 1f\n"      // 3
	"	mov rax, 777\n"
	"	ret\n"
	"	.fill 8, 1, 0xcc\n"
	"1:	lea rax, [rcx + 100]\n" // 21
	"	ret\n"
	END(hp_loop)

	// jrcxz at offset 3: x == 0 ? 42 : 4x.
	FUNC(hp_jrcxz)
	"	mov rcx, rdi\n" // 0
	"	jrcxz 1f\n"     // 3
	"	lea rax, [rcx*4]\n"
	"	ret\n"
	"	.fill 8, 1, 0xcc\n"
	"1:	mov rax, 42\n" // 22
	"	ret\n"
	END(hp_jrcxz)

	// call in the prologue: x + 10. Only 11 bytes: a far jump uses padding.
	FUNC(hp_call)
	"	push rbx\n"          // 0
	"	call hp_helper\n"    // 1
	"	add rax, rdi\n"      // 6
	"	pop rbx\n"
	"	ret\n"
	END(hp_call)
	FUNC(hp_helper)
	"	mov eax, 10\n"
	"	ret\n"
	END(hp_helper)

	// endbr64 first (the jump goes after it): x*x + 3 + x.
	FUNC(hp_endbr)
	"	endbr64\n"
	"	mov rax, rdi\n" // 4
	"	imul rax, rdi\n"
	"	add rax, 3\n"
	"	add rax, rdi\n" // 15
	"	ret\n"
	END(hp_endbr)

	// Shorter than any jump (4 bytes), followed by int3 padding: x.
	FUNC(hp_short)
	"	mov rax, rdi\n"
	"	ret\n"
	END(hp_short)
	"	.fill 16, 1, 0xcc\n"

	// A loop back into its first bytes (offset 3): refused. x * 2^y.
	FUNC(hp_branch_back)
	"	mov rax, rdi\n"
	"1:	add rax, rax\n" // 3
	"	dec rsi\n"
	"	jnz 1b\n"
	"	ret\n"
	END(hp_branch_back)

	// Go ABIInternal prologue: r14 is g, [r14+16] the stack guard. The
	// "morestack" path clears the guard and jumps back to the entry, as
	// Go's `call runtime.morestack_noctxt; jmp entry` does. x + 7.
	FUNC(hp_goprologue)
	"	cmp rsp, qword ptr [r14 + 16]\n" // 0: 4 bytes
	"	jbe 2f\n"                        // 4
	"	lea rax, [rdi + 7]\n"            // 6
	"	ret\n"
	"	.fill 8, 1, 0xcc\n"
	"2:	mov qword ptr [r14 + 16], 0\n" // 19
	"	jmp hp_goprologue\n"
	END(hp_goprologue)

	// hp_call_g(fn, g, x) calls fn(x) with r14 = g (r14 is callee-saved).
	FUNC(hp_call_g)
	"	push r14\n"
	"	mov r14, rsi\n"
	"	mov rax, rdi\n"
	"	mov rdi, rdx\n"
	"	call rax\n"
	"	pop r14\n"
	"	ret\n"
	END(hp_call_g)
	".p2align 4, 0xcc\n"

	".att_syntax prefix\n"
	".popsection\n"

	".pushsection .data\n"
	".p2align 4\n.globl hp_data\nhp_data:\n"
	"	.quad 1000, 7\n"
	".popsection\n");

long hp_repl(long), hp_rip_load(long), hp_rip_lea(long), hp_rip_cmp(long),
	hp_vex(long), hp_jcc8(long), hp_jcc32(long), hp_jmp8(long), hp_loop(long),
	hp_jrcxz(long), hp_call(long), hp_helper(void), hp_endbr(long), hp_short(long),
	hp_branch_back(long, long), hp_goprologue(long);
long hp_call_g(uintptr_t fn, void *g, long x);

// Ordinary compiler output; no_reorder keeps each CEND label
// right after its function.
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
	return hp_call_g(fn, g, x);
}

#define S(f) {#f, (void *)f, f##_end}
#define X(f) extern char f##_end[];
X(hp_repl) X(hp_rip_load) X(hp_rip_lea) X(hp_rip_cmp) X(hp_vex) X(hp_jcc8) X(hp_jcc32)
X(hp_jmp8) X(hp_loop) X(hp_jrcxz) X(hp_call) X(hp_helper) X(hp_endbr) X(hp_short)
X(hp_branch_back) X(hp_goprologue) X(hp_c_sum) X(hp_c_lookup) X(hp_c_mix)
static const struct { const char *name; void *addr, *end; } hp_samples[] = {
	S(hp_repl), S(hp_rip_load), S(hp_rip_lea), S(hp_rip_cmp), S(hp_vex),
	S(hp_jcc8), S(hp_jcc32), S(hp_jmp8), S(hp_loop), S(hp_jrcxz), S(hp_call),
	S(hp_helper), S(hp_endbr), S(hp_short), S(hp_branch_back), S(hp_goprologue),
	S(hp_c_sum), S(hp_c_lookup), S(hp_c_mix),
};
static int hp_nsamples(void) { return sizeof hp_samples / sizeof hp_samples[0]; }
static const char *hp_sample_name(int i) { return hp_samples[i].name; }
static uintptr_t hp_sample_addr(int i) { return (uintptr_t)hp_samples[i].addr; }
static uintptr_t hp_sample_end(int i) { return (uintptr_t)hp_samples[i].end; }
*/
import "C"

import (
	"fmt"
	"sync"
)

// Sample is a function compiled into this package, for tests to relocate,
// patch and call.
type Sample struct {
	Name string
	Addr uintptr // entry
	Size int     // from the symbol table
	// Next is the address of the next function symbol; the bytes in
	// [Addr+Size, Next) are the padding after the function.
	Next uintptr
}

// Code returns the function's bytes as they are now.
func (s Sample) Code() []byte { return Read(s.Addr, s.Size) }

// Padding returns the bytes between the end of the function and the next
// function symbol.
func (s Sample) Padding() []byte {
	return Read(s.Addr+uintptr(s.Size), int(s.Next-s.Addr-uintptr(s.Size)))
}

// CallG calls the Go-ABI-shaped code at fn with x in rdi and r14 pointing to
// a fake g whose stack guard (g+16) is guard, and returns rax.
func CallG(fn uintptr, x int64, guard uint64) int64 {
	return int64(C.hp_callg(C.uintptr_t(fn), C.long(x), C.ulong(guard)))
}

var samples = sync.OnceValues(loadSamples)

// Samples returns the sample functions: hand-written prologues named hp_*
// (see the assembly in samples.go) and gcc -O2 functions named hp_c_*. Sizes
// come from an end label after each function (test binaries are stripped).
func Samples() ([]Sample, error) { return samples() }

// Lookup returns the sample called name.
func Lookup(name string) (Sample, error) {
	all, err := Samples()
	if err != nil {
		return Sample{}, err
	}
	for _, s := range all {
		if s.Name == name {
			return s, nil
		}
	}
	return Sample{}, fmt.Errorf("execmem: no sample %q", name)
}

func loadSamples() ([]Sample, error) {
	var out []Sample
	for i := range int(C.hp_nsamples()) {
		s := Sample{
			Name: C.GoString(C.hp_sample_name(C.int(i))),
			Addr: uintptr(C.hp_sample_addr(C.int(i))),
		}
		end := uintptr(C.hp_sample_end(C.int(i)))
		if end <= s.Addr || end-s.Addr > 4096 {
			return nil, fmt.Errorf("execmem: sample %s: end label %#x does not follow its entry %#x", s.Name, end, s.Addr)
		}
		s.Size = int(end - s.Addr)
		out = append(out, s)
	}
	// The padding runs to the next sample, or to 16-byte alignment.
	for i := range out {
		end := out[i].Addr + uintptr(out[i].Size)
		next := end + 64
		for _, o := range out {
			if o.Addr >= end && o.Addr < next {
				next = o.Addr
			}
		}
		if next == end+64 {
			next = (end + 15) &^ 15
		}
		out[i].Next = next
	}
	return out, nil
}
