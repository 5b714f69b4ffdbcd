package tracee

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Memory a tool maps in a target is never left where no later tool can
// find it, whenever the tool is killed:
//
//   - Every such mapping is made at an address chosen beforehand
//     (MAP_FIXED_NOREPLACE), by a system call whose stub carries an intent
//     record — the call's number and arguments — after its code in padding
//     (runSyscallMarked). A tool killed before it put the padding back leaves
//     the intent there; Recover reads it and removes the mapping if the call
//     made it and nothing was written into it since.
//   - Right after the call, with the thread still stopped in the kernel and
//     the stub still in place, the tool writes a mark into the new mapping:
//     the caller's (a patch record's header) or a scratch footer
//     (ScratchFooter), which ScratchAt finds.

// StepHook, when set (by tests only), is called with the name of each
// numbered step of a remote call or system call ("call:...", "syscall:...")
// as the tool passes it, so that a test can kill the tool there.
var StepHook func(step string)

func step(name string) {
	if StepHook != nil {
		StepHook(name)
	}
}

// intentMagic starts an intent record.
const intentMagic = "HPINTENT"

// intentSize is the size of an intent record: magic, number, six
// arguments.
const intentSize = 8 + 8 + 6*8

func intentRecord(nr uint64, args []uint64) []byte {
	b := make([]byte, 0, intentSize)
	b = append(b, intentMagic...)
	b = binary.LittleEndian.AppendUint64(b, nr)
	for i := 0; i < 6; i++ {
		var a uint64
		if i < len(args) {
			a = args[i]
		}
		b = binary.LittleEndian.AppendUint64(b, a)
	}
	return b
}

// scratchMagic starts the footer of scratch memory.
const scratchMagic = "HOTPATCH-SCRATCH"

// ScratchFooterSize is the size of the footer at the end of scratch memory.
const ScratchFooterSize = 32

// scratchFooter is the footer of scratch memory [addr, addr+size): magic,
// address, size.
func scratchFooter(addr, size uint64) []byte {
	b := append([]byte(scratchMagic), make([]byte, 16)...)
	binary.LittleEndian.PutUint64(b[16:], addr)
	binary.LittleEndian.PutUint64(b[24:], size)
	return b
}

// ScratchAt reports the scratch memory whose footer ends at end (the end
// of a mapping), as [addr, addr+size).
func (p *Process) ScratchAt(end uint64) (addr, size uint64, ok bool) {
	var b [ScratchFooterSize]byte
	if n, _ := p.ReadAt(b[:], int64(end-ScratchFooterSize)); n != len(b) || string(b[:16]) != scratchMagic {
		return 0, 0, false
	}
	addr, size = binary.LittleEndian.Uint64(b[16:]), binary.LittleEndian.Uint64(b[24:])
	if addr+size != end || size < ScratchFooterSize {
		return 0, 0, false
	}
	return addr, size, true
}

// MmapMarked maps size bytes of anonymous private memory with prot at addr
// (0: an address of a free gap, chosen here), never over another mapping,
// and writes mark at addr+markOff before anything can lose it (see above).
func (p *Process) MmapMarked(addr, size uint64, prot int, mark []byte, markOff uint64) (uint64, error) {
	return p.MmapMarkedFlags(addr, size, prot, 0, mark, markOff)
}

// MmapMarkedFlags is MmapMarked with flags added to the mmap's own
// (MapNoreserve: a mapping the kernel never merges with an ordinary
// anonymous one, so that its mark stays at the start of its mapping).
func (p *Process) MmapMarkedFlags(addr, size uint64, prot, flags int, mark []byte, markOff uint64) (uint64, error) {
	var res uint64
	err := p.do(func() error {
		return p.borrow(0, false, func(t *thread) error {
			var err error
			res, err = p.mmapMarked(t, addr, size, prot, flags, func(a uint64) []byte { return mark }, markOff)
			return err
		})
	})
	return res, err
}

