package main

import (
	"bytes"
	"encoding/json"
	"fmt"
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

	"github.com/hotpatch-dev/hotpatch/internal/fixture"
)

var hotpatchBin string

// EnvCLI names a prebuilt hotpatch binary the tests run instead of
// building one (the arm64 VM lane, which has no Go toolchain).
const EnvCLI = "HOTPATCH_CLI"

func TestMain(m *testing.M) {
	if pid := os.Getenv(envTracer); pid != "" {
		os.Exit(runTracer(pid)) // a tracer for a test, not the tests
	}
	if bin := os.Getenv(EnvCLI); bin != "" {
		hotpatchBin = bin
		os.Exit(m.Run())
	}
	dir, err := os.MkdirTemp("", "hotpatch-cli-")
	if err != nil {
		panic(err)
	}
	hotpatchBin = filepath.Join(dir, "hotpatch")
	if out, err := exec.Command("go", "build", "-o", hotpatchBin, ".").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build hotpatch: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// hotpatch runs the CLI as its own process.
func hotpatch(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	cmd := exec.Command(hotpatchBin, args...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("run hotpatch: %v", err)
	}
	return o.String(), e.String(), code
}

func TestCLIApplyStatusRevert(t *testing.T) {
	p := fixture.Start(t, fixture.BuildC(t, "cservice", "-O2"))
	pid := fmt.Sprint(p.Pid)
	p.Expect(t, regexp.MustCompile(`^result 2`), 10*time.Second)

	out, errOut, code := hotpatch(t, "apply", "--pid", pid, "--replace", "compute=compute_fixed", "--json")
	require.Equal(t, 0, code, errOut)
	var applied struct {
		ID        string `json:"id"`
		Functions []struct {
			Old string `json:"old"`
			New string `json:"new"`
		} `json:"functions"`
		PauseUS *int64 `json:"pause_us"`
	}
	require.NoError(t, json.Unmarshal([]byte(out), &applied), out)
	require.Regexp(t, `^hp-[0-9a-f]{8}$`, applied.ID)
	require.Len(t, applied.Functions, 1)
	require.Equal(t, "compute", applied.Functions[0].Old)
	require.NotNil(t, applied.PauseUS)
	require.Greater(t, *applied.PauseUS, int64(0))
	p.ExpectAfter(t, p.Mark(), regexp.MustCompile(`^result 3`), 10*time.Second)

	// status from a new process sees the patch, in JSON and as a table.
	out, errOut, code = hotpatch(t, "status", "--pid", pid, "--json")
	require.Equal(t, 0, code, errOut)
	var status struct {
		Patches []struct {
			ID    string `json:"id"`
			State string `json:"state"`
		} `json:"patches"`
	}
	require.NoError(t, json.Unmarshal([]byte(out), &status), out)
	require.Len(t, status.Patches, 1)
	require.Equal(t, applied.ID, status.Patches[0].ID)
	require.Equal(t, "applied", status.Patches[0].State)
	out, _, code = hotpatch(t, "status", "--pid", pid)
	require.Equal(t, 0, code)
	require.Contains(t, out, applied.ID)
	require.Contains(t, out, "compute -> compute_fixed")

	// A second apply of the same function is refused with exit status 1.
	out, errOut, code = hotpatch(t, "apply", "--pid", pid, "--replace", "compute=compute_fixed", "--json")
	require.Equal(t, 1, code)
	require.Contains(t, errOut, "already applied")
	require.Contains(t, out, `"code": "already_applied"`)

	out, errOut, code = hotpatch(t, "revert", "--pid", pid, "--id", applied.ID)
	require.Equal(t, 0, code, errOut)
	require.Contains(t, out, "reverted "+applied.ID)
	p.ExpectAfter(t, p.Mark(), regexp.MustCompile(`^result 2`), 10*time.Second)

	_, errOut, code = hotpatch(t, "revert", "--pid", pid, "--id", applied.ID)
	require.Equal(t, 1, code)
	require.Contains(t, errOut, "not applied")

	// apply text output names the ID and the pause; revert --all undoes it.
	out, errOut, code = hotpatch(t, "apply", "--pid", pid, "--replace", "compute=compute_fixed")
	require.Equal(t, 0, code, errOut)
	require.Regexp(t, `applied hp-[0-9a-f]{8}: 1 function\(s\), pause \d+ us`, out)
	out, errOut, code = hotpatch(t, "revert", "--pid", pid, "--all", "--json")
	require.Equal(t, 0, code, errOut)
	require.Contains(t, out, `"reverted"`)
	out, _, _ = hotpatch(t, "status", "--pid", pid)
	require.Contains(t, out, "no patches")
}

func TestCLISymsAndThreads(t *testing.T) {
	p := fixture.Start(t, fixture.BuildC(t, "cservice", "-O2", "-fomit-frame-pointer"))
	pid := fmt.Sprint(p.Pid)
	out, errOut, code := hotpatch(t, "syms", "--pid", pid, "compute")
	require.Equal(t, 0, code, errOut)
	require.Regexp(t, `(?m)^0x[0-9a-f]+\s+\d+\s+\d+\s+\S+\s+compute$`, out)
	require.Regexp(t, `(?m)\scompute_fixed$`, out)

	time.Sleep(50 * time.Millisecond)
	out, errOut, code = hotpatch(t, "threads", "--pid", pid)
	require.Equal(t, 0, code, errOut)
	// 1 main + 4 sleepers + 1 reader, each with a symbolized stack.
	require.Equal(t, 6, strings.Count(out, "thread "), out)
	require.Contains(t, out, "slow_read+")
	require.Contains(t, out, "sleeper+")
	require.Contains(t, out, "main+")
}

// TestCLIGo: on a Go target, syms shows where a function was inlined, apply
// refuses it (exit 1, callers named) unless --allow-inlined, which warns;
// threads --goroutines lists parked goroutines with their stacks.
func TestCLIGo(t *testing.T) {
	p := fixture.Start(t, fixture.BuildGo(t, "gotasks", ""))
	pid := fmt.Sprint(p.Pid)
	out, errOut, code := hotpatch(t, "syms", "--pid", pid, "main.addOne")
	require.Equal(t, 0, code, errOut)
	require.Regexp(t, `(?m)\smain\.addOne\s+main\.inlineCaller`, out)

	out, errOut, code = hotpatch(t, "apply", "--pid", pid, "--replace", "main.addOne=main.addOneFixed")
	require.Equal(t, 1, code, out)
	require.Contains(t, errOut, "inlined into main.inlineCaller")
	require.Contains(t, errOut, "--allow-inlined")

	out, errOut, code = hotpatch(t, "apply", "--pid", pid, "--allow-inlined", "--replace", "main.addOne=main.addOneFixed", "--json")
	require.Equal(t, 0, code, errOut)
	require.Contains(t, errOut, "main.addOne stays inlined, with the old code, in: main.inlineCaller")
	var res struct {
		Functions []struct {
			InlinedInto []string `json:"inlined_into"`
		} `json:"functions"`
	}
	require.NoError(t, json.Unmarshal([]byte(out), &res), out)
	require.Len(t, res.Functions, 1)
	require.Equal(t, []string{"main.inlineCaller"}, res.Functions[0].InlinedInto)
	_, errOut, code = hotpatch(t, "revert", "--pid", pid, "--all")
	require.Equal(t, 0, code, errOut)

	out, errOut, code = hotpatch(t, "threads", "--pid", pid)
	require.Equal(t, 0, code, errOut)
	require.Regexp(t, `\(\d+ goroutines not running on a thread; --goroutines lists them\)`, out)
	out, errOut, code = hotpatch(t, "threads", "--pid", pid, "--goroutines")
	require.Equal(t, 0, code, errOut)
	// Caught while it parks, it is still shown on its thread.
	require.Regexp(t, `(?m)^goroutine 1 \[sleep(, on thread \d+)?\]$`, out)
	require.Contains(t, out, "main.main+")
	require.Contains(t, out, "runtime.goexit+")
}

func TestCLIErrors(t *testing.T) {
	p := fixture.Start(t, fixture.BuildC(t, "cservice", "-O2"))
	pid := fmt.Sprint(p.Pid)
	tests := []struct {
		args     []string
		code     int
		inStderr string
	}{
		{[]string{}, 2, "usage"},
		{[]string{"frobnicate"}, 2, "unknown command"},
		{[]string{"apply", "--replace", "a=b"}, 2, "--pid is required"},
		{[]string{"apply", "--pid", pid}, 2, "--replace"},
		{[]string{"apply", "--pid", pid, "--replace", "nonsense"}, 2, "OLD=NEW"},
		{[]string{"revert", "--pid", pid}, 2, "--id ID or --all"},
		{[]string{"status", "--pid", "999999999"}, 1, "no such process"},
		{[]string{"apply", "--pid", pid, "--replace", "nope=compute_fixed"}, 1, "unknown symbol"},
		{[]string{"apply", "--pid", pid, "--replace", "tiny=compute_fixed"}, 1, "too short"},
		{[]string{"revert", "--pid", pid, "--id", "hp-12345678"}, 1, "not applied"},
	}
	if runtime.GOARCH == "arm64" {
		// One instruction holds a B to anything within 128 MiB: tiny
		// is patchable there (and reverted below).
		tests[8].code, tests[8].inStderr = 0, ""
		t.Cleanup(func() { hotpatch(t, "revert", "--pid", pid, "--all") })
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			_, errOut, code := hotpatch(t, tt.args...)
			require.Equal(t, tt.code, code, errOut)
			require.Contains(t, errOut, tt.inStderr)
		})
	}
}

