package elfsym

import (
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/hotpatch-dev/hotpatch/internal/fixture"
)

func TestParseMappings(t *testing.T) {
	tests := []struct {
		name string
		line string
		want Mapping
	}{
		{"file", "55d1c4a00000-55d1c4a02000 r-xp 00002000 fd:01 1234567                    /usr/bin/cat",
			Mapping{Start: 0x55d1c4a00000, End: 0x55d1c4a02000, Perms: "r-xp", Offset: 0x2000, Dev: "fd:01", Inode: 1234567, Path: "/usr/bin/cat"}},
		{"anonymous", "7f0000000000-7f0000001000 rw-p 00000000 00:00 0 ",
			Mapping{Start: 0x7f0000000000, End: 0x7f0000001000, Perms: "rw-p", Dev: "00:00"}},
		{"anonymous no trailing space", "7f0000000000-7f0000001000 ---p 00000000 00:00 0",
			Mapping{Start: 0x7f0000000000, End: 0x7f0000001000, Perms: "---p", Dev: "00:00"}},
		{"spaces in path", "400000-401000 r-xp 00000000 08:02 42     /tmp/my dir/a  b",
			Mapping{Start: 0x400000, End: 0x401000, Perms: "r-xp", Dev: "08:02", Inode: 42, Path: "/tmp/my dir/a  b"}},
		{"deleted", "400000-401000 r-xp 00001000 08:02 42   /tmp/old bin (deleted)",
			Mapping{Start: 0x400000, End: 0x401000, Perms: "r-xp", Offset: 0x1000, Dev: "08:02", Inode: 42, Path: "/tmp/old bin", Deleted: true}},
		{"vdso", "7ffd5c9f4000-7ffd5c9f6000 r-xp 00000000 00:00 0                          [vdso]",
			Mapping{Start: 0x7ffd5c9f4000, End: 0x7ffd5c9f6000, Perms: "r-xp", Dev: "00:00", Path: "[vdso]"}},
		{"memfd", "7f1-7f2 r--s 00000000 00:01 77 /memfd:wayland-shm (deleted)",
			Mapping{Start: 0x7f1, End: 0x7f2, Perms: "r--s", Dev: "00:01", Inode: 77, Path: "/memfd:wayland-shm", Deleted: true}},
		{"vsyscall", "ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]",
			Mapping{Start: 0xffffffffff600000, End: 0xffffffffff601000, Perms: "--xp", Dev: "00:00", Path: "[vsyscall]"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ms, err := ParseMappings(strings.NewReader(tc.line + "\n"))
			require.NoError(t, err)
			require.Len(t, ms, 1)
			assert.Equal(t, tc.want, ms[0])
		})
	}

	bad := []struct{ name, text, want string }{
		{"no dash", "ok-1 r-xp 0 00:00 0\n", "line 1"},
		{"bad start", "zz-1000 r-xp 00000000 00:00 0\n", "line 1"},
		{"short perms", "1000-2000 r-x 00000000 00:00 0\n", "line 1"},
		{"missing inode", "1000-2000 r-xp 00000000 00:00\n", "line 1"},
		{"bad inode on line 3", "1000-2000 r-xp 00000000 00:00 0\n\n3000-4000 r-xp 00000000 00:00 x /a\n", "line 3"},
		{"end below start", "2000-1000 r-xp 00000000 00:00 0\n", "line 1"},
		{"bad device", "1000-2000 r-xp 00000000 0000 0\n", "line 1"},
	}
	for _, tc := range bad {
		t.Run("error/"+tc.name, func(t *testing.T) {
			_, err := ParseMappings(strings.NewReader(tc.text))
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want)
		})
	}
}

func TestReadMappingsSelf(t *testing.T) {
	ms, err := ReadMappings(os.Getpid())
	require.NoError(t, err)
	exe, err := os.Executable()
	require.NoError(t, err)
	found := false
	for _, m := range ms {
		if m.Path == exe && m.exec() {
			found = true
		}
	}
	assert.True(t, found, "own executable %s not in maps", exe)
}

