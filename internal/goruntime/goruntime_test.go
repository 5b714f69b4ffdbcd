package goruntime

import (
	"bytes"
	"debug/elf"
	"fmt"
	"regexp"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/hotpatch-dev/hotpatch/internal/fixture"
	"github.com/hotpatch-dev/hotpatch/internal/gopcln"
	"github.com/hotpatch-dev/hotpatch/internal/tracee"
)

// toolchains are the releases Known describes, by the toolchain that builds
// a target of each ("" is the current one, whose release must be known too).
var toolchains = fixture.GoToolchains

func TestRelease(t *testing.T) {
	for in, want := range map[string]string{
		"go1.26.8":            "go1.26",
		"go1.22.12":           "go1.22",
		"go1.25rc1":           "go1.25",
		"go1.9":               "go1.9",
		"devel go1.27-abcdef": "go1.27",
		"go1.":                "",
		"":                    "",
		"gccgo":               "",
	} {
		require.Equal(t, want, Release(in), in)
	}
}

func TestKnownLayoutUnknown(t *testing.T) {
	for _, v := range []string{"go1.99.1", "go1.21.0", "", "weird"} {
		_, err := KnownLayout(v)
		require.ErrorIs(t, err, ErrUnknownRelease, v)
		require.Contains(t, err.Error(), "DWARF", "the error says what to do")
	}
}

// TestKnownMatchesDWARF: the per-release table is what each toolchain's own
// DWARF says, for amd64 and arm64 targets.
func TestKnownMatchesDWARF(t *testing.T) {
	everyBuild(t, func(t *testing.T, ef *elf.File) {
		d, err := ef.DWARF()
		require.NoError(t, err)
		got, err := LayoutFromDWARF(d)
		require.NoError(t, err)
		want, err := KnownLayout(goVersion(t, ef))
		require.NoError(t, err)
		require.Equal(t, want, got)
	})
}

// everyBuild runs f on gotasks built by every supported toolchain for amd64
// and for arm64 (read, not run).
func everyBuild(t *testing.T, f func(t *testing.T, ef *elf.File)) {
	for _, tc := range toolchains {
		for _, arch := range []string{"amd64", "arm64"} {
			t.Run(fmt.Sprintf("%s-%s", tc, arch), func(t *testing.T) {
				ef, err := elf.Open(fixture.BuildGoArch(t, "gotasks", tc, arch))
				require.NoError(t, err)
				defer ef.Close()
				f(t, ef)
			})
		}
	}
}

func goVersion(t *testing.T, ef *elf.File) string {
	t.Helper()
	s := ef.Section(".go.buildinfo")
	require.NotNil(t, s)
	b, err := s.Data()
	require.NoError(t, err)
	v := regexp.MustCompile(`go1\.\d+(\.\d+)?`).Find(b)
	require.NotNil(t, v)
	return string(v)
}

func TestLayoutFromDWARFNoRuntime(t *testing.T) {
	// A C binary's DWARF has no runtime.g.
	ef, err := elf.Open(fixture.BuildC(t, "cservice", "-O2"))
	require.NoError(t, err)
	defer ef.Close()
	d, err := ef.DWARF()
	require.NoError(t, err)
	_, err = LayoutFromDWARF(d)
	require.ErrorContains(t, err, "runtime.g")
}

// live starts gotasks, opens it and describes it for Load.
func live(t *testing.T, flags ...string) (*fixture.Proc, *tracee.Process, Binary) {
	t.Helper()
	p, proc, b, err := liveBy(t, "", flags...)
	require.NoError(t, err)
	return p, proc, b
}

// liveBy is live for gotasks built by toolchain; the error is the function
// table's refusal (b.Funcs is nil then).
func liveBy(t *testing.T, toolchain string, flags ...string) (*fixture.Proc, *tracee.Process, Binary, error) {
	t.Helper()
	bin := fixture.BuildGo(t, "gotasks", toolchain, flags...)
	p := fixture.Start(t, bin)
	proc, err := tracee.Open(p.Pid)
	require.NoError(t, err)
	t.Cleanup(func() { proc.Close() })
	b, err := openBinary(t, bin)
	return p, proc, b, err
}

