package main

import (
	"encoding/json"
	"fmt"
	"regexp"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/hotpatch-dev/hotpatch/internal/fixture"
)

// hotpatch apply refuses another signature (exit 1, code "signature",
// both signatures named, the overriding flag hinted) unless
// --skip-signature-check; a function that may have been inlined without a
// trace is refused with the --allow-inlined hint; C code for a Go function
// is refused (code "abi").
func TestCLIChecks(t *testing.T) {
	p := fixture.Start(t, fixture.BuildGo(t, "goabi", ""))
	p.Expect(t, regexp.MustCompile(`^tick 90 101$`), 10*time.Second)
	pid := fmt.Sprint(p.Pid)
	code := func(out string) string {
		var e struct{ Code string }
		require.NoError(t, json.Unmarshal([]byte(out), &e), out)
		return e.Code
	}

	out, errOut, rc := hotpatch(t, "apply", "--pid", pid, "--replace", "main.discount=main.discountU", "--json")
	require.Equal(t, 1, rc, errOut)
	require.Equal(t, "signature", code(out))
	require.Contains(t, errOut, "main.discount(int) int")
	require.Contains(t, errOut, "main.discountU(uint) uint")
	require.Contains(t, errOut, "--skip-signature-check")

	out, errOut, rc = hotpatch(t, "apply", "--pid", pid, "--replace", "main.(*Pricer).Markup=main.(*Pricer).MarkupFixed", "--json")
	require.Equal(t, 1, rc, errOut)
	require.Equal(t, "inlined", code(out))
	require.Contains(t, errOut, "inlined without a trace")
	require.Contains(t, errOut, "--allow-inlined")

	lib := fixture.BuildSO(t, "fixprice", "-O2", "-I"+fixture.PatchInclude())
	out, errOut, rc = hotpatch(t, "apply", "--pid", pid, "--lib", lib, "--unpinned", "--replace", "main.discount=price_fixed", "--json")
	require.Equal(t, 1, rc, errOut)
	require.Equal(t, "abi", code(out))

	_, errOut, rc = hotpatch(t, "apply", "--pid", pid, "--skip-signature-check", "--replace", "main.discount=main.discountU")
	require.Equal(t, 0, rc, errOut)
	p.ExpectAfter(t, p.Mark(), regexp.MustCompile(`^tick 70 101$`), 10*time.Second)
	_, errOut, rc = hotpatch(t, "revert", "--pid", pid, "--all")
	require.Equal(t, 0, rc, errOut)
	p.ExpectAfter(t, p.Mark(), regexp.MustCompile(`^tick 90 101$`), 10*time.Second)
}
