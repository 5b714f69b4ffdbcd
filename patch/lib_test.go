//go:build linux

package patch_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/hotpatch-dev/hotpatch/elfsym"
	"github.com/hotpatch-dev/hotpatch/internal/consistency"
	"github.com/hotpatch-dev/hotpatch/internal/fixture"
	"github.com/hotpatch-dev/hotpatch/patch"
)

// serve starts the cserve fixture (exporting its functions) with n workers;
// extra flags are added to the build ("-s": stripped to .dynsym, as a
// distribution ships it).
func serve(t testing.TB, n int, flags ...string) (*fixture.Proc, string) {
	bin := fixture.BuildC(t, "cserve", append([]string{"-O2", "-fomit-frame-pointer", "-rdynamic"}, flags...)...)
	p := fixture.Start(t, bin, strconv.Itoa(n))
	p.Expect(t, regexp.MustCompile(`^served \d+ price=71$`), 10*time.Second)
	return p, bin
}

func buildID(t testing.TB, path string) string {
	tab, err := elfsym.LoadFile(path)
	require.NoError(t, err)
	id := tab.Modules[0].BuildID
	require.NotEmpty(t, id, "%s has a GNU build ID", path)
	return id
}

// fixLib builds the fixprice patch library with extra flags (the builds
// the arm64 VM lane runs are in fixture.Catalog).
func fixLib(t testing.TB, flags ...string) string {
	return fixture.BuildSO(t, "fixprice", append([]string{"-O2", "-I" + fixture.PatchInclude()}, flags...)...)
}

func pin(id string) string { return fixture.Pin(id) }

var served = regexp.MustCompile(`^served (\d+) price=(\d+)$`)

// checkServed asserts the service served every request in order, each
// with the old or the new price.
func checkServed(t *testing.T, p *fixture.Proc) {
	t.Helper()
	checkServedPrices(t, p, "71", "145")
}

// checkServedPrices asserts the service served every request in order,
// each with one of prices.
func checkServedPrices(t *testing.T, p *fixture.Proc, prices ...string) {
	t.Helper()
	last := int64(-1)
	for _, l := range p.Lines() {
		m := served.FindStringSubmatch(l)
		if m == nil {
			continue
		}
		seq, _ := strconv.ParseInt(m[1], 10, 64)
		if last >= 0 {
			require.Equal(t, last+1, seq, "a request was lost")
		}
		last = seq
		require.Contains(t, prices, m[2], l)
	}
}

// A replacement from a pinned shared object, which calls back into the
// service's exported base_price, changes what the service serves under
// load, and reverts; the service never stops serving. Also with the
// service stripped to its .dynsym.
func TestApplyLib(t *testing.T) {
	for _, flags := range [][]string{nil, {"-s"}} {
		t.Run(fmt.Sprint(flags), func(t *testing.T) { testApplyLib(t, flags...) })
	}
}

func testApplyLib(t *testing.T, flags ...string) {
	p, bin := serve(t, 4, flags...)
	if len(flags) > 0 {
		tab, err := elfsym.LoadFile(bin)
		require.NoError(t, err)
		for _, m := range tab.Modules {
			require.Empty(t, tab.Search("worker"), "%s is stripped: the static worker() is gone", m.Path)
		}
	}
	lib := fixLib(t, pin(buildID(t, bin)))
	tg := attach(t, p.Pid)
	for round := 0; round < 3; round++ {
		m := p.Mark()
		res, err := tg.Apply(context.Background(), []patch.Replacement{{Old: "price", New: "price_fixed"}}, patch.ApplyOptions{Lib: lib})
		require.NoError(t, err)
		require.Len(t, res.Functions, 1)
		mod, ok := tg.Symbols().ModuleAt(res.Functions[0].NewAddr)
		require.True(t, ok)
		require.Equal(t, "/memfd:hotpatch:"+res.ID+":"+filepath.Base(lib), mod.Path, "NEW resolved in the library, loaded from a memfd named by the patch")
		recs, err := tg.Status()
		require.NoError(t, err)
		require.Len(t, recs, 1)
		require.NotNil(t, recs[0].Lib, "the record names the library")
		require.Equal(t, mustEval(t, lib), recs[0].Lib.Path)
		require.Equal(t, "hotpatch:"+res.ID+":"+filepath.Base(lib), recs[0].Lib.Name)
		require.NotZero(t, recs[0].Lib.Handle)
		p.ExpectAfter(t, m, regexp.MustCompile(`^served \d+ price=145$`), 5*time.Second)
		m = p.Mark()
		_, err = tg.Revert(context.Background(), res.ID, patch.ApplyOptions{})
		require.NoError(t, err)
		p.ExpectAfter(t, m, regexp.MustCompile(`^served \d+ price=71$`), 5*time.Second)
	}
	m := p.Mark()
	p.ExpectAfter(t, m, served, 5*time.Second)
	checkServed(t, p)
}