// openBinary opens a Go executable for Load; the error is the function table's
// refusal (b.Funcs is nil then).
func openBinary(t *testing.T, bin string) (Binary, error) {
	t.Helper()
	ef, err := elf.Open(bin)
	require.NoError(t, err)
	t.Cleanup(func() { ef.Close() })
	pcln := ef.Section(".gopclntab")
	require.NotNil(t, pcln)
	data, err := pcln.Data()
	require.NoError(t, err)
	b := Binary{ELF: ef, Version: goVersion(t, ef)}
	tab, err := gopcln.Parse(data, ef.Section(".text").Addr)
	if err == nil {
		b.Funcs = tab
	}
	return b, err
}

// TestLoadRefusesOldReleases: a target built by a release older than the
// supported range is refused by version, with DWARF (whose g layout would
// read) as without, and the error names the release and the range.
func TestLoadRefusesOldReleases(t *testing.T) {
	for _, tc := range fixture.OldGoToolchains {
		for _, flags := range [][]string{nil, {"-ldflags=-s -w"}} {
			t.Run(fmt.Sprint(tc, flags), func(t *testing.T) {
				_, proc, b, _ := liveBy(t, tc, flags...)
				_, err := Load(b, proc)
				require.ErrorIs(t, err, ErrUnknownRelease)
				var re *ReleaseError
				require.ErrorAs(t, err, &re)
				require.Equal(t, tc, re.Version)
				require.ErrorContains(t, err, tc)
				require.ErrorContains(t, err, "go1.22–go1.26")
				require.Equal(t, err, Supported(b))
			})
		}
	}
}

// TestSupported: releases are accepted by version alone; a development
// build, or one without a version, only when its DWARF layout is a known
// release's and its function table is in the decoded format.
func TestSupported(t *testing.T) {
	current, err := openBinary(t, fixture.BuildGo(t, "gotasks", ""))
	require.NoError(t, err)
	stripped, err := openBinary(t, fixture.BuildGo(t, "gotasks", "", "-ldflags=-s -w"))
	require.NoError(t, err)
	old, oldErr := openBinary(t, fixture.BuildGo(t, "gotasks", "go1.19.13"))
	require.ErrorIs(t, oldErr, gopcln.ErrUnsupported)
	noFuncs := current
	noFuncs.Funcs = nil
	with := func(b Binary, v string) Binary { b.Version = v; return b }
	for _, tc := range []struct {
		name string
		b    Binary
		why  string // "" when supported
	}{
		{"current", current, ""},
		{"current stripped", stripped, ""},
		{"go1.26 by version", with(stripped, "go1.26.1"), ""},
		{"go1.22 by version", with(stripped, "go1.22.0"), ""},
		{"go1.21 with DWARF", with(current, "go1.21.13"), "go1.21.13"},
		{"go1.27 with DWARF", with(current, "go1.27.0"), "go1.27.0"},
		{"go1.19", old, "go1.19.13"},
		{"devel", with(current, "devel go1.27-abcdef"), ""},
		{"no version", with(current, ""), ""},
		{"devel stripped", with(stripped, "devel go1.27-abcdef"), "DWARF"},
		{"devel without function table", with(noFuncs, "devel go1.27-abcdef"), "function table"},
		{"devel of an old runtime", with(old, "devel go1.27-abcdef"), "function table"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := Supported(tc.b)
			if tc.why == "" {
				require.NoError(t, err)
				return
			}
			var re *ReleaseError
			require.ErrorAs(t, err, &re)
			require.ErrorIs(t, err, ErrUnknownRelease)
			require.ErrorContains(t, err, tc.why)
			require.ErrorContains(t, err, SupportedRange())
		})
	}
}

