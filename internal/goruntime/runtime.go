package goruntime

import (
	"debug/dwarf"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"

	"golang.org/x/arch/x86/x86asm"

	"github.com/hotpatch-dev/hotpatch/internal/arch"
	"github.com/hotpatch-dev/hotpatch/internal/gopcln"
)

// Binary is what Load needs to know about a Go executable.
type Binary struct {
	// ELF is the executable (its symbols and DWARF, when present).
	ELF *elf.File
	// Bias is added to link-time addresses to get live ones.
	Bias uint64
	// Version is the Go version the binary records ("go1.26.8").
	Version string
	// Funcs is the binary's function table (link-time addresses), used to
	// find runtime functions when the symbol table is stripped.
	Funcs *gopcln.Table
	// DWARF, when set, returns the executable's DWARF as the caller keeps
	// it (read once); nil: read from ELF.
	DWARF func() (*dwarf.Data, error)
}

// dwarf returns the binary's DWARF.
func (b Binary) dwarf() (*dwarf.Data, error) {
	if b.DWARF != nil {
		return b.DWARF()
	}
	return b.ELF.DWARF()
}

// arch returns the binary's architecture (nil when unsupported).
func (b Binary) arch() *arch.Arch {
	a, _ := arch.ForMachine(b.ELF.Machine)
	return a
}

// archRuntime is what differs between the runtimes of two architectures:
// where they keep g, and the searches of runtime code that find data a
// binary without symbols does not name.
type archRuntime struct {
	// tlsSym is the TLS symbol the runtime addresses g by, gCodeFunc the
	// function whose code does (runtime.cgocallback on amd64,
	// runtime.save_g on arm64), and gSlot derives the slot from them.
	tlsSym, gCodeFunc string
	gSlot             func(tls *elf.Prog, sym *elf.Symbol, cgo bool, code []byte) (GSlot, error)
	// callbackSPOff is where runtime.cgocallback's frame on g0 keeps the
	// system stack pointer of the C caller (asm_amd64.s: 0(SP);
	// asm_arm64.s: 16(RSP)).
	callbackSPOff uint64
	// waitReasons returns the length of runtime.waitReasonStrings and the
	// addresses it may be at, from runtime.waitReason.String's code.
	waitReasons func(code []byte, pc uint64) (int, []uint64)
	// atomicStores returns the addresses runtime.allgadd stores atomically:
	// with its own atomic instruction, or by a call of storep (the address
	// of runtime.atomicstorep, 0 if unknown) with the address as its first
	// argument (a build without inlining).
	atomicStores func(code []byte, pc, storep uint64) []uint64
}

var runtimes = map[*arch.Arch]archRuntime{
	arch.AMD64: {tlsSym: "runtime.tlsg", gCodeFunc: "runtime.cgocallback", gSlot: gSlotAMD64, callbackSPOff: 0,
		waitReasons: waitReasonsAMD64, atomicStores: atomicStoresAMD64},
	arch.ARM64: {tlsSym: "runtime.tls_g", gCodeFunc: "runtime.save_g", gSlot: gSlotARM64, callbackSPOff: 16,
		waitReasons: waitReasonsARM64, atomicStores: atomicStoresARM64},
}

// Runtime reads goroutines of one live Go process.
type Runtime struct {
	Layout Layout
	// FromDWARF reports where Layout came from.
	FromDWARF bool
	// AllGLen and AllGPtr are the live addresses of runtime.allglen and
	// runtime.allgptr.
	AllGLen, AllGPtr uint64
	// GSlot is where a thread keeps the g it runs (see ThreadG).
	GSlot GSlot

	gSlotErr    error
	arch        *arch.Arch
	waitReasons []string
}

