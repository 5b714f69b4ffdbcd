// Package unwind walks a stopped thread's stack: Go frames with the pclntab's
// pc→sp-delta tables, C frames with .eh_frame call frame information. A frame
// it cannot be sure of ends the walk and marks the stack unreliable; it never
// guesses.
package unwind

import (
	"io"

	"github.com/hotpatch-dev/hotpatch/internal/cfi"
	"github.com/hotpatch-dev/hotpatch/internal/gopcln"
)

// Arch describes what the unwinder needs to know about an architecture.
type Arch struct {
	PtrSize int
	// SPReg and RAReg are DWARF register numbers of the stack pointer and of
	// the return address column.
	SPReg, RAReg int
	// FPReg is the DWARF number of the frame pointer register.
	FPReg int
	// LinkRegister is true on arm64: a Go function that has not stored LR yet
	// (sp delta 0) returns to the LR register, not to memory.
	LinkRegister bool
}

// AMD64 is the x86-64 description.
var AMD64 = Arch{PtrSize: 8, SPReg: 7, RAReg: 16, FPReg: 6}

// Module is one mapped object with its unwind tables.
type Module struct {
	Name       string
	Start, End uint64 // live address range of its code
	Bias       uint64 // live address = link-time address + Bias
	// Pclntab is the Go pclntab section's bytes (nil unless a Go binary).
	Pclntab []byte
	// GoTextStart is the link-time address the pclntab's function entry
	// offsets are relative to (Go 1.26 writes 0 in the pclntab header, so
	// it comes from the ELF file: runtime.text or the module data).
	GoTextStart uint64
	// EHFrame is the .eh_frame section's bytes (nil when absent), whose
	// first byte lies at link-time address EHFrameAddr.
	EHFrame     []byte
	EHFrameAddr uint64
	// implementation fields (lazily parsed tables)
	goTab  *gopcln.Table
	cfiTab *cfi.Table
}

// Frame is one frame of a stack, innermost first.
type Frame struct {
	PC  uint64 // for callers: the return address
	SP  uint64 // stack pointer in this frame
	CFA uint64 // canonical frame address (SP of the caller after the return)
	// Method says how the caller of this frame was found: "pclntab", "cfi".
	Method string
}

// Stack is the result of a walk.
type Stack struct {
	Frames   []Frame
	Reliable bool
	// Reason explains why the stack is unreliable ("no unwind info for pc
	// 0x...", "stack does not end at a root", ...).
	Reason string
}

// Unwinder walks stacks of one process.
type Unwinder struct {
	Arch    Arch
	Modules []*Module // any order
}

// Unwind walks from regs, which are indexed by DWARF register number and
// include the pc at index Arch.RAReg, reading stack memory from mem.
func (u *Unwinder) Unwind(mem io.ReaderAt, regs []uint64) Stack { panic("todo") }
