package elfsym

import (
	"debug/gosym"
	"sync"
)

// goLines is a Go module's line table, parsed on first use.
type goLines struct {
	once sync.Once
	tab  *gosym.Table
}

// LineAt returns the source file and line of the Go code at live address
// addr, from its module's Go function table. ok is false for code without
// one (C code, the vDSO) and for a Go release hotpatch does not read. For a
// return address, ask for addr-1: the call, not the instruction after it.
func (t *Table) LineAt(addr uint64) (file string, line int, ok bool) {
	m, found := t.ModuleAt(addr)
	if !found || m.pclntab == nil || m.GoUnsupported != nil {
		return "", 0, false
	}
	m.lines.once.Do(func() {
		m.lines.tab, _ = newGoTable(m.pclntab, m.goText)
	})
	if m.lines.tab == nil {
		return "", 0, false
	}
	return pcToLine(m.lines.tab, addr-m.Bias)
}

// pcToLine is tab.PCToLine, with a panic on malformed data taken for
// "unknown".
func pcToLine(tab *gosym.Table, pc uint64) (file string, line int, ok bool) {
	defer func() {
		if recover() != nil {
			file, line, ok = "", 0, false
		}
	}()
	file, line, fn := tab.PCToLine(pc)
	return file, line, fn != nil && file != ""
}