// checkAgainstNM checks that every text symbol nm lists resolves to the
// same address (plus bias) and size.
func checkAgainstNM(t *testing.T, tab *Table, mod *Module, want map[string][]nmSym, bias uint64, names ...string) {
	t.Helper()
	for _, name := range names {
		defs := want[name]
		require.Len(t, defs, 1, "nm definitions of %s", name)
		s, err := tab.Lookup(name)
		require.NoError(t, err, name)
		assert.Equal(t, defs[0].addr+bias, s.Addr, "address of %s", name)
		assert.Equal(t, defs[0].size, s.Size, "size of %s", name)
		assert.Same(t, mod, s.Module, name)
	}
}

// checkGoAsm checks that Go assembly functions, named NAME.abi0 in the
// symtab, resolve under the pclntab's NAME too.
func checkGoAsm(t *testing.T, tab *Table, want map[string][]nmSym, bias uint64) {
	t.Helper()
	// An assembly function with an ABIInternal wrapper resolves to its
	// body; a Go function with an ABI0 wrapper resolves to the function.
	for _, name := range []string{"runtime.asmcgocall", "runtime.goexit", "runtime.morestack", "runtime.rt0_go"} {
		s, err := tab.Lookup(name)
		require.NoError(t, err)
		require.Len(t, want[name+".abi0"], 1, name)
		assert.Equal(t, want[name+".abi0"][0].addr+bias, s.Addr, name)
		assert.Equal(t, want[name+".abi0"][0].size, s.Size, name)
	}
	for _, name := range []string{"runtime.check", "runtime.newproc"} {
		s, err := tab.Lookup(name)
		require.NoError(t, err)
		require.Len(t, want[name], 1, name)
		require.Len(t, want[name+".abi0"], 1, name)
		assert.Equal(t, want[name][0].addr+bias, s.Addr, name)
	}
}

// checkSymbolize checks the address → name round trip of s. An address
// symbolizes to one of the aliases defined there.
func checkSymbolize(t *testing.T, tab *Table, s Symbol) {
	t.Helper()
	name := tab.Symbolize(s.Addr)
	alias, err := tab.Lookup(s.Module.Name() + ":" + name)
	require.NoError(t, err, name)
	assert.Equal(t, s.Addr, alias.Addr, "%s and %s", s.Name, name)
	if s.Size > 1 {
		assert.Equal(t, fmt.Sprintf("%s+0x1", name), tab.Symbolize(s.Addr+1))
	}
	at, ok := tab.SymbolAt(s.Addr + s.Size - 1)
	require.True(t, ok)
	assert.Equal(t, s.Addr, at.Addr)
	m, ok := tab.ModuleAt(s.Addr)
	require.True(t, ok)
	assert.Same(t, s.Module, m)
}

func TestLoadFileC(t *testing.T) {
	dir := t.TempDir()
	variants := []struct {
		name     string
		flags    []string
		strip    string
		wantType elf.Type
	}{
		{"pie", []string{"-fPIE", "-pie", "-rdynamic"}, "", elf.ET_DYN},
		{"nopie", []string{"-fno-pie", "-no-pie", "-rdynamic"}, "", elf.ET_EXEC},
		{"pie-strip-unneeded", []string{"-fPIE", "-pie", "-rdynamic"}, "--strip-unneeded", elf.ET_DYN},
		{"nopie-strip-all", []string{"-fno-pie", "-no-pie", "-rdynamic"}, "-s", elf.ET_EXEC},
	}
	for _, tools := range cToolsets(t) {
		for _, v := range variants {
			t.Run(tools.name+"/"+v.name, func(t *testing.T) {
				loadFileC(t, tools, dir, v.name, v.flags, v.strip)
			})
		}
	}
}

