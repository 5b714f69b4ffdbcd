package elfsym

import (
	"bytes"
	"cmp"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Load builds the table of a live process from /proc/PID/maps, opening each
// mapped file through /proc/PID/map_files (the very inode that is mapped,
// even when the file was replaced on disk) or else /proc/PID/root (so it
// works across mount namespaces), and reading the vDSO image from the
// target's memory through mem (an io.ReaderAt whose offsets are addresses,
// such as an *os.File of /proc/PID/mem). With a nil mem the vDSO is left out.
func Load(pid int, mem io.ReaderAt) (*Table, error) {
	maps, err := ReadMappings(pid)
	if err != nil {
		return nil, err
	}
	t := &Table{pid: pid, loadedFrom: objectMappings(maps)}

	// Group the file-backed mappings by the object they map.
	type objKey struct {
		dev   string
		inode uint64
		path  string
	}
	type object struct {
		maps    []Mapping
		hasExec bool
	}
	objs := map[objKey]*object{}
	var order []objKey
	var vdso *Mapping
	for i, m := range maps {
		if m.Path == "[vdso]" {
			vdso = &maps[i]
			continue
		}
		if m.Inode == 0 || !strings.HasPrefix(m.Path, "/") {
			continue
		}
		k := objKey{m.Dev, m.Inode, m.Path}
		o := objs[k]
		if o == nil {
			o = &object{}
			objs[k] = o
			order = append(order, k)
		}
		o.maps = append(o.maps, m)
		o.hasExec = o.hasExec || m.exec()
	}

	exeIno := uint64(0)
	if st, err := os.Stat(fmt.Sprintf("/proc/%d/exe", pid)); err == nil {
		if sys, ok := st.Sys().(*syscall.Stat_t); ok {
			exeIno = sys.Ino
		}
	}

	var exe []*Module
	for _, k := range order {
		o := objs[k]
		if !o.hasExec {
			continue
		}
		mods, warn, err := loadObject(pid, o.maps)
		if warn != nil {
			t.Warnings = append(t.Warnings, warn)
		}
		if err != nil {
			t.Warnings = append(t.Warnings, err)
			continue
		}
		for _, m := range mods {
			if exeIno != 0 && k.inode == exeIno && len(exe) == 0 {
				exe = append(exe, m)
			} else {
				t.Modules = append(t.Modules, m)
			}
		}
	}
	t.Modules = append(exe, t.Modules...)

	if vdso != nil {
		if mem == nil {
			t.Warnings = append(t.Warnings, errors.New("elfsym: [vdso] left out: no process memory reader"))
		} else if m, err := loadVDSO(mem, *vdso); err != nil {
			t.Warnings = append(t.Warnings, err)
		} else {
			t.Modules = append(t.Modules, m)
		}
	}
	if len(t.Modules) == 0 {
		return nil, fmt.Errorf("elfsym: no ELF object could be loaded for pid %d: %w", pid, errors.Join(t.Warnings...))
	}
	t.index()
	return t, nil
}

// objectMappings are the mappings a table is read from: every mapping of a
// file mapped as code somewhere, and the vDSO. A file mapped only as data
// (a database's mmap) is no object of the table.
func objectMappings(maps []Mapping) []Mapping {
	type file struct {
		dev   string
		inode uint64
		path  string
	}
	code := map[file]bool{}
	for _, m := range maps {
		if m.exec() {
			code[file{m.Dev, m.Inode, m.Path}] = true
		}
	}
	var out []Mapping
	for _, m := range maps {
		if m.Path == "[vdso]" || (m.Inode != 0 && strings.HasPrefix(m.Path, "/") && code[file{m.Dev, m.Inode, m.Path}]) {
			out = append(out, m)
		}
	}
	return out
}

// Current reports whether maps (of the table's process, read now) map the
// same objects at the same places as when Load read the table: no file
// mapped as code, unmapped, moved or re-protected since (a library dlopen
// loaded or dlclose unloaded). Anonymous memory and files mapped only as
// data do not count. A table that is not
// current describes another address space: load it again.
func (t *Table) Current(maps []Mapping) bool {
	return t.pid != 0 && slices.Equal(objectMappings(maps), t.loadedFrom)
}

// LoadFile builds a table of a single ELF file at its link-time addresses
// (bias 0), for tools and tests that have no process.
func LoadFile(path string) (*Table, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("elfsym: %w", err)
	}
	defer f.Close()
	ef, err := elf.NewFile(f)
	if err != nil {
		return nil, fmt.Errorf("elfsym: %s: %w", path, err)
	}
	m := &Module{Path: path, src: path}
	for _, p := range ef.Progs {
		if p.Type == elf.PT_LOAD && p.Flags&elf.PF_X != 0 {
			m.texts = append(m.texts, [2]uint64{p.Vaddr, p.Vaddr + p.Memsz})
		}
	}
	t := &Table{}
	if err := m.parse(ef, f); err != nil {
		return nil, fmt.Errorf("elfsym: %s: %w", path, err)
	}
	t.Modules = []*Module{m}
	t.index()
	return t, nil
}