func mustEval(t testing.TB, p string) string {
	r, err := filepath.EvalSymlinks(p)
	require.NoError(t, err)
	return r
}

// mapsOf returns the target's file-backed and executable mappings: the
// ones a library load or patch memory would add. Anonymous data mappings
// are left out: the loader's allocations are freed by dlclose, but malloc
// keeps the heap it grew (or the arena it created for the borrowed thread).
func mapsOf(t testing.TB, pid int) string {
	t.Helper()
	ms, err := elfsym.ReadMappings(pid)
	require.NoError(t, err)
	var keep []string
	for _, m := range ms {
		if m.Inode != 0 || strings.Contains(m.Perms, "x") {
			keep = append(keep, fmt.Sprintf("%x-%x %s %s", m.Start, m.End, m.Perms, m.Path))
		}
	}
	return strings.Join(keep, "\n")
}

// codeOf is the live bytes of functions of the target.
func codeOf(t testing.TB, tg *patch.Target, pid int, funcs ...string) string {
	t.Helper()
	s := snapshot(t, tg, pid, funcs...)
	// snapshot starts with the whole maps file; keep the code lines.
	var keep []string
	for _, l := range strings.Split(s, "\n") {
		for _, f := range funcs {
			if strings.HasPrefix(l, f+" ") {
				keep = append(keep, l)
			}
		}
	}
	require.Len(t, keep, len(funcs))
	return strings.Join(keep, "\n")
}

