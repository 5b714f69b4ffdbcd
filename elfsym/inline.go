package elfsym

import (
	"debug/dwarf"
	"debug/elf"
	"errors"
	"fmt"
	"sort"

	"github.com/hotpatch-dev/hotpatch/internal/gopcln"
)

// InlineSite is a place where the compiler copied a function's body into
// another function. Patching the function's out-of-line copy does not change
// those copies.
type InlineSite struct {
	// Caller is the function the body was inlined into.
	Caller string
	// Addr is the live address of the inlined code, 0 when the source does
	// not give one (the pclntab's inline tree).
	Addr uint64
	// Source is "dwarf" or "pclntab".
	Source string
}

// InlineSites returns every place sym's function was inlined: for Go modules
// from the pclntab's inline trees (present in stripped binaries too), plus
// the module's DWARF (DW_TAG_inlined_subroutine) when it has some, which
// also gives the addresses. A C module without DWARF gives no sites and no
// error: nothing is known to be inlined.
func (t *Table) InlineSites(sym Symbol) ([]InlineSite, error) {
	m := sym.Module
	m.inlineOnce.Do(func() { m.inlines, m.inlineErr = m.loadInlines() })
	if m.inlineErr != nil {
		return nil, m.inlineErr
	}
	return m.inlines[sym.Name], nil
}

func (m *Module) loadInlines() (map[string][]InlineSite, error) {
	if m.image != nil {
		return nil, nil // the vDSO: nothing to patch there
	}
	ef, err := m.Open()
	if err != nil {
		return nil, err
	}
	defer ef.Close()
	out := map[string][]InlineSite{}
	// Go: the pclntab's inline trees record every inlining the compiler
	// did. Go's DWARF does not: a call whose inlined instructions were all
	// merged into the caller's gets no DW_TAG_inlined_subroutine (seen with
	// Go 1.26 for a one-line function). DWARF adds the addresses.
	if m.GoUnsupported != nil {
		return nil, fmt.Errorf("elfsym: inlined functions of %s: %w", m.Path, m.GoUnsupported)
	}
	if m.IsGo {
		sites, err := m.pclntabInlines()
		if err != nil {
			return nil, fmt.Errorf("elfsym: inlined functions of %s from the pclntab: %w", m.Path, err)
		}
		out = sites
	}
	if d, err := m.DWARF(); err == nil {
		sites, err := m.dwarfInlines(d)
		if err != nil {
			return nil, fmt.Errorf("elfsym: inlined functions of %s from DWARF: %w", m.Path, err)
		}
		for name, s := range sites {
			out[name] = append(out[name], s...)
		}
	}
	return out, nil
}

