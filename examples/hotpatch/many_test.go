package main

import (
	"bufio"
	"crypto/rand"
	"debug/elf"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/hotpatch-dev/hotpatch/elfsym"
	"github.com/hotpatch-dev/hotpatch/internal/fixture"
)

// TestCLIManyProcesses: apply --exe (and --build-id) patches every running
// process of the executable and no other; a process that cannot be patched
// (another tracer holds it) is reported with its code, left byte for byte
// as it was, and makes the exit status 1 while the others stay patched;
// status and revert --all with the same selector then see and undo all.
func TestCLIManyProcesses(t *testing.T) {
	for _, by := range []string{"--exe", "--build-id"} {
		t.Run(by, func(t *testing.T) {
			bin, id := uniqueCopy(t, fixture.BuildC(t, "cservice", "-O2"), "cservice")
			sel := []string{by, bin}
			if by == "--build-id" {
				sel = []string{by, id}
			}
			var ps []*fixture.Proc
			for i := 0; i < 3; i++ {
				ps = append(ps, fixture.Start(t, bin))
			}
			unrelated := fixture.Start(t, fixture.BuildC(t, "cservice", "-O0", "-no-pie"))
			for _, p := range append(ps, unrelated) {
				p.Expect(t, regexp.MustCompile(`^result 2`), 10*time.Second)
			}
			mapsBefore := map[int][]string{}
			for _, p := range ps {
				mapsBefore[p.Pid] = hotpatchMappings(t, p.Pid)
			}

			// All three are patched, the unrelated process is not.
			out, errOut, code := hotpatch(t, append([]string{"apply", "--replace", "compute=compute_fixed", "--json"}, sel...)...)
			require.Equal(t, 0, code, "stdout:\n%s\nstderr:\n%s", out, errOut)
			entries := manyEntries(t, out)
			require.ElementsMatch(t, pids(ps), entryPIDs(entries), out)
			for _, e := range entries {
				require.Nil(t, e.Error, out)
				require.Regexp(t, `^hp-[0-9a-f]{8}$`, e.ID)
				require.Len(t, e.Functions, 1)
			}
			for _, p := range ps {
				p.ExpectAfter(t, p.Mark(), regexp.MustCompile(`^result 3`), 10*time.Second)
			}
			unrelated.ExpectAfter(t, unrelated.Mark(), regexp.MustCompile(`^result 2`), 10*time.Second)
			out, errOut, code = hotpatch(t, append([]string{"revert", "--all"}, sel...)...)
			require.Equal(t, 0, code, "stdout:\n%s\nstderr:\n%s", out, errOut)
			for _, p := range ps {
				require.Contains(t, out, fmt.Sprintf("pid %d: reverted hp-", p.Pid))
				p.ExpectAfter(t, p.Mark(), regexp.MustCompile(`^result 2`), 10*time.Second)
			}

			// Another tracer holds the second: it is refused and unchanged,
			// the other two are patched, the exit status is 1.
			held := ps[1]
			stopTracer := holdTracer(t, held.Pid)
			before := snapshot(t, held.Pid)
			out, errOut, code = hotpatch(t, append([]string{"apply", "--replace", "compute=compute_fixed", "--json"}, sel...)...)
			require.Equal(t, 1, code, "stdout:\n%s\nstderr:\n%s", out, errOut)
			entries = manyEntries(t, out)
			require.ElementsMatch(t, pids(ps), entryPIDs(entries), out)
			for _, e := range entries {
				if e.PID == held.Pid {
					require.NotNil(t, e.Error, out)
					require.Equal(t, "permission", e.Error.Code, out)
					require.Contains(t, e.Error.Error, "already traced by pid")
					continue
				}
				require.Nil(t, e.Error, out)
				require.NotEmpty(t, e.ID)
			}
			require.Contains(t, errOut, fmt.Sprintf("1 of 3 process(es) not patched (pid %d: permission)", held.Pid))
			require.Contains(t, errOut, "the other 2 stay patched")
			require.Equal(t, before, snapshot(t, held.Pid), "the refused process is left as it was")
			for i, p := range ps {
				want := `^result 3`
				if i == 1 {
					want = `^result 2`
				}
				p.ExpectAfter(t, p.Mark(), regexp.MustCompile(want), 10*time.Second)
			}
			unrelated.ExpectAfter(t, unrelated.Mark(), regexp.MustCompile(`^result 2`), 10*time.Second)

			// The text report: one line per process, the refusal named.
			out, errOut, code = hotpatch(t, append([]string{"apply", "--replace", "compute_scaled=compute_fixed"}, sel...)...)
			require.Equal(t, 1, code, "stdout:\n%s\nstderr:\n%s", out, errOut)
			require.Equal(t, 3, strings.Count(out, "\n"), "one line per process:\n%s", out)
			require.Regexp(t, fmt.Sprintf(`(?m)^pid %d: refused \(permission\), left as it was: .*already traced by pid`, held.Pid), out)
			for _, p := range []*fixture.Proc{ps[0], ps[2]} {
				require.Regexp(t, fmt.Sprintf(`(?m)^pid %d: applied hp-[0-9a-f]{8}: 1 function\(s\)`, p.Pid), out)
			}
			stopTracer()

			// status and revert --all see every process, and undo all.
			out, errOut, code = hotpatch(t, append([]string{"status", "--json"}, sel...)...)
			require.Equal(t, 0, code, "stdout:\n%s\nstderr:\n%s", out, errOut)
			var st []struct {
				PID     int `json:"pid"`
				Patches []struct {
					State string `json:"state"`
				} `json:"patches"`
			}
			require.NoError(t, json.Unmarshal([]byte(out), &st), out)
			require.Len(t, st, 3, out)
			for _, s := range st {
				want := 2
				if s.PID == held.Pid {
					want = 0
				}
				require.Len(t, s.Patches, want, "pid %d: %s", s.PID, out)
			}
			out, errOut, code = hotpatch(t, append([]string{"status"}, sel...)...)
			require.Equal(t, 0, code, errOut)
			require.Contains(t, out, fmt.Sprintf("no patches in pid %d", held.Pid))
			require.Equal(t, 2, strings.Count(out, "compute -> compute_fixed"), out)

			out, errOut, code = hotpatch(t, append([]string{"revert", "--all", "--json"}, sel...)...)
			require.Equal(t, 0, code, "stdout:\n%s\nstderr:\n%s", out, errOut)
			var rv []struct {
				PID      int               `json:"pid"`
				Reverted []json.RawMessage `json:"reverted"`
			}
			require.NoError(t, json.Unmarshal([]byte(out), &rv), out)
			require.Len(t, rv, 3, out)
			for _, p := range ps {
				p.ExpectAfter(t, p.Mark(), regexp.MustCompile(`^result 2`), 10*time.Second)
				require.Equal(t, mapsBefore[p.Pid], hotpatchMappings(t, p.Pid), "pid %d: patch memory left", p.Pid)
			}
			out, _, _ = hotpatch(t, append([]string{"status"}, sel...)...)
			require.Equal(t, 3, strings.Count(out, "no patches in pid"), out)
		})
	}
}