// TestFindAllGsWithoutSymbols: the addresses found from runtime.allgadd's
// code are the symbols' (non-PIE Go binaries: bias 0), also when the target
// was built without inlining (go test -gcflags=all=-l, what an inlined
// function's refusal advises), where allgadd stores allgptr through a call
// of runtime.atomicstorep instead of its own atomic instruction.
func TestFindAllGsWithoutSymbols(t *testing.T) {
	for _, flags := range [][]string{nil, {"-gcflags=all=-l"}} {
		t.Run(fmt.Sprint(flags), func(t *testing.T) {
			_, proc, b := live(t, flags...)
			r, err := Load(b, proc)
			require.NoError(t, err)
			require.NotZero(t, r.AllGLen)
			require.True(t, r.FromDWARF)

			blind := &Runtime{Layout: r.Layout}
			require.NoError(t, blind.findAllGs(b, proc))
			require.Equal(t, r.AllGLen, blind.AllGLen, "allglen")
			require.Equal(t, r.AllGPtr, blind.AllGPtr, "allgptr")

			// The wait reasons' names are found without symbols too.
			addr, n, ok := findWaitReasons(b, proc)
			require.True(t, ok)
			require.Equal(t, len(r.waitReasons), n)
			require.Equal(t, r.waitReasons, readStrings(proc, addr, n))
			require.Contains(t, r.waitReasons, "chan receive")

			// Without a function table there is nothing to search.
			b.Funcs = nil
			require.ErrorIs(t, blind.findAllGs(b, proc), ErrNotFound)
		})
	}
}

// TestGoroutines reads the goroutines of a live target while it is stopped:
// goroutine 1 exists, 200 parked goroutines are waiting on a channel, and the
// ones running are bound to threads of the process.
func TestGoroutines(t *testing.T) {
	p, proc, b := live(t)
	mark := p.Mark()
	_, err := fmt.Fprintln(p.Stdin, "park 200")
	require.NoError(t, err)
	p.ExpectAfter(t, mark, regexp.MustCompile(`^parked 200$`), 30*time.Second)
	r, err := Load(b, proc)
	require.NoError(t, err)

	require.NoError(t, proc.Stop())
	gs, err := r.Goroutines(proc)
	threads := proc.Threads()
	require.NoError(t, proc.Resume())
	require.NoError(t, err)

	ids := map[uint64]bool{}
	waiting := 0
	isThread := map[int]bool{}
	for _, tid := range threads {
		isThread[tid] = true
	}
	for _, g := range gs {
		require.False(t, ids[g.ID] && g.Live(), "goroutine %d twice", g.ID)
		ids[g.ID] = true
		if !g.Live() {
			continue
		}
		require.Less(t, g.StackLo, g.StackHi, "goroutine %d", g.ID)
		if g.Status == Waiting && g.Wait == "chan receive" {
			waiting++
			require.True(t, g.SP >= g.StackLo && g.SP < g.StackHi, "goroutine %d: sp %#x outside its stack", g.ID, g.SP)
		}
		if g.Status == Running {
			require.True(t, isThread[g.Thread], "running goroutine %d on thread %d, not one of %v", g.ID, g.Thread, threads)
		}
	}
	require.True(t, ids[1], "goroutine 1")
	require.GreaterOrEqual(t, waiting, 200)
}

// TestGoroutinesAfterExit: reading the goroutines of a target that has
// exited fails with the cause kept: tracee.ErrExited.
func TestGoroutinesAfterExit(t *testing.T) {
	p, proc, b := live(t)
	r, err := Load(b, proc)
	require.NoError(t, err)
	p.Kill()
	_, err = r.Goroutines(proc)
	require.ErrorIs(t, err, tracee.ErrExited)
}

func TestStatusName(t *testing.T) {
	require.Equal(t, "waiting", StatusName(Waiting))
	require.Equal(t, "dead", StatusName(DeadExtra))
	require.Equal(t, "status 77", StatusName(77))
	g := G{Status: Dead}
	require.False(t, g.Live())
	g.Status = Leaked
	require.True(t, g.Live(), "a leaked goroutine still has frames")
}