// loadFileC builds cProgSrc with tools and flags (then strips it with
// strip's flag, unless ""), and checks what LoadFile reads against nm.
func loadFileC(t *testing.T, tools cTools, dir, name string, flags []string, strip string) {
	t.Helper()
	bin := tools.build(t, dir, "c-"+tools.name+"-"+name, cProgSrc, flags...)
	full := nmWith(t, tools.nm, bin) // before stripping
	if strip != "" {
		need(t, tools.strip)
		run(t, "", tools.strip, strip, bin)
	}
	tab, err := LoadFile(bin)
	require.NoError(t, err)
	require.Len(t, tab.Modules, 1)
	m := tab.Modules[0]
	assert.Equal(t, uint64(0), m.Bias)
	assert.Equal(t, tools.machine, m.Machine)
	assert.False(t, m.IsGo)
	assert.Equal(t, readelfBuildID(t, bin), m.BuildID)
	assert.Len(t, m.BuildID, 40)
	id, err := ReadBuildID(bin) // the notes alone, as the CLI's --build-id reads them
	require.NoError(t, err)
	assert.Equal(t, m.BuildID, id)

	checkAgainstNM(t, tab, m, full, 0, "exported_add", "hp_dup", "main")
	if strip == "" {
		checkAgainstNM(t, tab, m, full, 0, "tiny", "after_tiny")
		tiny, err := tab.Lookup("tiny")
		require.NoError(t, err)
		assert.NotZero(t, tiny.Padding, "tiny is followed by alignment filler")
		end := tiny.Addr + tiny.Size + tiny.Padding
		after, err := tab.Lookup("after_tiny")
		require.NoError(t, err)
		assert.True(t, end == after.Addr || end%8 == 0, "padding of tiny ends at %#x", end)
		pad, err := m.Code(tiny.Addr+tiny.Size, int(tiny.Padding))
		require.NoError(t, err)
		assert.True(t, isFiller(m.Machine, pad), "padding bytes % x", pad)
	} else {
		_, err := tab.Lookup("tiny")
		assert.ErrorIs(t, err, ErrUnknownSymbol)
	}
	s, err := tab.Lookup("exported_add")
	require.NoError(t, err)
	checkSymbolize(t, tab, s)
	// Padding never runs into the next function.
	for _, x := range tab.syms {
		next, ok := tab.SymbolAt(x.Addr + x.Size + x.Padding)
		if ok && next.Addr != x.Addr {
			assert.GreaterOrEqual(t, next.Addr, x.Addr+x.Size+x.Padding, x.Name)
		}
	}
}

func TestLoadFileGo(t *testing.T) {
	for _, tools := range cToolsets(t) {
		t.Run(tools.name, func(t *testing.T) { loadFileGo(t, tools) })
	}
}

