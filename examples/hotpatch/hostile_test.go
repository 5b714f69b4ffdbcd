package main

import (
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/hotpatch-dev/hotpatch/internal/fixture"
)

// TestCLITwoToolsAtOnce: two applies of the same function on one target,
// started together, again and again. The target serialises them: one
// applies, the other waits for it and is then refused as already applied
// (never a second record, never a ghost); revert --all then leaves no patch
// and no patch memory.
func TestCLITwoToolsAtOnce(t *testing.T) {
	pairs := 50
	if runtime.GOARCH == "arm64" {
		pairs = 10 // the VM's emulated CPU is slow
	}
	p := fixture.Start(t, fixture.BuildC(t, "cservice", "-O2"))
	pid := fmt.Sprint(p.Pid)
	mapsBefore := hotpatchMappings(t, p.Pid)
	for i := 0; i < pairs; i++ {
		type run struct {
			out, errOut string
			code        int
		}
		var runs [2]run
		var wg sync.WaitGroup
		for j := range runs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				o, e, c := hotpatch(t, "apply", "--pid", pid, "--replace", "compute=compute_fixed", "--json")
				runs[j] = run{o, e, c}
			}()
		}
		wg.Wait()
		ok, refused := 0, 0
		for _, r := range runs {
			switch r.code {
			case 0:
				ok++
			case 1:
				var e struct{ Code string }
				require.NoError(t, json.Unmarshal([]byte(r.out), &e), "pair %d: %s", i, r.out)
				require.Equal(t, "already_applied", e.Code, "pair %d: %s", i, r.errOut)
				refused++
			default:
				t.Fatalf("pair %d: exit %d: %s", i, r.code, r.errOut)
			}
		}
		require.Equal(t, [2]int{1, 1}, [2]int{ok, refused}, "pair %d: one applies, the other is refused", i)
		out, errOut, code := hotpatch(t, "status", "--pid", pid, "--json")
		require.Equal(t, 0, code, errOut)
		var st struct {
			Patches []struct{ State string }
		}
		require.NoError(t, json.Unmarshal([]byte(out), &st), out)
		require.Len(t, st.Patches, 1, "pair %d: one record: %s", i, out)
		require.Equal(t, "applied", st.Patches[0].State)
		_, errOut, code = hotpatch(t, "revert", "--pid", pid, "--all")
		require.Equal(t, 0, code, "pair %d: %s", i, errOut)
		require.Equal(t, mapsBefore, hotpatchMappings(t, p.Pid), "pair %d: patch memory left behind", i)
	}
}

// hotpatchMappings lists the target's anonymous executable mappings (patch
// memory, and anything else of the kind).
func hotpatchMappings(t *testing.T, pid int) []string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/maps", pid))
	require.NoError(t, err)
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) >= 5 && strings.Contains(f[1], "x") && (len(f) == 5 || strings.HasPrefix(f[5], "[anon")) {
			out = append(out, l)
		}
	}
	return out
}

// TestCLIAlreadyTraced: a target under another tracer (a debugger, strace)
// is refused with "permission", naming the tracer, and left as it was.
func TestCLIAlreadyTraced(t *testing.T) {
	p := fixture.Start(t, fixture.BuildC(t, "cservice", "-O2"))
	pid := fmt.Sprint(p.Pid)
	before := hotpatchMappings(t, p.Pid)
	runtime.LockOSThread() // ptrace requests come from the tracer's thread
	defer runtime.UnlockOSThread()
	require.NoError(t, unix.PtraceSeize(p.Pid))
	out, errOut, code := hotpatch(t, "apply", "--pid", pid, "--replace", "compute=compute_fixed", "--json")
	require.Equal(t, 1, code, errOut)
	var e struct{ Code, Error string }
	require.NoError(t, json.Unmarshal([]byte(out), &e), out)
	require.Equal(t, "permission", e.Code)
	require.Contains(t, e.Error, fmt.Sprintf("already traced by pid %d", unix.Gettid())) // the tracing thread
	require.Equal(t, before, hotpatchMappings(t, p.Pid))
	m := p.Mark()
	p.ExpectAfter(t, m, regexp.MustCompile(`^result 2`), 10*time.Second) // still serving, unpatched
}
