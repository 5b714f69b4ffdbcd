package trampoline

import (
	"bytes"
	"encoding/binary"
	"fmt"

	"golang.org/x/arch/x86/x86asm"
)

// Calling the original of a patched Go function.
//
// A Go function's entry checks the stack (`cmp rsp, [r14+16]; jbe tail`,
// after `lea r12, [rsp-N]` for frames above the small-frame limit) and its
// tail spills the register arguments, calls runtime.morestack_noctxt,
// reloads them and jumps back to the entry. Once the entry is patched, the
// relocated original (Plan.Thunk) reaches that jump too when its stack must
// grow or the goroutine is asked to yield: it re-enters the patch, and a
// replacement that wraps the original runs twice.
//
// GoOriginal builds an original that does not: its stack check branches to
// a tail of its own, which spills the arguments as the function's tail does,
// loads a marker into RDX (Go's closure context register, which
// runtime.morestack saves in g.sched.ctxt and restores on resumption, where
// morestack_noctxt would clear it), pushes the address right after the
// function's own `call runtime.morestack_noctxt` as the return address and
// jumps to runtime.morestack. To the runtime the function itself called
// morestack (the thunk is never a frame it sees); it grows the stack or
// reschedules the goroutine, and resumes in the function's tail, which
// reloads the arguments and jumps to the patched entry with RDX = marker.
// There, GoOriginalEntry sends a call carrying the marker back to the
// original (clearing RDX) and every other call to the replacement.

// GoOriginalMaxSize bounds len(GoOriginal(...)).
const GoOriginalMaxSize = 256

// GoOriginalEntrySize bounds len(GoOriginalEntry(...)).
const GoOriginalEntrySize = 80

// ErrNoStackCheck: the function does not begin with Go's stack check
// (a NOSPLIT function): its Plan.Thunk is its original already.
var ErrNoStackCheck = fmt.Errorf("%w: no Go stack check at the entry", ErrCannotRelocate)

var (
	goCheckSmall = []byte{0x49, 0x3b, 0x66, 0x10}                               // cmp rsp, [r14+16]
	goCheckLarge = []byte{0x4d, 0x3b, 0x66, 0x10}                               // cmp r12, [r14+16]
	goLeaR12     = [][]byte{{0x4c, 0x8d, 0x64, 0x24}, {0x4c, 0x8d, 0xa4, 0x24}} // lea r12, [rsp+disp8|disp32]
)

// GoOriginal returns the code, to be placed at at, of the original of the
// x86-64 Go function fn whose first jumpLen bytes a jump overwrites (see the
// comment above). morestack and morestackNoctxt are the addresses of
// runtime.morestack and runtime.morestack_noctxt (ABI0). It returns
// ErrNoStackCheck for a function without a stack check, and refuses a
// prologue or tail it does not know.
func (AMD64) GoOriginal(fn Func, at, marker, morestack, morestackNoctxt uint64, jumpLen int) ([]byte, error) {
	refuse := func(format string, args ...any) ([]byte, error) {
		return nil, &Error{Func: fn.Name, Addr: fn.Addr, Err: ErrCannotRelocate, Detail: fmt.Sprintf(format, args...)}
	}
	code := fn.Code
	var check []byte
	off := 0
	for _, lea := range goLeaR12 {
		if bytes.HasPrefix(code, lea) {
			in, err := decodeAMD64(code, fn.Addr)
			if err != nil {
				return refuse("%v", err)
			}
			off = in.Len
			if !bytes.HasPrefix(code[off:], goCheckLarge) {
				return refuse("lea r12 at the entry is not followed by Go's large-frame stack check")
			}
		}
	}
	switch {
	case off > 0:
		off += len(goCheckLarge)
	case bytes.HasPrefix(code, goCheckSmall):
		off = len(goCheckSmall)
	default:
		return nil, &Error{Func: fn.Name, Addr: fn.Addr, Err: ErrNoStackCheck, Detail: "the function does not begin with Go's stack check"}
	}
	check = code[:off]
	jbe, err := decodeAMD64(code[off:], fn.Addr+uint64(off))
	if err != nil {
		return refuse("%v", err)
	}
	if jbe.Op != x86asm.JBE {
		return refuse("Go's stack check is not followed by jbe but by %s", jbe)
	}
	tail, _ := jbe.target()
	rest := off + jbe.Len // the original continues here
	if rest < jumpLen {
		return refuse("the %d-byte jump overwrites more than the %d bytes of the stack check", jumpLen, rest)
	}
	if tail < fn.Addr+uint64(rest) || tail >= fn.Addr+uint64(len(code)) {
		return refuse("the stack check branches to %#x, outside the function's body", tail)
	}
	spills, resume, err := goMorestackTail(code[tail-fn.Addr:], tail, morestackNoctxt)
	if err != nil {
		return refuse("%v", err)
	}

	b := append([]byte(nil), check...)
	tailAt := uint64(len(b)) + 6 + amd64FarJumpLen // after jbe rel32 and the longest jump back
	b = append(b, 0x0f, 0x86, 0, 0, 0, 0)
	binary.LittleEndian.PutUint32(b[len(b)-4:], uint32(int32(tailAt-uint64(len(b)))))
	b = append(b, absJump(fn.Addr+uint64(rest))...) // fixed length keeps tailAt exact
	b = append(b, spills...)
	b = append(b, 0x48, 0xba) // movabs rdx, marker
	b = binary.LittleEndian.AppendUint64(b, marker)
	b = append(b, 0x49, 0xbc) // movabs r12, resume
	b = binary.LittleEndian.AppendUint64(b, resume)
	b = append(b, 0x41, 0x54) // push r12: morestack's "f's PC"
	b = append(b, AMD64{}.Jump(at+uint64(len(b)), morestack)...)
	if len(b) > GoOriginalMaxSize {
		return refuse("the original's code (%d bytes) exceeds %d bytes", len(b), GoOriginalMaxSize)
	}
	return b, nil
}