func TestDemo(t *testing.T) {
	out, errOut, code := hotpatch(t, "demo")
	require.Equal(t, 0, code, "stdout:\n%s\nstderr:\n%s", out, errOut)
	require.Contains(t, out, `GET -> "Helo, operator!"`)
	require.Contains(t, out, `GET -> "Hello, operator!"`)
	require.Regexp(t, `requests served \(\d+ of them by the fix\), 0 failed`, out)
}

// TestDemoGoFix: demo --go-fix builds the plugin example, fixes the live
// service through its agent under load, and reverts it, no request failing.
// It builds them with go at run time, so it skips where go or gcc is
// missing: the arm64 VM lane (TestPluginApplyUnderLoad runs the same
// example there, prebuilt).
func TestDemoGoFix(t *testing.T) {
	for _, tool := range []string{"go", "gcc"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("demo --go-fix builds its service and plugin with go and cgo: %s is not installed", tool)
		}
	}
	out, errOut, code := hotpatch(t, "demo", "--go-fix")
	require.Equal(t, 0, code, "stdout:\n%s\nstderr:\n%s", out, errOut)
	require.Contains(t, out, `GET -> "Helo, operator!"   <- the bug`)
	require.Contains(t, out, `GET -> "Hello, operator!"   <- fixed`)
	require.Regexp(t, `applied hp-[0-9a-f]{8}: 1 function\(s\)`, out)
	require.Regexp(t, `hp-[0-9a-f]{8}\s+applied\s+0`, out, "status")
	require.Regexp(t, `requests served \([1-9]\d* of them by the fix\), 0 failed`, out)
}

