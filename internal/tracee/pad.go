package tracee

import (
	"bufio"
	"bytes"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"
)

// Padding: bytes of an executable mapping that no code runs.
//
// A remote system call runs on a stub (syscallStub) written into the
// padding after the end of an executable PT_LOAD segment of an ELF object
// the target has mapped (the executable, a library, the vDSO): the rest of
// the segment's last page is mapped executable with it, but lies outside
// every segment, so no code of the target jumps there. A stub left there
// by a tracer that died is therefore harmless, and the target's memory
// needs no new mapping (which would itself need a remote system call).

// mapping is one line of /proc/PID/maps.
type mapping struct {
	start, end, off uint64
	perms, path     string
}

func readMaps(pid int) ([]mapping, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/maps", pid))
	if err != nil {
		return nil, err
	}
	var out []mapping
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 5 {
			continue
		}
		lo, hi, ok := strings.Cut(f[0], "-")
		if !ok {
			continue
		}
		var m mapping
		var e1, e2, e3 error
		m.start, e1 = strconv.ParseUint(lo, 16, 64)
		m.end, e2 = strconv.ParseUint(hi, 16, 64)
		m.off, e3 = strconv.ParseUint(f[2], 16, 64)
		if e1 != nil || e2 != nil || e3 != nil {
			continue
		}
		m.perms = f[1]
		if len(f) >= 6 {
			m.path = strings.Join(f[5:], " ")
		}
		out = append(out, m)
	}
	return out, nil
}

// pad is a run of padding bytes [addr, addr+size).
type pad struct {
	addr, size uint64
	rank       int // lower first
}

// ELF64 offsets used here.
const (
	ehPhoff     = 0x20
	ehPhentsize = 0x36
	ehPhnum     = 0x38
	ptLoad      = 1
	pfX         = 1
)

// segment is a PT_LOAD segment of an ELF object.
type segment struct{ vaddr, memsz, off uint64 }

// object is what findPads needs of an ELF object mapped in the target: its
// load bias, its segments and the executable ones among them.
type object struct {
	bias         uint64
	loads, execs []segment
	hdrEnd       uint64 // end of the ELF and program headers in memory
	phdrs        []byte // the program headers, to match the object's file
	// sections are the [start, end) of the allocated sections, from the
	// object's file (nil: not read yet, or unknown).
	sections [][2]uint64
	secRead  bool
}

// readSegments reads the ELF header and program headers of the object
// mapped at base (its mapping at file offset 0), or returns nil.
func (p *Process) readSegments(base uint64) *object {
	var eh [64]byte
	if n, _ := p.readMem(eh[:], base); n != len(eh) || string(eh[:4]) != "\x7fELF" || eh[4] != 2 || eh[5] != 1 {
		return nil
	}
	le := binary.LittleEndian
	phoff, phent, phnum := le.Uint64(eh[ehPhoff:]), uint64(le.Uint16(eh[ehPhentsize:])), uint64(le.Uint16(eh[ehPhnum:]))
	if phent < 56 || phnum == 0 || phnum > 64 {
		return nil
	}
	ph := make([]byte, phent*phnum)
	if n, _ := p.readMem(ph, base+phoff); n != len(ph) {
		return nil
	}
	o := &object{hdrEnd: base + max(64, phoff+phent*phnum), phdrs: ph}
	for i := uint64(0); i < phnum; i++ {
		h := ph[i*phent:]
		if le.Uint32(h[0:]) != ptLoad {
			continue
		}
		s := segment{vaddr: le.Uint64(h[16:]), memsz: le.Uint64(h[40:]), off: le.Uint64(h[8:])}
		o.loads = append(o.loads, s)
		if le.Uint32(h[4:])&pfX != 0 {
			o.execs = append(o.execs, s)
		}
	}
	// The segment at file offset 0 is the one mapped at base.
	for _, s := range o.loads {
		if s.off == 0 {
			o.bias = base - s.vaddr
			return o
		}
	}
	return nil
}