// Supported reports whether this package reads the runtime of b. A release
// (b.Version "go1.N[.P]") must be one Known describes, with or without DWARF:
// other releases differ in more than the g layout DWARF gives (the function
// table's format, the module data, the unwinder's rules). A development
// build ("devel ...") or a binary that records no version is accepted only
// when two independent descriptions agree it is a supported runtime: its
// DWARF gives the layout of a release in Known, and its function table is in
// the format package gopcln decodes (b.Funcs, nil when refused or absent).
// Anything else is a *ReleaseError.
func Supported(b Binary) error {
	if r := Release(b.Version); r != "" && !strings.HasPrefix(b.Version, "devel") {
		if _, ok := Known[r]; !ok {
			return &ReleaseError{Version: b.Version}
		}
		return nil
	}
	refuse := func(why string, err error) error {
		return &ReleaseError{Version: b.Version, Err: err,
			Reason: "a development build, or one without a version, is read only when its DWARF gives a supported release's runtime layout and its function table is in the Go 1.20+ format, and " + why}
	}
	if b.Funcs == nil {
		return refuse("its function table is absent or in another format", nil)
	}
	d, err := b.dwarf()
	if err != nil {
		return refuse("it has no DWARF", err)
	}
	l, err := LayoutFromDWARF(d)
	if err != nil {
		return refuse("its DWARF gives no runtime layout", err)
	}
	for _, k := range Known {
		if k == l {
			return nil
		}
	}
	return refuse("its DWARF runtime layout is no supported release's", nil)
}

// ErrNotFound is returned when the runtime's goroutine list cannot be
// located in the target.
var ErrNotFound = errors.New("runtime.allgs not found")

// Load locates the runtime structures of a Go binary running in the process
// whose memory mem reads. The process need not be stopped. A binary that
// Supported refuses is refused here, before anything is read.
func Load(b Binary, mem io.ReaderAt) (*Runtime, error) {
	if b.ELF.Class != elf.ELFCLASS64 {
		return nil, fmt.Errorf("goruntime: only 64-bit targets are supported")
	}
	if err := Supported(b); err != nil {
		return nil, err
	}
	r := &Runtime{arch: b.arch()}
	if d, err := b.dwarf(); err == nil {
		if l, err := LayoutFromDWARF(d); err == nil {
			r.Layout, r.FromDWARF = l, true
		}
	}
	if !r.FromDWARF {
		l, err := KnownLayout(b.Version)
		if err != nil {
			return nil, err
		}
		r.Layout = l
	}
	syms, _ := b.ELF.Symbols()
	var wrs elf.Symbol
	for _, s := range syms {
		switch s.Name {
		case "runtime.allglen":
			r.AllGLen = s.Value + b.Bias
		case "runtime.allgptr":
			r.AllGPtr = s.Value + b.Bias
		case "runtime.waitReasonStrings":
			wrs = s
		}
	}
	r.GSlot, r.gSlotErr = gSlot(b.ELF, syms, usesCgo(b, syms), gCode(b, mem))
	if r.AllGLen == 0 || r.AllGPtr == 0 {
		if err := r.findAllGs(b, mem); err != nil {
			return nil, err
		}
	}
	if wrs.Size > 0 && wrs.Size <= 16*256 {
		r.waitReasons = readStrings(mem, wrs.Value+b.Bias, int(wrs.Size/16))
	} else if addr, n, ok := findWaitReasons(b, mem); ok {
		r.waitReasons = readStrings(mem, addr, n)
	}
	return r, nil
}

// gCode reads the runtime code gSlot checks the TLS slot of g with.
func gCode(b Binary, mem io.ReaderAt) []byte {
	rt, ok := runtimes[b.arch()]
	if !ok {
		return nil
	}
	return funcCode(b, mem, rt.gCodeFunc)
}

// funcCode reads the live code of the first of the named functions the
// binary's function table has (nil when none, or longer than 2 KiB).
func funcCode(b Binary, mem io.ReaderAt, names ...string) []byte {
	if b.Funcs == nil {
		return nil
	}
	for _, name := range names {
		for _, f := range b.Funcs.Funcs() {
			if f.Name != name || f.End-f.Entry > 2048 {
				continue
			}
			code := make([]byte, f.End-f.Entry)
			if _, err := mem.ReadAt(code, int64(f.Entry+b.Bias)); err == nil {
				return code
			}
		}
	}
	return nil
}

// usesCgo reports whether the binary links runtime/cgo (whose crosscall2
// is in every cgo binary's function table; the runtime's own _cgo_init
// variables exist in every binary).
func usesCgo(b Binary, syms []elf.Symbol) bool {
	for _, s := range syms {
		if s.Name == "crosscall2" {
			return true
		}
	}
	if b.Funcs != nil {
		for _, f := range b.Funcs.Funcs() {
			if f.Name == "crosscall2" {
				return true
			}
		}
	}
	return false
}