// TestCLIGradualKilled: apply --mode gradual streams JSON events; the tool
// is killed with SIGKILL mid-transition; the target keeps serving
// consistently, status from a new process reports the transition and its
// pending tasks, apply --resume finishes it once they return, revert undoes
// it.
func TestCLIGradualKilled(t *testing.T) {
	p := fixture.Start(t, fixture.BuildGo(t, "gouniverse", ""))
	pid := fmt.Sprint(p.Pid)
	say := func(cmd string, answer string) []string {
		t.Helper()
		m := p.Mark()
		fmt.Fprintln(p.Stdin, cmd)
		return p.ExpectAfter(t, m, regexp.MustCompile(answer), 30*time.Second)
	}
	say("start 100", `^batch 0 started 100$`)

	cmd := exec.Command(hotpatchBin, "apply", "--pid", pid, "--mode", "gradual", "--timeout", "10m", "--json",
		"--replace", "main.serve=main.serveFixed", "--replace", "main.verA=main.verAFixed", "--replace", "main.verB=main.verBFixed")
	out, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	dec := json.NewDecoder(out)
	var ev struct {
		Event   string `json:"event"`
		ID      string `json:"id"`
		Pending int    `json:"pending"`
	}
	require.NoError(t, dec.Decode(&ev))
	require.Equal(t, "transition", ev.Event)
	require.Equal(t, 100, ev.Pending)
	require.NoError(t, dec.Decode(&ev))
	require.Equal(t, "progress", ev.Event, "one event per pause")
	require.NoError(t, cmd.Process.Kill())
	cmd.Wait()

	// The target serves on, each goroutine consistent.
	say("start 7", `^batch 1 started 7$`)
	say("round", `^round v1=100 v2=7 mix=0$`)

	stdout, errOut, code := hotpatch(t, "status", "--pid", pid, "--json")
	require.Equal(t, 0, code, errOut)
	var st struct {
		Patches []struct {
			ID      string `json:"id"`
			State   string `json:"state"`
			Pending int    `json:"pending"`
		} `json:"patches"`
	}
	require.NoError(t, json.Unmarshal([]byte(stdout), &st))
	require.Len(t, st.Patches, 1)
	require.Equal(t, ev.ID, st.Patches[0].ID)
	require.Equal(t, "transition", st.Patches[0].State)
	require.Equal(t, 100, st.Patches[0].Pending)
	stdout, _, _ = hotpatch(t, "status", "--pid", pid)
	require.Contains(t, stdout, "is waiting for 100 task(s)")
	require.Regexp(t, `(?m)^  goroutine \d+$`, stdout)

	// A second patch is refused while this one is in transition.
	_, errOut, code = hotpatch(t, "apply", "--pid", pid, "--replace", "main.verAFixed=main.verBFixed")
	require.Equal(t, 1, code)
	require.Contains(t, errOut, "in transition")

	// --resume finishes it when the old goroutines return.
	resume := exec.Command(hotpatchBin, "apply", "--pid", pid, "--resume", "--timeout", "2m")
	var rout bytes.Buffer
	resume.Stdout, resume.Stderr = &rout, &rout
	require.NoError(t, resume.Start())
	time.Sleep(100 * time.Millisecond)
	say("stop 0", `^batch 0 stopped 100$`)
	require.NoError(t, resume.Wait(), rout.String())
	require.Contains(t, rout.String(), "applied "+ev.ID)
	say("round", `^round v1=0 v2=7 mix=0$`)

	stdout, errOut, code = hotpatch(t, "revert", "--pid", pid, "--all", "--mode", "auto", "--timeout", "200ms")
	require.Equal(t, 3, code, "left reverting: %s", errOut)
	require.Contains(t, stdout, ev.ID+" reverting: 7 task(s)")
	say("stop 1", `^batch 1 stopped 7$`)
	stdout, errOut, code = hotpatch(t, "apply", "--pid", pid, "--resume", "--id", ev.ID)
	require.Equal(t, 0, code, errOut)
	require.Contains(t, stdout, "reverted "+ev.ID)
	stdout, _, _ = hotpatch(t, "status", "--pid", pid)
	require.Contains(t, stdout, "no patches")
}

