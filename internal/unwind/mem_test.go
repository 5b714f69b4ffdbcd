package unwind

import (
	"encoding/binary"
	"errors"
)

// fakeMem is a captured stack: 8-byte words at addresses.
type fakeMem map[uint64]uint64

func (f fakeMem) ReadAt(b []byte, off int64) (int, error) {
	for i := 0; i < len(b); i += 8 {
		v, ok := f[uint64(off)+uint64(i)]
		if !ok {
			return i, errors.New("unmapped")
		}
		var w [8]byte
		binary.LittleEndian.PutUint64(w[:], v)
		copy(b[i:], w[:])
	}
	return len(b), nil
}
