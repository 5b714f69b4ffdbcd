package goruntime

import (
	"debug/elf"
	"encoding/binary"
	"errors"
	"os"
	"runtime"
	"testing"

	"github.com/hotpatch-dev/hotpatch/internal/arch"
)

// byteMem is target memory at base; reads outside it fail.
type byteMem struct {
	base uint64
	b    []byte
}

func (m byteMem) ReadAt(p []byte, off int64) (int, error) {
	a := uint64(off)
	if a < m.base || a-m.base > uint64(len(m.b)) || uint64(len(p)) > uint64(len(m.b))-(a-m.base) {
		return 0, errors.New("unmapped")
	}
	return copy(p, m.b[a-m.base:]), nil
}

const fuzzBase = 0xc000000000

// goMemory lays out allglen, allgptr, the allgs array and n g's (and one m)
// as a go1.25 runtime holds them.
func goMemory(l Layout, n int) []byte {
	const arr, gs = 64, 256
	m := gs + n*l.GSize
	b := make([]byte, m+max(l.MProcID, l.MCurG)+8)
	put := func(off int, v uint64) { binary.LittleEndian.PutUint64(b[off:], v) }
	put(0, uint64(n))
	put(8, fuzzBase+arr)
	for i := range n {
		g := gs + i*l.GSize
		put(arr+8*i, fuzzBase+uint64(g))
		put(g+l.GGoid, uint64(i+1))
		binary.LittleEndian.PutUint32(b[g+l.GStatus:], uint32(Waiting))
		b[g+l.GWaitReason] = uint8(i)
		put(g+l.GStackLo, 0xc000100000)
		put(g+l.GStackHi, 0xc000108000)
		put(g+l.GSchedSP, 0xc000107f00)
		put(g+l.GSchedPC, 0x401000)
		put(g+l.GM, fuzzBase+uint64(m))
	}
	put(m+l.MProcID, 4242)
	put(m+l.MCurG, fuzzBase+gs)
	return b
}

// FuzzGoroutines: whatever the target's memory holds at allglen, allgptr
// and the g's they point to, Goroutines returns the g's it could read or an
// error; it never panics, and never allocates for more g's than the memory
// read holds pointers for.
func FuzzGoroutines(f *testing.F) {
	l := Known["go1.25"]
	f.Add(goMemory(l, 3))
	f.Add(goMemory(l, 1))
	f.Add(goMemory(l, 0))
	f.Fuzz(func(t *testing.T, b []byte) {
		r := &Runtime{Layout: l, AllGLen: fuzzBase, AllGPtr: fuzzBase + 8, arch: arch.AMD64,
			waitReasons: []string{"", "a", "b"}}
		gs, err := r.Goroutines(byteMem{fuzzBase, b})
		if err != nil {
			return
		}
		if 8*len(gs) > len(b) {
			t.Fatalf("%d g's from %d bytes of memory", len(gs), len(b))
		}
		for _, g := range gs {
			if int(g.WaitReason) < len(r.waitReasons) && g.Wait != r.waitReasons[g.WaitReason] {
				t.Fatalf("wait reason %d named %q", g.WaitReason, g.Wait)
			}
		}
	})
}

// FuzzReadStrings: a [n]string array read from the target gives n strings
// (unreadable ones empty), none longer than a wait reason can be.
func FuzzReadStrings(f *testing.F) {
	b := make([]byte, 64)
	binary.LittleEndian.PutUint64(b[0:], fuzzBase+48)
	binary.LittleEndian.PutUint64(b[8:], 5)
	binary.LittleEndian.PutUint64(b[16:], fuzzBase+53)
	binary.LittleEndian.PutUint64(b[24:], 3)
	copy(b[48:], "sleepchan")
	f.Add(b, uint8(2))
	f.Fuzz(func(t *testing.T, b []byte, n uint8) {
		s := readStrings(byteMem{fuzzBase, b}, fuzzBase, int(n))
		if s != nil && len(s) != int(n) {
			t.Fatalf("%d strings, want %d", len(s), n)
		}
		for _, x := range s {
			if len(x) > 256 {
				t.Fatalf("a %d-byte string", len(x))
			}
		}
	})
}