// openFile opens a file for reading.
func openFile(path string) (*os.File, error) { return os.Open(path) }

// loadObject opens one mapped file and returns a module for each distinct
// load bias at which it is mapped executable (normally exactly one).
func loadObject(pid int, maps []Mapping) (mods []*Module, warn error, err error) {
	path := maps[0].Path
	var f *os.File
	var src string
	var errs []error
	for _, m := range maps {
		if testNoMapFiles {
			errs = append(errs, fmt.Errorf("%w (test)", os.ErrPermission))
			break
		}
		p := fmt.Sprintf("/proc/%d/map_files/%x-%x", pid, m.Start, m.End)
		if f, err = os.Open(p); err == nil {
			src = p
			break
		}
		errs = append(errs, err)
	}
	if f == nil && maps[0].Deleted {
		// map_files needs CAP_SYS_ADMIN (or CAP_CHECKPOINT_RESTORE); a
		// descriptor the target holds open needs only ptrace access.
		if f, src = openHeld(pid, maps[0]); f == nil {
			return nil, warn, fmt.Errorf("elfsym: %s was deleted or replaced on disk (or is a memfd), /proc/%d/map_files is not readable (%w) and the target holds no descriptor of it; it is left out", path, pid, errors.Join(errs...))
		}
	}
	if f == nil {
		p := filepath.Join(fmt.Sprintf("/proc/%d/root", pid), path)
		if f, err = os.Open(p); err != nil {
			return nil, warn, fmt.Errorf("elfsym: opening %s: %w", path, err)
		}
		src = p
		if st, err := f.Stat(); err == nil {
			if sys, ok := st.Sys().(*syscall.Stat_t); ok && sys.Ino != maps[0].Inode {
				warn = fmt.Errorf("elfsym: %s has inode %d on disk but inode %d is mapped; symbols may not match", path, sys.Ino, maps[0].Inode)
			}
		}
	}
	defer f.Close()
	ef, err := elf.NewFile(f)
	if err != nil {
		return nil, warn, fmt.Errorf("elfsym: %s: %w", path, err)
	}

	// Each mapping whose file offset lies in a PT_LOAD segment gives the
	// bias: its start minus the link-time address of that offset.
	type group struct {
		bias  uint64
		texts [][2]uint64
	}
	var groups []*group
	for _, m := range maps {
		bias, ok := mappingBias(ef, m)
		if !ok {
			continue
		}
		var g *group
		for _, x := range groups {
			if x.bias == bias {
				g = x
			}
		}
		if g == nil {
			g = &group{bias: bias}
			groups = append(groups, g)
		}
		if m.exec() {
			if n := len(g.texts); n > 0 && g.texts[n-1][1] == m.Start {
				g.texts[n-1][1] = m.End
			} else {
				g.texts = append(g.texts, [2]uint64{m.Start, m.End})
			}
		}
	}
	for _, g := range groups {
		if len(g.texts) == 0 {
			continue // mapped, but not as code (a data mmap of the file)
		}
		mod := &Module{Path: path, Bias: g.bias, src: src, texts: g.texts}
		if err := mod.parse(ef, f); err != nil {
			return nil, warn, fmt.Errorf("elfsym: %s: %w", path, err)
		}
		mods = append(mods, mod)
	}
	if len(mods) == 0 {
		return nil, warn, fmt.Errorf("elfsym: %s: no executable mapping matches a PT_LOAD segment", path)
	}
	return mods, warn, nil
}

// testNoMapFiles, set by tests, makes /proc/PID/map_files unreadable, as
// it is for a tracer without CAP_SYS_ADMIN.
var testNoMapFiles bool

// openHeld opens the file mapped at m through a descriptor the process
// holds open (/proc/PID/fd/N), if any: the way to a deleted file or a
// memfd when /proc/PID/map_files is not readable.
func openHeld(pid int, m Mapping) (*os.File, string) {
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, ""
	}
	for _, e := range ents {
		// Stat first: opening a FIFO or a device could block or act.
		p := filepath.Join(dir, e.Name())
		if st, err := os.Stat(p); err != nil || !st.Mode().IsRegular() || !sameFile(st, m) {
			continue
		}
		f, err := os.Open(p)
		if err != nil {
			continue
		}
		if st, err := f.Stat(); err == nil && sameFile(st, m) {
			return f, p
		}
		f.Close()
	}
	return nil, ""
}