// TestCLIRevertUnfinished: a goroutine runs the replacement directly, so
// the revert that follows a timed-out gradual apply cannot finish. The CLI
// says what the target holds — reverting, one task pending — in words, in
// the JSON state field and in its exit status; never that the original
// bytes are back. A resume finishes once the goroutine leaves.
func TestCLIRevertUnfinished(t *testing.T) {
	p := fixture.Start(t, fixture.BuildGo(t, "gouniverse", ""))
	pid := fmt.Sprint(p.Pid)
	say := func(cmd string, answer string) {
		t.Helper()
		m := p.Mark()
		fmt.Fprintln(p.Stdin, cmd)
		p.ExpectAfter(t, m, regexp.MustCompile(answer), 30*time.Second)
	}
	say("start 5", `^batch 0 started 5$`)
	say("direct 1", `^batch 1 started 1$`)
	replace := []string{"--replace", "main.serve=main.serveFixed", "--replace", "main.verA=main.verAFixed", "--replace", "main.verB=main.verBFixed"}

	tests := []struct {
		name string
		args []string
	}{
		{"apply --json", append([]string{"apply", "--pid", pid, "--mode", "gradual", "--timeout", "300ms", "--interval", "10ms", "--json"}, replace...)},
		{"resume --json", []string{"apply", "--pid", pid, "--resume", "--timeout", "100ms", "--interval", "10ms", "--json"}},
		{"resume", []string{"apply", "--pid", pid, "--resume", "--timeout", "100ms", "--interval", "10ms"}},
	}
	var id string
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, errOut, code := hotpatch(t, tt.args...)
			require.Equal(t, 3, code, "left in transition\nstdout:\n%s\nstderr:\n%s", out, errOut)
			require.NotContains(t, out+errOut, "original bytes are back")
			require.Contains(t, errOut, "is reverting, 1 task(s) pending")
			if !strings.Contains(tt.name, "--json") {
				return
			}
			lines := strings.Split(strings.TrimSpace(out), "\n")
			var ev struct {
				Event   string `json:"event"`
				ID      string `json:"id"`
				State   string `json:"state"`
				Pending int    `json:"pending"`
			}
			require.NoError(t, json.Unmarshal([]byte(lines[len(lines)-1]), &ev), out)
			require.Equal(t, "error", ev.Event)
			require.Equal(t, "reverting", ev.State)
			require.Equal(t, 1, ev.Pending)
			id = ev.ID
		})
	}
	out, errOut, code := hotpatch(t, "status", "--pid", pid, "--json")
	require.Equal(t, 0, code, errOut)
	require.Contains(t, out, `"state": "reverting"`)

	say("stop 1", `^batch 1 stopped 1$`)
	out, errOut, code = hotpatch(t, "apply", "--pid", pid, "--resume", "--id", id, "--timeout", "10s")
	require.Equal(t, 0, code, errOut)
	require.Contains(t, out, "reverted "+id)
	out, _, _ = hotpatch(t, "status", "--pid", pid)
	require.Contains(t, out, "no patches")
}