// loadFileGo checks what LoadFile reads from Go binaries built for tools'
// machine (internal and external links, PIE, stripped) against go tool nm.
func loadFileGo(t *testing.T, tools cTools) {
	dir := t.TempDir()
	wantFull := nm(t, true, tools.buildGo(t, dir, "go-default"))
	type variant struct {
		name  string
		flags []string
		ref   *variant // unstripped twin for nm
	}
	def := &variant{"default", nil, nil}
	pie := &variant{"pie", []string{"-buildmode=pie"}, nil}
	ext := &variant{"external", []string{"-ldflags=-linkmode=external"}, nil}
	extPIE := &variant{"external-pie", []string{"-buildmode=pie", "-ldflags=-linkmode=external"}, nil}
	variants := []*variant{
		def,
		{"stripped", []string{"-ldflags=-s -w"}, def},
		pie,
		{"pie-stripped", []string{"-buildmode=pie", "-ldflags=-s -w"}, pie},
		ext,
		{"external-stripped", []string{"-ldflags=-linkmode=external -s -w"}, ext},
		extPIE,
		{"external-pie-stripped", []string{"-buildmode=pie", "-ldflags=-linkmode=external -s -w"}, extPIE},
	}
	for _, v := range variants {
		t.Run(v.name, func(t *testing.T) {
			bin := tools.buildGo(t, dir, "go-"+v.name, v.flags...)
			want := wantFull
			if v.ref != nil {
				want = nm(t, true, tools.buildGo(t, dir, "go-"+v.ref.name, v.ref.flags...))
			} else if v != def {
				want = nm(t, true, bin)
			}
			tab, err := LoadFile(bin)
			require.NoError(t, err)
			m := tab.Modules[0]
			assert.True(t, m.IsGo)
			assert.NotEmpty(t, m.GoBuildID)
			assert.True(t, strings.HasPrefix(m.GoVersion, "go1."), m.GoVersion)
			assert.Equal(t, readelfBuildID(t, bin), m.BuildID)
			assert.NotNil(t, m.pclntab)

			checkAgainstNM(t, tab, m, want, 0, "main.work", "main.main", "runtime.mallocgc")
			checkGoAsm(t, tab, want, 0)
			// Every Go function's size, computed from the pclntab without
			// the int3 filler, is the size the linker wrote to the symtab.
			n := 0
			for name, defs := range want {
				if len(defs) != 1 || defs[0].size == 0 || len(want[name+".abi0"]) > 0 || strings.HasPrefix(name, "go:") ||
					(v.ref != nil && (!strings.Contains(name, ".") || strings.HasSuffix(name, ".cold"))) { // C code of cgo: gone with the symtab
					continue // an ABI pair: see checkGoAsm
				}
				if base, ok := strings.CutSuffix(name, ".abi0"); ok {
					if len(want[base]) > 0 {
						continue // an ABI pair: see checkGoAsm
					}
					if v.ref != nil {
						name = base // the pclntab has no ABI suffixes
					}
				}
				s, err := tab.Lookup(name)
				if !assert.NoError(t, err) {
					continue
				}
				assert.Equal(t, defs[0].addr, s.Addr, name)
				assert.Equal(t, defs[0].size, s.Size, name)
				n++
			}
			assert.Greater(t, n, 1000)
			s, err := tab.Lookup("main.work")
			require.NoError(t, err)
			checkSymbolize(t, tab, s)
			if tools.machine == elf.EM_AARCH64 {
				// The arm64 Go linker aligns functions to 16 bytes with
				// zero words it counts in the symbol's size (the
				// trampoline planner treats trailing zeros as padding).
				assert.Zero(t, (s.Addr+s.Size+s.Padding)%16)
				code, err := m.Code(s.Addr, int(s.Size))
				require.NoError(t, err)
				assert.Equal(t, []byte{0, 0, 0, 0}, code[len(code)-4:], "main.work ends in alignment zeros")
			} else {
				assert.NotZero(t, s.Padding, "main.work is a tiny function padded to 32 bytes")
				assert.Zero(t, (s.Addr+s.Size+s.Padding)%32)
				pad, err := m.Code(s.Addr+s.Size, int(s.Padding))
				require.NoError(t, err)
				assert.True(t, isFiller(m.Machine, pad), "% x", pad)
			}
		})
	}
}

