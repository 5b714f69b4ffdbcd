//go:build linux

package patch_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"regexp"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/hotpatch-dev/hotpatch/internal/fixture"
	"github.com/hotpatch-dev/hotpatch/patch"
)

// goabi prints "tick D M": D = main.discount(100), M = Markup(100) called
// through reflect.
var (
	abiTick      = regexp.MustCompile(`^tick 90 101$`)
	abiTickOther = regexp.MustCompile(`^tick (\d+) (\d+)$`)
)

func startABI(t testing.TB, flags ...string) (*fixture.Proc, *patch.Target) {
	t.Helper()
	p := fixture.Start(t, fixture.BuildGo(t, "goabi", "", flags...))
	p.Expect(t, abiTick, 10*time.Second)
	return p, attach(t, p.Pid)
}

// requireRunsOld asserts the target still prints what the unpatched
// functions compute.
func requireRunsOld(t *testing.T, p *fixture.Proc) {
	t.Helper()
	p.ExpectAfter(t, p.Mark(), abiTick, 10*time.Second)
	exited, err := p.Exited()
	require.False(t, exited, "target died: %v", err)
}

// A Go function is refused a replacement that is not Go code of the same
// runtime: C code from a patch library (refused before the library is
// loaded) or assembly (ABI0). The target is left byte for byte as it was.
func TestABIGoFunctionNeedsGoCode(t *testing.T) {
	p, tg := startABI(t)
	lib := fixLib(t)
	for _, c := range []struct {
		name  string
		rep   patch.Replacement
		o     patch.ApplyOptions
		texts []string
	}{
		{"C library", patch.Replacement{Old: "main.discount", New: "price_fixed"}, patch.ApplyOptions{Lib: lib, Unpinned: true},
			[]string{"price_fixed is C code from " + lib, "main.discount is a Go function", "Go function already compiled into the target"}},
		{"C library, qualified", patch.Replacement{Old: "main.discount", New: "libfixprice.so:price_fixed"}, patch.ApplyOptions{Lib: lib, Unpinned: true},
			[]string{"C code from " + lib}},
	} {
		t.Run(c.name, func(t *testing.T) {
			before := snapshot(t, tg, p.Pid, "main.discount")
			_, err := tg.Apply(context.Background(), []patch.Replacement{c.rep}, c.o)
			require.ErrorIs(t, err, patch.ErrABI)
			var ae *patch.ABIError
			require.ErrorAs(t, err, &ae)
			require.Equal(t, "main.discount", ae.Func)
			for _, s := range c.texts {
				require.Contains(t, err.Error(), s)
			}
			require.Equal(t, before, snapshot(t, tg, p.Pid, "main.discount"), "target changed")
			require.NotContains(t, mapsOf(t, p.Pid), "libfixprice", "the library was loaded")
			requireRunsOld(t, p)
		})
	}
}

// An assembly function (ABI0: arguments on the stack) cannot replace a Go
// function (register ABI).
func TestABIAssemblyForGo(t *testing.T) {
	p := startTasks(t, "")
	tg := attach(t, p.Pid)
	before := snapshot(t, tg, p.Pid, "main.compute")
	_, err := tg.Apply(context.Background(), []patch.Replacement{{Old: "main.compute", New: "main.computeABI0"}}, patch.ApplyOptions{})
	require.ErrorIs(t, err, patch.ErrABI)
	require.Contains(t, err.Error(), "assembly")
	require.Equal(t, before, snapshot(t, tg, p.Pid, "main.compute"))
	p.ExpectAfter(t, p.Mark(), tickOld, 10*time.Second)
}

// A Go plugin as a patch library is refused before it is loaded, into a C
// target as into a Go one: its own Go runtime would crash the target.
func TestABIGoPluginLibrary(t *testing.T) {
	if os.Getenv(fixture.EnvPrebuilt) != "" {
		t.Skip("a Go plugin needs cgo to build; the prebuilt fixtures (arm64 VM lane) have none")
	}
	if _, err := exec.LookPath("gcc"); err != nil {
		t.Skipf("building a Go plugin needs cgo and gcc: %v", err)
	}
	plugin := fixture.BuildGo(t, "goplugin", "", "-buildmode=plugin")
	cp, _ := serve(t, 2)
	gp, _ := startABI(t)
	for _, c := range []struct {
		name string
		p    *fixture.Proc
		rep  patch.Replacement
		fn   string
	}{
		{"C target", cp, patch.Replacement{Old: "price", New: "price_fixed"}, "price"},
		{"Go target", gp, patch.Replacement{Old: "main.discount", New: "price_fixed"}, "main.discount"},
	} {
		t.Run(c.name, func(t *testing.T) {
			tg := attach(t, c.p.Pid)
			before := snapshot(t, tg, c.p.Pid, c.fn)
			_, err := tg.Apply(context.Background(), []patch.Replacement{c.rep}, patch.ApplyOptions{Lib: plugin, Unpinned: true})
			require.ErrorIs(t, err, patch.ErrABI)
			require.Contains(t, err.Error(), "holds Go code (a .go.buildinfo section)")
			require.Contains(t, err.Error(), plugin)
			require.Equal(t, before, snapshot(t, tg, c.p.Pid, c.fn), "target changed")
			m := c.p.Mark()
			c.p.ExpectAfter(t, m, regexp.MustCompile(`^(served \d+ price=71|tick 90 101)$`), 10*time.Second)
		})
	}
}

