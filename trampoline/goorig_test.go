package trampoline_test

import (
	"encoding/binary"
	"encoding/hex"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/hotpatch-dev/hotpatch/trampoline"
)

// goDepth is main.depth(n int, s string) int as Go 1.26 compiled it at
// 0x49e140: `cmp rsp,[r14+16]; jbe tail`, and a tail at 0x49e1d2 that spills
// AX, BX, CX, calls runtime.morestack_noctxt (0x47d8c0) and jumps back.
const goDepth = "493b66100f8688000000554889e54883ec6048895c2478488d542418440f113a440f117a10440f117a20440f117a304889c248c1fa3f48c1ea3a4801c24883e2c04889c64829d64883fe407338884434184885c0750f0fb6542418488d040a4883c4605dc3488974245848ffc8e88effffff488b5424580fb65414184801d04883c4605dc348c7c040000000e80f14feff90488944240848895c241048894c2418e8daf6fdff488b442408488b5c2410488b4c2418e946ffffff"

const (
	depthAt         = 0x49e140
	morestack       = 0x47d820
	morestackNoctxt = 0x47d8c0
)

func depthFunc(t *testing.T) trampoline.Func {
	code, err := hex.DecodeString(goDepth)
	require.NoError(t, err)
	return trampoline.Func{Name: "main.depth", Addr: depthAt, Code: code}
}

func TestGoOriginal(t *testing.T) {
	const at, marker = 0x500000, 0x500000
	code, err := trampoline.AMD64{}.GoOriginal(depthFunc(t), at, marker, morestack, morestackNoctxt, 5)
	require.NoError(t, err)
	// The stack check, its jbe to the thunk's own tail, the jump to the
	// rest of the function.
	require.Equal(t, []byte{0x49, 0x3b, 0x66, 0x10, 0x0f, 0x86}, code[:6])
	tail := 10 + int(int32(binary.LittleEndian.Uint32(code[6:])))
	require.Equal(t, []byte{0xff, 0x25, 0, 0, 0, 0}, code[10:16])
	require.Equal(t, uint64(depthAt+10), binary.LittleEndian.Uint64(code[16:]))
	// The tail: the function's three spills, RDX = marker, the address
	// after the function's call of morestack_noctxt pushed, morestack.
	spills, _ := hex.DecodeString("488944240848895c241048894c2418")
	require.Equal(t, spills, code[tail:tail+len(spills)])
	rest := code[tail+len(spills):]
	require.Equal(t, []byte{0x48, 0xba}, rest[:2])
	require.Equal(t, uint64(marker), binary.LittleEndian.Uint64(rest[2:]))
	require.Equal(t, []byte{0x49, 0xbc}, rest[10:12])
	require.Equal(t, uint64(0x49e1e6), binary.LittleEndian.Uint64(rest[12:]))
	require.Equal(t, []byte{0x41, 0x54}, rest[20:22])
	jmpAt := uint64(at + len(code) - len(rest) + 22)
	require.Equal(t, trampoline.AMD64{}.Jump(jmpAt, morestack), rest[22:])
	require.LessOrEqual(t, len(code), trampoline.GoOriginalMaxSize)
}

func TestGoOriginalRefuses(t *testing.T) {
	fn := depthFunc(t)
	_, err := trampoline.AMD64{}.GoOriginal(fn, 0x500000, 1, morestack, morestack, 5)
	require.ErrorIs(t, err, trampoline.ErrCannotRelocate, "the tail calls something else than morestack_noctxt")
	_, err = trampoline.AMD64{}.GoOriginal(fn, 0x500000, 1, morestack, morestackNoctxt, 14)
	require.ErrorIs(t, err, trampoline.ErrCannotRelocate, "a far jump overwrites more than the stack check")
	leaf := trampoline.Func{Name: "leaf", Addr: 0x1000, Code: []byte{0xb8, 1, 0, 0, 0, 0xc3}}
	_, err = trampoline.AMD64{}.GoOriginal(leaf, 0x500000, 1, morestack, morestackNoctxt, 5)
	require.ErrorIs(t, err, trampoline.ErrNoStackCheck)
}

func TestGoOriginalEntry(t *testing.T) {
	const at, ctx, fn, marker, orig = 0x500000, 0xc000010000, 0x401000, 0x500100, 0x500100
	b := trampoline.AMD64{}.GoOriginalEntry(at, ctx, fn, marker, orig)
	require.LessOrEqual(t, len(b), trampoline.GoOriginalEntrySize)
	want, _ := hex.DecodeString("49bc" + "0001500000000000" + "4c39e2" + "7507" + "31d2" + "e9ea000000" +
		"48ba" + "00000100c0000000" + "e9")
	require.Equal(t, want, b[:len(want)])
}

// goGreet is func greet(name string) string { return "hello, " + name } as
// Go 1.26 compiled it at 0x86bb20: the assembler put a 4-byte NOP (nopl
// 0(%rax)) between the spills of its stack-growth tail and the call of
// runtime.morestack_noctxt (0x491800), which it aligns.
const goGreet = "493b6610762c554889e54883ec284889442438b9070000004889c74889de31c0488d1d8eaf1800e8f448c0ff4883c4285dc34889442408" +
	"48895c24100f1f4000e89b5cc2ff488b44240848" + "8b5c2410ebaf"

// TestGoOriginalNopInTail: a NOP among the stack-growth tail's spills is
// alignment, not code the original needs: it is left out, and the spills
// around it are kept (Wrap of any function with a string argument met it).
func TestGoOriginalNopInTail(t *testing.T) {
	code, err := hex.DecodeString(goGreet)
	require.NoError(t, err)
	fn := trampoline.Func{Name: "main.greet", Addr: 0x86bb20, Code: code}
	orig, err := trampoline.AMD64{}.GoOriginal(fn, 0x500000, 0x500000, morestack, 0x491800, 5)
	require.NoError(t, err)
	spills, _ := hex.DecodeString("488944240848895c2410")
	require.Equal(t, []byte{0x49, 0x3b, 0x66, 0x10, 0x0f, 0x86}, orig[:6], "the stack check and its jbe to the thunk's tail")
	tail := 10 + int(int32(binary.LittleEndian.Uint32(orig[6:])))
	require.Equal(t, spills, orig[tail:tail+len(spills)])
	require.Equal(t, []byte{0x48, 0xba}, orig[tail+len(spills):tail+len(spills)+2], "RDX = marker right after the spills")
}