// findPads returns the padding runs of at least size bytes after the
// executable segments of the ELF objects mapped in the target, best first:
// the executable, the vDSO, libc, then the rest; then the gaps in their
// executable mappings that no allocated section covers (the file's section
// headers tell; the segment's tail is not always long enough, and on arm64
// the stub must lie near the interrupted pc: a static Go binary has
// nothing else within reach). Each run is checked
// against the mappings: it must lie in a private executable mapping of the
// same object, outside every one of the object's segments.
func (p *Process) findPads(maps []mapping, size uint64) []pad {
	exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", p.pid))
	var out []pad
	seen := map[string]bool{}
	for _, base := range maps {
		if base.off != 0 || base.path == "" || seen[base.path] || !strings.HasPrefix(base.perms, "r") {
			continue
		}
		if !strings.HasPrefix(base.path, "/") && base.path != "[vdso]" {
			continue
		}
		seen[base.path] = true
		key := fmt.Sprintf("%x %s", base.start, base.path)
		o, ok := p.objects[key]
		if !ok {
			o = p.readSegments(base.start)
			if p.objects == nil {
				p.objects = map[string]*object{}
			}
			p.objects[key] = o
		}
		if o == nil {
			continue
		}
		bias, loads, execs := o.bias, o.loads, o.execs
		rank := 3
		switch {
		case base.path == exe:
			rank = 0
		case base.path == "[vdso]":
			rank = 1
		case strings.Contains(base.path, "/libc"):
			rank = 2
		}
		for _, x := range execs {
			end := bias + x.vaddr + x.memsz
			var m *mapping
			for i := range maps {
				if maps[i].path == base.path && maps[i].start < end && end <= maps[i].end {
					m = &maps[i]
				}
			}
			// Private only: a write into a shared mapping would reach the
			// file.
			if m == nil || len(m.perms) < 4 || m.perms[2] != 'x' || m.perms[3] != 'p' {
				continue
			}
			lo, hi := (end+15)&^15, m.end
			for _, s := range loads {
				if a := bias + s.vaddr; a < hi && a+s.memsz > lo {
					hi = max(lo, a) // another segment: stop before it
				}
			}
			if hi >= lo+size {
				out = append(out, pad{addr: lo, size: hi - lo, rank: rank})
			}
		}
		// Then the gaps between sections, which the file tells.
		if !o.secRead {
			o.secRead = true
			o.sections = p.readSections(base, o, exe)
		}
		if o.sections == nil {
			continue
		}
		for _, m := range maps {
			if m.path != base.path || len(m.perms) < 4 || m.perms[2] != 'x' || m.perms[3] != 'p' {
				continue
			}
			cur := m.start
			gap := func(lo, hi uint64) {
				lo = (lo + 15) &^ 15
				if hi >= lo+size {
					out = append(out, pad{addr: lo, size: hi - lo, rank: rank + 4})
				}
			}
			for _, sec := range o.sections {
				if sec[1] <= cur || sec[0] >= m.end {
					continue
				}
				if sec[0] > cur {
					gap(cur, sec[0])
				}
				cur = max(cur, sec[1])
			}
			if cur < m.end {
				gap(cur, m.end)
			}
		}
	}
	out = append(out, p.donatedPads(maps, size)...)
	for i := 1; i < len(out); i++ { // stable insertion sort by rank
		for j := i; j > 0 && out[j].rank < out[j-1].rank; j-- {
			out[j], out[j-1] = out[j-1], out[j]
		}
	}
	return out
}

// readSections returns the address ranges of the allocated sections of the
// object whose first mapping is base (o), and of its ELF and program
// headers, sorted, from the object's file: /proc/PID/exe for the
// executable, /proc/PID/map_files for the others (where the kernel lets
// us). The file must have the program headers that are in memory (a file
// replaced on disk since it was mapped is not used). nil when unknown.
func (p *Process) readSections(base mapping, o *object, exe string) [][2]uint64 {
	name := fmt.Sprintf("/proc/%d/map_files/%x-%x", p.pid, base.start, base.end)
	if base.path == exe {
		name = fmt.Sprintf("/proc/%d/exe", p.pid)
	}
	fh, err := os.Open(name)
	if err != nil {
		return nil
	}
	defer fh.Close()
	var eh [64]byte
	ph := make([]byte, len(o.phdrs))
	if _, err := fh.ReadAt(eh[:], 0); err != nil {
		return nil
	}
	if _, err := fh.ReadAt(ph, int64(binary.LittleEndian.Uint64(eh[ehPhoff:]))); err != nil || !bytes.Equal(ph, o.phdrs) {
		return nil
	}
	f, err := elf.NewFile(fh)
	if err != nil {
		return nil
	}
	out := [][2]uint64{{base.start, o.hdrEnd}}
	for _, s := range f.Sections {
		if s.Flags&elf.SHF_ALLOC != 0 && s.Size > 0 {
			out = append(out, [2]uint64{o.bias + s.Addr, o.bias + s.Addr + s.Size})
		}
	}
	if len(out) == 1 {
		return nil // no section headers (sstrip)
	}
	sort.Slice(out, func(i, j int) bool { return out[i][0] < out[j][0] })
	return out
}

