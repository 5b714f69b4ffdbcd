package arch

import (
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/arch/arm64/arm64asm"
	"golang.org/x/arch/x86/x86asm"
)

// TestCompareWordsListing decodes each routine and compares it, instruction
// by instruction, with its listing (compare.go): the bytes are what the
// listing says, branch targets included (as offsets from the start).
func TestCompareWordsListing(t *testing.T) {
	amd64 := []string{
		"0: xor eax, eax",
		"2: test rcx, rcx",
		"5: jz .+0x62",
		"7: xor r9d, r9d",
		"a: mov r8, qword ptr [rdi]",
		"d: mov r11, qword ptr [rdi+0x200]",
		"14: shl r11, 0x10",
		"18: shr r11, 0x10",
		"1c: prefetcht0 zmmword ptr [r11]",
		"20: add rdi, 0x8",
		"24: test r8, r8",
		"27: jz .+0x27",
		"29: mov r10, r8",
		"2c: shr r10, 0x30",
		"30: shl r8, 0x10",
		"34: shr r8, 0x10",
		"38: mov r11, qword ptr [r8]",
		"3b: xor r11, qword ptr [rsi]",
		"3e: or r9, r11",
		"41: add r8, 0x8",
		"45: add rsi, 0x8",
		"49: dec r10",
		"4c: jnz .-0x16",
		"4e: jmp .-0x46",
		"50: test r9, r9",
		"53: setnz r9b",
		"57: mov byte ptr [rdx], r9b",
		"5a: movzx r9d, r9b",
		"5e: add rax, r9",
		"61: inc rdx",
		"64: dec rcx",
		"67: jmp .-0x67",
		"69: ret",
	}
	var got []string
	for pc := 0; pc < len(compareAMD64); {
		in, err := x86asm.Decode(compareAMD64[pc:], 64)
		require.NoError(t, err, "offset %#x", pc)
		got = append(got, fmt.Sprintf("%x: %s", pc, strings.ToLower(x86asm.IntelSyntax(in, 0, nil))))
		pc += in.Len
	}
	require.Equal(t, amd64, got)

	arm64 := []string{
		"0: MOV X5, #0x0",
		"4: CBZ X3, .+0x58",
		"8: MOV X9, #0x0",
		"c: LDR X6, [X0],#8",
		"10: LDR X11, [X0,#504]",
		"14: AND X11, X11, #0xffffffffffff",
		"18: PRFM PLDL1KEEP, [X11]",
		"1c: CBZ X6, .+0x28",
		"20: LSR X7, X6, #48",
		"24: AND X6, X6, #0xffffffffffff",
		"28: LDR X8, [X6],#8",
		"2c: LDR X10, [X1],#8",
		"30: EOR X8, X8, X10",
		"34: ORR X9, X9, X8",
		"38: SUBS X7, X7, #0x1",
		"3c: B NE, .+0xffffffffffffffec",
		"40: B .+0xffffffffffffffcc",
		"44: CMP X9, #0x0",
		"48: CSET W9, NE",
		"4c: STRB W9, [X2],#1",
		"50: ADD X5, X5, X9",
		"54: SUB X3, X3, #0x1",
		"58: B .+0xffffffffffffffac",
		"5c: MOV X0, X5",
		"60: RET X30",
	}
	got = nil
	for pc := 0; pc+4 <= len(compareARM64); pc += 4 {
		in, err := arm64asm.Decode(compareARM64[pc:])
		require.NoError(t, err, "offset %#x", pc)
		got = append(got, fmt.Sprintf("%x: %s", pc, in))
	}
	require.Equal(t, arm64, got)
}

// TestCompareItem checks the packing CompareWords reads.
func TestCompareItem(t *testing.T) {
	w := CompareItem(0x7fff_ffff_f000, MaxCompareWords)
	require.Equal(t, uint64(0x7fff_ffff_f000), w&(1<<48-1))
	require.Equal(t, uint64(MaxCompareWords), w>>48)
	require.NotZero(t, CompareItem(0, 1), "an item is never the end of its group")
}
