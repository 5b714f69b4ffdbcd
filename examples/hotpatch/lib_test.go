package main

import (
	"fmt"
	"regexp"
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