// sameFile reports whether st is the file of mapping m (its device and
// inode as the maps file shows them).
func sameFile(st os.FileInfo, m Mapping) bool {
	sys, ok := st.Sys().(*syscall.Stat_t)
	if !ok || sys.Ino != m.Inode {
		return false
	}
	return fmt.Sprintf("%02x:%02x", unix.Major(sys.Dev), unix.Minor(sys.Dev)) == m.Dev
}

// mappingBias computes the load bias from a mapping whose file offset lies
// inside a PT_LOAD segment. Mappings are page-aligned while segments need
// not be, but vaddr ≡ offset (mod page size) for every loadable segment, so
// the link-time address of file offset o in segment p is
// p.Vaddr + (o - p.Off) even when o < p.Off in the first page.
func mappingBias(ef *elf.File, m Mapping) (uint64, bool) {
	page := uint64(os.Getpagesize())
	for _, p := range ef.Progs {
		if p.Type != elf.PT_LOAD || p.Filesz == 0 {
			continue
		}
		lo := p.Off &^ (page - 1)
		if m.Offset < lo || m.Offset >= p.Off+p.Filesz {
			continue
		}
		link := p.Vaddr - p.Off + m.Offset
		return m.Start - link, true
	}
	return 0, false
}

// loadVDSO reads the vDSO image from process memory.
func loadVDSO(mem io.ReaderAt, vm Mapping) (*Module, error) {
	size := vm.End - vm.Start
	if size == 0 || size > 64<<20 {
		return nil, fmt.Errorf("elfsym: [vdso] mapping of %d bytes", size)
	}
	img := make([]byte, size)
	if n, err := mem.ReadAt(img, int64(vm.Start)); n != len(img) {
		return nil, fmt.Errorf("elfsym: reading [vdso] at %#x: %w", vm.Start, err)
	}
	ef, err := elf.NewFile(bytes.NewReader(img))
	if err != nil {
		return nil, fmt.Errorf("elfsym: [vdso]: %w", err)
	}
	bias, ok := mappingBias(ef, vm)
	if !ok {
		return nil, fmt.Errorf("elfsym: [vdso]: no PT_LOAD segment at offset 0")
	}
	m := &Module{Path: "[vdso]", Bias: bias, image: img, texts: [][2]uint64{{vm.Start, vm.End}}}
	if err := m.parse(ef, bytes.NewReader(img)); err != nil {
		return nil, fmt.Errorf("elfsym: [vdso]: %w", err)
	}
	return m, nil
}

// index builds the lookup structures of the table. Symbols are unique by
// (module, name, address) and modules do not overlap, so the order is
// total and needs no stable sort.
func (t *Table) index() {
	n := 0
	for _, m := range t.Modules {
		n += len(m.syms)
	}
	t.syms = make([]Symbol, 0, n)
	for _, m := range t.Modules {
		t.syms = append(t.syms, m.syms...)
		m.syms = nil
	}
	slices.SortFunc(t.syms, symbolOrder)
	t.byName = make(map[string][]int, len(t.syms))
	t.byAddr = t.byAddr[:0]
	for i := range t.syms {
		s := &t.syms[i]
		t.byName[s.Name] = append(t.byName[s.Name], i)
		if i == 0 || t.syms[i-1].Addr != s.Addr || t.syms[i-1].Module != s.Module {
			t.byAddr = append(t.byAddr, i)
		}
	}
}

// symbolOrder orders symbols by address, aliases as aliasOrder does.
func symbolOrder(a, b Symbol) int {
	if a.Addr != b.Addr {
		return cmp.Compare(a.Addr, b.Addr)
	}
	return aliasOrder(&a, &b)
}

// aliasOrder orders aliases at one address: the first is what an address
// symbolizes to — the largest, then the one with the fewest leading
// underscores, a global before a local, then the shortest name.
func aliasOrder(a, b *Symbol) int {
	ua := len(a.Name) - len(strings.TrimLeft(a.Name, "_"))
	ub := len(b.Name) - len(strings.TrimLeft(b.Name, "_"))
	return cmp.Or(
		cmp.Compare(b.Size, a.Size),
		cmp.Compare(ua, ub),
		cmp.Compare(local(a), local(b)),
		cmp.Compare(len(a.Name), len(b.Name)),
		strings.Compare(a.Name, b.Name))
}

// local is 1 for a local (static) symbol, 0 for others.
func local(s *Symbol) int {
	if s.bind == elf.STB_LOCAL {
		return 1
	}
	return 0
}
