// Package elfsym resolves names to live addresses in a running process and
// back: ELF .symtab/.dynsym of the executable and of every mapped shared
// object, the Go function table from the pclntab (so stripped Go binaries
// resolve too), load biases from /proc/PID/maps, function bounds and the
// padding that follows them, and GNU build IDs.
package elfsym

import (
	"debug/elf"
	"errors"
	"fmt"
	"io"

	"github.com/hotpatch-dev/hotpatch/internal/unwind"
)

// ErrUnknownSymbol is matched by lookups of names that are not defined.
var ErrUnknownSymbol = errors.New("unknown symbol")

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
}

// ReadMappings reads and parses /proc/PID/maps.
func ReadMappings(pid int) ([]Mapping, error) { panic("todo") }

// ParseMappings parses the text of a maps file. Errors name the line.
func ParseMappings(r io.Reader) ([]Mapping, error) { panic("todo") }

// Module is one ELF object mapped in the process: the executable, a shared
// library or the vDSO.
type Module struct {
	Path    string // path as mapped ("[vdso]" for the vDSO)
	Bias    uint64 // live address = link-time address + Bias
	BuildID string // GNU build ID, lower-case hex; "" when absent
	Machine elf.Machine
	IsGo    bool
	// Text is the live range of the module's executable mapping(s).
	TextStart, TextEnd uint64
	// implementation fields
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
}

// Table holds the symbols of every module of one process.
type Table struct {
	Modules []*Module
	// implementation fields
}

// Load builds the table of a live process from /proc/PID/maps, opening each
// mapped file through /proc/PID/root (so it works across mount namespaces)
// and reading the vDSO image from the target's memory through mem.
func Load(pid int, mem io.ReaderAt) (*Table, error) { panic("todo") }

// LoadFile builds a table of a single ELF file at its link-time addresses
// (bias 0), for tools and tests that have no process.
func LoadFile(path string) (*Table, error) { panic("todo") }

// Lookup finds a function by exact name. "MODULE:NAME" restricts the search
// to modules whose path's base name is MODULE. It returns errors matching
// ErrUnknownSymbol or ErrAmbiguous.
func (t *Table) Lookup(name string) (Symbol, error) { panic("todo") }

// Search returns the functions whose name contains substr, sorted by address.
func (t *Table) Search(substr string) []Symbol { panic("todo") }

// SymbolAt returns the function containing live address addr.
func (t *Table) SymbolAt(addr uint64) (Symbol, bool) { panic("todo") }

// Symbolize formats addr as "name+0xoff" (or "module+0xoff", or "0x...").
func (t *Table) Symbolize(addr uint64) string { panic("todo") }

// ModuleAt returns the module whose code contains live address addr.
func (t *Table) ModuleAt(addr uint64) (*Module, bool) { panic("todo") }

// Code returns n bytes of the module's file contents at live address addr
// (what the code looked like before anything was written into the process).
func (m *Module) Code(addr uint64, n int) ([]byte, error) { panic("todo") }

// Unwinder returns the unwind tables of every module for package unwind.
func (t *Table) Unwinder() *unwind.Unwinder { panic("todo") }