// fileMem reads an executable's loadable segments at their link-time
// addresses, as a non-PIE process maps them.
type fileMem struct{ f *elf.File }

func (m fileMem) ReadAt(b []byte, off int64) (int, error) {
	a := uint64(off)
	for _, p := range m.f.Progs {
		if p.Type == elf.PT_LOAD && a >= p.Vaddr && a+uint64(len(b)) <= p.Vaddr+p.Filesz {
			return p.ReadAt(b, int64(a-p.Vaddr))
		}
	}
	return 0, fmt.Errorf("%#x: not in a loaded segment", a)
}

// TestFindWaitReasonsFromCode: the wait-reason table found from the code of
// runtime.waitReason.String (how stripped binaries name wait reasons) is
// runtime.waitReasonStrings, for every supported release on amd64 and
// arm64.
func TestFindWaitReasonsFromCode(t *testing.T) {
	everyBuild(t, func(t *testing.T, ef *elf.File) {
		syms, err := ef.Symbols()
		require.NoError(t, err)
		var want elf.Symbol
		for _, s := range syms {
			if s.Name == "runtime.waitReasonStrings" {
				want = s
			}
		}
		require.NotZero(t, want.Value, "runtime.waitReasonStrings in the symbol table")
		data, err := ef.Section(".gopclntab").Data()
		require.NoError(t, err)
		tab, err := gopcln.Parse(data, ef.Section(".text").Addr)
		require.NoError(t, err)
		addr, n, ok := findWaitReasons(Binary{ELF: ef, Funcs: tab}, fileMem{ef})
		require.True(t, ok)
		require.Equal(t, want.Value, addr)
		require.Equal(t, int(want.Size/16), n)
		require.Contains(t, readStrings(fileMem{ef}, addr, n), "chan receive")
	})
}

// TestGSlot: where a thread keeps its g, derived from the ELF, is where
// the runtime's own code puts it: amd64 with and without C thread-locals
// (external and internal linking), arm64 cgo binaries (from the symbols
// and from runtime.save_g's code, which agree), and arm64 without cgo (the
// register, no TLS); stripped builds find it from the runtime's code. The
// offsets were read from each build's code with objdump.
func TestGSlot(t *testing.T) {
	cases := []struct {
		name, fixture, tc, arch string
		flags                   []string
		want                    GSlot
	}{
		{"amd64 cgo external", "gocgo", "", "amd64", fixture.CgoLinkModes["external"], GSlot{TLS: true, Offset: 0x10 - 0xf0}},
		{"amd64 cgo internal", "gocgo", "", "amd64", fixture.CgoLinkModes["internal"], GSlot{TLS: true, Offset: -8}},
		{"amd64 go1.22 cgo external", "gocgo", "go1.22.12", "amd64", fixture.CgoLinkModes["external"], GSlot{TLS: true, Offset: 0x10 - 0xf0}},
		{"amd64 no cgo", "gotasks", "", "amd64", nil, GSlot{TLS: true, Offset: -8}},
		{"arm64 cgo external", "gocgo", "", "arm64", fixture.CgoLinkModes["external"], GSlot{TLS: true, Offset: 16 + 8}},
		{"arm64 cgo internal", "gocgo", "", "arm64", fixture.CgoLinkModes["internal"], GSlot{TLS: true, Offset: 16}},
		{"arm64 go1.22 cgo external", "gocgo", "go1.22.12", "arm64", fixture.CgoLinkModes["external"], GSlot{TLS: true, Offset: 16 + 8}},
		{"arm64 no cgo", "gotasks", "", "arm64", nil, GSlot{Reg: 28}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ef, err := elf.Open(fixture.BuildGoArch(t, c.fixture, c.tc, c.arch, c.flags...))
			require.NoError(t, err)
			defer ef.Close()
			syms, _ := ef.Symbols()
			data, err := ef.Section(".gopclntab").Data()
			require.NoError(t, err)
			text := ef.Section(".text").Addr
			for _, s := range syms {
				if s.Name == "runtime.text" {
					text = s.Value // external linking puts C code first
				}
			}
			tab, err := gopcln.Parse(data, text)
			require.NoError(t, err)
			b := Binary{ELF: ef, Funcs: tab}
			code := gCode(b, fileMem{ef})
			if c.fixture == "gocgo" {
				require.NotNil(t, code)
			}
			got, err := gSlot(ef, syms, usesCgo(b, syms), code)
			require.NoError(t, err)
			require.Equal(t, c.want, got)
			if c.want.TLS {
				stripped, err := gSlot(ef, nil, usesCgo(b, nil), code)
				require.NoError(t, err, "stripped: from the runtime's code")
				require.Equal(t, c.want, stripped)
			}
			if c.arch == "amd64" {
				got, err = gSlot(ef, syms, usesCgo(b, syms), nil)
				require.NoError(t, err, "from the ELF alone")
				require.Equal(t, c.want, got)
			}
		})
	}
}

