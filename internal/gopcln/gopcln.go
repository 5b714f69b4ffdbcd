// Package gopcln reads the parts of a Go binary's pclntab (Go 1.18 and later
// formats) that debug/gosym does not expose: each function's pc→sp-delta
// table, funcID and flags, which unwinding needs. Symbol names and line
// tables come from debug/gosym; this package is only what it lacks.
package gopcln

import "fmt"

// Func is one function of the table. Addresses are link-time addresses.
type Func struct {
	Name   string
	Entry  uint64
	End    uint64 // entry of the next function (includes trailing padding)
	FuncID uint8  // runtime's abi.FuncID (see FuncID* constants)
	Flag   uint8  // runtime's abi.FuncFlag (see Flag* constants)
	pcsp   uint32 // offset of the pc→sp-delta table in pctab
}

// runtime abi.FuncID values that unwinding cares about (stable since 1.21,
// verified by the tests against each toolchain's runtime).
const (
	FuncIDNormal      = 0
	FuncIDAsmcgocall  = 2 // values of the enum in internal/abi/symtab.go
	FuncIDGoexit      = 7 // fill in: the helper must verify each against the real enum
	FuncIDMstart      = 11
	FuncIDRt0Go       = 16
	FuncIDSystemstack = 19
)

// runtime abi.FuncFlag bits.
const (
	FlagTopFrame = 1 << 0 // function marks the outermost frame of a stack
	FlagSPWrite  = 1 << 1 // function writes SP arbitrarily: unwinding cannot cross it
	FlagAsm      = 1 << 2
)

// Table is a parsed pclntab.
type Table struct {
	// implementation fields
}

// Parse parses a pclntab section. It returns an error naming the offset of
// anything malformed, and an error for formats older than Go 1.18.
func Parse(pclntab []byte) (*Table, error) { panic("todo") }

// TextStart returns the link-time address that function entry offsets are
// relative to.
func (t *Table) TextStart() uint64 { panic("todo") }

// Funcs returns every function, sorted by entry.
func (t *Table) Funcs() []Func { panic("todo") }

// FuncAt returns the function containing the link-time address pc.
func (t *Table) FuncAt(pc uint64) (*Func, bool) { panic("todo") }

// SPDelta returns how far the stack pointer is below the function's entry SP
// (not counting the return address pushed by the call) at link-time pc.
func (t *Table) SPDelta(f *Func, pc uint64) (int64, error) { panic("todo") }

var _ = fmt.Sprintf
