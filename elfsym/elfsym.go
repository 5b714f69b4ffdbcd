// Package elfsym resolves names to live addresses in a running process and
// back: ELF .symtab/.dynsym of the executable and of every mapped shared
// object, the Go function table from the pclntab (so stripped Go binaries
// resolve too), load biases from /proc/PID/maps, function bounds and the
// padding that follows them, and GNU build IDs.
package elfsym

import (
	"bytes"
	"debug/dwarf"
	"debug/elf"
	"errors"
	"fmt"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/hotpatch-dev/hotpatch/internal/arch"
	"github.com/hotpatch-dev/hotpatch/internal/gopcln"
	"github.com/hotpatch-dev/hotpatch/internal/goruntime"
)

// ErrUnknownSymbol is matched by lookups of names that are not defined.
var ErrUnknownSymbol = errors.New("unknown symbol")

// ErrUnsupportedGo is matched by Module.GoUnsupported and by the errors of
// whatever refuses a Go module built by a release hotpatch does not read.
var ErrUnsupportedGo = goruntime.ErrUnknownRelease

// ErrAmbiguous is matched by *AmbiguousError.
var ErrAmbiguous = errors.New("ambiguous symbol")

// AmbiguousError is a name defined by several modules.
type AmbiguousError struct {
	Name    string
	Modules []string
}

func (e *AmbiguousError) Error() string {
	return fmt.Sprintf("elfsym: %q is defined in %d modules %v; qualify it as MODULE:%s", e.Name, len(e.Modules), e.Modules, e.Name)
}

// Is reports target == ErrAmbiguous.
func (e *AmbiguousError) Is(target error) bool { return target == ErrAmbiguous }

// Mapping is one line of /proc/PID/maps.
type Mapping struct {
	Start, End uint64
	Perms      string // "r-xp"
	Offset     uint64
	Dev        string
	Inode      uint64
	Path       string // "" for anonymous, "[vdso]", "[stack]", or a file path
	// Deleted is true when the kernel marked the path " (deleted)": the
	// file was removed or replaced on disk after it was mapped. Path holds
	// the name without that suffix.
	Deleted bool
}

// Module is one ELF object mapped in the process: the executable, a shared
// library or the vDSO.
type Module struct {
	Path    string // path as mapped ("[vdso]" for the vDSO)
	Bias    uint64 // live address = link-time address + Bias
	BuildID string // GNU build ID, lower-case hex; "" when absent
	Machine elf.Machine
	IsGo    bool
	arch    *arch.Arch // from Machine; nil when unsupported
	// Text is the live range of the module's executable mapping(s).
	TextStart, TextEnd uint64

	// GoBuildID is the Go linker's build ID (the "Go" note), "" when absent.
	GoBuildID string
	// GoVersion is the toolchain version recorded by the Go linker
	// ("go1.26.1"), "" when absent.
	GoVersion string
	// GoUnsupported is set on a Go module built by a release hotpatch does
	// not read (outside the supported range, or a development build that
	// does not match a supported release), matched by ErrUnsupportedGo; its
	// text names the release and the supported range. Its symbols
	// resolve, but its goroutines cannot be listed, its inline trees are not
	// read and stacks through its code are unreliable.
	GoUnsupported error

	src     string           // path the file was opened through ("" for in-memory images)
	image   []byte           // the whole image when read from memory (vDSO)
	loads   []elf.ProgHeader // PT_LOAD segments
	exec    []segment        // executable segments' file bytes
	texts   [][2]uint64      // live executable ranges
	pclntab []byte
	goText  uint64 // link-time text start the pclntab's entry offsets are relative to
	goFunc  uint64 // link-time address of go:func.* (inline trees), 0 when unknown

	lines      goLines // the Go line table, for LineAt
	inlineOnce sync.Once
	inlines    map[string][]InlineSite // callee name → where it was inlined
	inlineErr  error
	goTabOnce  sync.Once
	goTab      *gopcln.Table // the Go function table, parsed on first use
	goTabErr   error
	sigOnce    sync.Once
	sigs       *sigIndex // DWARF subprograms by entry, read on first use
	sigErr     error
	refs       refCache // References' outcomes
	dwarfOnce  sync.Once
	dwarf      *dwarf.Data // the module's DWARF, read on first use
	dwarfErr   error
	ehFrame    []byte
	ehAddr     uint64
	textSect   [][2]uint64 // link-time executable section ranges
	syms       []Symbol    // filled by parse, moved into the table by index

	// .eh_frame_hdr (the binary search table of .eh_frame), nil if absent.
	ehHdr     []byte
	ehHdrAddr uint64
}

