package elfsym

import (
	"debug/dwarf"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/hotpatch-dev/hotpatch/internal/fixture"
)

// Signatures as DWARF gives them, in each language's notation; none from a
// stripped binary or an assembly function.
func TestSignature(t *testing.T) {
	goabi := fixture.BuildGo(t, "goabi", "")
	for _, c := range []struct {
		bin, fn, want string
	}{
		{goabi, "main.discount", "main.discount(int) int"},
		{goabi, "main.handler", "main.handler(io.Writer, *main.Request)"},
		{goabi, "main.(*Pricer).Markup", "main.(*Pricer).Markup(*main.Pricer, int) int"},
		{goabi, "fmt.Fprintln", "fmt.Fprintln(io.Writer, []interface {}) (int, error)"},
		{fixture.BuildC(t, "cservice", "-O2"), "compute", "long int compute(long int)"},
		{fixture.BuildC(t, "cservice", "-O2"), "main", "int main(int, char **)"},
		{fixture.BuildC(t, "cservice", "-O2"), "tiny", ""},
		{fixture.BuildGo(t, "goabi", "", "-ldflags=-s -w"), "main.discount", ""},
	} {
		tab, err := LoadFile(c.bin)
		require.NoError(t, err)
		sym, err := tab.Lookup(c.fn)
		require.NoError(t, err)
		sig, err := tab.Signature(sym)
		require.NoError(t, err)
		if c.want == "" {
			require.Nil(t, sig, c.fn)
			continue
		}
		require.NotNil(t, sig, c.fn)
		require.Equal(t, c.want, sig.String())
	}
}

// GoFunc: the Go function table's view of a function (argument size, ABI);
// C code is not in it.
func TestGoFunc(t *testing.T) {
	tab, err := LoadFile(fixture.BuildGo(t, "gotasks", ""))
	require.NoError(t, err)
	for _, c := range []struct {
		fn   string
		want GoFunc
	}{
		{"main.compute", GoFunc{Name: "main.compute", Args: 8}},
		{"main.computeABI0", GoFunc{Name: "main.computeABI0", Args: 16, Asm: true}},
	} {
		sym, err := tab.Lookup(c.fn)
		require.NoError(t, err)
		got, ok, err := tab.GoFunc(sym)
		require.NoError(t, err)
		require.True(t, ok)
		require.Equal(t, c.want, got)
	}
	ctab, err := LoadFile(fixture.BuildC(t, "cservice", "-O2"))
	require.NoError(t, err)
	sym, err := ctab.Lookup("compute")
	require.NoError(t, err)
	_, ok, err := ctab.GoFunc(sym)
	require.NoError(t, err)
	require.False(t, ok)
}

// References: a direct call (x86-64 and arm64 builds alike), a func value
// in data, and nothing for a method reached through reflect only.
func TestReferences(t *testing.T) {
	for _, c := range []struct {
		bin  string
		want map[string]string // function → kind of its first reference ("": none)
	}{
		{fixture.BuildGoArch(t, "gotasks", "", "amd64"), map[string]string{"main.compute": "call", "main.tiny": "call", "main.computeFixed": "data"}},
		{fixture.BuildGoArch(t, "gotasks", "", "arm64"), map[string]string{"main.compute": "call", "main.tiny": "call", "main.computeFixed": "data"}},
		{fixture.BuildGo(t, "goabi", ""), map[string]string{"main.discount": "call", "main.discountU": "data", "main.(*Pricer).Markup": ""}},
		{fixture.BuildGo(t, "goabi", "", "-ldflags=-s -w"), map[string]string{"main.discount": "call", "main.(*Pricer).Markup": ""}},
	} {
		tab, err := LoadFile(c.bin)
		require.NoError(t, err)
		var entries []uint64
		for fn := range c.want {
			sym, err := tab.Lookup(fn)
			require.NoError(t, err)
			entries = append(entries, sym.Addr)
		}
		refs, err := tab.References(tab.Modules[0], entries)
		require.NoError(t, err)
		for fn, kind := range c.want {
			sym, _ := tab.Lookup(fn)
			r, ok := refs[sym.Addr]
			if kind == "" {
				require.False(t, ok, "%s: %s has a reference: %v", c.bin, fn, r)
				continue
			}
			require.True(t, ok, "%s: %s has no reference", c.bin, fn)
			require.Equal(t, kind, r.Kind, "%s: %s: %v", c.bin, fn, r)
			if kind == "call" {
				require.Equal(t, "main.main", r.From)
			}
		}
	}
}