// MmapScratch is MmapMarked for short-lived memory of a tool: its last
// ScratchFooterSize bytes hold a footer that marks it as scratch.
func (p *Process) MmapScratch(size uint64, prot int) (uint64, error) {
	var res uint64
	err := p.do(func() error {
		return p.borrow(0, false, func(t *thread) error {
			var err error
			res, err = p.mmapScratch(t, size, prot)
			return err
		})
	})
	return res, err
}

func (p *Process) mmapScratch(t *thread, size uint64, prot int) (uint64, error) {
	return p.mmapMarked(t, 0, size, prot, 0, func(a uint64) []byte { return scratchFooter(a, size) }, size-ScratchFooterSize)
}

// mmapMarked is MmapMarked on the stopped thread t; mark gives the mark
// for the mapping's address. An address it chose that the target took
// meanwhile (EEXIST) is chosen again, a few times.
func (p *Process) mmapMarked(t *thread, addr, size uint64, prot, flags int, mark func(uint64) []byte, markOff uint64) (uint64, error) {
	if addr != 0 {
		return p.mmapMarkedAt(t, addr, size, prot, flags, mark, markOff)
	}
	for try := 0; ; try++ {
		at, err := p.freeAddr(size)
		if err != nil {
			return 0, err
		}
		res, err := p.mmapMarkedAt(t, at, size, prot, flags, mark, markOff)
		var se *SyscallError
		if try < 3 && errors.As(err, &se) && se.Errno == uint64(unix.EEXIST) {
			continue
		}
		return res, err
	}
}

func (p *Process) mmapMarkedAt(t *thread, addr, size uint64, prot, flags int, mark func(uint64) []byte, markOff uint64) (uint64, error) {
	args := []uint64{addr, size, uint64(prot), uint64(flags) | MapPrivate | MapAnonymous | MapFixedNoreplace, ^uint64(0), 0}
	res, err := p.runSyscallMarked(t, sysMmap, args, func(res uint64) error {
		return p.writeMem(res+markOff, mark(res))
	})
	if e := int64(res); e < 0 && e >= -4095 {
		return 0, &SyscallError{Name: "mmap", Errno: uint64(-e)}
	}
	if err != nil {
		if res != 0 {
			p.runSyscallErr(t, "munmap", sysMunmap, res, size)
		}
		return 0, err
	}
	return res, nil
}

// freeAddr returns the address of size free bytes with a free page on
// either side, in the highest gap between two mappings — but never the gap
// below the main stack, which it grows down into.
func (p *Process) freeAddr(size uint64) (uint64, error) {
	maps, err := readMaps(p.pid)
	if err != nil {
		return 0, p.exited()
	}
	sort.Slice(maps, func(i, j int) bool { return maps[i].start < maps[j].start })
	for i := len(maps) - 1; i > 0; i-- {
		lo, hi := maps[i-1].end, maps[i].start
		if maps[i].start >= 1<<56 || maps[i].path == "[stack]" || lo < 1<<20 || hi < lo+size+2*pageSize {
			continue
		}
		return (hi - pageSize - size) &^ (pageSize - 1), nil
	}
	return 0, fmt.Errorf("tracee: pid %d: no free gap of %d bytes in the address space", p.pid, size)
}

// Recover puts back the padding a system call stub was left in (see
// restorePads), and unmaps the memory a marked mmap of a killed tool made
// that was never marked (see Leftovers). It returns how many of each it put
// right.
func (p *Process) Recover() (pads, orphans int, err error) {
	intents, pads, err := p.restorePads()
	if err != nil {
		return pads, 0, err
	}
	var rs [][2]uint64
	if err := p.do(func() error {
		var err error
		rs, err = p.orphans(intents)
		return err
	}); err != nil {
		return pads, 0, err
	}
	for _, r := range rs {
		if err := p.Munmap(r[0], r[1]-r[0]); err != nil {
			return pads, orphans, err
		}
		orphans++
	}
	return pads, orphans, nil
}

