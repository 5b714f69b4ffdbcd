package trampoline

import (
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/arch/arm64/arm64asm"
)

const (
	crossGCC  = "aarch64-linux-gnu-gcc"
	crossLibc = "/usr/aarch64-linux-gnu/lib/libc.so.6" // from libc6-arm64-cross, a dependency of the cross gcc
)

// elfFuncs lists the defined functions of an ELF file with their code and
// the padding up to the next symbol (at most 64 bytes), one per address,
// and the name of the function listed for each alias.
func elfFuncs(t testing.TB, path string) ([]Func, map[string]string) {
	f, err := elf.Open(path)
	require.NoError(t, err)
	defer f.Close()
	require.Equal(t, elf.EM_AARCH64, f.Machine)
	syms, err := f.Symbols()
	if errors.Is(err, elf.ErrNoSymbols) { // a stripped shared library
		syms, err = f.DynamicSymbols()
	}
	require.NoError(t, err)
	starts := map[uint64]bool{}
	for _, s := range syms {
		if elf.ST_TYPE(s.Info) == elf.STT_FUNC || elf.ST_TYPE(s.Info) == elf.STT_NOTYPE {
			starts[s.Value] = true
		}
	}
	var sorted []uint64
	for a := range starts {
		sorted = append(sorted, a)
	}
	sort.Slice(sorted, func(i, j int) bool { return sorted[i] < sorted[j] })
	seen := map[uint64]string{}
	alias := map[string]string{}
	var out []Func
	for _, s := range syms {
		if elf.ST_TYPE(s.Info) != elf.STT_FUNC || s.Size == 0 || int(s.Section) >= len(f.Sections) {
			continue
		}
		if name, ok := seen[s.Value]; ok {
			alias[s.Name] = name
			continue
		}
		sec := f.Sections[s.Section]
		if sec.Flags&elf.SHF_EXECINSTR == 0 || s.Value < sec.Addr || s.Value+s.Size > sec.Addr+sec.Size {
			continue
		}
		seen[s.Value] = s.Name
		alias[s.Name] = s.Name
		data, err := sec.Data()
		require.NoError(t, err)
		off := s.Value - sec.Addr
		end := s.Value + s.Size
		padEnd := min(end+64, sec.Addr+sec.Size)
		if i := sort.Search(len(sorted), func(i int) bool { return sorted[i] >= end }); i < len(sorted) {
			padEnd = min(padEnd, sorted[i])
		}
		out = append(out, Func{
			Name:    s.Name,
			Addr:    s.Value,
			Code:    data[off : off+s.Size],
			Padding: data[end-sec.Addr : padEnd-sec.Addr],
		})
	}
	return out, alias
}

// checkThunkDecodes requires every word of a thunk to decode, except the
// literal of an `LDR Xr, #8; BR Xr; .quad` absolute jump and the BRK that
// ends a thunk of a whole function.
func checkThunkDecodes(t testing.TB, name string, thunk []byte) {
	for q := 0; q+4 <= len(thunk); q += 4 {
		w := binary.LittleEndian.Uint32(thunk[q:])
		if w&0xffffffe0 == 0x58000040 && q+16 <= len(thunk) && binary.LittleEndian.Uint32(thunk[q+4:]) == 0xd61f0000|(w&31)<<5 {
			q += 12
			continue
		}
		if _, err := arm64asm.Decode(thunk[q:]); err != nil && w != a64BRK0 && !pcIndependentClass(w) && !isHint(w) {
			t.Errorf("%s: thunk word %08x at +%d does not decode: % x", name, w, q, thunk)
		}
	}
}

type planStats struct {
	total, planned int
	refusals       map[string]int
	plans          map[string]*Plan
	errs           map[string]error
}

// planAll plans every function with the thunk and replacement at the given
// distances, checking each plan and each refusal.
func planAll(t *testing.T, fns []Func, thunkOff, newOff uint64) planStats {
	st := planStats{refusals: map[string]int{}, plans: map[string]*Plan{}, errs: map[string]error{}}
	for _, fn := range fns {
		st.total++
		newAddr, thunkAddr := fn.Addr+newOff, fn.Addr+thunkOff
		var p *Plan
		var err error
		func() {
			defer func() {
				if r := recover(); r != nil {
					t.Fatalf("Plan(%s at %#x) panicked: %v\ncode % x", fn.Name, fn.Addr, r, fn.Code)
				}
			}()
			p, err = ARM64{}.Plan(fn, newAddr, thunkAddr)
		}()
		if err != nil {
			var e *Error
			require.ErrorAs(t, err, &e, fn.Name)
			require.Equal(t, fn.Name, e.Func)
			var kind string
			for _, s := range []error{ErrTooShort, ErrBranchIntoPatch, ErrCannotRelocate} {
				if errors.Is(err, s) {
					kind = s.Error()
				}
			}
			require.NotEmpty(t, kind, "untyped refusal of %s: %v", fn.Name, err)
			st.refusals[kind]++
			st.errs[fn.Name] = err
			continue
		}
		st.planned++
		st.plans[fn.Name] = p
		full := append(append([]byte(nil), fn.Code...), fn.Padding...)
		off := p.Addr - fn.Addr
		require.Equal(t, full[off:off+uint64(len(p.Original))], p.Original, fn.Name)
		require.Equal(t, ARM64{}.Jump(p.Addr, newAddr), p.Jump[:len(ARM64{}.Jump(p.Addr, newAddr))], fn.Name)
		require.LessOrEqual(t, len(p.Thunk), ARM64{}.MaxThunkSize(), fn.Name)
		checkThunkDecodes(t, fn.Name, p.Thunk)
	}
	return st
}

