package cfi

import (
	"debug/elf"
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"
)

// Every shared library of the machine (up to 8 MB each): its .eh_frame
// parses, and the .eh_frame_hdr binary search finds for each FDE's first
// and last byte the same row as the sorted index.
func TestEveryLibraryOnTheMachine(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	// The machine's libraries, and the arm64 cross libraries where
	// installed (so arm64 CFI is swept on an x86-64 host too).
	var paths []string
	for _, dir := range []string{"/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/aarch64-linux-gnu/lib"} {
		more, _ := filepath.Glob(dir + "/*.so*")
		paths = append(paths, more...)
	}
	checked, fdes := 0, 0
	for _, path := range paths {
		st, err := os.Stat(path)
		if err != nil || st.Size() > 8<<20 || !st.Mode().IsRegular() {
			continue
		}
		f, err := elf.Open(path)
		if err != nil {
			continue // a linker script or another non-ELF file
		}
		es, hs := f.Section(".eh_frame"), f.Section(".eh_frame_hdr")
		if es == nil || hs == nil || (f.Machine != elf.EM_X86_64 && f.Machine != elf.EM_AARCH64) {
			f.Close()
			continue
		}
		ed, err1 := es.Data()
		hd, err2 := hs.Data()
		f.Close()
		if err1 != nil || err2 != nil {
			t.Fatalf("%s: %v %v", path, err1, err2)
		}
		idx, err := Parse(ed, es.Addr, 8, binary.LittleEndian)
		if err != nil {
			t.Errorf("%s: %v", path, err)
			continue
		}
		hdr, err := ParseWithHdr(ed, es.Addr, hd, hs.Addr, 8, binary.LittleEndian)
		if err != nil {
			t.Errorf("%s: .eh_frame_hdr: %v", path, err)
			continue
		}
		for _, r := range idx.FuncRanges() {
			for _, pc := range []uint64{r[0], r[1] - 1} {
				a, aok, aerr := idx.RowAt(pc)
				b, bok, berr := hdr.RowAt(pc)
				if aok != bok || (aerr == nil) != (berr == nil) || a.FuncStart != b.FuncStart || a.CFA.Offset != b.CFA.Offset || a.CFA.Reg != b.CFA.Reg || len(a.Regs) != len(b.Regs) {
					t.Fatalf("%s: RowAt(%#x): index %v %v %+v, hdr %v %v %+v", path, pc, aok, aerr, a, bok, berr, b)
				}
				if aerr != nil {
					t.Errorf("%s: RowAt(%#x): %v", path, pc, aerr)
				}
			}
			fdes++
		}
		checked++
	}
	if checked < 5 { // the arm64 VM carries only glibc's few libraries
		t.Skipf("only %d libraries with .eh_frame_hdr found", checked)
	}
	t.Logf("%d libraries, %d FDEs", checked, fdes)
}