// runtimeCode returns the code of the named runtime functions of the test
// binary itself (real code of the current toolchain for this machine's
// arch), for seeds; none when the binary cannot be read.
func runtimeCode(f *testing.F, names ...string) [][]byte {
	exe, err := os.Executable()
	if err != nil {
		return nil
	}
	ef, err := elf.Open(exe)
	if err != nil {
		return nil
	}
	defer ef.Close()
	syms, _ := ef.Symbols()
	var out [][]byte
	for _, s := range syms {
		for _, n := range names {
			if s.Name != n || s.Size == 0 || s.Size > 4096 {
				continue
			}
			for _, p := range ef.Progs {
				if p.Type == elf.PT_LOAD && s.Value >= p.Vaddr && s.Value+s.Size <= p.Vaddr+p.Filesz {
					code := make([]byte, s.Size)
					if _, err := p.ReadAt(code, int64(s.Value-p.Vaddr)); err == nil {
						out = append(out, code)
					}
				}
			}
		}
	}
	return out
}

// FuzzCodeDecoders: the decoders that read the runtime's code (where g is
// kept, where the wait reasons and allgs are) take any bytes without
// panicking or looping, and what they return is in range.
func FuzzCodeDecoders(f *testing.F) {
	for _, c := range runtimeCode(f, "runtime.cgocallback", "runtime.save_g", "runtime.waitReason.String", "runtime.allgadd") {
		f.Add(c)
	}
	// arm64 save_g: mrs x0, tpidr_el0; movz x27, #0x10; str x28, [x0, x27]
	f.Add([]byte{0x40, 0xd0, 0x3b, 0xd5, 0x1b, 0x02, 0x80, 0xd2, 0x1c, 0x68, 0x3b, 0xf8})
	// amd64: mov %fs:0xfffffffffffffff8, %rcx
	f.Add([]byte{0x64, 0x48, 0x8b, 0x0c, 0x25, 0xf8, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, code []byte) {
		const pc = 0x401000
		fsSlot(code)
		if off, ok := saveG(code); ok && (off < 0 || off >= 1<<32) {
			t.Fatalf("save_g offset %d", off)
		}
		for _, wr := range []func([]byte, uint64) (int, []uint64){waitReasonsAMD64, waitReasonsARM64} {
			if n, _ := wr(code, pc); n < 0 || n >= 256 {
				t.Fatalf("wait reason count %d", n)
			}
		}
		for _, as := range []func([]byte, uint64, uint64) []uint64{atomicStoresAMD64, atomicStoresARM64} {
			if a := as(code, pc, pc+16); len(a) > len(code) {
				t.Fatalf("%d addresses from %d bytes", len(a), len(code))
			}
		}
	})
}

// TestGoroutinesBogusCount: a corrupt allglen (found by FuzzGoroutines: any
// count up to the 1<<26 sanity bound) over memory that holds a few g's
// costs what the memory read holds, not gigabytes of buffers allocated
// before the first read fails.
func TestGoroutinesBogusCount(t *testing.T) {
	l := Known["go1.25"]
	b := goMemory(l, 3)
	binary.LittleEndian.PutUint64(b, 1<<26-1)
	r := &Runtime{Layout: l, AllGLen: fuzzBase, AllGPtr: fuzzBase + 8, arch: arch.AMD64}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	_, err := r.Goroutines(byteMem{fuzzBase, b})
	runtime.ReadMemStats(&after)
	if err == nil {
		t.Fatal("an allgs array past the memory read")
	}
	if n := after.TotalAlloc - before.TotalAlloc; n > 1<<20 {
		t.Fatalf("Goroutines allocated %d bytes for a count the memory does not hold", n)
	}
}