// segment is the file contents of one executable PT_LOAD segment.
type segment struct {
	vaddr uint64 // link-time
	data  []byte
}

// Symbol is a function at its live address.
type Symbol struct {
	Name   string
	Addr   uint64 // live entry address
	Size   uint64 // bytes of code, without padding
	Module *Module
	// Padding is the number of filler bytes (int3 or nop) that follow the
	// function up to the next symbol, usable by a patch jump.
	Padding uint64

	bind elf.SymBind // elf.STB_LOCAL for local (static) symbols
}

// Table holds the symbols of every module of one process.
type Table struct {
	Modules []*Module
	// Warnings lists the mapped objects that were left out (unreadable,
	// not ELF, replaced on disk, ...) and why.
	Warnings []error

	pid int // 0 for LoadFile
	// loadedFrom are the object mappings Load read (see Current).
	loadedFrom []Mapping
	syms       []Symbol // every (module, name, address), sorted by address
	byName     map[string][]int
	byAddr     []int // one representative per (module, address), sorted by address
}

// Lookup finds a function by exact name. "MODULE:NAME" restricts the search
// to modules whose path's base name is MODULE. It returns errors matching
// ErrUnknownSymbol or ErrAmbiguous.
func (t *Table) Lookup(name string) (Symbol, error) {
	if idx, ok := t.byName[name]; ok {
		return t.pick(name, idx)
	}
	if i := strings.IndexByte(name, ':'); i > 0 {
		mod, sym := name[:i], name[i+1:]
		var idx []int
		matched := false
		for _, m := range t.Modules {
			if m.matches(mod) {
				matched = true
			}
		}
		if matched {
			for _, j := range t.byName[sym] {
				if t.syms[j].Module.matches(mod) {
					idx = append(idx, j)
				}
			}
			if len(idx) > 0 {
				return t.pick(sym, idx)
			}
			return Symbol{}, t.unknown(sym, mod)
		}
	}
	return Symbol{}, t.unknown(name, "")
}

// LookupIn resolves name among the symbols of module m (one of
// t.Modules) only: a module several copies of which share one path (patch
// libraries loaded from memfds, all "/memfd:NAME") is named by identity.
func (t *Table) LookupIn(m *Module, name string) (Symbol, error) {
	var idx []int
	for _, j := range t.byName[name] {
		if t.syms[j].Module == m {
			idx = append(idx, j)
		}
	}
	if len(idx) == 0 {
		return Symbol{}, t.unknown(name, m.Path)
	}
	return t.pick(name, idx)
}

// pick chooses among the definitions of one name.
func (t *Table) pick(name string, idx []int) (Symbol, error) {
	if len(idx) == 1 {
		return t.syms[idx[0]], nil
	}
	mods := map[*Module]bool{}
	for _, j := range idx {
		mods[t.syms[j].Module] = true
	}
	if len(mods) == 1 {
		// Several addresses in one module. A Go function and its ABI
		// wrapper: the function wins (the wrapper calls it). Static
		// functions of several compilation units: a single global one wins.
		var real []int
		for _, j := range idx {
			if s := &t.syms[j]; !s.Module.goWrapper(s.Addr) {
				real = append(real, j)
			}
		}
		if len(real) == 1 {
			return t.syms[real[0]], nil
		}
		if len(real) > 1 {
			idx = real
		}
		var global []int
		for _, j := range idx {
			if t.syms[j].bind != elf.STB_LOCAL {
				global = append(global, j)
			}
		}
		if len(global) == 1 {
			return t.syms[global[0]], nil
		}
		e := &AmbiguousError{Name: name}
		for _, j := range idx {
			s := t.syms[j]
			e.Modules = append(e.Modules, fmt.Sprintf("%s@%#x", s.Module.Name(), s.Addr))
		}
		return Symbol{}, e
	}
	e := &AmbiguousError{Name: name}
	for m := range mods {
		e.Modules = append(e.Modules, m.Name())
	}
	sort.Strings(e.Modules)
	return Symbol{}, e
}

