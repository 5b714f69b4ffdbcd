//go:build linux

package patch_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/hotpatch-dev/hotpatch/internal/fixture"
	"github.com/hotpatch-dev/hotpatch/patch"
)

// Prices cserve serves: unpatched, with fixprice, with fixprice -DV2.
const (
	priceOld = "71"
	priceV1  = "145"
	priceV2  = "212"
)

var fixReps = []patch.Replacement{{Old: "price", New: "price_fixed"}}

// installLib puts a copy of src at dst the way a build or a package
// manager does: a new file renamed over the old one.
func installLib(t testing.TB, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	require.NoError(t, err)
	tmp := dst + ".tmp"
	require.NoError(t, os.WriteFile(tmp, b, 0o755))
	require.NoError(t, os.Rename(tmp, dst))
}

// expectPrice waits for the first request served after mark with a price
// other than the unpatched one, and requires it is want.
func expectPrice(t *testing.T, p *fixture.Proc, mark int, want string) {
	t.Helper()
	l, _ := p.WaitLine(t, mark, "a patched price", func(l string) bool {
		m := served.FindStringSubmatch(l)
		return m != nil && m[2] != priceOld
	}, 5*time.Second)
	require.Equal(t, want, served.FindStringSubmatch(l)[2], "the code the target runs: %s", l)
}

// applyRevert applies the fix from lib, requires the service serves want,
// reverts, and requires it serves the old price again, with the library
// unloaded: its mappings and descriptors as before the apply.
func applyRevert(t *testing.T, tg *patch.Target, p *fixture.Proc, lib, want string) {
	t.Helper()
	maps, fds := mapsOf(t, p.Pid), fdsOf(t, p.Pid)
	m := p.Mark()
	res, err := tg.Apply(context.Background(), fixReps, patch.ApplyOptions{Lib: lib})
	require.NoError(t, err)
	expectPrice(t, p, m, want)
	require.Empty(t, memfdsOpen(t, p.Pid), "the target keeps no descriptor of the library")
	m = p.Mark()
	rv, err := tg.Revert(context.Background(), res.ID, patch.ApplyOptions{})
	require.NoError(t, err)
	require.Empty(t, rv.LibLoaded, "the library is unloaded")
	p.ExpectAfter(t, m, regexp.MustCompile(`^served \d+ price=`+priceOld+`$`), 5*time.Second)
	require.Equal(t, maps, mapsOf(t, p.Pid), "the revert unloads the library: the maps are as before the apply")
	require.Equal(t, fds, fdsOf(t, p.Pid), "the descriptors are as before the apply")
	left, err := tg.Leftovers()
	require.NoError(t, err)
	require.Empty(t, left)
}

// fdsOf lists the target's open descriptors and what they are.
func fdsOf(t testing.TB, pid int) []string {
	t.Helper()
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, err := os.ReadDir(dir)
	require.NoError(t, err)
	var out []string
	for _, e := range ents {
		l, _ := os.Readlink(filepath.Join(dir, e.Name()))
		out = append(out, e.Name()+" -> "+l)
	}
	return out
}

// memfdsOpen lists the target's open descriptors of memfds.
func memfdsOpen(t testing.TB, pid int) []string {
	t.Helper()
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, err := os.ReadDir(dir)
	require.NoError(t, err)
	var out []string
	for _, e := range ents {
		if l, err := os.Readlink(filepath.Join(dir, e.Name())); err == nil && strings.HasPrefix(l, "/memfd:") {
			out = append(out, e.Name()+" -> "+l)
		}
	}
	return out
}

// The library file is replaced (by another, unpinned library) after its
// pins were checked and before the target loads it: the target runs the
// code that was checked.
func TestApplyLibSwappedAfterCheck(t *testing.T) {
	p, bin := serve(t, 2)
	lib := filepath.Join(t.TempDir(), "libfixprice.so")
	installLib(t, fixLib(t, pin(buildID(t, bin))), lib)
	other := fixLib(t, "-DV2")
	swaps := 0
	defer patch.OnLibChecked(func(path string) {
		installLib(t, other, path)
		swaps++
	})()
	tg := attach(t, p.Pid)
	applyRevert(t, tg, p, lib, priceV1)
	require.Equal(t, 1, swaps, "the hook swapped the file")
	checkServedPrices(t, p, priceOld, priceV1)
}

// A library rebuilt at the same path after a revert (which unloaded the
// old one) runs its new code; the same bytes applied again run them too,
// as does the first version put back.
func TestApplyLibRebuiltSamePath(t *testing.T) {
	p, bin := serve(t, 2)
	id := buildID(t, bin)
	lib := filepath.Join(t.TempDir(), "libfixprice.so")
	tg := attach(t, p.Pid)
	for _, v := range []struct {
		flags []string
		want  string
	}{
		{[]string{pin(id)}, priceV1},
		{[]string{pin(id), "-DV2"}, priceV2},
		{[]string{pin(id), "-DV2"}, priceV2},
		{[]string{pin(id)}, priceV1},
	} {
		installLib(t, fixLib(t, v.flags...), lib)
		applyRevert(t, tg, p, lib, v.want)
	}
	require.NotContains(t, mapsOf(t, p.Pid), "/memfd:", "no copy of the library stays mapped")
	checkServedPrices(t, p, priceOld, priceV1, priceV2)
}

