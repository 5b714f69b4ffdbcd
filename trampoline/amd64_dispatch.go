package trampoline

import (
	"encoding/binary"
	"fmt"
)

// asm is a tiny x86-64 assembler for fixed sequences: bytes, labels and
// rel8/rip-relative fixups.
type asm struct {
	pc     uint64 // address of b[0]
	b      []byte
	labels map[string]int
	rel8   map[int]string // offset of a rel8 byte → label
	rip32  map[int]string // offset of a disp32 → label (rip-relative)
}

func newAsm(pc uint64) *asm {
	return &asm{pc: pc, labels: map[string]int{}, rel8: map[int]string{}, rip32: map[int]string{}}
}

func (a *asm) emit(b ...byte)          { a.b = append(a.b, b...) }
func (a *asm) label(name string)       { a.labels[name] = len(a.b) }
func (a *asm) jcc8(op byte, to string) { a.emit(op, 0); a.rel8[len(a.b)-1] = to }

// ripRef emits the opcode bytes then a disp32 to label, rip-relative.
func (a *asm) ripRef(to string, op ...byte) {
	a.emit(op...)
	a.emit(0, 0, 0, 0)
	a.rip32[len(a.b)-4] = to
}

func (a *asm) finish() ([]byte, error) {
	for off, l := range a.rel8 {
		to, ok := a.labels[l]
		if !ok {
			return nil, fmt.Errorf("trampoline: stub label %q undefined", l)
		}
		d := to - (off + 1)
		if d < -128 || d > 127 {
			return nil, fmt.Errorf("trampoline: stub branch to %q out of rel8 range", l)
		}
		a.b[off] = byte(int8(d))
	}
	for off, l := range a.rip32 {
		to, ok := a.labels[l]
		if !ok {
			return nil, fmt.Errorf("trampoline: stub label %q undefined", l)
		}
		binary.LittleEndian.PutUint32(a.b[off:], uint32(int32(to-(off+4))))
	}
	return a.b, nil
}

// MaxStubSize bounds the dispatch stubs AMD64 builds.
func (AMD64) MaxStubSize() int { return 128 }

