package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/hotpatch-dev/hotpatch/elfsym"
	"github.com/hotpatch-dev/hotpatch/internal/fixture"
)

// The hostile cases of another user, a process that is not dumpable, and a
// container (another PID and mount namespace), at the CLI: a refusal is a
// typed error code with the target unchanged (its mappings and the bytes
// of the function) and still serving.

// nobody runs a command as uid and gid 65534, with no supplementary groups.
var nobody = []string{"setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"}

// needRoot skips a test that needs root and the given tools.
func needRoot(t *testing.T, tools ...string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: it runs processes as another uid (setpriv) or in namespaces of their own (unshare)")
	}
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s (util-linux): %v", tool, err)
		}
	}
}

// toolAsNobody returns a function that runs the CLI as uid 65534: a copy of
// it that every user may run.
func toolAsNobody(t *testing.T) func(args ...string) (stdout, stderr string, code int) {
	t.Helper()
	b, err := os.ReadFile(hotpatchBin)
	require.NoError(t, err)
	dir, err := os.MkdirTemp("", "hotpatch-tool-")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	require.NoError(t, os.Chmod(dir, 0o755))
	tool := filepath.Join(dir, "hotpatch")
	require.NoError(t, os.WriteFile(tool, b, 0o755))
	return func(args ...string) (string, string, int) {
		t.Helper()
		cmd := exec.Command(nobody[0], append(append(nobody[1:len(nobody):len(nobody)], tool), args...)...)
		var o, e bytes.Buffer
		cmd.Stdout, cmd.Stderr = &o, &e
		err := cmd.Run()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatalf("run hotpatch as nobody: %v", err)
		}
		return o.String(), e.String(), code
	}
}

// requireRefused checks a refusal with --pid: exit 1, the code, the reason.
func requireRefused(t *testing.T, out, errOut string, code int, wantCode, reason string) {
	t.Helper()
	require.Equal(t, 1, code, "stdout:\n%s\nstderr:\n%s", out, errOut)
	var e struct{ Error, Code string }
	require.NoError(t, json.Unmarshal([]byte(out), &e), out)
	require.Equal(t, wantCode, e.Code, e.Error)
	require.Contains(t, e.Error, reason)
}

// requireManyRefused checks a refusal with --exe: exit 1, the process
// reported with the code.
func requireManyRefused(t *testing.T, out, errOut string, code, pid int, wantCode string) {
	t.Helper()
	require.Equal(t, 1, code, "stdout:\n%s\nstderr:\n%s", out, errOut)
	es := manyEntries(t, out)
	require.Len(t, es, 1, out)
	require.Equal(t, pid, es[0].PID)
	require.NotNil(t, es[0].Error, out)
	require.Equal(t, wantCode, es[0].Error.Code, es[0].Error.Error)
}

// TestCLIHostileNonDumpable: a process that made itself not dumpable
// (prctl PR_SET_DUMPABLE 0) may not be traced by its own user: the kernel
// refuses, the CLI (run as that user) says "permission" and why, with
// --pid and with --exe, and the target is left as it was. The same
// process, dumpable, is patched by the same unprivileged CLI: it is the
// dumpable flag that refuses.
func TestCLIHostileNonDumpable(t *testing.T) {
	needRoot(t, "setpriv")
	asNobody := toolAsNobody(t)
	bin, _ := uniqueCopy(t, fixture.BuildC(t, "cservice", "-O2"), "cservice")
	for _, dumpable := range []bool{true, false} {
		t.Run(fmt.Sprintf("dumpable=%v", dumpable), func(t *testing.T) {
			cmd := exec.Command(nobody[0], append(nobody[1:len(nobody):len(nobody)], bin)...)
			if !dumpable {
				cmd.Env = append(os.Environ(), "CSERVICE_NONDUMPABLE=1")
			}
			p := fixture.StartCmd(t, cmd)
			p.Expect(t, regexp.MustCompile(`^result 2`), 10*time.Second)
			pid := fmt.Sprint(p.Pid)
			before := snapshot(t, p.Pid)

			out, errOut, code := asNobody("apply", "--pid", pid, "--replace", "compute=compute_fixed", "--json")
			if dumpable {
				require.Equal(t, 0, code, "stdout:\n%s\nstderr:\n%s", out, errOut)
				p.ExpectAfter(t, p.Mark(), regexp.MustCompile(`^result 3`), 10*time.Second)
				_, errOut, code = asNobody("revert", "--all", "--exe", bin)
				require.Equal(t, 0, code, errOut)
				p.ExpectAfter(t, p.Mark(), regexp.MustCompile(`^result 2`), 10*time.Second)
				return
			}
			requireRefused(t, out, errOut, code, "permission", "not dumpable")
			out, errOut, code = asNobody("apply", "--exe", bin, "--replace", "compute=compute_fixed", "--json")
			requireManyRefused(t, out, errOut, code, p.Pid, "permission")
			require.Equal(t, before, snapshot(t, p.Pid), "the target is left as it was")
			p.ExpectAfter(t, p.Mark(), regexp.MustCompile(`^result 2`), 10*time.Second)
		})
	}
}