func TestLookupErrors(t *testing.T) {
	dir := t.TempDir()
	tab, err := LoadFile(buildC(t, dir, "prog", cProgSrc, "-rdynamic"))
	require.NoError(t, err)
	_, err = tab.Lookup("no_such_function")
	require.ErrorIs(t, err, ErrUnknownSymbol)
	assert.Contains(t, err.Error(), "no_such_function")
	assert.NotContains(t, err.Error(), "hotpatch", "library errors name no CLI command")

	_, err = tab.Lookup("exported")
	require.ErrorIs(t, err, ErrUnknownSymbol)
	assert.Contains(t, err.Error(), "exported_add", "suggests a similar name")
	for _, typo := range []string{"exproted_add", "exported_ad", "prog:exportedadd"} {
		_, err = tab.Lookup(typo)
		require.ErrorIs(t, err, ErrUnknownSymbol)
		assert.Contains(t, err.Error(), "similar: prog:exported_add", "a name a typo away is suggested: %s", typo)
	}

	_, err = tab.Lookup("prog:exported_add")
	require.NoError(t, err)
	_, err = tab.Lookup("other.so:exported_add")
	require.ErrorIs(t, err, ErrUnknownSymbol)

	// LookupIn names the module by identity (copies of a patch library
	// loaded from memfds share one path).
	s, err := tab.LookupIn(tab.Modules[0], "exported_add")
	require.NoError(t, err)
	assert.Same(t, tab.Modules[0], s.Module)
	_, err = tab.LookupIn(&Module{Path: tab.Modules[0].Path}, "exported_add")
	require.ErrorIs(t, err, ErrUnknownSymbol)
	_, err = tab.LookupIn(tab.Modules[0], "no_such_function")
	require.ErrorIs(t, err, ErrUnknownSymbol)

	assert.NotEmpty(t, tab.Search("tiny"))
	for _, s := range tab.Search("_") {
		assert.Contains(t, s.Name, "_")
	}
	assert.Equal(t, "0x4000000000000000", tab.Symbolize(1<<62))
}

