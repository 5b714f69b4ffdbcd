// Package cfi parses DWARF call frame information from an .eh_frame section
// (the format gcc and clang emit, which debug/dwarf does not read) and
// evaluates it: for a pc it yields the rule for the canonical frame address
// and for each saved register.
package cfi

import "encoding/binary"

// RuleKind says how to recover a register of the caller.
type RuleKind uint8

const (
	RuleUndefined     RuleKind = iota // not recoverable; for the return address: outermost frame
	RuleSameValue                     // unchanged
	RuleOffset                        // saved at CFA+Offset
	RuleValOffset                     // value is CFA+Offset
	RuleRegister                      // value is in register Reg
	RuleExpression                    // saved at the address computed by Expr
	RuleValExpression                 // value computed by Expr
)

// Rule recovers one register.
type Rule struct {
	Kind   RuleKind
	Offset int64
	Reg    int
	Expr   []byte
}

// CFA is the rule for the canonical frame address: Reg+Offset, or Expr when
// Expr is not nil.
type CFA struct {
	Reg    int
	Offset int64
	Expr   []byte
}

// Row is the unwind table row that applies at one pc.
type Row struct {
	CFA CFA
	// Regs holds the rules for registers that have one; registers without an
	// entry follow the ABI default (callee-saved: same value).
	Regs map[int]Rule
	// RA is the DWARF register number that holds the return address.
	RA int
	// Signal is set when the FDE's CIE has the "S" augmentation (signal
	// trampoline frame).
	Signal bool
	// FuncStart and FuncEnd bound the FDE (link-time addresses).
	FuncStart, FuncEnd uint64
}

// Table indexes the FDEs of one .eh_frame section.
type Table struct {
	// implementation fields
}

// Parse indexes an .eh_frame section whose first byte lies at link-time
// address addr. ptrSize is 8 or 4. Errors carry the offending offset.
func Parse(ehFrame []byte, addr uint64, ptrSize int, order binary.ByteOrder) (*Table, error) {
	panic("todo")
}

// RowAt evaluates the CFI program of the FDE covering link-time pc, up to pc.
// ok is false when no FDE covers pc.
func (t *Table) RowAt(pc uint64) (row Row, ok bool, err error) { panic("todo") }