// findWaitReasons locates runtime.waitReasonStrings without symbols, from
// the code of runtime.waitReason.String (Go 1.22–1.26), which compares the
// reason with the table's length and indexes the table:
//
//	amd64: CMP AL, $len; JB ...; ...; LEAQ table(RIP), R; MOVQ 0(R)(I*1), ...
//	arm64: CMPW $len, R; BCC ...; ...; ADRP table, R; ADD $lo, R; ADD/MOVD (R)(I)...
//
// The result is only used to name wait reasons in reports; a table whose
// entries do not read as short printable strings is dropped.
func findWaitReasons(b Binary, mem io.ReaderAt) (addr uint64, n int, ok bool) {
	if b.Funcs == nil {
		return 0, 0, false
	}
	var fn *gopcln.Func
	for i := range b.Funcs.Funcs() {
		if f := &b.Funcs.Funcs()[i]; f.Name == "runtime.waitReason.String" {
			fn = f
		}
	}
	if fn == nil || fn.End-fn.Entry > 256 {
		return 0, 0, false
	}
	code := make([]byte, fn.End-fn.Entry)
	pc := fn.Entry + b.Bias
	if _, err := mem.ReadAt(code, int64(pc)); err != nil {
		return 0, 0, false
	}
	dec, ok := runtimes[b.arch()]
	if !ok {
		return 0, 0, false
	}
	n, cands := dec.waitReasons(code, pc)
	if n == 0 {
		return 0, 0, false
	}
	for _, a := range cands {
		if waitReasonNames(readStrings(mem, a, n)) {
			return a, n, true
		}
	}
	return 0, 0, false
}

// waitReasonNames reports whether names read as the runtime's wait
// reasons: printable, and all but a few (waitReasonZero is "") non-empty,
// which a table misread from other data is not.
func waitReasonNames(names []string) bool {
	empty := 0
	for _, s := range names {
		if s == "" {
			empty++
		}
		for _, c := range []byte(s) {
			if c < ' ' || c > '~' {
				return false
			}
		}
	}
	return len(names) > 0 && empty <= 2
}

// waitReasonsAMD64 returns the table length waitReason.String compares with
// and the tables it indexes (a RIP-relative LEA's register used as the base
// of an indexed load).
func waitReasonsAMD64(code []byte, pc uint64) (n int, tables []uint64) {
	lea := map[x86asm.Reg]uint64{}
	for off := 0; off < len(code); {
		in, err := x86asm.Decode(code[off:], 64)
		if err != nil || in.Len == 0 {
			break
		}
		off += in.Len
		next := pc + uint64(off)
		switch in.Op {
		case x86asm.CMP:
			if imm, isImm := in.Args[1].(x86asm.Imm); isImm && n == 0 && imm > 0 && imm < 256 {
				n = int(imm)
			}
		case x86asm.LEA:
			if m, isMem := in.Args[1].(x86asm.Mem); isMem && m.Base == x86asm.RIP {
				if r, isReg := in.Args[0].(x86asm.Reg); isReg {
					lea[r] = uint64(int64(next) + m.Disp)
				}
			}
		case x86asm.MOV:
			if m, isMem := in.Args[1].(x86asm.Mem); isMem && m.Index != 0 {
				if a, found := lea[m.Base]; found {
					tables = appendNew(tables, a)
				}
			}
		}
	}
	return n, tables
}

// waitReasonsARM64 returns the table length waitReason.String compares with
// (CMP/CMPW #imm) and every address it forms with ADRP + ADD, in order: the
// table is the one whose entries read as wait reasons (another is the
// "unknown wait reason" string).
func waitReasonsARM64(code []byte, pc uint64) (n int, addrs []uint64) {
	var regs arm64Addrs
	for off := 0; off+4 <= len(code); off += 4 {
		w := binary.LittleEndian.Uint32(code[off:])
		if w&0x7fc0001f == 0x7100001f && n == 0 { // CMP Wn|Xn, #imm12 (SUBS ZR, unshifted)
			if imm := int((w >> 10) & 0xfff); imm > 0 && imm < 256 {
				n = imm
			}
		}
		if a, ok := regs.step(w, pc+uint64(off)); ok {
			addrs = appendNew(addrs, a)
		}
	}
	return n, addrs
}