// dwarfInlines walks every subprogram's DW_TAG_inlined_subroutine entries.
func (m *Module) dwarfInlines(d *dwarf.Data) (map[string][]InlineSite, error) {
	names := map[dwarf.Offset]string{}         // subprogram DIE → its name
	origins := map[dwarf.Offset]dwarf.Offset{} // unnamed subprogram DIE → its abstract origin
	type site struct {
		callee dwarf.Offset // abstract origin of the inlined copy
		caller dwarf.Offset // outermost enclosing subprogram DIE
		addr   uint64
	}
	var sites []site
	var stack []dwarf.Offset // enclosing subprogram DIE per open level (0: none)
	r := d.Reader()
	for {
		e, err := r.Next()
		if err != nil {
			return nil, err
		}
		if e == nil {
			break
		}
		if e.Tag == 0 { // closes the innermost open level
			if len(stack) > 0 {
				stack = stack[:len(stack)-1]
			}
			continue
		}
		var caller dwarf.Offset
		if len(stack) > 0 {
			caller = stack[len(stack)-1]
		}
		open := caller
		switch e.Tag {
		case dwarf.TagSubprogram:
			if name, _ := e.Val(dwarf.AttrName).(string); name != "" {
				names[e.Offset] = name
			} else if o, ok := e.Val(dwarf.AttrAbstractOrigin).(dwarf.Offset); ok {
				origins[e.Offset] = o
			}
			if caller == 0 {
				open = e.Offset
			}
		case dwarf.TagInlinedSubroutine:
			if o, ok := e.Val(dwarf.AttrAbstractOrigin).(dwarf.Offset); ok && caller != 0 {
				var addr uint64
				if lo, ok := e.Val(dwarf.AttrLowpc).(uint64); ok {
					addr = lo + m.Bias
				} else if rs, err := d.Ranges(e); err == nil && len(rs) > 0 {
					addr = rs[0][0] + m.Bias
				}
				sites = append(sites, site{callee: o, caller: caller, addr: addr})
			}
		}
		if e.Children {
			stack = append(stack, open)
		}
	}
	name := func(o dwarf.Offset) string {
		for i := 0; i < 8 && names[o] == ""; i++ {
			next, ok := origins[o]
			if !ok {
				break
			}
			o = next
		}
		return names[o]
	}
	out := map[string][]InlineSite{}
	type key struct {
		callee string
		site   InlineSite
	}
	seen := map[key]bool{}
	for _, s := range sites {
		callee, caller := name(s.callee), name(s.caller)
		if callee == "" || caller == "" {
			continue
		}
		is := InlineSite{Caller: caller, Addr: s.addr, Source: "dwarf"}
		if seen[key{callee, is}] {
			continue
		}
		seen[key{callee, is}] = true
		out[callee] = append(out[callee], is)
	}
	for _, s := range out {
		sort.Slice(s, func(i, j int) bool {
			if s[i].Caller != s[j].Caller {
				return s[i].Caller < s[j].Caller
			}
			return s[i].Addr < s[j].Addr
		})
	}
	return out, nil
}

// pclntabInlines reads every function's inline tree.
func (m *Module) pclntabInlines() (map[string][]InlineSite, error) {
	tab, err := gopcln.Parse(m.pclntab, m.goText)
	if err != nil {
		return nil, err
	}
	if m.goFunc == 0 {
		return nil, errors.New("go:func.* not found (no symbol, no module data): the inline trees cannot be read")
	}
	// go:func.* is read-only data: read it with the rest of its segment
	// once, not with a file open per function.
	seg := m.segmentFrom(m.goFunc)
	gofunc := func(off uint32, n int) ([]byte, error) {
		if o, e := uint64(off), uint64(off)+uint64(n); n >= 0 && e <= uint64(len(seg)) {
			return seg[o:e:e], nil
		}
		return m.Code(m.goFunc+uint64(off)+m.Bias, n) // it says why not
	}
	out := map[string][]InlineSite{}
	funcs := tab.Funcs()
	for i := range funcs {
		f := &funcs[i]
		names, err := tab.Inlined(f, gofunc)
		if err != nil {
			return nil, err
		}
		for _, n := range names {
			out[n] = append(out[n], InlineSite{Caller: f.Name, Source: "pclntab"})
		}
	}
	return out, nil
}

// segmentFrom returns the file bytes of the loaded segment that holds
// link-time address link, from link to the end of its file data (nil when
// unreadable).
func (m *Module) segmentFrom(link uint64) []byte {
	for _, p := range m.loads {
		if link >= p.Vaddr && link < p.Vaddr+p.Filesz {
			b, err := m.Code(link+m.Bias, int(p.Vaddr+p.Filesz-link))
			if err != nil {
				return nil
			}
			return b
		}
	}
	return nil
}

// goFuncStart returns the link-time address of go:func.*, where the Go
// linker puts the functions' funcdata (inline trees among them): the symbol
// when there is a symbol table, else the gofunc field of the module data
// whose first word points at the pclntab.
func goFuncStart(ef *elf.File, syms []elf.Symbol, pclnAddr uint64) uint64 {
	for _, s := range syms {
		if s.Name == "go:func.*" {
			return s.Value
		}
	}
	if w := moduleData(ef, pclnAddr, mdGofunc+1, func(w []uint64) bool {
		return w[mdText] != 0 && w[mdMinpc] == w[mdText]
	}); w != nil {
		return w[mdGofunc]
	}
	return 0
}
