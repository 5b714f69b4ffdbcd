package elfsym

import (
	"debug/buildinfo"
	"debug/elf"
	"debug/gosym"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"

	"github.com/hotpatch-dev/hotpatch/internal/arch"
	"github.com/hotpatch-dev/hotpatch/internal/cfi"
)

// rawSym is a function at its link-time address.
type rawSym struct {
	name       string
	addr, size uint64
	bind       elf.SymBind
	wrapper    bool
}

// parse reads everything the module needs from its ELF file and fills m.syms
// with live addresses. m.Bias, m.texts and m.Path are set by the caller.
func (m *Module) parse(ef *elf.File, ra io.ReaderAt) error {
	m.Machine = ef.Machine
	m.arch, _ = arch.ForMachine(ef.Machine) // nil: no filler is recognised
	if err := m.readCode(ef); err != nil {
		return err
	}
	m.readNotes(ef)
	m.readEHFrame(ef)
	elfSyms, _ := ef.Symbols() // ErrNoSymbols for stripped files
	dynSyms, _ := ef.DynamicSymbols()
	goTab := m.readGo(ef, elfSyms, ra)
	fs := funcSet{seen: make(map[rawSym]int, len(elfSyms)+len(dynSyms))}
	m.elfFuncs(&fs, elfSyms, false)
	m.elfFuncs(&fs, dynSyms, true)
	m.goFuncs(&fs, goTab)
	m.setSymbols(fs)
	return nil
}

// readCode reads the executable segments, and where the code sections are
// (the segments themselves when there is no section header).
func (m *Module) readCode(ef *elf.File) error {
	for _, p := range ef.Progs {
		if p.Type != elf.PT_LOAD {
			continue
		}
		m.loads = append(m.loads, p.ProgHeader)
		if p.Flags&elf.PF_X == 0 || p.Filesz == 0 {
			continue
		}
		data := make([]byte, p.Filesz)
		if _, err := p.ReadAt(data, 0); err != nil {
			return fmt.Errorf("reading executable segment at %#x: %w", p.Vaddr, err)
		}
		m.exec = append(m.exec, segment{vaddr: p.Vaddr, data: data})
	}
	if len(m.exec) == 0 {
		return errors.New("no executable PT_LOAD segment")
	}
	for _, s := range ef.Sections {
		// Code is not writable: the arm64 vDSO's .rodata is flagged WAX.
		if s.Flags&elf.SHF_ALLOC != 0 && s.Flags&elf.SHF_EXECINSTR != 0 && s.Flags&elf.SHF_WRITE == 0 && s.Type == elf.SHT_PROGBITS {
			m.textSect = append(m.textSect, [2]uint64{s.Addr, s.Addr + s.Size})
		}
	}
	if len(m.textSect) == 0 {
		for _, s := range m.exec {
			m.textSect = append(m.textSect, [2]uint64{s.vaddr, s.vaddr + uint64(len(s.data))})
		}
	}
	if len(m.texts) > 0 {
		m.TextStart, m.TextEnd = m.texts[0][0], m.texts[len(m.texts)-1][1]
	}
	return nil
}

// readEHFrame keeps the call frame information (.eh_frame and its index),
// from the sections or, without them, from the segments.
func (m *Module) readEHFrame(ef *elf.File) {
	if s := ef.Section(".eh_frame"); s != nil && s.Type != elf.SHT_NOBITS {
		if d, err := s.Data(); err == nil {
			m.ehFrame, m.ehAddr = d, s.Addr
		}
	}
	if s := ef.Section(".eh_frame_hdr"); s != nil && s.Type != elf.SHT_NOBITS && m.ehFrame != nil {
		if d, err := s.Data(); err == nil {
			m.ehHdr, m.ehHdrAddr = d, s.Addr
		}
	}
	if m.ehFrame == nil {
		m.ehFrameFromSegment(ef)
	}
}

// readGo reads the Go function table of a module with Go code, and its Go
// release (nil for any other module).
func (m *Module) readGo(ef *elf.File, elfSyms []elf.Symbol, ra io.ReaderAt) *gosym.Table {
	pcln, addr := findPclntab(ef, elfSyms)
	if pcln == nil {
		return nil
	}
	text := m.goTextStart(ef, elfSyms, addr)
	tab, err := newGoTable(pcln, text)
	if err != nil || len(tab.Funcs) == 0 {
		return nil
	}
	m.pclntab, m.goText, m.IsGo = pcln, text, true
	m.goFunc = goFuncStart(ef, elfSyms, addr)
	if bi, err := buildinfo.Read(ra); err == nil {
		m.GoVersion = bi.GoVersion
	}
	m.GoUnsupported = goSupported(ef, m.GoVersion, pcln, text)
	return tab
}