// arm64Addrs follows the addresses code forms in registers with ADRP and
// ADD #imm (how Go code on arm64 addresses a global).
type arm64Addrs map[uint32]uint64

// step applies the instruction w at pc; it returns the address an ADD
// completed.
func (r *arm64Addrs) step(w uint32, pc uint64) (uint64, bool) {
	if *r == nil {
		*r = arm64Addrs{}
	}
	reg := *r
	switch {
	case w&0x9f000000 == 0x90000000: // ADRP Xd, page
		imm := int64(((w>>29)&3)|((w>>5)&0x7ffff)<<2) << 43 >> 31
		reg[w&31] = uint64(int64(pc&^0xfff) + imm)
	case w&0xff800000 == 0x91000000: // ADD Xd, Xn, #imm12
		if base, ok := reg[(w>>5)&31]; ok {
			reg[w&31] = base + uint64((w>>10)&0xfff)
			return reg[w&31], true
		}
		delete(reg, w&31)
	}
	return 0, false
}

// addr returns the address register n holds, if one was formed.
func (r arm64Addrs) addr(n uint32) (uint64, bool) {
	a, ok := r[n]
	return a, ok
}

// findAllGs finds allglen and allgptr in a binary without symbols: they are
// among the data addresses runtime.allgadd references, and exactly one pair
// of them reads as a goroutine list whose first g is the main goroutine
// (allgs never shrinks, and goroutine 1 is added first).
func (r *Runtime) findAllGs(b Binary, mem io.ReaderAt) error {
	if b.Funcs == nil {
		return fmt.Errorf("goruntime: %w: no symbols and no function table", ErrNotFound)
	}
	var fn *gopcln.Func
	var storep uint64
	for i := range b.Funcs.Funcs() {
		switch f := &b.Funcs.Funcs()[i]; f.Name {
		case "runtime.allgadd":
			fn = f
		case "runtime.atomicstorep":
			storep = f.Entry + b.Bias
		}
	}
	if fn == nil {
		return fmt.Errorf("goruntime: %w: runtime.allgadd is not in the function table", ErrNotFound)
	}
	code := make([]byte, fn.End-fn.Entry)
	if _, err := mem.ReadAt(code, int64(fn.Entry+b.Bias)); err != nil {
		return fmt.Errorf("goruntime: read runtime.allgadd: %w", err)
	}
	// allglen and allgptr are the words allgadd stores atomically (XCHG on
	// amd64, STLR on arm64); the allgs slice header is stored plainly.
	dec, ok := runtimes[b.arch()]
	if !ok {
		return fmt.Errorf("goruntime: %w: no decoder for %v", ErrNotFound, b.ELF.Machine)
	}
	refs := dec.atomicStores(code, fn.Entry+b.Bias, storep)
	var found [][2]uint64
	for _, l := range refs {
		for _, p := range refs {
			if l != p && r.plausible(mem, l, p) {
				found = append(found, [2]uint64{l, p})
			}
		}
	}
	if len(found) != 1 {
		return fmt.Errorf("goruntime: %w: %d candidate pairs among the %d addresses runtime.allgadd stores atomically; rebuild the target without -ldflags=-s to keep its symbols", ErrNotFound, len(found), len(refs))
	}
	r.AllGLen, r.AllGPtr = found[0][0], found[0][1]
	return nil
}

// plausible checks that lenAddr and ptrAddr read as allglen and allgptr.
func (r *Runtime) plausible(mem io.ReaderAt, lenAddr, ptrAddr uint64) bool {
	n, err1 := readWord(mem, lenAddr)
	p, err2 := readWord(mem, ptrAddr)
	if err1 != nil || err2 != nil || n == 0 || n > 1<<26 || p == 0 || p%8 != 0 {
		return false
	}
	first, err := readWord(mem, p)
	if err != nil || first == 0 {
		return false
	}
	g, err := r.readG(mem, first)
	if err != nil || g.ID != 1 || g.StackLo >= g.StackHi || g.StackHi-g.StackLo > 1<<30 {
		return false
	}
	last, err := readWord(mem, p+8*(n-1))
	return err == nil && last != 0
}

