package arch

// The routine CompareWords holds, per architecture: with the C calling
// convention,
//
//	uint64_t compare(const uint64_t *items, const uint64_t *expect,
//	                 uint8_t *out, uint64_t groups);
//
// items is a list of groups, each a list of words addr|n<<48 (n >= 1: the
// n words at addr) ended by a zero word, the last group followed by
// CompareLookahead more words (zeros); expect holds every item's words in
// the same order. For each group it sets out[i] to 1 when one of its words
// differs from what expect holds, else 0, and it returns how many groups
// differ. It reads and writes nothing else (a prefetch reads nothing and
// never faults) and uses no stack (a leaf), so
// it can run on any thread of a stopped process (tracee.Routine) and
// compare the target's memory where it is, at the speed of its memory.
//
// The bytes were assembled by GNU as from the listing beside each (x86-64:
// Intel syntax) and are checked against it by disassembly
// (TestCompareWordsListing) and run on real processes
// (tracee.TestRoutineCompare).

// compareAMD64 is compare for x86-64 (System V: rdi, rsi, rdx, rcx; rax).
// At each item it prefetches the first word of the item CompareLookahead
// items on (a group's end, 0, prefetches address 0: a prefetch never
// faults), so that the cache and TLB misses of several goroutines' g and
// stack overlap:
//
//	    xor eax, eax
//	1:  test rcx, rcx ; jz 5f
//	    xor r9d, r9d
//	2:  mov r8, [rdi]
//	    mov r11, [rdi + 8*64] ; shl r11, 16 ; shr r11, 16 ; prefetcht0 [r11]
//	    add rdi, 8
//	    test r8, r8 ; jz 4f
//	    mov r10, r8 ; shr r10, 48 ; shl r8, 16 ; shr r8, 16
//	3:  mov r11, [r8] ; xor r11, [rsi] ; or r9, r11
//	    add r8, 8 ; add rsi, 8 ; dec r10 ; jnz 3b
//	    jmp 2b
//	4:  test r9, r9 ; setne r9b ; mov [rdx], r9b ; movzx r9d, r9b
//	    add rax, r9 ; inc rdx ; dec rcx ; jmp 1b
//	5:  ret
var compareAMD64 = []byte{
	0x31, 0xc0, 0x48, 0x85, 0xc9, 0x74, 0x62, 0x45, 0x31, 0xc9, 0x4c, 0x8b,
	0x07, 0x4c, 0x8b, 0x9f, 0x00, 0x02, 0x00, 0x00, 0x49, 0xc1, 0xe3, 0x10,
	0x49, 0xc1, 0xeb, 0x10, 0x41, 0x0f, 0x18, 0x0b, 0x48, 0x83, 0xc7, 0x08,
	0x4d, 0x85, 0xc0, 0x74, 0x27, 0x4d, 0x89, 0xc2, 0x49, 0xc1, 0xea, 0x30,
	0x49, 0xc1, 0xe0, 0x10, 0x49, 0xc1, 0xe8, 0x10, 0x4d, 0x8b, 0x18, 0x4c,
	0x33, 0x1e, 0x4d, 0x09, 0xd9, 0x49, 0x83, 0xc0, 0x08, 0x48, 0x83, 0xc6,
	0x08, 0x49, 0xff, 0xca, 0x75, 0xea, 0xeb, 0xba, 0x4d, 0x85, 0xc9, 0x41,
	0x0f, 0x95, 0xc1, 0x44, 0x88, 0x0a, 0x45, 0x0f, 0xb6, 0xc9, 0x4c, 0x01,
	0xc8, 0x48, 0xff, 0xc2, 0x48, 0xff, 0xc9, 0xeb, 0x99, 0xc3,
}

// compareARM64 is compare for AArch64 (AAPCS64: x0-x3; x0), prefetching as
// compareAMD64 does (PRFM never faults either):
//
//	    mov x5, #0
//	1:  cbz x3, 5f
//	    mov x9, #0
//	2:  ldr x6, [x0], #8
//	    ldr x11, [x0, #(8*63)] ; and x11, x11, #0xffffffffffff ; prfm pldl1keep, [x11]
//	    cbz x6, 4f
//	    lsr x7, x6, #48 ; and x6, x6, #0xffffffffffff
//	3:  ldr x8, [x6], #8 ; ldr x10, [x1], #8
//	    eor x8, x8, x10 ; orr x9, x9, x8
//	    subs x7, x7, #1 ; b.ne 3b
//	    b 2b
//	4:  cmp x9, #0 ; cset w9, ne ; strb w9, [x2], #1
//	    add x5, x5, x9 ; sub x3, x3, #1 ; b 1b
//	5:  mov x0, x5 ; ret
var compareARM64 = words(
	0xd2800005, 0xb40002c3, 0xd2800009, 0xf8408406,
	0xf940fc0b, 0x9240bd6b, 0xf9800160, 0xb4000146,
	0xd370fcc7, 0x9240bcc6, 0xf84084c8, 0xf840842a,
	0xca0a0108, 0xaa080129, 0xf10004e7, 0x54ffff61,
	0x17fffff3, 0xf100013f, 0x1a9f07e9, 0x38001449,
	0x8b0900a5, 0xd1000463, 0x17ffffeb, 0xaa0503e0,
	0xd65f03c0,
)

// CompareLookahead is how many words past each item CompareWords reads
// (to prefetch): the list must be followed by that many readable words.
// 64 items, about eight goroutines on: the native check of 100,000
// goroutines took 19.9 ms without prefetching, 18.0 with 24, 15.5 with 64
// and 15.6 with 128 (medians, BenchmarkPause/go-100000 timed inside).
const CompareLookahead = 64

// CompareItem is one item of CompareWords' list: n words at addr (n from 1
// to MaxCompareWords, addr below 2^48).
func CompareItem(addr uint64, n int) uint64 { return addr | uint64(n)<<48 }

// MaxCompareWords is the most words one item of CompareWords covers.
const MaxCompareWords = 1<<16 - 1

// words encodes A64 instructions, little-endian.
func words(ws ...uint32) []byte {
	b := make([]byte, 0, 4*len(ws))
	for _, w := range ws {
		b = append(b, byte(w), byte(w>>8), byte(w>>16), byte(w>>24))
	}
	return b
}