// funcSet collects functions, deduplicated by (name, address), and every
// address where something starts (the end of the previous function's
// padding).
type funcSet struct {
	raws   []rawSym
	seen   map[rawSym]int // key with size 0 and bind 0
	bounds []uint64
}

func (fs *funcSet) add(r rawSym) {
	k := rawSym{name: r.name, addr: r.addr}
	if i, ok := fs.seen[k]; ok {
		if fs.raws[i].size == 0 {
			fs.raws[i].size = r.size
		}
		if fs.raws[i].bind == elf.STB_LOCAL {
			fs.raws[i].bind = r.bind
		}
		return
	}
	fs.seen[k] = len(fs.raws)
	fs.raws = append(fs.raws, r)
}

// elfFuncs adds the functions of an ELF symbol table (dynamic: .dynsym,
// whose non-default versions are kept in the name).
func (m *Module) elfFuncs(fs *funcSet, syms []elf.Symbol, dynamic bool) {
	for _, s := range syms {
		typ := elf.ST_TYPE(s.Info)
		if s.Section == elf.SHN_UNDEF || typ == elf.STT_SECTION || typ == elf.STT_FILE || !m.inExec(s.Value) {
			continue
		}
		fs.bounds = append(fs.bounds, s.Value)
		isFunc := typ == elf.STT_FUNC || typ == elf.STT_GNU_IFUNC || (m.IsGo && typ == elf.STT_NOTYPE)
		if !isFunc || s.Size == 0 || s.Name == "" {
			continue
		}
		name := s.Name
		if dynamic && s.HasVersion && s.VersionIndex.IsHidden() && s.Version != "" {
			name += "@" + s.Version // a non-default (compatibility) version
		}
		fs.add(rawSym{name: name, addr: s.Value, size: s.Size, bind: elf.ST_BIND(s.Info)})
	}
}

// goFuncs adds the functions of the Go function table (nil: none).
func (m *Module) goFuncs(fs *funcSet, goTab *gosym.Table) {
	if goTab == nil {
		return
	}
	for i := range goTab.Funcs {
		f := &goTab.Funcs[i]
		if f.End <= f.Entry || !m.inExec(f.Entry) {
			continue
		}
		fs.bounds = append(fs.bounds, f.Entry)
		r := rawSym{name: f.Name, addr: f.Entry, size: goFuncSize(goTab, m.bytesAt(f.Entry, f.End), f.Entry), bind: elf.STB_GLOBAL}
		fs.add(r)
		if strings.Contains(r.name, "·") {
			// The ELF symtab spells the middle dot as ".".
			r.name = strings.ReplaceAll(r.name, "·", ".")
			fs.add(r)
		}
	}
}

// setSymbols makes m.syms of the functions collected, at live addresses,
// each with the filler that pads it up to whatever starts next.
func (m *Module) setSymbols(fs funcSet) {
	bounds := fs.bounds
	sort.Slice(bounds, func(i, j int) bool { return bounds[i] < bounds[j] })
	m.syms = make([]Symbol, 0, len(fs.raws))
	for _, r := range fs.raws {
		if r.size == 0 {
			continue
		}
		end := r.addr + r.size
		limit := m.sectEnd(r.addr)
		if i := sort.Search(len(bounds), func(i int) bool { return bounds[i] >= end }); i < len(bounds) && bounds[i] < limit {
			limit = bounds[i]
		}
		m.syms = append(m.syms, Symbol{Name: r.name, Addr: r.addr + m.Bias, Size: r.size, Module: m, Padding: m.padding(end, limit), bind: r.bind})
	}
}

// padding is how much of [end, limit) after a function is filler.
func (m *Module) padding(end, limit uint64) uint64 {
	if limit <= end {
		return 0
	}
	run := uint64(m.fillerRun(m.bytesAt(end, limit)))
	if run < limit-end {
		// The run stopped at code we have no symbol for: keep only whole
		// 8-byte steps up to an aligned address, so a nop that begins
		// that code is never counted.
		run = alignDown(end+run, 8)
		if run < end {
			run = end
		}
		run -= end
	}
	return run
}

func alignDown(x, a uint64) uint64 { return x &^ (a - 1) }

