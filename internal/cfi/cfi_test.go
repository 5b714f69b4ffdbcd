package cfi

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
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

// system is where the machine's libc and dynamic linker live, and what the
// CFI row at a function's first instruction is on that arch.
type system struct {
	libc, ld string
	cfaReg   int   // the CFA at entry is cfaReg+cfaOff
	cfaOff   int64 // (the stack pointer, and what the call pushed)
	raOff    int64 // the return address is at CFA+raOff; 0: still in its register
}

var systems = map[string]system{
	"amd64": {libc: "/lib/x86_64-linux-gnu/libc.so.6", ld: "/lib64/ld-linux-x86-64.so.2", cfaReg: 7, cfaOff: 8, raOff: -8},
	"arm64": {libc: "/lib/aarch64-linux-gnu/libc.so.6", ld: "/lib/ld-linux-aarch64.so.1", cfaReg: 31, cfaOff: 0},
}

func sys(t testing.TB) system {
	s, ok := systems[runtime.GOARCH]
	if !ok {
		t.Skipf("no libc layout known for %s", runtime.GOARCH)
	}
	s.libc, _ = filepath.EvalSymlinks(s.libc)
	s.ld, _ = filepath.EvalSymlinks(s.ld)
	return s
}

func libc(t testing.TB) string { return sys(t).libc }

// At the first instruction of every function, the CFA is the caller's stack
// pointer (rsp+8 on x86-64, sp+0 on arm64) and the return address is at
// CFA-8 (x86-64) or still in the link register, with no rule (arm64): true
// of every normal function's FDE. Check every FDE of the machine's libc and
// dynamic linker.
func TestEntryRowEveryFDE(t *testing.T) {
	sy := sys(t)
	for _, path := range []string{sy.libc, sy.ld} {
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
			ra, hasRA := row.Regs[row.RA]
			raOK := ra.Kind == RuleOffset && ra.Offset == sy.raOff
			if sy.raOff == 0 {
				raOK = !hasRA || ra.Kind == RuleUnspecified || ra.Kind == RuleSameValue
			}
			switch {
			case row.CFA.Reg == sy.cfaReg && row.CFA.Offset == sy.cfaOff && raOK:
				normal++
			case ra.Kind == RuleUndefined:
				outermost++ // clone, _start: where stacks end
			}
			// Exceptions: .cold blocks split off a function start mid-frame,
			// and ld.so's resolver trampolines enter with extra words pushed.
		}
		if normal*100 < tab.FDEs()*97 {
			t.Errorf("%s: only %d of %d FDEs have the entry row CFA=sp%+d, RA at CFA%+d", path, normal, tab.FDEs(), sy.cfaOff, sy.raOff)
		}
		if strings.Contains(path, "libc") && outermost == 0 {
			t.Errorf("%s: no FDE marks an outermost frame (clone's child should)", path)
		}
	}
}

// readelfArch is how readelf names one arch's registers in its
// interpreted frame dump, and which libc and readelf to compare.
type readelfArch struct {
	name, goarch, cross string // cross: the cross readelf on other hosts
	crossLibc           string
	cfaRe               string
	regNum              map[string]int
	ra                  int
}

var readelfArchs = []readelfArch{
	{name: "x86-64", goarch: "amd64", cfaRe: `rsp|rbp|rbx|r\d+`, ra: 16,
		regNum: map[string]int{"rbx": 3, "rbp": 6, "rsp": 7, "r12": 12, "r13": 13, "r14": 14, "r15": 15, "ra": 16}},
	{name: "arm64", goarch: "arm64", cross: "aarch64-linux-gnu-readelf", crossLibc: "/usr/aarch64-linux-gnu/lib/libc.so.6",
		cfaRe: `sp|x\d+`, ra: 30, regNum: func() map[string]int {
			m := map[string]int{"sp": 31, "ra": 30}
			for i := 0; i <= 29; i++ {
				m[fmt.Sprintf("x%d", i)] = i
			}
			return m
		}()},
}

