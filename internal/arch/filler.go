package arch

import "encoding/binary"

// fillerRunARM64 returns how many bytes at the start of b are arm64
// alignment filler: whole NOP words (gcc and gas) or zero words (the Go
// linker; UDF #0, which no code executes).
func fillerRunARM64(b []byte) int {
	n := 0
	for n+4 <= len(b) {
		if w := binary.LittleEndian.Uint32(b[n:]); w != 0xd503201f && w != 0 {
			break
		}
		n += 4
	}
	return n
}

// fillerRunAMD64 returns how many bytes at the start of b are alignment filler:
// int3 (0xcc), nop (0x90) and the multi-byte nops compilers and assemblers
// emit for alignment (66 90, 0f 1f /0 with any 66/2e prefixes).
func fillerRunAMD64(b []byte) int {
	n := 0
	for n < len(b) {
		l := fillerLen(b[n:])
		if l == 0 {
			break
		}
		n += l
	}
	return n
}

// fillerLen returns the length of the filler instruction at b[0], 0 if it
// is not one.
func fillerLen(b []byte) int {
	if len(b) == 0 {
		return 0
	}
	if b[0] == 0xcc || b[0] == 0x90 {
		return 1
	}
	i := 0
	cs := false
	for i < len(b) && i < 14 && (b[i] == 0x66 || b[i] == 0x2e) {
		cs = cs || b[i] == 0x2e
		i++
	}
	if i >= len(b) {
		return 0
	}
	if b[i] == 0x90 {
		if i > 0 && !cs {
			return i + 1 // data16 nop (xchg ax,ax)
		}
		return 0
	}
	if b[i] != 0x0f || i+2 >= len(b) || b[i+1] != 0x1f {
		return 0
	}
	modrm := b[i+2]
	mod, reg, rm := modrm>>6, (modrm>>3)&7, modrm&7
	if reg != 0 {
		return 0
	}
	l := i + 3
	if mod != 3 {
		if rm == 4 { // SIB
			if l >= len(b) {
				return 0
			}
			if mod == 0 && b[l]&7 == 5 {
				l += 4 // no base: disp32
			}
			l++
		} else if mod == 0 && rm == 5 {
			l += 4 // rip-relative disp32
		}
		switch mod {
		case 1:
			l++
		case 2:
			l += 4
		}
	}
	if l > len(b) || l > 15 {
		return 0
	}
	return l
}