// restorePads puts the bytes of the object's file back into every run of
// padding (see findPads) whose bytes differ from it: the system call stub
// of a tool killed before it put the padding back. While a thread's pc
// lies in one of them (a stub still running), all are left alone: the stub
// may return through a hop in another (syscallHop). The process is stopped
// for it if it is not. It returns the intent records (see intentRecord)
// of the runs it restored, and their number.
func (p *Process) restorePads() ([][7]uint64, int, error) {
	var dirty bool
	if err := p.do(func() error {
		maps, err := readMaps(p.pid)
		if err != nil {
			return p.exited()
		}
		dirty = len(p.dirtyPads(maps)) > 0
		return nil
	}); err != nil || !dirty {
		return nil, 0, err // nothing to put back: no pause
	}
	if !p.Stopped() {
		if err := p.Stop(); err != nil {
			return nil, 0, err
		}
		defer p.Resume()
	}
	regs, err := p.AllRegs()
	if err != nil {
		return nil, 0, err
	}
	n := 0
	var intents [][7]uint64
	err = p.do(func() error {
		maps, err := readMaps(p.pid)
		if err != nil {
			return p.exited()
		}
		dirty := p.dirtyPads(maps)
		for _, d := range dirty {
			for _, r := range regs {
				if pc := r.PC(); pc >= d.addr && pc < d.addr+d.size {
					return nil // a stub still running, maybe towards its hop
				}
			}
		}
		for _, d := range dirty {
			if err := p.writeMem(d.addr, d.orig); err != nil {
				return err
			}
			intents = append(intents, intentsIn(d.live)...)
			n++
		}
		return nil
	})
	return intents, n, err
}

// dirtyPad is a run of padding whose bytes differ from its file's.
type dirtyPad struct {
	pad
	live, orig []byte
}

// dirtyPads returns the runs of padding whose bytes differ from the
// object's file, each once (a segment's tail may also be a section gap).
func (p *Process) dirtyPads(maps []mapping) []dirtyPad {
	var out []dirtyPad
	seen := map[[2]uint64]bool{}
	for _, pd := range p.findPads(maps, 1) {
		r := [2]uint64{pd.addr, pd.size}
		if seen[r] {
			continue
		}
		seen[r] = true
		orig := p.padOriginal(maps, pd)
		if orig == nil {
			continue
		}
		live := make([]byte, pd.size)
		if k, _ := p.readMem(live, pd.addr); k != len(live) || bytes.Equal(live, orig) {
			continue
		}
		out = append(out, dirtyPad{pd, live, orig})
	}
	return out
}

// padOriginal returns the bytes run pd holds in the object's file (the
// vDSO: in our own, the same kernel's), or nil when unknown.
func (p *Process) padOriginal(maps []mapping, pd pad) []byte {
	var m *mapping
	for i := range maps {
		if maps[i].start <= pd.addr && pd.addr+pd.size <= maps[i].end {
			m = &maps[i]
		}
	}
	if m == nil {
		return nil
	}
	out := make([]byte, pd.size)
	if m.path == "[vdso]" {
		own, err := readMaps(os.Getpid())
		if err != nil {
			return nil
		}
		for _, o := range own {
			if o.path == "[vdso]" && o.end-o.start == m.end-m.start {
				f, err := os.Open("/proc/self/mem")
				if err != nil {
					return nil
				}
				defer f.Close()
				if k, _ := f.ReadAt(out, int64(o.start+pd.addr-m.start)); k != len(out) {
					return nil
				}
				return out
			}
		}
		return nil
	}
	name := fmt.Sprintf("/proc/%d/map_files/%x-%x", p.pid, m.start, m.end)
	if exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", p.pid)); exe == m.path {
		name = fmt.Sprintf("/proc/%d/exe", p.pid)
	}
	f, err := os.Open(name)
	if err != nil {
		return nil
	}
	defer f.Close()
	// Past the end of the file, the page is zero.
	if _, err := f.ReadAt(out, int64(m.off+pd.addr-m.start)); err != nil && !errors.Is(err, io.EOF) {
		return nil
	}
	return out
}

// DonatedPadMagic starts a page a process maps for our system call stubs
// (a private anonymous executable mapping; not "HOTPATCH", which starts a
// patch record): a self-patching Go program on
// arm64, whose text may have too little padding within a branch's reach of
// its threads' pcs. The stubs go after its first DonatedPadHeader bytes.
const (
	DonatedPadMagic  = "HPSTUBPADDING\x00\x00\x00"
	DonatedPadHeader = 64
)

// donatedPads returns the pages the process donated (DonatedPadMagic),
// ranked with the executable's own padding.
func (p *Process) donatedPads(maps []mapping, size uint64) []pad {
	var out []pad
	for _, m := range maps {
		if m.path != "" || len(m.perms) < 4 || m.perms[2] != 'x' || m.perms[3] != 'p' || m.end-m.start < DonatedPadHeader+size {
			continue
		}
		var magic [len(DonatedPadMagic)]byte
		if n, _ := p.readMem(magic[:], m.start); n != len(magic) || string(magic[:]) != DonatedPadMagic {
			continue
		}
		out = append(out, pad{addr: m.start + DonatedPadHeader, size: m.end - m.start - DonatedPadHeader, rank: 0})
	}
	return out
}
