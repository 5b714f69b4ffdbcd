package trampoline

import (
	"encoding/binary"
	"fmt"
)

// MaxStubSize bounds the dispatch stubs ARM64 builds.
func (ARM64) MaxStubSize() int { return 128 }

// Stub builds an arm64 dispatch stub. At a function's entry the AAPCS64 (and
// Go's ABI) leave only X16 and X17 free; the lookup needs two more
// registers, so the stub saves X0 and X1 on the stack (one 16-byte pair,
// keeping SP aligned) and restores them before it branches on with BR X16,
// which a BTI "c" landing pad at either target accepts.
//
//   - KeyG (Go): the key is X28 (g).
//   - KeyThread (C): the key is TPIDR_EL0, the thread pointer.
//
// The control word is loaded with an LDR literal, so it must lie within
// ±1 MiB of the stub (both live in the same patch memory).
func (ARM64) Stub(key TaskKey, addr, ctl, old, new uint64) (*Stub, error) {
	var keyInsn uint32
	switch key {
	case KeyG:
		keyInsn = 0xaa1c03e0 // mov x0, x28
	case KeyThread:
		keyInsn = 0xd53bd040 // mrs x0, tpidr_el0
	default:
		return nil, fmt.Errorf("trampoline: unknown task key %d", key)
	}
	var code []uint32
	labels := map[string]int{} // label → instruction index
	type fix struct {
		at    int
		label string
		kind  string // "imm19", "imm26"
	}
	var fixes []fix
	emit := func(w uint32) { code = append(code, w) }
	label := func(l string) { labels[l] = len(code) }
	ref := func(w uint32, l, kind string) { fixes = append(fixes, fix{len(code), l, kind}); emit(w) }

	emit(0xa9bf07e0)                     // stp x0, x1, [sp, #-16]!
	ref(0x58000010, "ctl", "imm19")      // ldr x16, ctl          (the active table)
	emit(0xf9400611)                     // ldr x17, [x16, #8]    (count)
	ref(0xb4000011, "unlisted", "imm19") // cbz x17, unlisted
	emit(keyInsn)                        // x0 = key
	emit(0xf9400211)                     // ldr x17, [x16]        (mask)
	emit(0x8a110001)                     // and x1, x0, x17       (first slot)
	label("probe")                       //
	emit(0x8b010211)                     // add x17, x16, x1
	emit(0xf9401231)                     // ldr x17, [x17, #32]   (slot key)
	emit(0xeb00023f)                     // cmp x17, x0
	ref(0x54000000, "listed", "imm19")   // b.eq listed
	ref(0xb4000011, "unlisted", "imm19") // cbz x17, unlisted
	emit(0x91004021)                     // add x1, x1, #16
	emit(0xf9400211)                     // ldr x17, [x16]        (mask)
	emit(0x8a110021)                     // and x1, x1, x17
	ref(0x14000000, "probe", "imm26")    // b probe
	label("listed")                      // Sel 1: listed tasks run the old code
	emit(0xf9400a11)                     // ldr x17, [x16, #16]   (sel)
	ref(0xb5000011, "toold", "imm19")    // cbnz x17, toold
	ref(0x14000000, "tonew", "imm26")    // b tonew
	label("unlisted")                    // Sel 1: unlisted tasks run the new code
	emit(0xf9400a11)                     // ldr x17, [x16, #16]   (sel)
	ref(0xb5000011, "tonew", "imm19")    // cbnz x17, tonew
	label("toold")                       //
	emit(0xa8c107e0)                     // ldp x0, x1, [sp], #16
	ref(0x58000010, "told", "imm19")     // ldr x16, told
	emit(0xd61f0200)                     // br x16
	label("tonew")                       //
	emit(0xa8c107e0)                     // ldp x0, x1, [sp], #16
	ref(0x58000010, "tnew", "imm19")     // ldr x16, tnew
	emit(0xd61f0200)                     // br x16
	if len(code)%2 != 0 {
		emit(0xd503201f) // nop: align the targets to 8 bytes
	}
	label("told")
	emit(0)
	emit(0)
	label("tnew")
	emit(0)
	emit(0)

	d := int64(ctl) - int64(addr)
	if d%4 != 0 || d < -(1<<20) || d >= 1<<20 {
		return nil, &Error{Addr: addr, Err: ErrCannotRelocate, Detail: fmt.Sprintf("universe control word %#x is out of LDR-literal reach of the stub at %#x", ctl, addr)}
	}
	labels["ctl"] = int(d / 4)
	for _, f := range fixes {
		off := int64(labels[f.label] - f.at)
		switch f.kind {
		case "imm19":
			code[f.at] |= uint32(off&0x7ffff) << 5
		case "imm26":
			code[f.at] |= uint32(off & 0x3ffffff)
		}
	}
	b := make([]byte, 4*len(code))
	for i, w := range code {
		binary.LittleEndian.PutUint32(b[4*i:], w)
	}
	binary.LittleEndian.PutUint64(b[4*labels["told"]:], old)
	binary.LittleEndian.PutUint64(b[4*labels["tnew"]:], new)
	return &Stub{Addr: addr, Code: b}, nil
}