func (t *Table) unknown(name, mod string) error {
	if sites := t.onlyInlined(name, mod); len(sites) > 0 {
		return &OnlyInlinedError{Name: name, Sites: sites}
	}
	where := ""
	if mod != "" {
		where = " in module " + mod
	}
	hint := ""
	if names := t.similar(name, 5); len(names) > 0 {
		hint = "; similar: " + strings.Join(names, ", ")
	}
	return fmt.Errorf("elfsym: %w %q%s%s", ErrUnknownSymbol, name, where, hint)
}

// Search returns the functions whose name contains substr, sorted by address.
func (t *Table) Search(substr string) []Symbol {
	var out []Symbol
	for _, s := range t.syms {
		if strings.Contains(s.Name, substr) {
			out = append(out, s)
		}
	}
	return out
}

// SymbolAt returns the function containing live address addr.
func (t *Table) SymbolAt(addr uint64) (Symbol, bool) {
	// The last representative at or below addr.
	i := sort.Search(len(t.byAddr), func(i int) bool { return t.syms[t.byAddr[i]].Addr > addr })
	// Walk back a little for symbols nested in larger ones.
	for j := i - 1; j >= 0 && j >= i-8; j-- {
		s := t.syms[t.byAddr[j]]
		if addr >= s.Addr && addr < s.Addr+s.Size {
			return s, true
		}
	}
	return Symbol{}, false
}

// Symbolize formats addr as "name+0xoff" (or "module+0xoff", or "0x...").
func (t *Table) Symbolize(addr uint64) string {
	if s, ok := t.SymbolAt(addr); ok {
		if addr == s.Addr {
			return s.Name
		}
		return fmt.Sprintf("%s+%#x", s.Name, addr-s.Addr)
	}
	if m, ok := t.moduleMapping(addr); ok {
		return fmt.Sprintf("%s+%#x", m.Name(), addr-m.Bias)
	}
	return fmt.Sprintf("%#x", addr)
}

// ModuleAt returns the module whose code contains live address addr.
func (t *Table) ModuleAt(addr uint64) (*Module, bool) {
	for _, m := range t.Modules {
		for _, r := range m.texts {
			if addr >= r[0] && addr < r[1] {
				return m, true
			}
		}
	}
	return nil, false
}

// moduleMapping returns the module with a loaded segment at addr.
func (t *Table) moduleMapping(addr uint64) (*Module, bool) {
	if m, ok := t.ModuleAt(addr); ok {
		return m, true
	}
	for _, m := range t.Modules {
		link := addr - m.Bias
		for _, p := range m.loads {
			if link >= p.Vaddr && link < p.Vaddr+p.Memsz {
				return m, true
			}
		}
	}
	return nil, false
}

// Name is the base name of the module's path ("libc.so.6", "[vdso]").
func (m *Module) Name() string { return filepath.Base(m.Path) }

func (m *Module) matches(mod string) bool {
	if mod == m.Path || mod == m.Name() {
		return true
	}
	if m.Path == "[vdso]" {
		return mod == "vdso" || strings.HasPrefix(mod, "linux-vdso") || strings.HasPrefix(mod, "linux-gate")
	}
	return false
}