// TestCLIHostileOtherUID: the CLI run by an unprivileged user may not trace
// another user's process: "permission" naming both uids with --pid, the
// process reported with --exe (never skipped), the target unchanged.
func TestCLIHostileOtherUID(t *testing.T) {
	needRoot(t, "setpriv")
	asNobody := toolAsNobody(t)
	bin, _ := uniqueCopy(t, fixture.BuildC(t, "cservice", "-O2"), "cservice")
	p := fixture.Start(t, bin) // as root
	p.Expect(t, regexp.MustCompile(`^result 2`), 10*time.Second)
	pid := fmt.Sprint(p.Pid)
	before := snapshot(t, p.Pid)

	out, errOut, code := asNobody("apply", "--pid", pid, "--replace", "compute=compute_fixed", "--json")
	requireRefused(t, out, errOut, code, "permission", "owned by uid 0, we are uid 65534")
	out, errOut, code = asNobody("apply", "--exe", bin, "--replace", "compute=compute_fixed", "--json")
	requireManyRefused(t, out, errOut, code, p.Pid, "permission")
	require.Contains(t, out, "may run "+bin+", but its executable may not be read")
	out, errOut, code = asNobody("status", "--exe", bin)
	require.Equal(t, 1, code, "stdout:\n%s\nstderr:\n%s", out, errOut)
	require.Contains(t, out, fmt.Sprintf("pid %d: failed (permission)", p.Pid))
	require.Equal(t, before, snapshot(t, p.Pid), "the target is left as it was")
	p.ExpectAfter(t, p.Mark(), regexp.MustCompile(`^result 2`), 10*time.Second)
}

// TestCLIHostileContainer: a service in a PID and mount namespace of its
// own (a container), over whose view of the library's directory a tmpfs
// is mounted: the --lib file exists only on the host. Patched from the
// host by its host PID, and found by --exe, it serves the fixed price; the
// revert brings the old one back.
func TestCLIHostileContainer(t *testing.T) {
	needRoot(t, "unshare", "sh")
	bin := fixture.BuildC(t, "cserve", "-O2", "-fomit-frame-pointer", "-rdynamic")
	id, err := elfsym.ReadBuildID(bin)
	require.NoError(t, err)
	src := fixture.BuildSO(t, "fixprice", "-O2", "-I"+fixture.PatchInclude(), fixture.Pin(id))
	dir := t.TempDir()
	lib := filepath.Join(dir, "libfixprice.so")
	b, err := os.ReadFile(src)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(lib, b, 0o644))

	script := `d=$1; shift; mount -t tmpfs hotpatch-test "$d" && exec "$@"`
	unshare := []string{"unshare", "--pid", "--fork", "--kill-child", "--mount", "--mount-proc", "--propagation", "private", "sh", "-c", script, "sh", dir}
	if out, err := exec.Command(unshare[0], append(unshare[1:len(unshare):len(unshare)], "true")...).CombinedOutput(); err != nil {
		t.Skipf("cannot start a process in PID and mount namespaces of its own (unshare --pid --mount, and mount, need util-linux and CAP_SYS_ADMIN): %v: %s", err, out)
	}
	p := fixture.StartCmd(t, exec.Command(unshare[0], append(unshare[1:len(unshare):len(unshare)], bin, "2")...))
	p.Expect(t, regexp.MustCompile(`^served \d+ price=71$`), 10*time.Second)
	target := childOf(t, p.Pid)
	for _, ns := range []string{"pid", "mnt"} {
		ours, err := os.Readlink("/proc/self/ns/" + ns)
		require.NoError(t, err)
		theirs, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/%s", target, ns))
		require.NoError(t, err)
		require.NotEqual(t, ours, theirs, "the target has a %s namespace of its own", ns)
	}
	_, err = os.Stat(fmt.Sprintf("/proc/%d/root%s", target, lib))
	require.True(t, os.IsNotExist(err), "the library is not in the target's view: %v", err)

	pid := fmt.Sprint(target)
	out, errOut, code := hotpatch(t, "apply", "--pid", pid, "--lib", lib, "--replace", "price=price_fixed")
	require.Equal(t, 0, code, "stdout:\n%s\nstderr:\n%s", out, errOut)
	p.ExpectAfter(t, p.Mark(), regexp.MustCompile(`^served \d+ price=145$`), 10*time.Second)
	_, errOut, code = hotpatch(t, "revert", "--pid", pid, "--all")
	require.Equal(t, 0, code, errOut)
	p.ExpectAfter(t, p.Mark(), regexp.MustCompile(`^served \d+ price=71$`), 10*time.Second)

	out, errOut, code = hotpatch(t, "apply", "--exe", bin, "--lib", lib, "--replace", "price=price_fixed")
	require.Equal(t, 0, code, "stdout:\n%s\nstderr:\n%s", out, errOut)
	require.Contains(t, out, fmt.Sprintf("pid %d: applied hp-", target))
	p.ExpectAfter(t, p.Mark(), regexp.MustCompile(`^served \d+ price=145$`), 10*time.Second)
	out, errOut, code = hotpatch(t, "revert", "--all", "--exe", bin)
	require.Equal(t, 0, code, errOut)
	require.Contains(t, out, fmt.Sprintf("pid %d: reverted hp-", target))
	p.ExpectAfter(t, p.Mark(), regexp.MustCompile(`^served \d+ price=71$`), 10*time.Second)
}

// childOf returns the only child of pid (unshare --fork's service).
func childOf(t *testing.T, pid int) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
	require.NoError(t, err)
	f := strings.Fields(string(b))
	require.Len(t, f, 1, "unshare --fork has one child")
	child, err := strconv.Atoi(f[0])
	require.NoError(t, err)
	return child
}