// TestCLIManySelection: exactly one of --pid, --exe, --build-id (usage
// errors, exit 2); a selector that matches nothing is exit 1 with a clear
// message and code no_process; a binary replaced on disk is not taken for
// the file now at its path, and the note says how to select it.
func TestCLIManySelection(t *testing.T) {
	usage := []struct {
		args []string
		msg  string
	}{
		{[]string{"apply", "--replace", "a=b"}, "--pid is required (or --exe PATH, or --build-id ID)"},
		{[]string{"apply", "--pid", "1", "--exe", "/bin/true", "--replace", "a=b"}, "give one of --pid, --exe, --build-id"},
		{[]string{"status", "--exe", "/bin/true", "--build-id", "ab"}, "give one of --pid, --exe, --build-id"},
		{[]string{"status", "--build-id", "xyz"}, "--build-id must be hex"},
		{[]string{"revert", "--exe", "/bin/true", "--id", "hp-00000000"}, "with --exe or --build-id, revert takes --all"},
		{[]string{"apply", "--exe", "/bin/true", "--resume"}, "--resume drives one process's transition"},
		{[]string{"syms", "--exe", "/bin/true"}, "unknown flag --exe"},
	}
	for _, u := range usage {
		out, errOut, code := hotpatch(t, u.args...)
		require.Equal(t, 2, code, "%q\nstdout:\n%s\nstderr:\n%s", u.args, out, errOut)
		require.Contains(t, errOut, u.msg)
	}

	bin, id := uniqueCopy(t, fixture.BuildC(t, "cservice", "-O2"), "cservice")
	out, errOut, code := hotpatch(t, "status", "--exe", bin, "--json")
	require.Equal(t, 1, code, errOut)
	require.Contains(t, out, `"code": "no_process"`)
	require.Contains(t, errOut, "no running process runs "+bin)
	_, errOut, code = hotpatch(t, "apply", "--build-id", id, "--replace", "compute=compute_fixed")
	require.Equal(t, 1, code, errOut)
	require.Contains(t, errOut, "no running process has build ID "+id)
	_, errOut, code = hotpatch(t, "status", "--exe", filepath.Join(t.TempDir(), "missing"))
	require.Equal(t, 1, code, errOut)
	require.Contains(t, errOut, "no such file")

	// A running binary replaced at its path (a deploy) is another file.
	p := fixture.Start(t, bin)
	b, err := os.ReadFile(bin)
	require.NoError(t, err)
	require.NoError(t, os.Remove(bin))
	require.NoError(t, os.WriteFile(bin, b, 0o755))
	out, errOut, code = hotpatch(t, "status", "--exe", bin)
	require.Equal(t, 1, code, "stdout:\n%s\nstderr:\n%s", out, errOut)
	require.Contains(t, errOut, fmt.Sprintf("pid %d runs a deleted or replaced %s", p.Pid, bin))
	out, errOut, code = hotpatch(t, "status", "--exe", fmt.Sprintf("/proc/%d/exe", p.Pid))
	require.Equal(t, 0, code, "stdout:\n%s\nstderr:\n%s", out, errOut)
	require.Contains(t, out, fmt.Sprintf("no patches in pid %d", p.Pid))
	out, errOut, code = hotpatch(t, "status", "--build-id", strings.ToUpper(id))
	require.Equal(t, 0, code, "stdout:\n%s\nstderr:\n%s", out, errOut)
	require.Contains(t, out, fmt.Sprintf("no patches in pid %d", p.Pid))
}