func TestLiveC(t *testing.T) {
	dir := t.TempDir()
	lib := buildC(t, dir, "libhpa.so", cLibSrc, "-shared", "-fPIC")
	require.NoError(t, os.Rename(lib, filepath.Join(dir, "libhpa.so")))
	lib = filepath.Join(dir, "libhpa.so")
	for _, pie := range []bool{true, false} {
		t.Run(fmt.Sprintf("pie=%v", pie), func(t *testing.T) {
			flags := []string{"-DWITH_LIB", "-rdynamic", "-L" + dir, "-Wl,-rpath," + dir, "-Wl,--no-as-needed", "-lhpa"}
			if pie {
				flags = append(flags, "-fPIE", "-pie")
			} else {
				flags = append(flags, "-fno-pie", "-no-pie")
			}
			bin := buildC(t, dir, fmt.Sprintf("live-%v", pie), cProgSrc, flags...)
			p := start(t, bin)
			tab, err := Load(p.pid, p.mem)
			require.NoError(t, err)
			assert.Empty(t, tab.Warnings)

			// The executable, first, at its independently computed bias.
			exe := tab.Modules[0]
			assert.Equal(t, bin, exe.Path)
			base, _ := mapBase(t, p.pid, "/"+filepath.Base(bin))
			wantBias := base - firstLoadVaddr(t, bin)
			if !pie {
				assert.Zero(t, wantBias)
			}
			assert.Equal(t, wantBias, exe.Bias)
			assert.Equal(t, readelfBuildID(t, bin), exe.BuildID)
			checkAgainstNM(t, tab, exe, nm(t, false, bin), wantBias, "exported_add", "main", "tiny")

			// libc, by plain and by qualified name.
			libcBase, libcPath := mapBase(t, p.pid, "/libc.so.6")
			libcNM := nm(t, false, "-D", libcPath)
			for _, name := range []string{"nanosleep", "libc.so.6:nanosleep", "printf"} {
				s, err := tab.Lookup(name)
				require.NoError(t, err, name)
				short := name[strings.IndexByte(name, ':')+1:]
				require.NotEmpty(t, libcNM[short], short)
				assert.Equal(t, libcNM[short][0].addr+libcBase-firstLoadVaddr(t, libcPath), s.Addr, name)
				assert.Equal(t, "libc.so.6", s.Module.Name())
				checkSymbolize(t, tab, s)
				code, err := s.Module.Code(s.Addr, int(s.Size))
				require.NoError(t, err)
				assert.Equal(t, p.read(t, s.Addr, int(s.Size)), code, "file bytes equal live bytes of %s", name)
			}
			assert.Equal(t, readelfBuildID(t, libcPath), tab.mustModule(t, "libc.so.6").BuildID)

			// hp_dup is in the executable and in libhpa.so.
			_, err = tab.Lookup("hp_dup")
			var amb *AmbiguousError
			require.ErrorAs(t, err, &amb)
			require.ErrorIs(t, err, ErrAmbiguous)
			assert.ElementsMatch(t, []string{filepath.Base(bin), "libhpa.so"}, amb.Modules)
			sa, err := tab.Lookup("libhpa.so:hp_dup")
			require.NoError(t, err)
			se, err := tab.Lookup(filepath.Base(bin) + ":hp_dup")
			require.NoError(t, err)
			assert.NotEqual(t, sa.Addr, se.Addr)
			libBase, _ := mapBase(t, p.pid, "/libhpa.so")
			assert.Equal(t, nm(t, false, lib)["hp_dup"][0].addr+libBase, sa.Addr)
			assert.Equal(t, nm(t, false, lib)["hp_dup"][0].addr+libBase, tab.Search("hp_dup")[len(tab.Search("hp_dup"))-1].Addr)

			// The vDSO, read from memory.
			vs, err := tab.Lookup("__vdso_clock_gettime")
			require.NoError(t, err)
			assert.Equal(t, "[vdso]", vs.Module.Path)
			vm := tab.mustModule(t, "[vdso]")
			assert.True(t, vs.Addr >= vm.TextStart && vs.Addr < vm.TextEnd)
			code, err := vm.Code(vs.Addr, int(vs.Size))
			require.NoError(t, err)
			assert.Equal(t, p.read(t, vs.Addr, int(vs.Size)), code)
			checkSymbolize(t, tab, vs)
			cg, err := tab.Lookup("vdso:clock_gettime")
			require.NoError(t, err)
			assert.Equal(t, vs.Addr, cg.Addr)

			// Live code of the executable equals the file's bytes.
			s, err := tab.Lookup("exported_add")
			require.NoError(t, err)
			code, err = exe.Code(s.Addr, int(s.Size))
			require.NoError(t, err)
			assert.Equal(t, p.read(t, s.Addr, int(s.Size)), code)
			checkSymbolize(t, tab, s)
			_, err = exe.Code(exe.TextEnd+1<<30, 4)
			assert.Error(t, err)
			// An address in a module but outside any function.
			assert.Equal(t, fmt.Sprintf("%s+%#x", filepath.Base(bin), exe.TextEnd-1-exe.Bias), tab.Symbolize(exe.TextEnd-1))

			// Unwind tables.
			for _, m := range tab.Modules {
				ut := m.UnwindTables()
				assert.Nil(t, ut.Pclntab)
				if m.Path != "[vdso]" {
					assert.NotEmpty(t, ut.EHFrame, m.Path)
					assert.NotZero(t, ut.EHFrameAddr, m.Path)
				}
			}
		})
	}
}

func (t *Table) mustModule(tb testing.TB, name string) *Module {
	tb.Helper()
	for _, m := range t.Modules {
		if m.Name() == name {
			return m
		}
	}
	tb.Fatalf("no module %s", name)
	return nil
}