// Leftovers returns what a killed tool left that Recover puts right, as
// [start, end) ranges: runs of padding that differ from the object's file
// (a system call stub), and the mappings that the marked mmap of a killed
// tool made and never marked (an intent in padding names each, exactly,
// and it is untouched: all zero).
func (p *Process) Leftovers() (stubs, orphans [][2]uint64, err error) {
	err = p.do(func() error {
		maps, err := readMaps(p.pid)
		if err != nil {
			return p.exited()
		}
		var intents [][7]uint64
		for _, d := range p.dirtyPads(maps) {
			stubs = append(stubs, [2]uint64{d.addr, d.addr + d.size})
			intents = append(intents, intentsIn(d.live)...)
		}
		orphans, err = p.orphans(intents)
		return err
	})
	return stubs, orphans, err
}

// orphans returns the mappings of intents that exist, unmarked.
func (p *Process) orphans(intents [][7]uint64) ([][2]uint64, error) {
	maps, err := readMaps(p.pid)
	if err != nil {
		return nil, p.exited()
	}
	var out [][2]uint64
	seen := map[uint64]bool{}
	for _, in := range intents {
		nr, addr, size := in[0], in[1], in[2]
		if nr != sysMmap || in[4]&MapFixedNoreplace == 0 || seen[addr] {
			continue
		}
		seen[addr] = true
		for _, m := range maps {
			if m.start != addr || m.end != addr+size || (m.path != "" && m.path != "[heap]") {
				continue
			}
			b := make([]byte, size)
			if n, _ := p.readMem(b, addr); n != len(b) || !bytes.Equal(b, make([]byte, size)) {
				continue // marked, or not ours
			}
			out = append(out, [2]uint64{addr, addr + size})
		}
	}
	return out, nil
}

// intentsIn returns the intents (number, then arguments) in b.
func intentsIn(b []byte) [][7]uint64 {
	var out [][7]uint64
	for off := 0; off+intentSize <= len(b); {
		i := bytes.Index(b[off:], []byte(intentMagic))
		if i < 0 || off+i+intentSize > len(b) {
			break
		}
		var in [7]uint64
		for k := range in {
			in[k] = binary.LittleEndian.Uint64(b[off+i+8+8*k:])
		}
		out = append(out, in)
		off += i + intentSize
	}
	return out
}

// Alive returns nil while the process is the one opened, else an error
// matching ErrExited (ErrPIDReused too when its PID now names another). A
// process whose every thread is being torn down (see taskDying) has
// exited, even while a tracer has yet to reap them; while only some are,
// it looks again for a moment (an exit in progress).
func (p *Process) Alive() error {
	err := p.do(func() error {
		for try := 0; ; try++ {
			if err := p.id.same(p.pid); err != nil {
				return err
			}
			if !taskDying(p.pid, p.pid) {
				return nil // the common case: one file read
			}
			tids, err := listTasks(p.pid)
			if err != nil {
				return p.exited()
			}
			dying := 0
			for _, tid := range tids {
				if taskDying(p.pid, tid) {
					dying++
				}
			}
			switch {
			case dying == len(tids):
				return p.exited()
			case dying == 0 || try == 10:
				return nil
			}
			time.Sleep(10 * time.Millisecond)
		}
	})
	if err == ErrClosed {
		return nil // closed by us: nothing to say about it
	}
	return err
}

// taskDying reports a thread that is a zombie, gone, has SIGKILL pending
// (the kernel queues it on every thread of a process it kills) or has let
// go of its memory (no VmSize: a user thread past exit_mm).
func taskDying(pid, tid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/status", pid, tid))
	if err != nil {
		return true
	}
	if !strings.Contains(string(b), "\nVmSize:") {
		return true
	}
	for _, l := range strings.Split(string(b), "\n") {
		k, v, _ := strings.Cut(l, ":")
		v = strings.TrimSpace(v)
		switch k {
		case "State":
			if strings.HasPrefix(v, "Z") || strings.HasPrefix(v, "X") {
				return true
			}
		case "SigPnd":
			if m, err := strconv.ParseUint(v, 16, 64); err == nil && m&(1<<(unix.SIGKILL-1)) != 0 {
				return true
			}
		}
	}
	return false
}