// Refusals: a pin for another build, no pin, a library whose dependency
// the target cannot find. Each names the reason, and leaves the target
// as it was (no library mapped, code unchanged) and serving.
func TestApplyLibRefused(t *testing.T) {
	p, bin := serve(t, 2)
	id := buildID(t, bin)
	tg := attach(t, p.Pid)
	missing := filepath.Dir(fixture.BuildSO(t, "hpmissing", "-O2"))
	reps := []patch.Replacement{{Old: "price", New: "price_fixed"}}
	for _, c := range []struct {
		name  string
		lib   string
		is    error
		texts []string
	}{
		{"other build", fixLib(t, pin("0123456789abcdef0123456789abcdef01234567")), patch.ErrBuildIDMismatch,
			[]string{"0123456789abcdef0123456789abcdef01234567", id}},
		{"unpinned", fixLib(t), patch.ErrUnpinned, []string{"ApplyOptions.Unpinned", id}},
		{"missing dependency", fixLib(t, pin(id), "-DMISSING", "-L"+missing, "-lhpmissing"), patch.ErrLoadLibrary,
			[]string{"libhpmissing.so: cannot open shared object file"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			before := mapsOf(t, p.Pid) + codeOf(t, tg, p.Pid, "price", "base_price")
			_, err := tg.Apply(context.Background(), reps, patch.ApplyOptions{Lib: c.lib})
			require.Error(t, err)
			require.True(t, errors.Is(err, c.is), "%v", err)
			for _, s := range c.texts {
				require.Contains(t, err.Error(), s)
			}
			if c.is == patch.ErrLoadLibrary {
				var le *patch.LoadError
				require.ErrorAs(t, err, &le)
				require.Contains(t, le.Dlerror, "libhpmissing.so")
			}
			require.Equal(t, before, mapsOf(t, p.Pid)+codeOf(t, tg, p.Pid, "price", "base_price"), "target changed")
			require.NotContains(t, mapsOf(t, p.Pid), "libfixprice")
			require.Empty(t, memfdsOpen(t, p.Pid), "the library's memfd is closed")
			m := p.Mark()
			p.ExpectAfter(t, m, regexp.MustCompile(`^served \d+ price=71$`), 5*time.Second)
		})
	}
	// Refused after the library was loaded (its NEW does not exist): the
	// library is unloaded again.
	t.Run("unknown replacement", func(t *testing.T) {
		before := mapsOf(t, p.Pid) + codeOf(t, tg, p.Pid, "price")
		_, err := tg.Apply(context.Background(), []patch.Replacement{{Old: "price", New: "no_such_fix"}}, patch.ApplyOptions{Lib: fixLib(t, pin(id))})
		require.ErrorIs(t, err, patch.ErrUnknownSymbol)
		require.NotContains(t, mapsOf(t, p.Pid), "libfixprice", "dlclose'd")
		require.Empty(t, memfdsOpen(t, p.Pid), "the library's memfd is closed")
		require.Equal(t, before, mapsOf(t, p.Pid)+codeOf(t, tg, p.Pid, "price"), "target changed")
	})
	// --unpinned accepts the unpinned library.
	res, err := tg.Apply(context.Background(), reps, patch.ApplyOptions{Lib: fixLib(t), Unpinned: true})
	require.NoError(t, err)
	m := p.Mark()
	p.ExpectAfter(t, m, regexp.MustCompile(`^served \d+ price=145$`), 5*time.Second)
	_, err = tg.Revert(context.Background(), res.ID, patch.ApplyOptions{})
	require.NoError(t, err)
	checkServed(t, p)
}

// A function of a shared library is replaced, named as libfoo.so:foo_value
// or by its unique name, while worker threads call it in a loop.
func TestApplySharedLibrary(t *testing.T) {
	foo := fixture.BuildSO(t, "foo", "-O2", "-fomit-frame-pointer")
	bin := fixture.BuildC(t, "cfoo", "-O2", "-fomit-frame-pointer", foo, "-Wl,-rpath,"+filepath.Dir(foo))
	p := fixture.Start(t, bin)
	p.Expect(t, regexp.MustCompile(`^foo 101$`), 10*time.Second)
	tg := attach(t, p.Pid)
	for _, old := range []string{"libfoo.so:foo_value", "foo_value"} {
		m := p.Mark()
		res, err := tg.Apply(context.Background(), []patch.Replacement{{Old: old, New: "foo_value_fixed"}}, patch.ApplyOptions{})
		require.NoError(t, err, old)
		require.Equal(t, foo, mustEval(t, res.Functions[0].Module))
		p.ExpectAfter(t, m, regexp.MustCompile(`^foo 201$`), 5*time.Second)
		m = p.Mark()
		_, err = tg.Revert(context.Background(), res.ID, patch.ApplyOptions{})
		require.NoError(t, err)
		p.ExpectAfter(t, m, regexp.MustCompile(`^foo 101$`), 5*time.Second)
	}

	// From a patch library: the pin must name libfoo.so, the module that
	// holds foo_value, not the executable.
	inc := fixture.PatchInclude()
	wrong := fixture.BuildSO(t, "fixfoo", "-I"+inc, pin(buildID(t, bin)))
	_, err := tg.Apply(context.Background(), []patch.Replacement{{Old: "libfoo.so:foo_value", New: "foo_value_v3"}}, patch.ApplyOptions{Lib: wrong})
	require.ErrorIs(t, err, patch.ErrBuildIDMismatch)
	require.Contains(t, err.Error(), buildID(t, foo))
	right := fixture.BuildSO(t, "fixfoo", "-I"+inc, pin(buildID(t, foo)))
	m := p.Mark()
	res, err := tg.Apply(context.Background(), []patch.Replacement{{Old: "libfoo.so:foo_value", New: "foo_value_v3"}}, patch.ApplyOptions{Lib: right})
	require.NoError(t, err)
	p.ExpectAfter(t, m, regexp.MustCompile(`^foo 301$`), 5*time.Second)
	m = p.Mark()
	_, err = tg.Revert(context.Background(), res.ID, patch.ApplyOptions{})
	require.NoError(t, err)
	p.ExpectAfter(t, m, regexp.MustCompile(`^foo 101$`), 5*time.Second)
}