// TestCLIInterrupted: Ctrl-C (SIGINT) ends a revert that waits for busy
// goroutines at once; the JSON error says it was cancelled and that the
// patch is still applied, as read back.
func TestCLIInterrupted(t *testing.T) {
	p := fixture.Start(t, fixture.BuildGo(t, "gouniverse", ""))
	pid := fmt.Sprint(p.Pid)
	out, errOut, code := hotpatch(t, "apply", "--pid", pid, "--json",
		"--replace", "main.serve=main.serveFixed", "--replace", "main.verA=main.verAFixed", "--replace", "main.verB=main.verBFixed")
	require.Equal(t, 0, code, errOut)
	var applied struct {
		ID string `json:"id"`
	}
	require.NoError(t, json.Unmarshal([]byte(out), &applied), out)
	m := p.Mark()
	fmt.Fprintln(p.Stdin, "start 3")
	p.ExpectAfter(t, m, regexp.MustCompile(`^batch 0 started 3$`), 30*time.Second)
	// After a round they wait inside serveFixed (a goroutine not started
	// yet has no new code on its stack, and would not block the revert).
	m = p.Mark()
	fmt.Fprintln(p.Stdin, "round")
	p.ExpectAfter(t, m, regexp.MustCompile(`^round v1=0 v2=3 mix=0$`), 30*time.Second)

	cmd := exec.Command(hotpatchBin, "revert", "--pid", pid, "--id", applied.ID, "--timeout", "1m", "--json")
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	require.NoError(t, cmd.Start())
	// Interrupt it once it has stopped the target for an attempt (on a
	// slow machine, 300 ms may pass before the first).
	deadline := time.Now().Add(30 * time.Second)
	for tracerPid(t, p.Pid) == 0 {
		require.True(t, time.Now().Before(deadline), "the revert never stopped the target")
		time.Sleep(2 * time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond)
	start := time.Now()
	require.NoError(t, cmd.Process.Signal(os.Interrupt))
	err := cmd.Wait()
	require.Less(t, time.Since(start), 5*time.Second)
	var ee *exec.ExitError
	require.ErrorAs(t, err, &ee, "stdout:\n%s\nstderr:\n%s", o.String(), e.String())
	require.Equal(t, 1, ee.ExitCode())
	var res struct {
		Code  string `json:"code"`
		ID    string `json:"id"`
		State string `json:"state"`
	}
	require.NoError(t, json.Unmarshal(o.Bytes(), &res), o.String())
	require.Equal(t, "canceled", res.Code)
	require.Equal(t, applied.ID, res.ID)
	require.Equal(t, "applied", res.State)
	require.Contains(t, e.String(), "blocking task(s)", "the cause is named")
}

// tracerPid reads the TracerPid of a process (0: not traced now).
func tracerPid(t *testing.T, pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	require.NoError(t, err)
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "TracerPid:"); ok {
			n, err := strconv.Atoi(strings.TrimSpace(v))
			require.NoError(t, err)
			return n
		}
	}
	return 0
}