// atomicStoresAMD64 returns the addresses code at pc stores to with XCHG,
// directly RIP-relative or through a register loaded by a RIP-relative LEA,
// and the addresses in AX (the first argument of ABIInternal) at a CALL of
// storep.
func atomicStoresAMD64(code []byte, pc, storep uint64) []uint64 {
	var out []uint64
	lea := map[x86asm.Reg]uint64{}
	for off := 0; off < len(code); {
		in, err := x86asm.Decode(code[off:], 64)
		if err != nil || in.Len == 0 {
			off++
			continue
		}
		next := pc + uint64(off+in.Len)
		off += in.Len
		switch in.Op {
		case x86asm.LEA:
			if m, ok := in.Args[1].(x86asm.Mem); ok && m.Base == x86asm.RIP {
				if r, ok := in.Args[0].(x86asm.Reg); ok {
					lea[r] = uint64(int64(next) + m.Disp)
				}
			}
			continue
		case x86asm.CALL:
			if rel, ok := in.Args[0].(x86asm.Rel); ok && storep != 0 && uint64(int64(next)+int64(rel)) == storep {
				if addr, ok := lea[x86asm.RAX]; ok {
					out = appendNew(out, addr)
				}
			}
			clear(lea) // a call clobbers every register
			continue
		case x86asm.XCHG:
			for _, a := range in.Args {
				m, ok := a.(x86asm.Mem)
				if !ok || m.Index != 0 {
					continue
				}
				if m.Base == x86asm.RIP {
					out = appendNew(out, uint64(int64(next)+m.Disp))
				} else if base, ok := lea[m.Base]; ok {
					out = appendNew(out, uint64(int64(base)+m.Disp))
				}
			}
		}
		// Any other write to a register forgets what LEA put there.
		if len(in.Args) > 0 {
			if r, ok := in.Args[0].(x86asm.Reg); ok {
				delete(lea, r)
			}
		}
	}
	return out
}

// atomicStoresARM64 returns the addresses code at pc stores to with STLR
// through a register set by ADRP + ADD, and the addresses in R0 (the first
// argument of ABIInternal) at a BL to storep.
func atomicStoresARM64(code []byte, pc, storep uint64) []uint64 {
	var out []uint64
	var regs arm64Addrs
	for off := 0; off+4 <= len(code); off += 4 {
		w := binary.LittleEndian.Uint32(code[off:])
		at := pc + uint64(off)
		if w&0xfc000000 == 0x94000000 { // BL imm26
			target := uint64(int64(at) + int64(int32(w<<6)>>4))
			if addr, ok := regs.addr(0); ok && storep != 0 && target == storep {
				out = appendNew(out, addr)
			}
			regs = nil // a call clobbers every register
			continue
		}
		regs.step(w, at)
		if w&0xbffffc00 == 0x889ffc00 { // STLR Wt|Xt, [Xn]
			if addr, ok := regs.addr((w >> 5) & 31); ok {
				out = appendNew(out, addr)
			}
		}
	}
	return out
}

func appendNew(s []uint64, v uint64) []uint64 {
	for _, x := range s {
		if x == v {
			return s
		}
	}
	return append(s, v)
}

// G is one goroutine as the runtime records it.
type G struct {
	Addr uint64 // address of the runtime.g
	ID   uint64 // goroutine ID
	// Status is the g's status without the _Gscan bit.
	Status uint32
	// WaitReason is the runtime's waitReason code (meaningful when waiting).
	WaitReason uint8
	// Wait names WaitReason ("chan receive") when the target's table of
	// names is readable, else "".
	Wait             string
	StackLo, StackHi uint64
	// Saved registers (g.sched), valid unless the g is running on a thread.
	PC, SP, BP, LR uint64
	// SyscallSP and SyscallPC are set while in a system call.
	SyscallSP, SyscallPC uint64
	// M is the address of the m the g is bound to (0: none) and Thread the
	// ID of that m's thread (0 when unknown).
	M      uint64
	Thread int
	// Current reports whether the g is its m's current user goroutine
	// (m.curg == g).
	Current bool
	// LockedM is the m the g is locked to (0: none); a goroutine inside a
	// cgo callback is locked to the m whose thread called it.
	LockedM uint64
}