// Bytes of a g outside GWords never change what DecodeG returns, and each
// decoded field changes when a byte of its own changes: the native check
// (consistency) compares only those words.
func TestGWordsCoverDecode(t *testing.T) {
	for release, l := range Known {
		r := &Runtime{Layout: l}
		words := map[int]bool{}
		for _, w := range r.GWords() {
			require.Zero(t, w%8, release)
			words[w] = true
		}
		base := make([]byte, r.GBytes())
		for i := range base {
			base[i] = byte(i*7 + 3)
		}
		want := r.DecodeG(0x1000, base)
		for i := range base {
			b := bytes.Clone(base)
			b[i] ^= 0xff
			got := r.DecodeG(0x1000, b)
			if !words[i&^7] {
				require.Equal(t, want, got, "%s: byte %d is outside the words", release, i)
			}
		}
		for _, off := range []int{l.GStackLo, l.GSchedPC, l.GStatus, l.GGoid, l.GWaitReason, l.GLockedM, l.GM} {
			b := bytes.Clone(base)
			b[off] ^= 0x01
			require.NotEqual(t, want, r.DecodeG(0x1000, b), "%s: field at %d", release, off)
		}
	}
}

// AllGsAfter reads allgs past a prefix read before: the same list as
// AllGs, the prefix itself when nothing was added; a prefix whose last
// entry is not where it was, or longer than allgs, makes it read the whole
// array (ok false).
func TestAllGsAfter(t *testing.T) {
	p, proc, b := live(t)
	r, err := Load(b, proc)
	require.NoError(t, err)
	before, err := r.AllGs(proc)
	require.NoError(t, err)
	require.NotEmpty(t, before)
	mark := p.Mark()
	_, err = fmt.Fprintln(p.Stdin, "park 50")
	require.NoError(t, err)
	p.ExpectAfter(t, mark, regexp.MustCompile(`^parked 50$`), 30*time.Second)

	require.NoError(t, proc.Stop())
	defer func() { require.NoError(t, proc.Resume()) }()
	all, err := r.AllGs(proc)
	require.NoError(t, err)
	require.Greater(t, len(all), len(before), "50 goroutines born")
	require.Equal(t, before, all[:len(before)], "allgs only grows")

	got, ok, err := r.AllGsAfter(proc, before)
	require.NoError(t, err)
	require.True(t, ok)
	require.Equal(t, all, got)

	got, ok, err = r.AllGsAfter(proc, all)
	require.NoError(t, err)
	require.True(t, ok)
	require.Equal(t, all, got)
	require.Same(t, &all[0], &got[0], "nothing added: the prefix itself")

	moved := append([]uint64(nil), before...)
	moved[len(moved)-1]++
	longer := append(append([]uint64(nil), all...), 0xc000001000)
	for name, prefix := range map[string][]uint64{"moved": moved, "longer": longer, "none": nil} {
		got, ok, err := r.AllGsAfter(proc, prefix)
		require.NoError(t, err, name)
		require.False(t, ok, name)
		require.Equal(t, all, got, name)
	}
}