// ReadObject tells Go code from C code before anything is loaded.
func TestReadObject(t *testing.T) {
	o, err := ReadObject(fixture.BuildGo(t, "goabi", "", "-ldflags=-s -w"))
	require.NoError(t, err)
	require.NotEmpty(t, o.Go)
	o, err = ReadObject(fixture.BuildSO(t, "fixprice", "-O2", "-I"+fixture.PatchInclude()))
	require.NoError(t, err)
	require.Empty(t, o.Go)
	require.True(t, o.Funcs["price_fixed"])
}

// C types compare as the calling convention sees them: through typedefs
// and qualifiers, base types by kind and size.
func TestCKey(t *testing.T) {
	base := func(name string, size int64) dwarf.BasicType {
		return dwarf.BasicType{CommonType: dwarf.CommonType{Name: name, ByteSize: size}}
	}
	long := &dwarf.IntType{BasicType: base("long int", 8)}
	clangLong := &dwarf.IntType{BasicType: base("long", 8)}
	ulong := &dwarf.UintType{BasicType: base("long unsigned int", 8)}
	integer := &dwarf.IntType{BasicType: base("int", 4)}
	char := &dwarf.CharType{BasicType: base("char", 1)}
	sizeT := &dwarf.TypedefType{CommonType: dwarf.CommonType{Name: "size_t"}, Type: ulong}
	constChar := &dwarf.QualType{Qual: "const", Type: char}
	structA := &dwarf.StructType{Kind: "struct", StructName: "a"}
	structB := &dwarf.StructType{Kind: "struct", StructName: "b"}
	for _, c := range []struct {
		a, b dwarf.Type
		same bool
	}{
		{long, clangLong, true},
		{sizeT, ulong, true},
		{&dwarf.PtrType{Type: constChar}, &dwarf.PtrType{Type: char}, true},
		{long, integer, false},
		{long, ulong, false},
		{&dwarf.PtrType{Type: structA}, &dwarf.PtrType{Type: structB}, false},
	} {
		require.Equal(t, c.same, cKey(c.a) == cKey(c.b), "%s vs %s", cType(c.a), cType(c.b))
	}
	require.Equal(t, "const char *", cType(&dwarf.PtrType{Type: constChar}))
	require.Equal(t, "size_t", cType(sizeT))
}

// References scans a module's text once per function: the module's bytes
// are its file's, so a second question about the same entry (every
// self-patch of a function checks it) is answered without a scan, found or
// not. A module loaded anew (a library mapped later) is scanned anew.
func TestReferencesOnce(t *testing.T) {
	bin := fixture.BuildGo(t, "goabi", "")
	want := map[string]string{"main.discount": "call", "main.discountU": "data", "main.(*Pricer).Markup": ""}
	check := func(tab *Table, scans int64) {
		t.Helper()
		var entries []uint64
		for fn := range want {
			sym, err := tab.Lookup(fn)
			require.NoError(t, err)
			entries = append(entries, sym.Addr)
		}
		before := refScans.Load()
		refs, err := tab.References(tab.Modules[0], entries)
		require.NoError(t, err)
		require.Equal(t, scans, refScans.Load()-before, "segment scans")
		for fn, kind := range want {
			sym, _ := tab.Lookup(fn)
			r, ok := refs[sym.Addr]
			require.Equal(t, kind != "", ok, "%s: %v", fn, r)
			require.Equal(t, kind, r.Kind, fn)
		}
	}
	tab, err := LoadFile(bin)
	require.NoError(t, err)
	check(tab, 1)
	check(tab, 0)
	check(tab, 0)
	again, err := LoadFile(bin)
	require.NoError(t, err)
	check(again, 1)
}

// A module's DWARF is read and decompressed once, for the signatures, the
// inline sites and the Go runtime's layout alike (each read of a test
// binary's compressed DWARF costs tens of milliseconds).
func TestDWARFOnce(t *testing.T) {
	tab, err := LoadFile(fixture.BuildGo(t, "goabi", ""))
	require.NoError(t, err)
	m := tab.Modules[0]
	d, err := m.DWARF()
	require.NoError(t, err)
	again, err := m.DWARF()
	require.NoError(t, err)
	require.Same(t, d, again)
	sym, err := tab.Lookup("main.discount")
	require.NoError(t, err)
	_, err = tab.Signature(sym)
	require.NoError(t, err)
	require.NotNil(t, m.sigs)
	require.Same(t, d, m.sigs.d, "the signatures read the module's DWARF")

	stripped, err := LoadFile(fixture.BuildGo(t, "goabi", "", "-ldflags=-s -w"))
	require.NoError(t, err)
	_, err = stripped.Modules[0].DWARF()
	require.Error(t, err, "no DWARF")
}