// BenchmarkApplyC64 measures the pause of an apply and of its revert on a
// 64-thread C service built -O2 -fomit-frame-pointer (main, a reader and 62
// sleepers), every stack unwound by CFI. The median of 20:
//
//	go test ./patch -run '^$' -bench ApplyC64 -benchtime 1x -count 20 | benchstat -
func BenchmarkApplyC64(b *testing.B) {
	p := fixture.Start(b, fixture.BuildC(b, "cservice", "-O2", "-fomit-frame-pointer"), "62")
	p.Expect(b, regexp.MustCompile(`^result`), 10*time.Second)
	tg := attach(b, p.Pid)
	snap, err := patch.Snapshot(tg)
	if err != nil {
		b.Fatal(err)
	}
	if len(snap.Tasks) != 64 {
		b.Fatalf("%d threads, want 64", len(snap.Tasks))
	}
	benchComputePauses(b, tg)
}

// The fallback loader of older glibc, __libc_dlopen_mode, loads the patch
// library too.
func TestApplyLibLibcDlopenMode(t *testing.T) {
	p, bin := serve(t, 2)
	lib := fixLib(t, pin(buildID(t, bin)))
	defer patch.UseDlopen("__libc_dlopen_mode")()
	tg := attach(t, p.Pid)
	if _, err := tg.Symbols().Lookup("__libc_dlopen_mode"); err != nil {
		t.Skipf("this glibc does not export __libc_dlopen_mode (removed in 2.34, where dlopen moved into libc.so.6): %v", err)
	}
	res, err := tg.Apply(context.Background(), []patch.Replacement{{Old: "price", New: "price_fixed"}}, patch.ApplyOptions{Lib: lib})
	require.NoError(t, err)
	p.ExpectAfter(t, p.Mark(), regexp.MustCompile(`^served \d+ price=145$`), 5*time.Second)
	_, err = tg.Revert(context.Background(), res.ID, patch.ApplyOptions{})
	require.NoError(t, err)
	p.ExpectAfter(t, p.Mark(), regexp.MustCompile(`^served \d+ price=71$`), 5*time.Second)
	checkServed(t, p)
}

// Apply on the C fixture with threads blocked in read, nanosleep,
// pthread_cond_wait and epoll_wait inside and outside blocking(): refused,
// naming exactly the four threads inside it; the target is unchanged.
func TestApplyBlockedByCThreads(t *testing.T) {
	p := fixture.Start(t, fixture.BuildC(t, "cblockers", "-O2", "-fomit-frame-pointer"))
	p.Expect(t, regexp.MustCompile(`^ready$`), 10*time.Second)
	tg := attach(t, p.Pid)
	before := codeOf(t, tg, p.Pid, "blocking")
	_, err := tg.Apply(context.Background(), []patch.Replacement{{Old: "blocking", New: "blocking_fixed"}}, patch.ApplyOptions{Timeout: 300 * time.Millisecond})
	var be *consistency.BlockedError
	require.ErrorAs(t, err, &be)
	var got []string
	for _, b := range be.Blockers {
		require.Equal(t, "blocking", b.Func, "only blocking() blocks, no unreliable stack: %s", b.Reason)
		c, rerr := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/comm", p.Pid, b.Task.ID))
		require.NoError(t, rerr)
		got = append(got, strings.TrimSpace(string(c)))
	}
	sort.Strings(got)
	require.Equal(t, []string{"in-cond", "in-epoll", "in-read", "in-sleep"}, got)
	require.Equal(t, before, codeOf(t, tg, p.Pid, "blocking"))
}