func TestLiveGo(t *testing.T) {
	dir := t.TempDir()
	variants := []struct {
		name  string
		flags []string
	}{
		{"default", nil},
		{"stripped", []string{"-ldflags=-s -w"}},
		{"pie", []string{"-buildmode=pie"}},
	}
	for _, v := range variants {
		t.Run(v.name, func(t *testing.T) {
			bin := buildGo(t, dir, "live-"+v.name, v.flags...)
			ref := bin
			if v.name == "stripped" {
				ref = buildGo(t, dir, "live-ref")
			}
			want := nm(t, true, ref)
			p := start(t, bin)
			tab, err := Load(p.pid, p.mem)
			require.NoError(t, err)
			exe := tab.Modules[0]
			assert.True(t, exe.IsGo)
			base, _ := mapBase(t, p.pid, "/"+filepath.Base(bin))
			bias := base - firstLoadVaddr(t, bin)
			assert.Equal(t, bias, exe.Bias)
			checkAgainstNM(t, tab, exe, want, bias, "main.work", "runtime.mallocgc")
			checkGoAsm(t, tab, want, bias)
			s, err := tab.Lookup("main.work")
			require.NoError(t, err)
			code, err := exe.Code(s.Addr, int(s.Size+s.Padding))
			require.NoError(t, err)
			assert.Equal(t, p.read(t, s.Addr, len(code)), code)
			checkSymbolize(t, tab, s)

			ut := exe.UnwindTables()
			assert.Equal(t, exe.pclntab, ut.Pclntab)
			assert.NotEmpty(t, ut.Pclntab)
		})
	}
}

// TestLiveReplacedBinary checks that a binary replaced on disk after start
// is still read from the mapped inode (map_files).
func TestLiveReplacedBinary(t *testing.T) {
	dir := t.TempDir()
	bin := buildC(t, dir, "replaced", cProgSrc, "-rdynamic")
	want := nm(t, false, bin)
	p := start(t, bin)
	base, _ := mapBase(t, p.pid, "/replaced")
	// Replace the file by another program.
	other := buildC(t, dir, "other", cLibSrc+"int main(void){return hp_dup(1);}\n", "-rdynamic")
	require.NoError(t, os.Rename(other, bin))

	tab, err := Load(p.pid, p.mem)
	require.NoError(t, err)
	exe := tab.Modules[0]
	assert.Equal(t, bin, exe.Path)
	checkAgainstNM(t, tab, exe, want, base, "exported_add", "tiny")
}

// TestLiveMemfd checks that a library mapped from a memfd (maps show
// "/memfd:NAME (deleted)", as for a patch library) is read, also by a
// tracer that may not open /proc/PID/map_files, through the descriptor
// the process holds.
func TestLiveMemfd(t *testing.T) {
	lib := buildC(t, t.TempDir(), "libhpa.so", cLibSrc, "-shared", "-fPIC")
	want := nm(t, false, lib)
	data, err := os.ReadFile(lib)
	require.NoError(t, err)
	fd, err := unix.MemfdCreate("libhpa.so", unix.MFD_CLOEXEC)
	require.NoError(t, err)
	defer unix.Close(fd)
	_, err = unix.Write(fd, data)
	require.NoError(t, err)
	// Map the executable segment, as the loader would.
	ef, err := elf.NewFile(bytes.NewReader(data))
	require.NoError(t, err)
	var text *elf.Prog
	for _, p := range ef.Progs {
		if p.Type == elf.PT_LOAD && p.Flags&elf.PF_X != 0 {
			text = p
		}
	}
	require.NotNil(t, text)
	page := uint64(os.Getpagesize())
	off := text.Off &^ (page - 1)
	mem, err := unix.Mmap(fd, int64(off), int(text.Off+text.Filesz-off), unix.PROT_READ|unix.PROT_EXEC, unix.MAP_PRIVATE)
	require.NoError(t, err)
	defer unix.Munmap(mem)
	ms, err := ReadMappings(os.Getpid())
	require.NoError(t, err)
	var start uint64
	for _, m := range ms {
		if m.Path == "/memfd:libhpa.so" && m.Deleted && m.exec() {
			start = m.Start
		}
	}
	require.NotZero(t, start, "the memfd is mapped")
	bias := start - (text.Vaddr - (text.Off - off))

	for _, noMapFiles := range []bool{false, true} {
		t.Run(fmt.Sprintf("noMapFiles=%v", noMapFiles), func(t *testing.T) {
			testNoMapFiles = noMapFiles
			defer func() { testNoMapFiles = false }()
			tab, err := Load(os.Getpid(), nil)
			require.NoError(t, err)
			mod, ok := tab.ModuleAt(start)
			require.True(t, ok, "the memfd's module is loaded: %v", tab.Warnings)
			require.Equal(t, "/memfd:libhpa.so", mod.Path)
			require.Equal(t, bias, mod.Bias)
			s, err := tab.LookupIn(mod, "hp_dup")
			require.NoError(t, err)
			require.Equal(t, want["hp_dup"][0].addr+bias, s.Addr)
		})
	}
}