// The parsed rows of the first 300 FDEs of libc equal what readelf
// interprets: the machine's libc, and the arm64 cross libc on an x86-64
// host (aarch64-linux-gnu-readelf), so arm64 CFI is checked on every host.
func TestRowsMatchReadelf(t *testing.T) {
	for _, a := range readelfArchs {
		t.Run(a.name, func(t *testing.T) {
			tool, path := "readelf", ""
			if a.goarch == runtime.GOARCH {
				path = libc(t)
			} else if a.cross != "" {
				tool, path = a.cross, a.crossLibc
			} else {
				t.Skipf("no %s libc on a %s host", a.name, runtime.GOARCH)
			}
			out, err := exec.Command(tool, "--debug-dump=frames-interp", path).Output()
			// readelf exits 1 on sections it cannot dump (Debian's
			// bookworm libc has one) after printing the frames.
			if err != nil && !bytes.Contains(out, []byte("FDE cie=")) {
				t.Skipf("%s: %v", tool, err)
			}
			rowsMatchReadelf(t, a, path, out, 500)
		})
	}
}

func rowsMatchReadelf(t *testing.T, a readelfArch, path string, out []byte, minRows int) {
	_, tab := load(t, path)
	row := regexp.MustCompile(`^([0-9a-f]{16}) (` + a.cfaRe + `)\+(\d+)\s+(.*)$`)
	fdeHdr := regexp.MustCompile(`FDE cie=\S+ pc=([0-9a-f]+)\.\.([0-9a-f]+)`)
	header := ""
	fdes, rows := 0, 0
	regNum := a.regNum
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
			case want == "u" && n != a.ra:
				if r.Kind != RuleUnspecified && r.Kind != RuleUndefined && r.Kind != RuleSameValue {
					t.Fatalf("%#x: %s rule %+v, readelf says u", pc, col, r)
				}
			}
		}
		rows++
	}
	if rows < minRows {
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

// arm64 code built with pointer authentication (-mbranch-protection, the
// default of newer distributions) marks where LR is signed with
// DW_CFA_AARCH64_negate_ra_state: it parses, and the rows equal readelf's.
func TestRowsMatchReadelfPAC(t *testing.T) {
	a := readelfArchs[1]
	cc := "aarch64-linux-gnu-gcc"
	if runtime.GOARCH == "arm64" {
		cc = "gcc"
	}
	if _, err := exec.LookPath(cc); err != nil {
		t.Skipf("no %s to build arm64 code with (the host lane runs this test): %v", cc, err)
	}
	dir := t.TempDir()
	src := filepath.Join(dir, "pac.c")
	require.NoError(t, os.WriteFile(src, []byte(`extern long g(long);
long f(long x) { return g(x) + 1; }
long h(long x) { long a[16]; for (int i = 0; i < 16; i++) a[i] = g(i); return a[x & 15] + g(a[3]); }
`), 0o644))
	so := filepath.Join(dir, "libpac.so")
	out, err := exec.Command(cc, "-O2", "-shared", "-fPIC", "-mbranch-protection=standard", "-o", so, src).CombinedOutput()
	require.NoError(t, err, "%s", out)
	tool := a.cross
	if runtime.GOARCH == "arm64" {
		tool = "readelf"
	}
	frames, err := exec.Command(tool, "--debug-dump=frames", so).Output()
	require.NoError(t, err)
	require.Contains(t, string(frames), "DW_CFA_AARCH64_negate_ra_state", "the compiler signs LR")
	interp, err := exec.Command(tool, "--debug-dump=frames-interp", so).Output()
	require.NoError(t, err)
	rowsMatchReadelf(t, a, so, interp, 10)
}

// RowAt's cache returns what evaluating the row returns, from goroutines
// side by side, and holds at most maxCachedRows rows.
func TestRowCache(t *testing.T) {
	_, tab := load(t, libc(t))
	var pcs []uint64
	for _, r := range tab.FuncRanges() {
		pcs = append(pcs, (r[0]+r[1])/2, r[0])
	}
	require.Greater(t, len(pcs), maxCachedRows, "enough rows to fill the cache")
	errs := make(chan error, 4)
	for w := range 4 {
		go func() {
			for round := range 2 {
				for i := w; i < len(pcs); i += 2 {
					pc := pcs[i]
					got, gok, gerr := tab.RowAt(pc)
					want, wok, werr := tab.evalRow(pc)
					if gok != wok || fmt.Sprint(gerr) != fmt.Sprint(werr) || !reflect.DeepEqual(got, want) {
						errs <- fmt.Errorf("round %d: RowAt(%#x) = %v %v %+v, want %v %v %+v", round, pc, gok, gerr, got, wok, werr, want)
						return
					}
				}
			}
			errs <- nil
		}()
	}
	for range 4 {
		require.NoError(t, <-errs)
	}
	require.EqualValues(t, maxCachedRows, tab.nrows.Load())
	n := 0
	tab.rows.Range(func(any, any) bool { n++; return true })
	require.Equal(t, maxCachedRows, n)
}