// Go signatures that differ are refused, naming both: from DWARF (same
// sizes, other types) and, in a stripped binary, from the sizes of the Go
// function table. SkipSignatureCheck applies a replacement anyway.
func TestSignatureGo(t *testing.T) {
	for _, c := range []struct {
		name   string
		flags  []string
		rep    patch.Replacement
		source string
		texts  []string
	}{
		{"types", nil, patch.Replacement{Old: "main.discount", New: "main.discountU"}, "DWARF",
			[]string{"main.discount(int) int", "main.discountU(uint) uint"}},
		{"sizes", nil, patch.Replacement{Old: "main.discount", New: "main.handler"}, "DWARF",
			[]string{"main.discount(int) int", "main.handler(io.Writer, *main.Request)"}},
		{"stripped", []string{"-ldflags=-s -w"}, patch.Replacement{Old: "main.discount", New: "main.handler"}, "the Go function table",
			[]string{"main.discount (8 bytes of arguments)", "main.handler (24 bytes of arguments)"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			p, tg := startABI(t, c.flags...)
			before := snapshot(t, tg, p.Pid, "main.discount")
			_, err := tg.Apply(context.Background(), []patch.Replacement{c.rep}, patch.ApplyOptions{})
			require.ErrorIs(t, err, patch.ErrSignature)
			var se *patch.SignatureError
			require.ErrorAs(t, err, &se)
			require.Equal(t, c.source, se.Source)
			for _, s := range c.texts {
				require.Contains(t, err.Error(), s)
			}
			require.Equal(t, before, snapshot(t, tg, p.Pid, "main.discount"))
			requireRunsOld(t, p)
		})
	}
	t.Run("skip", func(t *testing.T) {
		p, tg := startABI(t)
		res, err := tg.Apply(context.Background(), []patch.Replacement{{Old: "main.discount", New: "main.discountU"}}, patch.ApplyOptions{SkipSignatureCheck: true})
		require.NoError(t, err)
		p.ExpectAfter(t, p.Mark(), regexp.MustCompile(`^tick 70 101$`), 10*time.Second)
		_, err = tg.Revert(context.Background(), res.ID, patch.ApplyOptions{})
		require.NoError(t, err)
		requireRunsOld(t, p)
	})
}

// C signatures from DWARF: compute(long) replaced by slow_read_fixed(int)
// is refused, naming both; SkipSignatureCheck applies it.
func TestSignatureC(t *testing.T) {
	p := fixture.Start(t, fixture.BuildC(t, "cservice", "-O2"))
	p.Expect(t, resultOld, 10*time.Second)
	tg := attach(t, p.Pid)
	rep := []patch.Replacement{{Old: "compute", New: "slow_read_fixed"}}
	before := snapshot(t, tg, p.Pid, "compute")
	_, err := tg.Apply(context.Background(), rep, patch.ApplyOptions{})
	require.ErrorIs(t, err, patch.ErrSignature)
	var se *patch.SignatureError
	require.ErrorAs(t, err, &se)
	require.Equal(t, "long int compute(long int)", se.Old)
	require.Equal(t, "long int slow_read_fixed(int)", se.NewSig)
	require.Equal(t, before, snapshot(t, tg, p.Pid, "compute"))
	p.ExpectAfter(t, p.Mark(), resultOld, 10*time.Second)

	res, err := tg.Apply(context.Background(), rep, patch.ApplyOptions{SkipSignatureCheck: true})
	require.NoError(t, err)
	p.ExpectAfter(t, p.Mark(), regexp.MustCompile(`^result -1\d\d\d$`), 10*time.Second)
	_, err = tg.Revert(context.Background(), res.ID, patch.ApplyOptions{})
	require.NoError(t, err)
	p.ExpectAfter(t, p.Mark(), resultOld, 10*time.Second)
}

// A small Go function with no call site and no reference in the binary
// (Markup, reached through reflect) may have been inlined without a
// trace: refused, unless AllowInlined. One with a call site is not.
func TestInlinedWithoutTrace(t *testing.T) {
	for _, flags := range [][]string{nil, {"-ldflags=-s -w"}} {
		t.Run(fmtFlags(flags), func(t *testing.T) {
			p, tg := startABI(t, flags...)
			rep := []patch.Replacement{{Old: "main.(*Pricer).Markup", New: "main.(*Pricer).MarkupFixed"}}
			before := snapshot(t, tg, p.Pid, "main.(*Pricer).Markup")
			_, err := tg.Apply(context.Background(), rep, patch.ApplyOptions{})
			require.ErrorIs(t, err, patch.ErrInlined)
			var ie *patch.InlinedError
			require.True(t, errors.As(err, &ie))
			require.Empty(t, ie.Sites)
			require.Contains(t, err.Error(), "main.(*Pricer).Markup")
			require.Contains(t, err.Error(), "no call site")
			require.Contains(t, err.Error(), "inlined without a trace")
			require.Equal(t, before, snapshot(t, tg, p.Pid, "main.(*Pricer).Markup"))

			res, err := tg.Apply(context.Background(), rep, patch.ApplyOptions{AllowInlined: true})
			require.NoError(t, err)
			p.ExpectAfter(t, p.Mark(), regexp.MustCompile(`^tick 90 102$`), 10*time.Second)
			_, err = tg.Revert(context.Background(), res.ID, patch.ApplyOptions{})
			require.NoError(t, err)
			requireRunsOld(t, p)

			// main.discount has a call site: it is patched.
			res, err = tg.Apply(context.Background(), []patch.Replacement{{Old: "main.discount", New: "main.discountFixed"}}, patch.ApplyOptions{})
			require.NoError(t, err)
			p.ExpectAfter(t, p.Mark(), regexp.MustCompile(`^tick 80 101$`), 10*time.Second)
			_, err = tg.Revert(context.Background(), res.ID, patch.ApplyOptions{})
			require.NoError(t, err)
		})
	}
}

func fmtFlags(flags []string) string {
	if len(flags) == 0 {
		return "dwarf"
	}
	return "stripped"
}