// inExec reports whether link-time address a lies in an executable segment.
func (m *Module) inExec(a uint64) bool {
	for _, s := range m.exec {
		if a >= s.vaddr && a < s.vaddr+uint64(len(s.data)) {
			return true
		}
	}
	return false
}

// bytesAt returns the file bytes of link-time range [lo, hi) of an
// executable segment, cut at the segment's end.
func (m *Module) bytesAt(lo, hi uint64) []byte {
	for _, s := range m.exec {
		end := s.vaddr + uint64(len(s.data))
		if lo >= s.vaddr && lo < end {
			if hi > end {
				hi = end
			}
			return s.data[lo-s.vaddr : hi-s.vaddr]
		}
	}
	return nil
}

// sectEnd returns the end of the executable section holding link-time a.
func (m *Module) sectEnd(a uint64) uint64 {
	for _, r := range m.textSect {
		if a >= r[0] && a < r[1] {
			return r[1]
		}
	}
	for _, s := range m.exec {
		if a >= s.vaddr && a < s.vaddr+uint64(len(s.data)) {
			return s.vaddr + uint64(len(s.data))
		}
	}
	return a
}

// readNotes sets the GNU and Go build IDs.
func (m *Module) readNotes(ef *elf.File) {
	var blobs [][]byte
	for _, s := range ef.Sections {
		if s.Type == elf.SHT_NOTE {
			if d, err := s.Data(); err == nil {
				blobs = append(blobs, d)
			}
		}
	}
	if len(blobs) == 0 {
		for _, p := range ef.Progs {
			if p.Type == elf.PT_NOTE {
				d := make([]byte, p.Filesz)
				if _, err := p.ReadAt(d, 0); err == nil {
					blobs = append(blobs, d)
				}
			}
		}
	}
	bo := ef.ByteOrder
	for _, d := range blobs {
		for len(d) >= 12 {
			nsz, dsz, typ := uint64(bo.Uint32(d)), uint64(bo.Uint32(d[4:])), bo.Uint32(d[8:])
			nEnd := 12 + (nsz+3)&^3
			dEnd := nEnd + (dsz+3)&^3
			if nEnd > uint64(len(d)) || 12+nsz > uint64(len(d)) || nEnd+dsz > uint64(len(d)) {
				break
			}
			name := string(d[12 : 12+nsz])
			desc := d[nEnd : nEnd+dsz]
			switch {
			case name == "GNU\x00" && typ == 3 /* NT_GNU_BUILD_ID */ && m.BuildID == "":
				m.BuildID = hex.EncodeToString(desc)
			case string(trimNUL([]byte(name))) == "Go" && typ == 4 && m.GoBuildID == "":
				m.GoBuildID = string(trimNUL(desc))
			}
			if dEnd > uint64(len(d)) {
				break
			}
			d = d[dEnd:]
		}
	}
}

func trimNUL(b []byte) []byte {
	for len(b) > 0 && b[len(b)-1] == 0 {
		b = b[:len(b)-1]
	}
	return b
}

// ehFrameFromSegment finds the unwind tables of an object without section
// headers (sstrip, some loaders' in-memory images) from its
// PT_GNU_EH_FRAME segment: the .eh_frame_hdr, whose eh_frame_ptr gives
// .eh_frame, read to the end of the PT_LOAD segment holding it (its
// zero terminator ends the parse; lookups go through the header's table).
func (m *Module) ehFrameFromSegment(ef *elf.File) {
	for _, p := range ef.Progs {
		if p.Type != elf.PT_GNU_EH_FRAME || p.Filesz == 0 || p.Filesz > 64<<20 {
			continue
		}
		hdr := make([]byte, p.Filesz)
		if _, err := p.ReadAt(hdr, 0); err != nil {
			return
		}
		ptr := 8
		if ef.Class == elf.ELFCLASS32 {
			ptr = 4
		}
		ehAddr, err := cfi.EHFramePtr(hdr, p.Vaddr, ptr, ef.ByteOrder)
		if err != nil {
			return
		}
		for _, l := range ef.Progs {
			if l.Type != elf.PT_LOAD || ehAddr < l.Vaddr || ehAddr >= l.Vaddr+l.Filesz {
				continue
			}
			data := make([]byte, l.Vaddr+l.Filesz-ehAddr)
			if _, err := l.ReadAt(data, int64(ehAddr-l.Vaddr)); err != nil {
				return
			}
			m.ehFrame, m.ehAddr = data, ehAddr
			m.ehHdr, m.ehHdrAddr = hdr, p.Vaddr
			return
		}
	}
}