func (st planStats) String() string {
	return fmt.Sprintf("%d/%d planned (%.1f%%), refusals %v", st.planned, st.total, 100*float64(st.planned)/float64(st.total), st.refusals)
}

// TestARM64CompilerOutput plans a patch of every function of real arm64
// binaries, near (thunk 1 MiB and replacement 64 MiB away: the 4-byte B) and
// far (both beyond 128 MiB: the 16-byte jump, 4 displaced instructions):
// C built by the cross gcc with several flag sets, and a Go program with
// its whole runtime. No Plan may panic, every refusal must be a typed
// *Error, and most functions must be planned.
func TestARM64CompilerOutput(t *testing.T) {
	if _, err := exec.LookPath(crossGCC); err != nil {
		t.Fatalf("%s not found: install it with `apt-get install -y gcc-aarch64-linux-gnu` (make test installs it): %v", crossGCC, err)
	}
	dir := t.TempDir()
	type bin struct {
		name, path string
		want       []string // functions that must be planned near
		wantFar    []string // and far
		minNear    float64
		minFar     float64
	}
	var bins []bin
	cFuncs := []string{"gcd", "count_down", "bump", "lookup", "fscale", "fconst", "tail", "sw", "bits", "sum_to", "callfirst", "atomic_add", "msg", "big_frame"}
	// tail and count_down branch into their first 16 bytes at some -O.
	// msg is a 4-byte tail call, sum_to loops back at -Os.
	cFuncsFar := []string{"lookup", "fscale", "fconst", "callfirst", "big_frame", "bits"}
	for i, flags := range []string{
		"-O2",
		"-O0",
		"-O2 -fpatchable-function-entry=2",
		"-O2 -mcmodel=tiny",
		"-Os -mbranch-protection=standard",
		"-O3 -fno-omit-frame-pointer",
	} {
		out := filepath.Join(dir, fmt.Sprintf("c%d", i))
		args := append(strings.Fields(flags), "-o", out, filepath.Join("testdata", "arm64funcs.c"))
		cmd := exec.Command(crossGCC, args...)
		msg, err := cmd.CombinedOutput()
		require.NoError(t, err, "%s %s: %s", crossGCC, flags, msg)
		bins = append(bins, bin{name: "gcc " + flags, path: out, want: cFuncs, wantFar: cFuncsFar, minNear: 0.95, minFar: 0.7})
	}

	src := filepath.Join(dir, "goprog")
	require.NoError(t, os.MkdirAll(src, 0o755))
	main, err := os.ReadFile(filepath.Join("testdata", "arm64goprog", "main.go"))
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(src, "main.go"), main, 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(src, "go.mod"), []byte("module arm64goprog\n\ngo 1.22\n"), 0o644))
	goOut := filepath.Join(dir, "goprog.bin")
	cmd := exec.Command("go", "build", "-o", goOut, ".")
	cmd.Dir = src
	cmd.Env = append(os.Environ(), "GOARCH=arm64", "GOOS=linux", "CGO_ENABLED=0", "GOFLAGS=-mod=mod", "GOWORK=off")
	msg, err := cmd.CombinedOutput()
	require.NoError(t, err, "GOARCH=arm64 go build: %s", msg)
	bins = append(bins, bin{name: "go", path: goOut, want: []string{"main.fib", "main.bigFrame", "main.(*acc).add", "main.constant", "main.main", "main.main.func1"}, minNear: 0.99, minFar: 0.93})
	bins[len(bins)-1].wantFar = bins[len(bins)-1].want

	// The cross toolchain's own arm64 glibc: thousands of hand-written and
	// compiled functions (from .dynsym: the library is stripped).
	bins = append(bins, bin{name: "libc.so.6", path: crossLibc, want: []string{"malloc", "free", "printf", "pthread_mutex_lock", "fopen"}, minNear: 0.97, minFar: 0.9})

	for _, b := range bins {
		t.Run(b.name, func(t *testing.T) {
			fns, alias := elfFuncs(t, b.path)
			require.Greater(t, len(fns), 10)
			near := planAll(t, fns, 1<<20, 64<<20)
			far := planAll(t, fns, 1<<39, 1<<40)
			t.Logf("%s: near %v; far %v", b.name, near, far)
			for _, name := range b.want {
				require.Contains(t, alias, name)
				require.Contains(t, near.plans, alias[name], "near: %v", near.errs[alias[name]])
			}
			for _, name := range b.wantFar {
				require.Contains(t, far.plans, alias[name], "far: %v", far.errs[alias[name]])
			}
			reasons := map[string]int{}
			for _, err := range far.errs {
				d := err.(*Error).Detail
				if i := strings.IndexAny(d, "`0123456789"); i > 0 && d[i] == '`' {
					d = d[:i] + strings.Fields(d[i:])[0] + "`"
				} else if i > 0 {
					d = d[:i]
				}
				reasons[d]++
			}
			t.Logf("far refusals by reason: %v", reasons)
			require.GreaterOrEqual(t, float64(near.planned)/float64(near.total), b.minNear)
			require.GreaterOrEqual(t, float64(far.planned)/float64(far.total), b.minFar)
			if b.name == "go" {
				// The stack-growth check's B.LS is displaced by the far jump
				// and relocated as an inverted B.HI over an absolute jump
				// back to the morestack tail in the function.
				p := far.plans["main.bigFrame"]
				var conds []string
				for q := 0; q+4 <= len(p.Thunk); q += 4 {
					if inst, err := arm64asm.Decode(p.Thunk[q:]); err == nil && inst.Op == arm64asm.B && inst.Args[1] != nil {
						conds = append(conds, inst.String())
					}
				}
				require.NotEmpty(t, conds, "main.bigFrame far thunk % x", p.Thunk)
				t.Logf("main.bigFrame far thunk: conditional branches %v", conds)
			}
		})
	}
}
