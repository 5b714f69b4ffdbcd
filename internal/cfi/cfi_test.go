package cfi

import (
	"debug/elf"
	"encoding/binary"
	"errors"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

func load(t testing.TB, path string) (*elf.File, *Table) {
	t.Helper()
	f, err := elf.Open(path)
	if err != nil {
		t.Skipf("%s: %v", path, err)
	}
	t.Cleanup(func() { f.Close() })
	s := f.Section(".eh_frame")
	if s == nil {
		t.Fatalf("%s has no .eh_frame", path)
	}
	data, err := s.Data()
	if err != nil {
		t.Fatal(err)
	}
	tab, err := Parse(data, s.Addr, 8, binary.LittleEndian)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return f, tab
}

func libc(t testing.TB) string {
	out, err := exec.Command("gcc", "-print-file-name=libc.so.6").Output()
	if err != nil {
		t.Fatal(err)
	}
	p, _ := filepath.EvalSymlinks(strings.TrimSpace(string(out)))
	return p
}

// At the first instruction of every function, the CFA is rsp+8 and the
// return address is at CFA-8: true of every normal function's FDE. Check
// every FDE of the machine's libc and dynamic linker.
func TestEntryRowEveryFDE(t *testing.T) {
	ld, _ := filepath.EvalSymlinks("/lib64/ld-linux-x86-64.so.2")
	for _, path := range []string{libc(t), ld} {
		_, tab := load(t, path)
		if tab.FDEs() < 100 {
			t.Fatalf("%s: only %d FDEs", path, tab.FDEs())
		}
		normal, outermost := 0, 0
		for _, r := range tab.FuncRanges() {
			row, ok, err := tab.RowAt(r[0])
			if err != nil || !ok {
				t.Fatalf("%s: RowAt(%#x) = %v, %v", path, r[0], ok, err)
			}
			if row.FuncStart != r[0] {
				t.Fatalf("%s: RowAt(%#x) found the FDE at %#x", path, r[0], row.FuncStart)
			}
			ra := row.Regs[row.RA]
			switch {
			case row.CFA.Reg == 7 && row.CFA.Offset == 8 && ra.Kind == RuleOffset && ra.Offset == -8:
				normal++
			case ra.Kind == RuleUndefined:
				outermost++ // clone, _start: where stacks end
			}
			// Exceptions: .cold blocks split off a function start mid-frame,
			// and ld.so's resolver trampolines enter with extra words pushed.
		}
		if normal*100 < tab.FDEs()*97 {
			t.Errorf("%s: only %d of %d FDEs have the entry row CFA=rsp+8, RA at CFA-8", path, normal, tab.FDEs())
		}
		if strings.Contains(path, "libc") && outermost == 0 {
			t.Errorf("%s: no FDE marks an outermost frame (clone's child should)", path)
		}
	}
}

func TestRowsMatchReadelf(t *testing.T) {
	path := libc(t)
	out, err := exec.Command("readelf", "--debug-dump=frames-interp", path).Output()
	if err != nil {
		t.Skipf("readelf: %v", err)
	}
	_, tab := load(t, path)
	row := regexp.MustCompile(`^([0-9a-f]{16}) (rsp|rbp|rbx|r\d+)\+(\d+)\s+(.*)$`)
	fdeHdr := regexp.MustCompile(`FDE cie=\S+ pc=([0-9a-f]+)\.\.([0-9a-f]+)`)
	header := ""
	fdes, rows := 0, 0
	regNum := map[string]int{"rbx": 3, "rbp": 6, "rsp": 7, "r12": 12, "r13": 13, "r14": 14, "r15": 15, "ra": 16}
	for _, line := range strings.Split(string(out), "\n") {
		if m := fdeHdr.FindStringSubmatch(line); m != nil {
			fdes++
			if fdes > 300 {
				break
			}
			continue
		}
		if strings.HasPrefix(line, "   LOC") {
			header = line
			continue
		}
		m := row.FindStringSubmatch(line)
		if m == nil || fdes == 0 {
			continue
		}
		pc, _ := strconv.ParseUint(m[1], 16, 64)
		off, _ := strconv.ParseInt(m[3], 10, 64)
		got, ok, err := tab.RowAt(pc)
		if err != nil || !ok {
			t.Fatalf("RowAt(%#x): %v %v", pc, ok, err)
		}
		if got.CFA.Reg != regNum[m[2]] || got.CFA.Offset != off {
			t.Fatalf("%#x: CFA r%d%+d, readelf says %s+%d", pc, got.CFA.Reg, got.CFA.Offset, m[2], off)
		}
		// Compare the register columns readelf prints (c-N = saved at CFA-N).
		cols := strings.Fields(header)[2:]
		vals := strings.Fields(m[4])
		for i, col := range cols {
			n, known := regNum[col]
			if !known || i >= len(vals) {
				continue
			}
			want := vals[i]
			r := got.Regs[n]
			switch {
			case strings.HasPrefix(want, "c-") || strings.HasPrefix(want, "c+"):
				v, _ := strconv.ParseInt(want[1:], 10, 64)
				if r.Kind != RuleOffset || r.Offset != v {
					t.Fatalf("%#x: %s rule %+v, readelf says %s", pc, col, r, want)
				}
			case want == "u" && n != 16:
				if r.Kind != RuleUnspecified && r.Kind != RuleUndefined && r.Kind != RuleSameValue {
					t.Fatalf("%#x: %s rule %+v, readelf says u", pc, col, r)
				}
			}
		}
		rows++
	}
	if rows < 500 {
		t.Fatalf("compared only %d rows", rows)
	}
}

func TestErrors(t *testing.T) {
	_, tab := load(t, libc(t))
	if _, ok, _ := tab.RowAt(0); ok {
		t.Error("RowAt(0) found an FDE")
	}
	s, _ := elf.Open(libc(t))
	defer s.Close()
	data, _ := s.Section(".eh_frame").Data()
	addr := s.Section(".eh_frame").Addr
	// Every truncation either parses (ending at an entry boundary) or fails
	// with an offset; RowAt never panics.
	for n := 0; n < 2000; n += 3 {
		tab, err := Parse(data[:n], addr, 8, binary.LittleEndian)
		if err != nil {
			if !errors.Is(err, ErrFormat) {
				t.Fatalf("truncated at %d: %v is not ErrFormat", n, err)
			}
			continue
		}
		for _, r := range tab.FuncRanges() {
			tab.RowAt(r[0] + 3)
		}
	}
	if _, err := Parse([]byte{8, 0, 0, 0, 0, 0, 0, 0, 9, 'x', 0, 0}, 0, 8, binary.LittleEndian); !errors.Is(err, ErrFormat) {
		t.Errorf("bad augmentation: %v", err)
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte{0x14, 0, 0, 0, 0, 0, 0, 0, 1, 'z', 'R', 0, 1, 0x78, 0x10, 1, 0x1b, 0x0c, 7, 8, 0x90, 1, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		tab, err := Parse(b, 0x1000, 8, binary.LittleEndian)
		if err != nil {
			return
		}
		for _, r := range tab.FuncRanges() {
			tab.RowAt(r[0])
			tab.RowAt(r[1] - 1)
		}
	})
}
