package elfsym

import (
	"debug/elf"
	"fmt"
	"strings"

	"github.com/hotpatch-dev/hotpatch/internal/gopcln"
)

// GoFunc is a function of a module's Go function table (pclntab): code
// compiled by the Go toolchain, run by that module's Go runtime.
type GoFunc struct {
	Name string
	// Args is the size of the argument area (for register-ABI functions
	// the spill slots of the arguments), gopcln.ArgsSizeUnknown when the
	// compiler did not record it.
	Args int32
	// Asm: written in assembly, called with the stack-based ABI0 (Go code
	// reaches it through a wrapper).
	Asm bool
	// Defers: the function defers calls (the inliner never inlines those).
	Defers bool
}

// GoFunc returns the function of sym's module's Go function table that
// starts at sym's address; false for code the table does not list (C code,
// a module that is not Go).
func (t *Table) GoFunc(sym Symbol) (GoFunc, bool, error) {
	m := sym.Module
	if m == nil || !m.IsGo {
		return GoFunc{}, false, nil
	}
	m.goTabOnce.Do(func() { m.goTab, m.goTabErr = gopcln.Parse(m.pclntab, m.goText) })
	if m.goTabErr != nil {
		return GoFunc{}, false, fmt.Errorf("elfsym: Go function table of %s: %w", m.Path, m.goTabErr)
	}
	f, ok := m.goTab.FuncAt(sym.Addr - m.Bias)
	if !ok || f.Entry != sym.Addr-m.Bias {
		return GoFunc{}, false, nil
	}
	return GoFunc{Name: f.Name, Args: f.Args, Asm: f.Flag&gopcln.FlagAsm != 0, Defers: f.DeferReturn != 0}, true, nil
}

// Object is what an ELF file on disk (a patch library, before it is
// loaded) holds.
type Object struct {
	Path string
	// Go names the first sign that the object holds Go code — a
	// .go.buildinfo section, a Go function table, Go runtime symbols —
	// and is "" when there is none.
	Go string
	// Funcs are the names of the functions the object defines.
	Funcs map[string]bool
}

// ReadObject reads the ELF file at path without loading it anywhere.
func ReadObject(path string) (*Object, error) {
	ef, err := elf.Open(path)
	if err != nil {
		return nil, fmt.Errorf("elfsym: %s: %w", path, err)
	}
	defer ef.Close()
	o := &Object{Path: path, Funcs: map[string]bool{}}
	syms, _ := ef.Symbols()
	dyn, _ := ef.DynamicSymbols()
	for _, s := range append(syms, dyn...) {
		if s.Section == elf.SHN_UNDEF {
			continue
		}
		switch typ := elf.ST_TYPE(s.Info); {
		case typ == elf.STT_FUNC || typ == elf.STT_GNU_IFUNC:
			o.Funcs[s.Name] = true
		}
		if o.Go == "" && isGoRuntimeSymbol(s.Name) {
			o.Go = "Go runtime symbols (" + s.Name + ")"
		}
	}
	for _, name := range []string{".go.buildinfo", ".gopclntab", ".data.rel.ro.gopclntab", ".note.go.buildid"} {
		if ef.Section(name) != nil {
			o.Go = "a " + name + " section"
			break
		}
	}
	if o.Go == "" {
		if pcln, _ := findPclntab(ef, syms); pcln != nil {
			o.Go = "a Go function table"
		}
	}
	return o, nil
}

// isGoRuntimeSymbol reports the symbols every Go binary, plugin and Go
// shared object defines.
func isGoRuntimeSymbol(name string) bool {
	switch name {
	case "runtime.text", "runtime.firstmoduledata", "go:buildid", "go.buildid", "runtime.pclntab", "go:link.pkghashbytes.runtime":
		return true
	}
	return strings.HasPrefix(name, "go:plugin.") || strings.HasPrefix(name, "go.link.")
}