// Goroutine statuses (runtime/runtime2.go).
const (
	Idle      = 0
	Runnable  = 1
	Running   = 2
	Syscall   = 3
	Waiting   = 4
	Dead      = 6
	CopyStack = 8
	Preempted = 9
	Leaked    = 10 // go1.26
	DeadExtra = 11 // go1.26: a dead g kept for cgo callbacks
	scanBit   = 0x1000
)

// StatusName names a status.
func StatusName(s uint32) string {
	switch s {
	case Idle:
		return "idle"
	case Runnable:
		return "runnable"
	case Running:
		return "running"
	case Syscall:
		return "syscall"
	case Waiting:
		return "waiting"
	case Dead, DeadExtra:
		return "dead"
	case CopyStack:
		return "copystack"
	case Preempted:
		return "preempted"
	case Leaked:
		return "leaked"
	}
	return fmt.Sprintf("status %d", s)
}

// Live reports whether the g can run code again (not idle or dead).
func (g *G) Live() bool { return g.Status != Idle && g.Status != Dead && g.Status != DeadExtra }

// Goroutines reads every g of runtime.allgs, dead ones included. The target
// must be stopped. Reads are batched through rv when mem implements it.
func (r *Runtime) Goroutines(mem io.ReaderAt) ([]G, error) {
	addrs, err := r.AllGs(mem)
	if err != nil {
		return nil, err
	}
	return r.GoroutinesAt(mem, addrs)
}

// AllGs returns the address of every g in runtime.allgs, in its order.
func (r *Runtime) AllGs(mem io.ReaderAt) ([]uint64, error) {
	n, p, err := r.allgsAt(mem)
	if err != nil || n == 0 {
		return nil, err
	}
	return readAllGs(mem, p, 0, n)
}

// AllGsAfter is AllGs for a target whose allgs began with prefix when read
// before: allgs only grows, in order — a g keeps its index (runtime/proc.go:
// "allgs contains all Gs ever created (including dead Gs), and thus never
// shrinks") —, so it reads allglen, allgptr and the entries past the
// prefix, and the prefix's last entry again to check that it is still
// there. The result begins with prefix (it is prefix when nothing was
// added: do not change it). ok is false when the check failed or allgs is
// shorter than prefix: then it read the whole array.
func (r *Runtime) AllGsAfter(mem io.ReaderAt, prefix []uint64) (addrs []uint64, ok bool, err error) {
	n, p, err := r.allgsAt(mem)
	if err != nil {
		return nil, false, err
	}
	if len(prefix) > 0 && n >= uint64(len(prefix)) {
		from := uint64(len(prefix) - 1)
		tail, err := readAllGs(mem, p, from, n)
		if err != nil {
			return nil, false, err
		}
		if tail[0] == prefix[from] {
			if len(tail) == 1 {
				return prefix, true, nil
			}
			return append(prefix[:len(prefix):len(prefix)], tail[1:]...), true, nil
		}
	}
	if n == 0 {
		return nil, false, nil
	}
	addrs, err = readAllGs(mem, p, 0, n)
	return addrs, false, err
}

// allgsAt reads runtime.allglen and, when it is not 0, runtime.allgptr.
func (r *Runtime) allgsAt(mem io.ReaderAt) (n, p uint64, err error) {
	n, err = readWord(mem, r.AllGLen)
	if err != nil {
		return 0, 0, fmt.Errorf("goruntime: read runtime.allglen: %w", err)
	}
	if n > 1<<26 {
		return 0, 0, fmt.Errorf("goruntime: runtime.allglen is %d: not a goroutine count (wrong layout?)", n)
	}
	if n == 0 {
		return 0, 0, nil
	}
	p, err = readWord(mem, r.AllGPtr)
	if err != nil {
		return 0, 0, fmt.Errorf("goruntime: read runtime.allgptr: %w", err)
	}
	return n, p, nil
}