// Stub builds an x86-64 dispatch stub. It runs at a function's entry, so it
// may only change what the ABI lets a callee change before it has read its
// arguments, and it leaves the stack as it found it:
//
//   - KeyG (Go ABIInternal): the key is R14 (g); the stub uses R12 and R13,
//     the ABI's scratch registers, and the flags.
//   - KeyThread (System V): the key is the thread pointer, read from fs:0
//     (the TCB's self-pointer) into R11, the one register free at entry; RAX
//     (variadic vector count) and RCX (an argument) are pushed and popped
//     around the lookup.
//
// The control word is reached rip-relative, so it must be within ±1 GiB of
// the stub (both live in the same patch memory).
func (AMD64) Stub(key TaskKey, addr, ctl, old, new uint64) (*Stub, error) {
	d := int64(ctl) - int64(addr)
	if d > 1<<30 || d < -(1<<30) {
		return nil, &Error{Addr: addr, Err: ErrCannotRelocate, Detail: fmt.Sprintf("universe control word %#x is out of rip-relative reach of the stub at %#x", ctl, addr)}
	}
	a := newAsm(addr)
	// Where a lookup ends: listed tasks go where unlisted ones do not.
	// Sel (table+16) is 1 when unlisted tasks run the new code.
	tail := func(pop ...byte) {
		a.label("listed")
		a.emit(tailSel(key)...)      // cmp qword [T+16], 0
		a.jcc8(0x75, "toold")        // jne toold (Sel 1: listed run old)
		a.jcc8(0xeb, "tonew")        // jmp tonew
		a.label("unlisted")          //
		a.emit(tailSel(key)...)      // cmp qword [T+16], 0
		a.jcc8(0x75, "tonew")        // jne tonew (Sel 1: unlisted run new)
		a.label("toold")             //
		a.emit(pop...)               //
		a.ripRef("told", 0xff, 0x25) // jmp [rip+told]
		a.label("tonew")             //
		a.emit(pop...)               //
		a.ripRef("tnew", 0xff, 0x25) // jmp [rip+tnew]
	}
	switch key {
	case KeyG:
		a.ripRef("ctl", 0x4c, 0x8b, 0x25)          // mov r12, [rip+ctl]
		a.emit(0x49, 0x83, 0x7c, 0x24, 0x08, 0x00) // cmp qword [r12+8], 0
		a.jcc8(0x74, "unlisted")                   // je unlisted
		a.emit(0x4d, 0x89, 0xf5)                   // mov r13, r14
		a.emit(0x4d, 0x23, 0x2c, 0x24)             // and r13, [r12]
		a.label("probe")                           //
		a.emit(0x4f, 0x39, 0x74, 0x2c, 0x20)       // cmp [r12+r13+32], r14
		a.jcc8(0x74, "listed")                     // je listed
		a.emit(0x4b, 0x83, 0x7c, 0x2c, 0x20, 0x00) // cmp qword [r12+r13+32], 0
		a.jcc8(0x74, "unlisted")                   // je unlisted
		a.emit(0x49, 0x83, 0xc5, 0x10)             // add r13, 16
		a.emit(0x4d, 0x23, 0x2c, 0x24)             // and r13, [r12]
		a.jcc8(0xeb, "probe")                      // jmp probe
		tail()
	case KeyThread:
		a.emit(0x51)                                     // push rcx
		a.emit(0x50)                                     // push rax
		a.emit(0x64, 0x4c, 0x8b, 0x1c, 0x25, 0, 0, 0, 0) // mov r11, fs:[0]
		a.ripRef("ctl", 0x48, 0x8b, 0x05)                // mov rax, [rip+ctl]
		a.emit(0x48, 0x83, 0x78, 0x08, 0x00)             // cmp qword [rax+8], 0
		a.jcc8(0x74, "unlisted")                         // je unlisted
		a.emit(0x4c, 0x89, 0xd9)                         // mov rcx, r11
		a.emit(0x48, 0x23, 0x08)                         // and rcx, [rax]
		a.label("probe")                                 //
		a.emit(0x4c, 0x39, 0x5c, 0x08, 0x20)             // cmp [rax+rcx+32], r11
		a.jcc8(0x74, "listed")                           // je listed
		a.emit(0x48, 0x83, 0x7c, 0x08, 0x20, 0x00)       // cmp qword [rax+rcx+32], 0
		a.jcc8(0x74, "unlisted")                         // je unlisted
		a.emit(0x48, 0x83, 0xc1, 0x10)                   // add rcx, 16
		a.emit(0x48, 0x23, 0x08)                         // and rcx, [rax]
		a.jcc8(0xeb, "probe")                            // jmp probe
		tail(0x58, 0x59)                                 // (pop rax; pop rcx before each jump)
	default:
		return nil, fmt.Errorf("trampoline: unknown task key %d", key)
	}
	for len(a.b)%8 != 0 {
		a.emit(0xcc)
	}
	a.label("told")
	a.emit(make([]byte, 8)...)
	a.label("tnew")
	a.emit(make([]byte, 8)...)
	// The control word is not in the stub: place its label at its distance.
	a.labels["ctl"] = int(d)
	code, err := a.finish()
	if err != nil {
		return nil, err
	}
	binary.LittleEndian.PutUint64(code[a.labels["told"]:], old)
	binary.LittleEndian.PutUint64(code[a.labels["tnew"]:], new)
	return &Stub{Addr: addr, Code: code}, nil
}

// tailSel is "cmp qword [T+16], 0" with T the register holding the table.
func tailSel(key TaskKey) []byte {
	if key == KeyG {
		return []byte{0x49, 0x83, 0x7c, 0x24, 0x10, 0x00} // [r12+16]
	}
	return []byte{0x48, 0x83, 0x78, 0x10, 0x00} // [rax+16]
}