// The target lives in a mount namespace of its own where the library's
// path holds another library: the tool's file, the one checked, is what
// the target loads.
func TestApplyLibOtherMountNamespace(t *testing.T) {
	bin := fixture.BuildC(t, "cserve", "-O2", "-fomit-frame-pointer", "-rdynamic")
	dir := t.TempDir()
	lib := filepath.Join(dir, "libfixprice.so")
	installLib(t, fixLib(t, pin(buildID(t, bin))), lib)
	other := fixLib(t, "-DV2")
	// In a mount namespace of its own, a tmpfs over dir holds the other
	// library at lib's path; then the service.
	script := `d=$1 o=$2; shift 2; mount -t tmpfs hotpatch-test "$d" && cp "$o" "$d/libfixprice.so" && exec "$@"`
	probe := exec.Command("unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", dir, other, "true")
	if out, err := probe.CombinedOutput(); err != nil {
		t.Skipf("cannot start a process in a mount namespace of its own with a tmpfs (unshare --mount and mount need util-linux and CAP_SYS_ADMIN): %v: %s", err, out)
	}
	p := fixture.StartCmd(t, exec.Command("unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", dir, other, bin, "2"))
	p.Expect(t, regexp.MustCompile(`^served \d+ price=`+priceOld+`$`), 10*time.Second)
	theirs, err := os.ReadFile(fmt.Sprintf("/proc/%d/root%s", p.Pid, lib))
	require.NoError(t, err)
	ours, err := os.ReadFile(lib)
	require.NoError(t, err)
	require.NotEqual(t, ours, theirs, "the target sees other bytes at the library's path")

	tg := attach(t, p.Pid)
	applyRevert(t, tg, p, lib, priceV1)
	checkServedPrices(t, p, priceOld, priceV1)
}

// A thread parked in a helper of the patch library (the replacement
// tail-called it, so the replacement itself is not on its stack) at the
// revert: the revert restores the function but leaves the library loaded,
// says so and lists it among the Leftovers; RevertAll refuses to unload it
// while the thread is inside, and unloads it once the thread has left —
// the maps and descriptors as before the apply.
func TestRevertLibBusy(t *testing.T) {
	p, bin := serve(t, 2)
	maps, fds := mapsOf(t, p.Pid), fdsOf(t, p.Pid)
	lib := fixLib(t, pin(buildID(t, bin)), "-DHOLD")
	hold := fmt.Sprintf("/tmp/fixprice-hold.%d", p.Pid)
	require.NoError(t, os.WriteFile(hold, nil, 0o644))
	defer os.Remove(hold)
	tg := attach(t, p.Pid)
	ctx := context.Background()
	res, err := tg.Apply(ctx, fixReps, patch.ApplyOptions{Lib: lib})
	require.NoError(t, err)
	require.Eventually(t, func() bool { return inLib(t, tg, res.Functions[0].NewAddr) }, 5*time.Second, 20*time.Millisecond,
		"a thread parks in the library")

	rv, err := tg.Revert(ctx, res.ID, patch.ApplyOptions{Timeout: 300 * time.Millisecond})
	require.NoError(t, err, "the functions are restored")
	require.Equal(t, patch.StateReverted, rv.State)
	require.Contains(t, rv.LibLoaded, filepath.Base(lib), "the result says the library stays loaded")
	require.Contains(t, mapsOf(t, p.Pid), "/memfd:", "the library stays loaded")
	libLeft := func() []patch.Leftover {
		left, err := tg.Leftovers()
		require.NoError(t, err)
		var out []patch.Leftover
		for _, l := range left {
			if l.Kind == patch.LeftoverLib {
				out = append(out, l)
			}
		}
		return out
	}
	require.Len(t, libLeft(), 1, "Leftovers lists the library")
	require.Equal(t, mustEval(t, lib), libLeft()[0].Lib)
	require.True(t, libLeft()[0].Loaded)
	require.Equal(t, res.ID, libLeft()[0].ID)
	recs, err := tg.Status()
	require.NoError(t, err)
	require.Empty(t, recs)

	_, err = tg.RevertAll(ctx, patch.ApplyOptions{Timeout: 200 * time.Millisecond})
	require.ErrorIs(t, err, patch.ErrBlocked, "RevertAll does not unload a library a thread is in")
	require.Len(t, libLeft(), 1, "still recorded")

	require.NoError(t, os.Remove(hold))
	m := p.Mark()
	p.ExpectAfter(t, m, regexp.MustCompile(`^served \d+ price=`+priceOld+`$`), 5*time.Second)
	_, err = tg.RevertAll(ctx, patch.ApplyOptions{})
	require.NoError(t, err)
	require.Empty(t, libLeft())
	require.Equal(t, maps, mapsOf(t, p.Pid), "the maps are as before the apply")
	require.Equal(t, fds, fdsOf(t, p.Pid), "the descriptors are as before the apply")
	m = p.Mark()
	p.ExpectAfter(t, m, served, 5*time.Second)
	checkServedPrices(t, p, priceOld, priceV1)

	// A rebuilt library applied again runs its new code.
	v2 := fixLib(t, pin(buildID(t, bin)), "-DV2")
	m = p.Mark()
	res, err = tg.Apply(ctx, fixReps, patch.ApplyOptions{Lib: v2})
	require.NoError(t, err)
	expectPrice(t, p, m, priceV2)
	_, err = tg.Revert(ctx, res.ID, patch.ApplyOptions{})
	require.NoError(t, err)
	require.Equal(t, maps, mapsOf(t, p.Pid))
}

// inLib reports whether a thread of the target has a frame in the module
// holding addr (the patch library) other than in the function at addr.
func inLib(t *testing.T, tg *patch.Target, addr uint64) bool {
	mod, ok := tg.Symbols().ModuleAt(addr)
	require.True(t, ok)
	snap, err := tg.Threads()
	require.NoError(t, err)
	for _, task := range snap {
		for _, f := range task.Stack.Frames {
			if m, ok := tg.Symbols().ModuleAt(f.PC - 1); ok && m == mod {
				return true
			}
		}
	}
	return false
}