// readAllGs reads entries [from, n) of the allgs array at p, a chunk at a
// time: buffers grow with what the target's memory really holds, never
// with a count read from it.
func readAllGs(mem io.ReaderAt, p, from, n uint64) ([]uint64, error) {
	addrs := make([]uint64, 0, min(n-from, gChunk))
	ptrs := make([]byte, 8*min(n-from, gChunk))
	for start := from; start < n; start += gChunk {
		k := min(gChunk, n-start)
		at := p + 8*start
		if _, err := mem.ReadAt(ptrs[:8*k], int64(at)); err != nil {
			return nil, fmt.Errorf("goruntime: read allgs array at %#x: %w", at, err)
		}
		for i := range k {
			addrs = append(addrs, binary.LittleEndian.Uint64(ptrs[8*i:]))
		}
	}
	return addrs, nil
}

// GoroutinesAt reads the g's at addrs and the thread of each one's m.
func (r *Runtime) GoroutinesAt(mem io.ReaderAt, addrs []uint64) ([]G, error) {
	gs, err := r.readGs(mem, addrs)
	if err != nil {
		return nil, err
	}
	if err := r.threadsOf(mem, gs); err != nil {
		return nil, err
	}
	return gs, nil
}

// threadsOf sets Thread and Current of every live g bound to an m.
func (r *Runtime) threadsOf(mem io.ReaderAt, gs []G) error {
	var ms []uint64
	mIdx := map[uint64]int{}
	for i := range gs {
		if m := gs[i].M; m != 0 && gs[i].Live() {
			if _, ok := mIdx[m]; !ok {
				mIdx[m] = len(ms)
				ms = append(ms, m)
			}
		}
	}
	if len(ms) == 0 {
		return nil
	}
	l := r.Layout
	size := max(l.MProcID, l.MCurG) + 8
	mraw := make([][]byte, len(ms))
	for i := range mraw {
		mraw[i] = make([]byte, size)
	}
	if err := readMany(mem, ms, mraw); err != nil {
		return fmt.Errorf("goruntime: read m: %w", err)
	}
	for i := range gs {
		if j, ok := mIdx[gs[i].M]; ok {
			gs[i].Thread = int(binary.LittleEndian.Uint64(mraw[j][l.MProcID:]))
			gs[i].Current = binary.LittleEndian.Uint64(mraw[j][l.MCurG:]) == gs[i].Addr
		}
	}
	return nil
}

// gChunk is how many g's are read at a time.
const gChunk = 4096

// GBytes is how many bytes of a g DecodeG reads: GSize rounded up to a
// word.
func (r *Runtime) GBytes() int { return (r.Layout.GSize + 7) &^ 7 }

// GWords returns the offsets, in a g, of the words DecodeG reads (every
// field it decodes lies within them), in increasing order: two g's whose
// bytes agree on these words decode alike.
func (r *Runtime) GWords() []int { return r.Layout.gWords() }

func (l Layout) gWords() []int {
	fields := [][2]int{ // offset, size
		{l.GStackLo, 8}, {l.GStackHi, 8}, {l.GM, 8}, {l.GSchedSP, 8}, {l.GSchedPC, 8},
		{l.GSchedLR, 8}, {l.GSchedBP, 8}, {l.GSyscallSP, 8}, {l.GSyscallPC, 8},
		{l.GStatus, 4}, {l.GGoid, 8}, {l.GWaitReason, 1}, {l.GLockedM, 8},
	}
	var ws []int
	for _, f := range fields {
		for w := f[0] &^ 7; w < f[0]+f[1]; w += 8 {
			ws = append(ws, w)
		}
	}
	slices.Sort(ws)
	return slices.Compact(ws)
}

// ReadGBytes reads GBytes bytes of each g at addrs.
func (r *Runtime) ReadGBytes(mem io.ReaderAt, addrs []uint64) ([][]byte, error) {
	n := r.GBytes()
	raw := make([][]byte, len(addrs))
	arena := make([]byte, len(addrs)*n)
	for i := range raw {
		raw[i], arena = arena[:n:n], arena[n:]
	}
	if err := readMany(mem, addrs, raw); err != nil {
		return nil, fmt.Errorf("goruntime: read g: %w", err)
	}
	return raw, nil
}

// readGs reads the g's at addrs, a chunk at a time.
func (r *Runtime) readGs(mem io.ReaderAt, addrs []uint64) ([]G, error) {
	gs := make([]G, 0, min(len(addrs), gChunk))
	for start := 0; start < len(addrs); start += gChunk {
		chunk := addrs[start:min(start+gChunk, len(addrs))]
		raw, err := r.ReadGBytes(mem, chunk)
		if err != nil {
			return nil, err
		}
		for i := range raw {
			gs = append(gs, r.DecodeG(chunk[i], raw[i]))
		}
	}
	return gs, nil
}

