// Package trampoline builds the machine code of a patch as pure functions
// over bytes and addresses: the jump written over a function's entry, and the
// "call the original" thunk that holds the relocated instructions the jump
// displaced. The architecture is chosen by the target's ELF machine, not the
// host's, so every encoding is testable on any host.
package trampoline

import (
	"debug/elf"
	"errors"
	"fmt"

	"github.com/hotpatch-dev/hotpatch/internal/arch"
)

// Sentinel errors, matched with errors.Is on an *Error.
var (
	// ErrTooShort: the function (with its padding) is shorter than the jump.
	ErrTooShort = errors.New("function too short for the jump")
	// ErrBranchIntoPatch: an instruction elsewhere in the function branches
	// into the bytes the jump would overwrite.
	ErrBranchIntoPatch = errors.New("branch into the patched bytes")
	// ErrCannotRelocate: a displaced instruction cannot be moved.
	ErrCannotRelocate = errors.New("instruction cannot be relocated")
	// ErrUnsupportedArch: no encoder for the ELF machine.
	ErrUnsupportedArch = errors.New("unsupported architecture")
)

// Error is a refusal to patch one function.
type Error struct {
	Func string // function name
	Addr uint64 // address of the offending instruction (or the function)
	Err  error  // one of the sentinels
	// Detail names the instruction or the numbers involved.
	Detail string
}

func (e *Error) Error() string {
	if e.Func == "" && e.Addr == 0 {
		return fmt.Sprintf("trampoline: %v: %s", e.Err, e.Detail)
	}
	return fmt.Sprintf("trampoline: %s at %#x: %v: %s", e.Func, e.Addr, e.Err, e.Detail)
}

// Unwrap returns the sentinel.
func (e *Error) Unwrap() error { return e.Err }

// Func is a function to patch.
type Func struct {
	Name string
	Addr uint64 // live entry address
	// Code is the function's bytes as they are in the target, Code[0] at Addr.
	Code []byte
	// Padding is the filler after the function (int3/nop) that the jump may
	// overwrite, Padding[0] at Addr+len(Code).
	Padding []byte
}

// Plan is how one function is patched.
type Plan struct {
	Func string
	// Addr is where the jump is written: the entry, or just after an
	// endbr64 that stays in place.
	Addr uint64
	// Original is the bytes the jump overwrites (len(Original) == len(Jump)).
	Original []byte
	// Jump is the bytes written at Addr.
	Jump []byte
	// ThunkAddr and Thunk: the relocated displaced instructions followed by a
	// jump back to the rest of the original function (or by int3 when the
	// displaced instructions were the whole function). Calling ThunkAddr
	// behaves as calling the unpatched function, except that a branch of the
	// original back to its own entry reaches the jump (Go's stack-growth
	// path does this). On x86-64 a kept endbr64 is repeated at ThunkAddr.
	ThunkAddr uint64
	Thunk     []byte
}

// Overwrites reports whether pc lies strictly inside the bytes the jump
// overwrites, (Addr, Addr+len(Jump)). A thread or goroutine stopped there, or
// a return address there on any stack (a displaced call), would resume in
// the middle of the jump, so the jump must not be written while one exists.
// A pc equal to Addr is safe: it executes the jump.
func (p *Plan) Overwrites(pc uint64) bool {
	return pc > p.Addr && pc < p.Addr+uint64(len(p.Jump))
}

// Arch encodes and relocates code for one architecture.
type Arch interface {
	// Machine is the ELF machine this Arch encodes for.
	Machine() elf.Machine
	// Jump returns the shortest jump from `from` to `to`.
	Jump(from, to uint64) []byte
	// MaxThunkSize bounds len(Plan.Thunk) for any function.
	MaxThunkSize() int
	// Plan patches fn to jump to newAddr, with the thunk placed at
	// thunkAddr. It refuses with an *Error.
	Plan(fn Func, newAddr, thunkAddr uint64) (*Plan, error)
}

// ForMachine returns the Arch for an ELF machine: AMD64 for EM_X86_64,
// ARM64 for EM_AARCH64. Other machines give an *Error wrapping
// ErrUnsupportedArch.
func ForMachine(m elf.Machine) (Arch, error) {
	for _, a := range []Arch{AMD64{}, ARM64{}} {
		if a.Machine() == m {
			return a, nil
		}
	}
	return nil, &Error{
		Err:    ErrUnsupportedArch,
		Detail: fmt.Sprintf("no jump encoder or relocator for ELF machine %v; only %v and %v are supported", m, arch.AMD64.Machine, arch.ARM64.Machine),
	}
}
