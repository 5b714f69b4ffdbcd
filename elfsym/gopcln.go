package elfsym

import (
	"debug/elf"
	"debug/gosym"
	"errors"
	"fmt"

	"github.com/hotpatch-dev/hotpatch/internal/gopcln"
	"github.com/hotpatch-dev/hotpatch/internal/goruntime"
)

// findPclntab returns the Go pclntab bytes and their link-time address. The
// Go linker names the section .gopclntab (every build mode as of Go 1.26);
// older toolchains used .data.rel.ro.gopclntab for PIE and external links.
// Without sections, the runtime.pclntab/runtime.epclntab symbols bound it.
func findPclntab(ef *elf.File, syms []elf.Symbol) ([]byte, uint64) {
	for _, name := range []string{".gopclntab", ".data.rel.ro.gopclntab"} {
		if s := ef.Section(name); s != nil && s.Type != elf.SHT_NOBITS {
			if d, err := s.Data(); err == nil && len(d) > 0 {
				return d, s.Addr
			}
		}
	}
	var lo, hi uint64
	for _, s := range syms {
		switch s.Name {
		case "runtime.pclntab":
			lo = s.Value
		case "runtime.epclntab":
			hi = s.Value
		}
	}
	if lo == 0 || hi <= lo {
		return nil, 0
	}
	for _, p := range ef.Progs {
		if p.Type == elf.PT_LOAD && lo >= p.Vaddr && hi <= p.Vaddr+p.Filesz {
			d := make([]byte, hi-lo)
			if _, err := p.ReadAt(d, int64(lo-p.Vaddr)); err == nil {
				return d, lo
			}
		}
	}
	return nil, 0
}

// goSupported returns why hotpatch does not read the Go runtime of ef (a
// *goruntime.ReleaseError, see goruntime.Supported), nil when it does. A release is
// judged by version; the function table is parsed only when that is not
// enough (a development build), and its refusal is kept as the cause.
func goSupported(ef *elf.File, version string, pcln []byte, text uint64) error {
	b := goruntime.Binary{ELF: ef, Version: version}
	err := goruntime.Supported(b)
	if err == nil {
		return nil
	}
	tab, perr := gopcln.Parse(pcln, text)
	if perr == nil {
		b.Funcs = tab
		return goruntime.Supported(b)
	}
	var re *goruntime.ReleaseError
	if errors.As(err, &re) && re.Err == nil {
		re.Err = perr
	}
	return err
}

// goTextStart returns the link-time address of runtime.text, the base of the
// pclntab's function offsets. The pclntab header has a field for it, but the
// Go 1.26 linker leaves it zero in the file. In order: the runtime.text
// symbol; the header field when set; the text field of the module data that
// points at the pclntab (found in stripped binaries too); the start of the
// .text section (right for internally linked binaries).
func (m *Module) goTextStart(ef *elf.File, syms []elf.Symbol, pclnAddr uint64) uint64 {
	for _, s := range syms {
		if s.Name == "runtime.text" && s.Value != 0 {
			return s.Value
		}
	}
	ptr, word := words(ef)
	if s := ef.Section(".gopclntab"); s != nil {
		if d, err := s.Data(); err == nil && len(d) >= 8+3*ptr {
			if v := word(d[8+2*ptr:]); v != 0 && m.inExec(v) {
				return v
			}
		}
	}
	if w := moduleData(ef, pclnAddr, mdText+1, func(w []uint64) bool {
		return w[mdText] != 0 && w[mdMinpc] == w[mdText] && m.inExec(w[mdText])
	}); w != nil {
		return w[mdText]
	}
	if s := ef.Section(".text"); s != nil {
		return s.Addr
	}
	if len(m.exec) > 0 {
		return m.exec[0].vaddr
	}
	return 0
}

// Word indices in runtime.moduledata (Go 1.22–1.26): pcHeader, six slices
// (funcnametab, cutab, filetab, pctab, pclntable, ftab), findfunctab, minpc,
// maxpc, text, etext, noptrdata, enoptrdata, data, edata, bss, ebss,
// noptrbss, enoptrbss, covctrs, ecovctrs, end, gcdata, gcbss, types, etypes,
// rodata, gofunc.
const (
	mdMinpc  = 1 + 6*3 + 1
	mdText   = 1 + 6*3 + 3
	mdGofunc = 40
)

// moduleData finds the runtime.moduledata of a Go binary in its data
// sections — the words whose first is the pclntab's address — and returns
// its first n words, the first such candidate valid accepts (nil if none).
// Stripped binaries have it too.
func moduleData(ef *elf.File, pclnAddr uint64, n int, valid func(w []uint64) bool) []uint64 {
	ptr, word := words(ef)
	for _, s := range ef.Sections {
		if s.Type != elf.SHT_PROGBITS || s.Flags&elf.SHF_ALLOC == 0 || s.Flags&elf.SHF_EXECINSTR != 0 {
			continue
		}
		d, err := s.Data()
		if err != nil {
			continue
		}
		for off := 0; off+n*ptr <= len(d); off += ptr {
			if word(d[off:]) != pclnAddr {
				continue
			}
			w := make([]uint64, n)
			for i := range w {
				w[i] = word(d[off+i*ptr:])
			}
			if valid(w) {
				return w
			}
		}
	}
	return nil
}

// words returns the pointer size of ef and a reader of one pointer.
func words(ef *elf.File) (int, func([]byte) uint64) {
	if ef.Class == elf.ELFCLASS32 {
		return 4, func(b []byte) uint64 { return uint64(ef.ByteOrder.Uint32(b)) }
	}
	return 8, ef.ByteOrder.Uint64
}

// newGoTable parses a pclntab, turning a panic on malformed data into an error.
func newGoTable(pcln []byte, text uint64) (tab *gosym.Table, err error) {
	defer func() {
		if r := recover(); r != nil {
			tab, err = nil, fmt.Errorf("malformed pclntab: %v", r)
		}
	}()
	return gosym.NewTable(nil, gosym.NewLineTable(pcln, text))
}

// goFuncSize returns the size of a Go function without the int3 filler the
// linker puts between functions. code is the function's bytes up to the
// next function's entry. A trailing 0xcc may still be code (the last byte of
// a "jmp rel8" back to the entry, for example), so a byte only counts as
// filler when the function's line table does not cover it.
func goFuncSize(tab *gosym.Table, code []byte, entry uint64) uint64 {
	n := len(code)
	for n > 0 && code[n-1] == 0xcc {
		n--
	}
	for n < len(code) {
		if _, line, fn := tab.PCToLine(entry + uint64(n)); fn == nil || fn.Entry != entry || line < 0 {
			break
		}
		n++
	}
	return uint64(n)
}
