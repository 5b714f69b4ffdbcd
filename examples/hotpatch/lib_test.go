package main

import (
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/hotpatch-dev/hotpatch/elfsym"
	"github.com/hotpatch-dev/hotpatch/internal/fixture"
)

// hotpatch apply --lib: an unpinned library is refused (exit 1, code
// "unpinned") unless --unpinned; a pinned one applies and reverts.
func TestCLIApplyLib(t *testing.T) {
	bin := fixture.BuildC(t, "cserve", "-O2", "-fomit-frame-pointer", "-rdynamic")
	p := fixture.Start(t, bin, "2")
	p.Expect(t, regexp.MustCompile(`^served \d+ price=71$`), 10*time.Second)
	pid := fmt.Sprint(p.Pid)
	tab, err := elfsym.LoadFile(bin)
	require.NoError(t, err)
	unpinned := fixture.BuildSO(t, "fixprice", "-O2", "-I"+fixture.PatchInclude())
	pinned := fixture.BuildSO(t, "fixprice", "-O2", "-I"+fixture.PatchInclude(), fixture.Pin(tab.Modules[0].BuildID))

	out, errOut, code := hotpatch(t, "apply", "--pid", pid, "--lib", unpinned, "--replace", "price=price_fixed", "--json")
	require.Equal(t, 1, code, out)
	require.Contains(t, errOut, "--unpinned")
	require.Contains(t, out, `"code": "unpinned"`)

	out, errOut, code = hotpatch(t, "apply", "--pid", pid, "--lib", pinned, "--replace", "price=price_fixed")
	require.Equal(t, 0, code, errOut)
	require.Contains(t, out, "price (0x")
	p.ExpectAfter(t, p.Mark(), regexp.MustCompile(`^served \d+ price=145$`), 10*time.Second)
	_, errOut, code = hotpatch(t, "revert", "--pid", pid, "--all")
	require.Equal(t, 0, code, errOut)
	p.ExpectAfter(t, p.Mark(), regexp.MustCompile(`^served \d+ price=71$`), 10*time.Second)

	_, errOut, code = hotpatch(t, "apply", "--pid", pid, "--lib", unpinned, "--unpinned", "--replace", "price=price_fixed")
	require.Equal(t, 0, code, errOut)
	p.ExpectAfter(t, p.Mark(), regexp.MustCompile(`^served \d+ price=145$`), 10*time.Second)
}

// hotpatch apply --supersede: fix v1 (--lib), then v2 superseding it by
// the ID v1's JSON gave: the JSON names the superseded patch, status lists
// v2 alone, and no line served between v1 and v2 has the original price;
// revert brings the original back. An unknown ID is refused (exit 1,
// not_applied) with the target unchanged; --supersede with --resume or
// --mode gradual is a usage error (exit 2).
func TestCLISupersede(t *testing.T) {
	bin := fixture.BuildC(t, "cserve", "-O2", "-fomit-frame-pointer", "-rdynamic")
	p := fixture.Start(t, bin, "2")
	p.Expect(t, regexp.MustCompile(`^served \d+ price=71$`), 10*time.Second)
	pid := fmt.Sprint(p.Pid)
	tab, err := elfsym.LoadFile(bin)
	require.NoError(t, err)
	pin := fixture.Pin(tab.Modules[0].BuildID)
	v1 := fixture.BuildSO(t, "fixprice", "-O2", "-I"+fixture.PatchInclude(), pin)
	v2 := fixture.BuildSO(t, "fixprice", "-O2", "-I"+fixture.PatchInclude(), pin, "-DV2")

	out, errOut, code := hotpatch(t, "apply", "--pid", pid, "--lib", v1, "--replace", "price=price_fixed", "--json")
	require.Equal(t, 0, code, errOut)
	var r1 struct{ ID string }
	require.NoError(t, json.Unmarshal([]byte(out), &r1), out)
	_, first := p.WaitLine(t, 0, "price=145", func(l string) bool { return strings.HasSuffix(l, "price=145") }, 10*time.Second)

	_, errOut, code = hotpatch(t, "apply", "--pid", pid, "--lib", v2, "--replace", "price=price_fixed", "--supersede", "hp-00000000", "--json")
	require.Equal(t, 1, code, errOut)
	require.Contains(t, errOut, "not applied")
	require.Contains(t, errOut, "hotpatch status --pid "+pid)
	for _, args := range [][]string{{"--resume"}, {"--mode", "gradual"}} {
		_, errOut, code = hotpatch(t, append([]string{"apply", "--pid", pid, "--lib", v2, "--supersede", r1.ID, "--replace", "price=price_fixed"}, args...)...)
		require.Equal(t, 2, code, "%v: %s", args, errOut)
	}

	out, errOut, code = hotpatch(t, "apply", "--pid", pid, "--lib", v2, "--replace", "price=price_fixed", "--supersede", r1.ID, "--json")
	require.Equal(t, 0, code, errOut)
	var r2 struct {
		ID, State, Superseded string
	}
	require.NoError(t, json.Unmarshal([]byte(out), &r2), out)
	require.Equal(t, r1.ID, r2.Superseded)
	require.Equal(t, "applied", r2.State)
	_, last := p.WaitLine(t, first, "price=212", func(l string) bool { return strings.HasSuffix(l, "price=212") }, 10*time.Second)
	for _, l := range p.Lines()[first : last+1] {
		require.NotContains(t, l, "price=71", "the original answered between fix v1 and fix v2")
	}
	out, errOut, code = hotpatch(t, "status", "--pid", pid, "--json")
	require.Equal(t, 0, code, errOut)
	var st struct {
		Patches []struct{ ID, State, Supersedes string }
	}
	require.NoError(t, json.Unmarshal([]byte(out), &st), out)
	require.Len(t, st.Patches, 1, out)
	require.Equal(t, r2.ID, st.Patches[0].ID)
	require.Equal(t, r1.ID, st.Patches[0].Supersedes)

	out, errOut, code = hotpatch(t, "revert", "--pid", pid, "--id", r2.ID)
	require.Equal(t, 0, code, errOut)
	require.Contains(t, out, "reverted "+r2.ID)
	p.ExpectAfter(t, p.Mark(), regexp.MustCompile(`^served \d+ price=71$`), 10*time.Second)

	// The text output says what was superseded.
	out, errOut, code = hotpatch(t, "apply", "--pid", pid, "--lib", v1, "--replace", "price=price_fixed", "--json")
	require.Equal(t, 0, code, errOut)
	require.NoError(t, json.Unmarshal([]byte(out), &r1), out)
	out, errOut, code = hotpatch(t, "apply", "--pid", pid, "--lib", v2, "--replace", "price=price_fixed", "--supersede", r1.ID)
	require.Equal(t, 0, code, errOut)
	require.Contains(t, out, "superseded "+r1.ID+" in the same pause")
	_, errOut, code = hotpatch(t, "revert", "--pid", pid, "--all")
	require.Equal(t, 0, code, errOut)
	p.ExpectAfter(t, p.Mark(), regexp.MustCompile(`^served \d+ price=71$`), 10*time.Second)
}
