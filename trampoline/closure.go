package trampoline

import (
	"debug/elf"
	"encoding/binary"
	"fmt"
)

// ClosureEntrySize bounds len(ClosureEntry(...)) on every architecture.
const ClosureEntrySize = 32

// ClosureEntry returns the code, to be placed at at, that enters a Go
// closure the way a call through its func value does: it loads the closure
// context register (RDX on x86-64, X26 on arm64, Go's internal ABI) with
// ctx, the address of the closure's funcval {fn, captured variables...},
// and jumps to fn. Argument registers and the stack are left as they are,
// and the code is never a frame: to the runtime the caller called fn.
//
// On x86-64 it is `movabs rdx, ctx` and a jump (Jump); on arm64
// `LDR X26, ctx; LDR X16, fn; BR X16` with the two literals (X16 is scratch
// at a function entry).
func ClosureEntry(m elf.Machine, at, ctx, fn uint64) ([]byte, error) {
	a, err := ForMachine(m)
	if err != nil {
		return nil, err
	}
	ce, ok := a.(interface {
		closureEntry(at, ctx, fn uint64) ([]byte, error)
	})
	if !ok {
		return nil, &Error{Err: ErrUnsupportedArch, Detail: fmt.Sprintf("no closure entry for ELF machine %v", m)}
	}
	return ce.closureEntry(at, ctx, fn)
}

func (AMD64) closureEntry(at, ctx, fn uint64) ([]byte, error) {
	b := []byte{0x48, 0xba} // movabs rdx, imm64
	b = binary.LittleEndian.AppendUint64(b, ctx)
	return append(b, AMD64{}.Jump(at+uint64(len(b)), fn)...), nil
}

func (ARM64) closureEntry(at, ctx, fn uint64) ([]byte, error) {
	if at&3 != 0 {
		return nil, &Error{Addr: at, Err: ErrCannotRelocate, Detail: "closure entry address is not 4-byte aligned"}
	}
	const ldrX26At16, ldrX16At20 = 0x58000000 | 4<<5 | 26, 0x58000000 | 5<<5 | regX16
	b := words(ldrX26At16, ldrX16At20, a64BRX16, a64NOP)
	b = binary.LittleEndian.AppendUint64(b, ctx)
	return binary.LittleEndian.AppendUint64(b, fn), nil
}
