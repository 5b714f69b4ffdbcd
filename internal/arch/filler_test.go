package arch

import (
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestFillerLen(t *testing.T) {
	tests := []struct {
		name string
		code []byte
		want int
	}{
		{"int3", []byte{0xcc}, 1},
		{"nop", []byte{0x90}, 1},
		{"xchg ax,ax", []byte{0x66, 0x90}, 2},
		{"nop eax reg", []byte{0x0f, 0x1f, 0xc0}, 3},
		{"nopl (rax)", []byte{0x0f, 0x1f, 0x00}, 3},
		{"nopl 0(rax)", []byte{0x0f, 0x1f, 0x40, 0x00}, 4},
		{"nopl 0(rax,rax)", []byte{0x0f, 0x1f, 0x44, 0x00, 0x00}, 5},
		{"nopw 0(rax,rax)", []byte{0x66, 0x0f, 0x1f, 0x44, 0x00, 0x00}, 6},
		{"nopl 0L(rax)", []byte{0x0f, 0x1f, 0x80, 0, 0, 0, 0}, 7},
		{"nopl 0L(rax,rax)", []byte{0x0f, 0x1f, 0x84, 0, 0, 0, 0, 0}, 8},
		{"nopw 0L(rax,rax)", []byte{0x66, 0x0f, 0x1f, 0x84, 0, 0, 0, 0, 0}, 9},
		{"cs nopw", []byte{0x66, 0x2e, 0x0f, 0x1f, 0x84, 0, 0, 0, 0, 0}, 10},
		{"data16 cs nopw", []byte{0x66, 0x66, 0x2e, 0x0f, 0x1f, 0x84, 0, 0, 0, 0, 0}, 11},
		{"ret", []byte{0xc3}, 0},
		{"endbr64", []byte{0xf3, 0x0f, 0x1e, 0xfa}, 0},
		{"0f 1f /1 is not a nop", []byte{0x0f, 0x1f, 0x48, 0x00}, 0},
		{"truncated", []byte{0x0f, 0x1f, 0x44, 0x00}, 0},
		{"66 alone", []byte{0x66}, 0},
		{"cs 90", []byte{0x2e, 0x90}, 0},
		{"mov", []byte{0x48, 0x89, 0xe5}, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			assert.Equal(t, tc.want, fillerLen(tc.code))
		})
	}
	assert.Equal(t, 1+2+10, fillerRunAMD64([]byte{0xcc, 0x66, 0x90, 0x66, 0x2e, 0x0f, 0x1f, 0x84, 0, 0, 0, 0, 0, 0x55, 0x90}))
	// arm64: NOP and zero words, whole words only, up to other code.
	assert.Equal(t, 8, ARM64.FillerRun([]byte{0x1f, 0x20, 0x03, 0xd5, 0, 0, 0, 0, 0xc0, 0x03, 0x5f, 0xd6, 0x1f, 0x20, 0x03, 0xd5}))
	assert.Equal(t, 4, ARM64.FillerRun([]byte{0x1f, 0x20, 0x03, 0xd5, 0x1f, 0x20}))
	assert.Equal(t, 0, ARM64.FillerRun([]byte{0x90, 0x90, 0x90, 0x90}))
}

func FuzzFillerRun(f *testing.F) {
	f.Add([]byte{0x66, 0x2e, 0x0f, 0x1f, 0x84, 0, 0, 0, 0, 0, 0xcc, 0x90})
	f.Add([]byte{0x0f, 0x1f, 0x44, 0x00})
	f.Fuzz(func(t *testing.T, b []byte) {
		if l := fillerLen(b); l > len(b) || l > 15 || l < 0 {
			t.Fatalf("fillerLen(% x) = %d", b, l)
		}
		if n := fillerRunAMD64(b); n > len(b) {
			t.Fatalf("fillerRunAMD64(% x) = %d", b, n)
		}
		if n := fillerRunARM64(b); n > len(b) || n%4 != 0 {
			t.Fatalf("fillerRunARM64(% x) = %d", b, n)
		}
	})
}