func TestAmbiguousError(t *testing.T) {
	err := error(&AmbiguousError{Name: "f", Modules: []string{"a", "b"}})
	assert.True(t, errors.Is(err, ErrAmbiguous))
	assert.Contains(t, err.Error(), "MODULE:f")
}

func BenchmarkLoadLiveGo(b *testing.B) {
	dir := b.TempDir()
	bin := filepath.Join(dir, "bench")
	src := filepath.Join(dir, "src")
	require.NoError(b, os.MkdirAll(src, 0o755))
	require.NoError(b, os.WriteFile(filepath.Join(src, "main.go"), []byte(goProgSrc), 0o644))
	require.NoError(b, os.WriteFile(filepath.Join(src, "go.mod"), []byte("module fixture\n\ngo 1.22\n"), 0o644))
	cmd := exec.Command("go", "build", "-o", bin, ".")
	cmd.Dir = src
	out, err := cmd.CombinedOutput()
	require.NoError(b, err, "%s", out)
	p := exec.Command(bin)
	require.NoError(b, p.Start())
	defer func() { _ = p.Process.Kill(); _ = p.Wait() }()
	time.Sleep(200 * time.Millisecond)
	mem, err := os.Open(fmt.Sprintf("/proc/%d/mem", p.Process.Pid))
	require.NoError(b, err)
	defer mem.Close()
	b.ResetTimer()
	var tab *Table
	for i := 0; i < b.N; i++ {
		tab, err = Load(p.Process.Pid, mem)
		require.NoError(b, err)
	}
	b.StopTimer()
	b.ReportMetric(float64(len(tab.syms)), "symbols")
}

func BenchmarkLookup(b *testing.B) {
	exe, err := os.Executable()
	require.NoError(b, err)
	tab, err := LoadFile(exe)
	require.NoError(b, err)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := tab.Lookup("runtime.mallocgc"); err != nil {
			b.Fatal(err)
		}
	}
}

// hostMachine is the ELF machine of binaries built for the host.
func hostMachine(t *testing.T) elf.Machine {
	switch runtime.GOARCH {
	case "amd64":
		return elf.EM_X86_64
	case "arm64":
		return elf.EM_AARCH64
	}
	t.Skipf("no ELF machine known for %s", runtime.GOARCH)
	return 0
}

// TestLookupOnlyInlined: a Go function the compiler inlined into every
// caller (and the linker then dropped) is not "unknown": the error names
// the callers, and matches both ErrOnlyInlined and ErrUnknownSymbol.
func TestLookupOnlyInlined(t *testing.T) {
	tab, err := LoadFile(fixture.BuildGo(t, "gotasks", ""))
	require.NoError(t, err)
	_, err = tab.Lookup("runtime.isNaN")
	require.ErrorIs(t, err, ErrOnlyInlined)
	require.ErrorIs(t, err, ErrUnknownSymbol)
	var oe *OnlyInlinedError
	require.ErrorAs(t, err, &oe)
	require.NotEmpty(t, oe.Sites)
	assert.Contains(t, err.Error(), "inlined into runtime.")
	assert.NotContains(t, err.Error(), "unknown symbol")

	_, err = tab.Lookup("runtime.noSuchFunctionAnywhere")
	require.ErrorIs(t, err, ErrUnknownSymbol)
	require.NotErrorIs(t, err, ErrOnlyInlined)
}