// goMorestackTail reads a Go function's stack-growth tail at addr: the
// argument spills up to `call runtime.morestack_noctxt`. It returns the
// spills (position-independent stores relative to rsp) and the address
// after the call.
func goMorestackTail(code []byte, addr, morestackNoctxt uint64) ([]byte, uint64, error) {
	var spills []byte
	for pc, i := addr, 0; i < 64; i++ {
		in, err := decodeAMD64(code[pc-addr:], pc)
		if err != nil {
			return nil, 0, err
		}
		if in.Op == x86asm.CALL {
			if t, ok := in.target(); !ok || t != morestackNoctxt {
				return nil, 0, fmt.Errorf("the stack-growth tail at %#x calls %s, not runtime.morestack_noctxt at %#x", addr, in, morestackNoctxt)
			}
			return spills, pc + uint64(in.Len), nil
		}
		if in.Op == x86asm.NOP {
			pc += uint64(in.Len) // the assembler's alignment of the call
			continue
		}
		if in.ripDispOff >= 0 || in.PCRel != 0 || !spillsToStack(in) {
			return nil, 0, fmt.Errorf("the stack-growth tail at %#x holds %s, not an argument spill", addr, in)
		}
		spills = append(spills, in.Raw...)
		pc += uint64(in.Len)
	}
	return nil, 0, fmt.Errorf("no call of runtime.morestack_noctxt in the stack-growth tail at %#x", addr)
}

// spillsToStack reports whether in stores a register to memory addressed
// from rsp (MOVQ/MOVL/MOVSD/MOVSS/MOVUPS and friends).
func spillsToStack(in *amd64Inst) bool {
	switch in.Op {
	case x86asm.MOV, x86asm.MOVSD_XMM, x86asm.MOVSS, x86asm.MOVUPS, x86asm.MOVQ, x86asm.MOVD:
	default:
		return false
	}
	m, ok := in.Args[0].(x86asm.Mem)
	if !ok || m.Base != x86asm.RSP {
		return false
	}
	_, isReg := in.Args[1].(x86asm.Reg)
	return isReg
}

// GoOriginalEntry returns the code, to be placed at at, that the patched
// entry of a Go function jumps to when its replacement may call the
// original: a call with RDX == marker (the function resuming after its
// original grew the stack, see GoOriginal) goes to orig with RDX cleared;
// every other call enters the replacement closure as ClosureEntry does.
// R12 is scratch at a Go function's entry.
func (AMD64) GoOriginalEntry(at, ctx, fn, marker, orig uint64) []byte {
	b := []byte{0x49, 0xbc} // movabs r12, marker
	b = binary.LittleEndian.AppendUint64(b, marker)
	b = append(b, 0x4c, 0x39, 0xe2) // cmp rdx, r12
	toOrig := AMD64{}.Jump(at+uint64(len(b))+2+2, orig)
	b = append(b, 0x75, byte(2+len(toOrig))) // jne replacement
	b = append(b, 0x31, 0xd2)                // xor edx, edx
	b = append(b, toOrig...)
	b = append(b, 0x48, 0xba) // movabs rdx, ctx
	b = binary.LittleEndian.AppendUint64(b, ctx)
	return append(b, AMD64{}.Jump(at+uint64(len(b)), fn)...)
}
