package unwind

import (
	"encoding/binary"
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestCrosscall1AMD64: crosscall1 (no CFI) is stepped over only when its
// code reads back byte for byte, and only from the return address of its
// call of the Go function; the six registers it pushed are recovered.
func TestCrosscall1AMD64(t *testing.T) {
	const entry, sp = 0x1000, 0x8000
	build := func(code []byte) func(uint64) (uint64, error) {
		mem := map[uint64]byte{}
		for i, b := range code {
			mem[entry+uint64(i)] = b
		}
		for i := uint64(0); i < 7; i++ { // r15 r14 r13 r12 rbp rbx ra
			var w [8]byte
			binary.LittleEndian.PutUint64(w[:], 0x100+i)
			for j, b := range w {
				mem[sp+8*i+uint64(j)] = b
			}
		}
		return func(a uint64) (uint64, error) {
			var w [8]byte
			for j := range w {
				b, ok := mem[a+uint64(j)]
				if !ok && a < sp {
					return 0, fmt.Errorf("unmapped %#x", a)
				}
				w[j] = b
			}
			return binary.LittleEndian.Uint64(w[:]), nil
		}
	}
	padded := append(append([]byte{}, crosscall1AMD64...), make([]byte, 8)...)
	changed := append([]byte{}, padded...)
	changed[11] = 0x8b // mov rbx, rdi encoded differently: not the known code
	cases := []struct {
		name string
		code []byte
		pc   uint64
		ok   bool
	}{
		{"after the call of fn", padded, entry + crosscall1Return, true},
		{"after the call of setg_gcc", padded, entry + crosscall1Return - 2, false},
		{"other code", changed, entry + crosscall1Return, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			regs, cfa, ok := amd64Crosscall1(build(c.code), c.pc, sp)
			require.Equal(t, c.ok, ok)
			if !ok {
				return
			}
			require.Equal(t, uint64(sp+56), cfa)
			require.Equal(t, map[int]uint64{15: 0x100, 14: 0x101, 13: 0x102, 12: 0x103, 6: 0x104, 3: 0x105, 16: 0x106, 7: sp + 56}, regs)
		})
	}
}