// manyEntry is one process of apply --exe/--build-id --json.
type manyEntry struct {
	PID       int    `json:"pid"`
	ID        string `json:"id"`
	Functions []struct {
		Old string `json:"old"`
	} `json:"functions"`
	Error *struct {
		Error string `json:"error"`
		Code  string `json:"code"`
	} `json:"error"`
}

func manyEntries(t *testing.T, out string) []manyEntry {
	t.Helper()
	var es []manyEntry
	require.NoError(t, json.Unmarshal([]byte(out), &es), out)
	return es
}

func entryPIDs(es []manyEntry) []int {
	var out []int
	for _, e := range es {
		out = append(out, e.PID)
	}
	return out
}

func pids(ps []*fixture.Proc) []int {
	var out []int
	for _, p := range ps {
		out = append(out, p.Pid)
	}
	return out
}

// uniqueCopy copies a fixture binary into a directory of its own that
// every user may read (for the tests that run as another uid), with a
// random GNU build ID and a random name: so that --exe and --build-id
// match only the processes this test starts, never another test's copy
// of the same fixture. It returns the copy and its build ID.
func uniqueCopy(t *testing.T, src, name string) (path, buildID string) {
	t.Helper()
	b, err := os.ReadFile(src)
	require.NoError(t, err)
	ef, err := elf.Open(src)
	require.NoError(t, err)
	defer ef.Close()
	s := ef.Section(".note.gnu.build-id")
	require.NotNil(t, s, "%s has a GNU build ID", src)
	// namesz, descsz, type, "GNU\0", then the ID.
	n := ef.ByteOrder.Uint32(b[s.Offset+4:])
	id := b[s.Offset+16 : s.Offset+16+uint64(n)]
	_, err = rand.Read(id)
	require.NoError(t, err)
	dir, err := os.MkdirTemp("", "hotpatch-exe-")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	require.NoError(t, os.Chmod(dir, 0o755))
	suffix := make([]byte, 3)
	rand.Read(suffix)
	path = filepath.Join(dir, name[:min(len(name), 8)]+"-"+hex.EncodeToString(suffix)) // a comm of at most 15 bytes
	require.NoError(t, os.WriteFile(path, b, 0o755))
	buildID, err = elfsym.ReadBuildID(path)
	require.NoError(t, err)
	require.Equal(t, hex.EncodeToString(id), buildID)
	return path, buildID
}