// G0 returns the address of m's g0 (its system-stack goroutine).
func (r *Runtime) G0(mem io.ReaderAt, m uint64) (uint64, error) {
	return readWord(mem, m+uint64(r.Layout.MG0))
}

// CallbackSavedSP reads the system stack pointer runtime.cgocallback saved
// in its frame on g0 (at sp, g0's saved stack pointer while the callback
// runs): where g0's stack was before C called back, which the runtime's
// unwindm restores (asm_amd64.s: 0(SP); asm_arm64.s: 16(RSP)).
func (r *Runtime) CallbackSavedSP(mem io.ReaderAt, sp uint64) (uint64, error) {
	rt, ok := runtimes[r.arch]
	if !ok {
		return 0, fmt.Errorf("goruntime: cgocallback's frame on %v is not known", r.arch)
	}
	return readWord(mem, sp+rt.callbackSPOff)
}

// ReadG reads the g at addr (a thread's g0, say).
func (r *Runtime) ReadG(mem io.ReaderAt, addr uint64) (G, error) { return r.readG(mem, addr) }

func (r *Runtime) readG(mem io.ReaderAt, addr uint64) (G, error) {
	b := make([]byte, r.Layout.GSize)
	if _, err := mem.ReadAt(b, int64(addr)); err != nil {
		return G{}, err
	}
	return r.DecodeG(addr, b), nil
}

// DecodeG decodes the bytes of the g at addr (at least GBytes of them, or
// Layout.GSize). It sets neither Thread nor Current, which are read from
// the g's m (GoroutinesAt).
func (r *Runtime) DecodeG(addr uint64, b []byte) G {
	l := r.Layout
	w := func(off int) uint64 { return binary.LittleEndian.Uint64(b[off:]) }
	g := G{
		Addr:       addr,
		ID:         w(l.GGoid),
		Status:     binary.LittleEndian.Uint32(b[l.GStatus:]) &^ scanBit,
		WaitReason: b[l.GWaitReason],
		StackLo:    w(l.GStackLo),
		StackHi:    w(l.GStackHi),
		PC:         w(l.GSchedPC),
		SP:         w(l.GSchedSP),
		BP:         w(l.GSchedBP),
		LR:         w(l.GSchedLR),
		SyscallSP:  w(l.GSyscallSP),
		SyscallPC:  w(l.GSyscallPC),
		M:          w(l.GM),
		LockedM:    w(l.GLockedM),
	}
	if int(g.WaitReason) < len(r.waitReasons) {
		g.Wait = r.waitReasons[g.WaitReason]
	}
	return g
}

// ManyReader reads many small regions at once (process_vm_readv with many
// iovecs). A region that cannot be read wholly makes the call fail.
type ManyReader interface {
	ReadMany(addrs []uint64, bufs [][]byte) error
}

func readMany(mem io.ReaderAt, addrs []uint64, bufs [][]byte) error {
	if mr, ok := mem.(ManyReader); ok {
		return mr.ReadMany(addrs, bufs)
	}
	for i, a := range addrs {
		if _, err := mem.ReadAt(bufs[i], int64(a)); err != nil {
			return err
		}
	}
	return nil
}

func readWord(mem io.ReaderAt, addr uint64) (uint64, error) {
	var b [8]byte
	if _, err := mem.ReadAt(b[:], int64(addr)); err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint64(b[:]), nil
}

// readStrings reads a [n]string array; unreadable entries are "".
func readStrings(mem io.ReaderAt, addr uint64, n int) []string {
	hdr := make([]byte, 16*n)
	if _, err := mem.ReadAt(hdr, int64(addr)); err != nil {
		return nil
	}
	out := make([]string, n)
	for i := range out {
		p := binary.LittleEndian.Uint64(hdr[16*i:])
		l := binary.LittleEndian.Uint64(hdr[16*i+8:])
		if p == 0 || l == 0 || l > 256 {
			continue
		}
		b := make([]byte, l)
		if _, err := mem.ReadAt(b, int64(p)); err == nil {
			out[i] = string(b)
		}
	}
	return out
}
