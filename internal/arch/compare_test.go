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
		"5: jz .+0x4f",
		"7: xor r9d, r9d",
		"a: mov r8, qword ptr [rdi]",
		"d: add rdi, 0x8",
		"11: test r8, r8",
		"14: jz .+0x27",
		"16: mov r10, r8",
		"19: shr r10, 0x30",
		"1d: shl r8, 0x10",
		"21: shr r8, 0x10",
		"25: mov r11, qword ptr [r8]",
		"28: xor r11, qword ptr [rsi]",
		"2b: or r9, r11",
		"2e: add r8, 0x8",
		"32: add rsi, 0x8",
		"36: dec r10",
		"39: jnz .-0x16",
		"3b: jmp .-0x33",
		"3d: test r9, r9",
		"40: setnz r9b",
		"44: mov byte ptr [rdx], r9b",
		"47: movzx r9d, r9b",
		"4b: add rax, r9",
		"4e: inc rdx",
		"51: dec rcx",
		"54: jmp .-0x54",
		"56: ret",
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
		"4: CBZ X3, .+0x4c",
		"8: MOV X9, #0x0",
		"c: LDR X6, [X0],#8",
		"10: CBZ X6, .+0x28",
		"14: LSR X7, X6, #48",
		"18: AND X6, X6, #0xffffffffffff",
		"1c: LDR X8, [X6],#8",
		"20: LDR X10, [X1],#8",
		"24: EOR X8, X8, X10",
		"28: ORR X9, X9, X8",
		"2c: SUBS X7, X7, #0x1",
		"30: B NE, .+0xffffffffffffffec",
		"34: B .+0xffffffffffffffd8",
		"38: CMP X9, #0x0",
		"3c: CSET W9, NE",
		"40: STRB W9, [X2],#1",
		"44: ADD X5, X5, X9",
		"48: SUB X3, X3, #0x1",
		"4c: B .+0xffffffffffffffb8",
		"50: MOV X0, X5",
		"54: RET X30",
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