// Code returns n bytes of the module's file contents at live address addr
// (what the code looked like before anything was written into the process).
func (m *Module) Code(addr uint64, n int) ([]byte, error) {
	if n < 0 {
		return nil, fmt.Errorf("elfsym: negative length %d", n)
	}
	link := addr - m.Bias
	end := link + uint64(n)
	for _, s := range m.exec {
		if link >= s.vaddr && end <= s.vaddr+uint64(len(s.data)) && end >= link {
			out := make([]byte, n)
			copy(out, s.data[link-s.vaddr:])
			return out, nil
		}
	}
	for _, p := range m.loads {
		if link < p.Vaddr || end > p.Vaddr+p.Filesz || end < link {
			continue
		}
		off := p.Off + (link - p.Vaddr)
		out := make([]byte, n)
		if m.image != nil {
			if off+uint64(n) > uint64(len(m.image)) {
				break
			}
			copy(out, m.image[off:])
			return out, nil
		}
		codeOpens.Add(1)
		f, err := openFile(m.src)
		if err != nil {
			return nil, fmt.Errorf("elfsym: reading %s: %w", m.Path, err)
		}
		defer f.Close()
		if _, err := f.ReadAt(out, int64(off)); err != nil {
			return nil, fmt.Errorf("elfsym: reading %d bytes of %s at %#x: %w", n, m.Path, addr, err)
		}
		return out, nil
	}
	return nil, fmt.Errorf("elfsym: %#x..%#x is not file-backed in %s (bias %#x)", addr, addr+uint64(n), m.Path, m.Bias)
}

// codeOpens counts the files Code opened (tests).
var codeOpens atomic.Int64

// Open opens the module's ELF file as it is mapped (through
// /proc/PID/map_files when possible, so a file replaced on disk since is not
// read by mistake). The caller closes it.
func (m *Module) Open() (*elf.File, error) {
	if m.image != nil {
		return elf.NewFile(bytes.NewReader(m.image))
	}
	ef, err := elf.Open(m.src)
	if err != nil {
		return nil, fmt.Errorf("elfsym: opening %s: %w", m.Path, err)
	}
	return ef, nil
}

// DWARF returns the module's debugging information, read from its file
// (and decompressed) once for every reader: the inline sites, the
// signatures, the Go runtime's layout. It is an error when the module has
// none.
func (m *Module) DWARF() (*dwarf.Data, error) {
	m.dwarfOnce.Do(func() {
		ef, err := m.Open()
		if err != nil {
			m.dwarfErr = err
			return
		}
		defer ef.Close()
		m.dwarf, m.dwarfErr = ef.DWARF()
	})
	return m.dwarf, m.dwarfErr
}

// UnwindTables are the tables of one module a stack walker reads, as
// the file holds them (link-time addresses): the Go function table, the
// .eh_frame call frame information and its .eh_frame_hdr search table.
// A table the module does not have is nil.
type UnwindTables struct {
	Pclntab []byte
	// GoTextStart is the link-time address the Go function table's entry
	// offsets are relative to.
	GoTextStart uint64
	EHFrame     []byte
	EHFrameAddr uint64

	EHFrameHdr     []byte
	EHFrameHdrAddr uint64
	// Frameless, for a module with neither table (the arm64 vDSO), is its
	// code, for a walker to prove it holds only frameless leaf functions.
	Frameless []Code
}

// Code is a module's code bytes at a link-time address.
type Code struct {
	Addr  uint64
	Bytes []byte
}

// UnwindTables returns the module's unwind tables.
func (m *Module) UnwindTables() UnwindTables {
	return UnwindTables{
		Pclntab: m.pclntab, GoTextStart: m.goText,
		EHFrame: m.ehFrame, EHFrameAddr: m.ehAddr,
		EHFrameHdr: m.ehHdr, EHFrameHdrAddr: m.ehHdrAddr,
		Frameless: m.frameless(),
	}
}

// frameless returns the code of a module without unwind tables (the arm64
// vDSO), for the unwinder to prove it holds only frameless leaf functions;
// nil for every other module.
func (m *Module) frameless() []Code {
	if m.ehFrame != nil || m.pclntab != nil {
		return nil
	}
	var out []Code
	for _, r := range m.textSect {
		for _, s := range m.exec {
			if r[0] >= s.vaddr && r[1] <= s.vaddr+uint64(len(s.data)) {
				out = append(out, Code{Addr: r[0], Bytes: s.data[r[0]-s.vaddr : r[1]-s.vaddr]})
			}
		}
	}
	return out
}

// fillerRun returns how many bytes at the start of b are alignment filler of
// the module's architecture.
func (m *Module) fillerRun(b []byte) int {
	if m.arch == nil {
		return 0
	}
	return m.arch.FillerRun(b)
}