// snapshot is what must not change in a refused target: its mappings and
// the bytes of compute.
func snapshot(t *testing.T, pid int) string {
	t.Helper()
	maps, err := os.ReadFile(fmt.Sprintf("/proc/%d/maps", pid))
	require.NoError(t, err)
	return string(maps) + "\ncompute: " + hex.EncodeToString(funcBytes(t, pid, "compute"))
}

// funcBytes reads the code of a function of the target, as syms --json
// places it.
func funcBytes(t *testing.T, pid int, name string) []byte {
	t.Helper()
	out, errOut, code := hotpatch(t, "syms", "--pid", fmt.Sprint(pid), "--json", name)
	require.Equal(t, 0, code, errOut)
	var syms struct {
		Symbols []struct {
			Name string `json:"name"`
			Addr uint64 `json:"addr"`
			Size uint64 `json:"size"`
		} `json:"symbols"`
	}
	require.NoError(t, json.Unmarshal([]byte(out), &syms), out)
	for _, s := range syms.Symbols {
		if s.Name != name {
			continue
		}
		f, err := os.Open(fmt.Sprintf("/proc/%d/mem", pid))
		require.NoError(t, err)
		defer f.Close()
		b := make([]byte, s.Size)
		_, err = f.ReadAt(b, int64(s.Addr))
		require.NoError(t, err)
		return b
	}
	t.Fatalf("pid %d has no %s: %s", pid, name, out)
	return nil
}

// envTracer makes the test binary a tracer (see holdTracer).
const envTracer = "HOTPATCH_TEST_TRACER"

// holdTracer attaches another process (this test binary, run again) to pid
// as its tracer, as a debugger would; the returned function ends it, which
// detaches it.
func holdTracer(t *testing.T, pid int) (stop func()) {
	t.Helper()
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), envTracer+"="+strconv.Itoa(pid))
	in, err := cmd.StdinPipe()
	require.NoError(t, err)
	outPipe, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	line, err := bufio.NewReader(outPipe).ReadString('\n')
	require.NoError(t, err)
	require.Equal(t, "seized\n", line)
	stop = func() {
		in.Close()
		cmd.Wait()
	}
	t.Cleanup(stop)
	return stop
}

// runTracer seizes pid and holds it until stdin closes.
func runTracer(pid string) int {
	p, err := strconv.Atoi(pid)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	runtime.LockOSThread()
	if err := unix.PtraceSeize(p); err != nil {
		fmt.Fprintln(os.Stderr, "seize:", err)
		return 1
	}
	fmt.Println("seized")
	io.Copy(io.Discard, os.Stdin)
	return 0
}

// TestCLIManyTransition: a gradual apply --exe that leaves processes in a
// transition (--on-timeout stay) exits 3 and names, per process, the
// --resume that finishes it; revert --all --exe then ends them all.
func TestCLIManyTransition(t *testing.T) {
	bin := fixture.BuildGo(t, "gouniverse", "")
	var ps []*fixture.Proc
	for i := 0; i < 2; i++ {
		p := fixture.Start(t, bin)
		m := p.Mark()
		fmt.Fprintln(p.Stdin, "start 3")
		p.ExpectAfter(t, m, regexp.MustCompile(`^batch 0 started 3$`), 30*time.Second)
		ps = append(ps, p)
	}
	out, errOut, code := hotpatch(t, "apply", "--exe", bin, "--mode", "gradual", "--on-timeout", "stay", "--timeout", "500ms",
		"--replace", "main.serve=main.serveFixed", "--replace", "main.verA=main.verAFixed", "--replace", "main.verB=main.verBFixed")
	require.Equal(t, 3, code, "stdout:\n%s\nstderr:\n%s", out, errOut)
	for _, p := range ps {
		require.Regexp(t, fmt.Sprintf(`(?m)^pid %d: hp-[0-9a-f]{8} transition: 3 task\(s\) still pending`, p.Pid), out)
		require.Contains(t, errOut, fmt.Sprintf("pid %d is left in a transition, consistent (hotpatch apply --pid %d --resume finishes it)", p.Pid, p.Pid))
	}
	out, errOut, code = hotpatch(t, "revert", "--all", "--exe", bin, "--timeout", "200ms")
	require.Equal(t, 0, code, "stdout:\n%s\nstderr:\n%s", out, errOut)
	out, _, _ = hotpatch(t, "status", "--exe", bin)
	require.Equal(t, 2, strings.Count(out, "no patches in pid"), out)
}
