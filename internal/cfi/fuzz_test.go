package cfi

import (
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"reflect"
	"runtime"
	"testing"
	"time"
)

// ehFrames returns the .eh_frame and .eh_frame_hdr of the machine's dynamic
// linker (real CFI of the system compiler, and small), with their addresses.
func ehFrames(f *testing.F) (eh []byte, ehAddr uint64, hdr []byte, hdrAddr uint64) {
	ef, err := elf.Open(sys(f).ld)
	if err != nil {
		f.Skipf("dynamic linker: %v", err)
	}
	defer ef.Close()
	es, hs := ef.Section(".eh_frame"), ef.Section(".eh_frame_hdr")
	if es == nil || hs == nil {
		f.Skip("the dynamic linker has no .eh_frame/.eh_frame_hdr")
	}
	eh, _ = es.Data()
	hdr, _ = hs.Data()
	return eh, es.Addr, hdr, hs.Addr
}

// FuzzParseMutated: the dynamic linker's real .eh_frame and .eh_frame_hdr,
// mutated (each 4-byte group: which section, an offset u16, a value), parse
// into tables whose every row covers the pc asked for, or are refused; the
// header table and the sorted index agree wherever the .eh_frame itself is
// intact; no panic, no loop.
func FuzzParseMutated(f *testing.F) {
	eh, ehAddr, hdr, hdrAddr := ehFrames(f)
	orig, err := Parse(eh, ehAddr, 8, binary.LittleEndian)
	if err != nil {
		f.Fatal(err)
	}
	f.Add([]byte{})
	f.Add([]byte{0, 0x20, 0, 0xff})
	f.Add([]byte{0, 0x40, 0, 0x0f, 0, 0x41, 0, 0x7f})
	f.Add([]byte{1, 0x10, 0, 0x80})
	f.Add([]byte{1, 0x02, 0, 0x01})
	f.Fuzz(func(t *testing.T, muts []byte) {
		defer watchdog(10 * time.Second)()
		e, h := append([]byte(nil), eh...), append([]byte(nil), hdr...)
		var offs []int
		ehMutated := false
		for ; len(muts) >= 4; muts = muts[4:] {
			off := int(binary.LittleEndian.Uint16(muts[1:]))
			if muts[0]&1 == 0 {
				off = (off * 7) % len(e) // reach all of a section past 64 KiB
				e[off], ehMutated = muts[3], true
				offs = append(offs, off)
			} else {
				h[off%len(h)] = muts[3]
			}
		}
		var pcs []uint64
		for _, fd := range orig.fdes {
			for _, o := range offs {
				if o >= fd.insnsOff-32 && o < fd.insnsOff+len(fd.insns) {
					pcs = append(pcs, fd.start, (fd.start+fd.end)/2, fd.end-1)
				}
			}
		}
		if n := len(orig.fdes); n > 0 {
			pcs = append(pcs, orig.fdes[0].start, orig.fdes[n/2].start+1, orig.fdes[n-1].end-1)
		}
		idx, ierr := Parse(e, ehAddr, 8, binary.LittleEndian)
		hd, herr := ParseWithHdr(e, ehAddr, h, hdrAddr, 8, binary.LittleEndian)
		for _, pc := range pcs {
			var a, b Row
			var aok, bok bool
			var aerr, berr error
			if ierr == nil {
				a, aok, aerr = idx.RowAt(pc)
				covers(t, "index", pc, a, aok, aerr)
			}
			if herr == nil {
				b, bok, berr = hd.RowAt(pc)
				covers(t, "hdr", pc, b, bok, berr)
			}
			if !ehMutated && ierr == nil && herr == nil && aok && bok && aerr == nil && berr == nil && !reflect.DeepEqual(a, b) {
				t.Fatalf("RowAt(%#x): index %+v, hdr %+v", pc, a, b)
			}
		}
		if herr == nil {
			hd.FuncRanges()
		}
	})
}

func covers(t *testing.T, what string, pc uint64, r Row, ok bool, err error) {
	if ok && err == nil && (pc < r.FuncStart || pc >= r.FuncEnd) {
		t.Fatalf("%s: RowAt(%#x) gave the row of [%#x,%#x)", what, pc, r.FuncStart, r.FuncEnd)
	}
}

// TestHugeLengthNoAllocation: a length read from the CFI (found by
// FuzzParseMutated: a DW_CFA_def_cfa_expression of 2 GiB in an FDE of 24
// bytes) is an error, not an allocation of what it says.
func TestHugeLengthNoAllocation(t *testing.T) {
	eh := []byte{
		// CIE: zR, code 1, data -8, ra 16, pcrel sdata4; def_cfa rsp+8, offset r16 1
		20, 0, 0, 0, 0, 0, 0, 0, 1, 'z', 'R', 0, 1, 0x78, 16, 1, 0x1b, 0x0c, 7, 8, 0x90, 1, 0, 0,
		// FDE: length 20, cie ptr 28, pc begin +0, range 16, aug 0;
		// def_cfa_expression of 1<<31 bytes
		20, 0, 0, 0, 28, 0, 0, 0, 0, 0, 0, 0, 16, 0, 0, 0, 0, 0x0f, 0x80, 0x80, 0x80, 0x80, 0x08, 0,
	}
	tab, err := Parse(eh, 0x1000, 8, binary.LittleEndian)
	if err != nil || tab.FDEs() != 1 {
		t.Fatalf("Parse: %v", err)
	}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	_, ok, err := tab.RowAt(0x1000 + 32 + 1)
	runtime.ReadMemStats(&after)
	if !ok || !errors.Is(err, ErrFormat) {
		t.Fatalf("RowAt: ok=%v err=%v, want an ErrFormat", ok, err)
	}
	if n := after.TotalAlloc - before.TotalAlloc; n > 1<<20 {
		t.Fatalf("RowAt allocated %d bytes for a truncated expression", n)
	}
}

// watchdog crashes the fuzzing process when the input takes longer than d
// (the fuzzer then saves the input): a parse or a row must never loop.
func watchdog(d time.Duration) (stop func()) {
	done := make(chan struct{})
	go func() {
		select {
		case <-done:
		case <-time.After(d):
			panic(fmt.Sprintf("input still running after %v: a loop?", d))
		}
	}()
	return func() { close(done) }
}
