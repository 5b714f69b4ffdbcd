package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/hotpatch-dev/hotpatch/internal/fixture"
)

// noPID names no process: a command that reached Attach with it fails
// with no_process (exit 1), so exit 2 proves a usage error was found first.
const noPID = "999999999"

// TestCLIUsage: help lists every command, each command's help has an
// example and exits 0, typos get one suggestion (and no flag list), flags
// may follow positional words, extra words and bad values are usage errors
// found before attaching.
func TestCLIUsage(t *testing.T) {
	commands := []string{"apply", "revert", "status", "syms", "threads", "demo", "version", "help"}
	tests := []struct {
		name     string
		args     []string
		code     int
		stdout   []string // each must appear
		stderr   []string // each must appear exactly once
		noStderr []string
	}{
		{"bare", nil, 2, nil, []string{"apply    replace functions"}, nil},
		{"help", []string{"help"}, 0, commands, nil, nil},
		{"--help", []string{"--help"}, 0, commands, nil, nil},
		{"help apply", []string{"help", "apply"}, 0, []string{"usage:", "hotpatch apply --pid PID", "--mode stop|gradual|auto", "example:\n  hotpatch apply --pid"}, nil, nil},
		{"apply -h", []string{"apply", "-h"}, 0, []string{"hotpatch apply --pid PID", "example:"}, nil, nil},
		{"syms --help", []string{"syms", "--help"}, 0, []string{"hotpatch syms --pid PID", "example:"}, nil, nil},
		{"threads --help", []string{"threads", "--help"}, 0, []string{"--goroutines", "example:"}, nil, nil},
		{"demo --help", []string{"demo", "--help"}, 0, []string{"example:\n  hotpatch demo"}, nil, nil},
		{"help help", []string{"help", "help"}, 0, []string{"hotpatch help [COMMAND]"}, nil, nil},
		{"help unknown", []string{"help", "aply"}, 2, nil, []string{`unknown command "aply" (did you mean apply?)`}, nil},
		{"typo command", []string{"stauts", "--pid", noPID}, 2, nil, []string{"did you mean status?"}, nil},
		{"typo flag", []string{"apply", "--pid", noPID, "--modee", "gradual", "--replace", "a=b"}, 2, nil,
			[]string{"unknown flag --modee (did you mean --mode?)", "hotpatch help apply"}, []string{"--allow-inlined", "-mode string"}},
		{"bad mode", []string{"apply", "--pid", noPID, "--mode", "fast", "--replace", "a=b"}, 2, nil,
			[]string{`invalid value "fast" for flag --mode: want stop, gradual, auto`}, nil},
		{"bad mode typo", []string{"revert", "--pid", noPID, "--all", "--mode", "gradul"}, 2, nil, []string{"did you mean gradual?"}, nil},
		{"bad on-timeout", []string{"apply", "--pid", noPID, "--on-timeout", "wait", "--replace", "a=b"}, 2, nil, []string{"want revert, stay"}, nil},
		{"bad timeout", []string{"apply", "--pid", noPID, "--timeout", "soon", "--replace", "a=b"}, 2, nil, []string{"for flag --timeout"}, nil},
		{"negative timeout", []string{"revert", "--pid", noPID, "--all", "--timeout", "-1s"}, 2, nil, []string{"--timeout must be above 0"}, nil},
		{"zero interval", []string{"apply", "--pid", noPID, "--interval", "0s", "--replace", "a=b"}, 2, nil, []string{"--interval must be above 0"}, nil},
		{"bad pid", []string{"status", "--pid", "-3"}, 2, nil, []string{"--pid must be a process ID"}, nil},
		{"extra word", []string{"status", "--pid", noPID, "now"}, 2, nil, []string{`status takes no arguments, got "now"`}, nil},
		{"extra word apply", []string{"apply", "--pid", noPID, "--replace", "a=b", "extra"}, 2, nil, []string{"apply takes no arguments"}, nil},
		{"two substrings", []string{"syms", "--pid", noPID, "a", "b"}, 2, nil, []string{`unexpected "b"`}, nil},
		{"demo extra", []string{"demo", "now"}, 2, nil, []string{"demo takes no arguments"}, nil},
		// Flags after the positional word are read: the PID is used.
		{"flag after word", []string{"syms", "price", "--pid", noPID}, 1, nil, []string{"no such process"}, nil},
		{"after --", []string{"syms", "--pid", noPID, "--", "--json"}, 1, nil, []string{"no such process"}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, errOut, code := hotpatch(t, tt.args...)
			require.Equal(t, tt.code, code, "stdout:\n%s\nstderr:\n%s", out, errOut)
			for _, s := range tt.stdout {
				require.Contains(t, out, s)
			}
			for _, s := range tt.stderr {
				require.Equal(t, 1, strings.Count(errOut, s), "%q once in stderr:\n%s", s, errOut)
			}
			for _, s := range tt.noStderr {
				require.NotContains(t, errOut, s)
			}
		})
	}
}

// TestCLIVersion: version prints the module version, the Go release and
// the commit, from the build information.
func TestCLIVersion(t *testing.T) {
	for _, args := range [][]string{{"version"}, {"--version"}} {
		out, errOut, code := hotpatch(t, args...)
		require.Equal(t, 0, code, errOut)
		require.Regexp(t, `^hotpatch \S+\ngo go1\.\d+\S*\ncommit \S+.*\n$`, out)
	}
}

// TestCLIJSON: syms --json and threads --json print one documented shape,
// lists as [] when empty (never null); errors as {"error", "code"}.
func TestCLIJSON(t *testing.T) {
	p := fixture.Start(t, fixture.BuildC(t, "cservice", "-O2", "-fomit-frame-pointer"))
	pid := fmt.Sprint(p.Pid)

	out, errOut, code := hotpatch(t, "syms", "--pid", pid, "--json", "compute")
	require.Equal(t, 0, code, errOut)
	var syms struct {
		PID     int `json:"pid"`
		Symbols []struct {
			Name        string    `json:"name"`
			Module      string    `json:"module"`
			Addr        uint64    `json:"addr"`
			Size        uint64    `json:"size"`
			Padding     *uint64   `json:"padding"`
			InlinedInto *[]string `json:"inlined_into"`
		} `json:"symbols"`
	}
	require.NoError(t, json.Unmarshal([]byte(out), &syms), out)
	require.Equal(t, p.Pid, syms.PID)
	var names []string
	for _, s := range syms.Symbols {
		names = append(names, s.Name)
		require.NotZero(t, s.Addr)
		require.NotEmpty(t, s.Module)
		require.NotNil(t, s.Padding)
		require.NotNil(t, s.InlinedInto, "inlined_into is [] when empty")
	}
	require.Contains(t, names, "compute")
	require.Contains(t, names, "compute_fixed")
	require.Contains(t, out, `"inlined_into": []`)

	out, errOut, code = hotpatch(t, "syms", "--pid", pid, "--json", "no_function_has_this_name")
	require.Equal(t, 0, code, errOut)
	require.Contains(t, out, `"symbols": []`)

	out, errOut, code = hotpatch(t, "threads", "--pid", pid, "--json")
	require.Equal(t, 0, code, errOut)
	var threads struct {
		PID   int `json:"pid"`
		Tasks []struct {
			Kind     string `json:"kind"`
			ID       int    `json:"id"`
			Reliable bool   `json:"reliable"`
			Frames   []struct {
				Function string  `json:"function"`
				Offset   *uint64 `json:"offset"`
				Module   string  `json:"module"`
				PC       uint64  `json:"pc"`
			} `json:"frames"`
		} `json:"tasks"`
	}
	require.NoError(t, json.Unmarshal([]byte(out), &threads), out)
	require.Len(t, threads.Tasks, 6, out)
	var funcs []string
	for _, task := range threads.Tasks {
		require.Equal(t, "thread", task.Kind)
		require.NotZero(t, task.ID)
		require.NotEmpty(t, task.Frames)
		for _, f := range task.Frames {
			require.NotZero(t, f.PC)
			require.NotNil(t, f.Offset)
			require.NotEmpty(t, f.Module, "pc %#x", f.PC)
			funcs = append(funcs, f.Function)
		}
	}
	require.Contains(t, funcs, "main")
	require.Contains(t, funcs, "sleeper")
	require.Contains(t, funcs, "slow_read")

	for _, args := range [][]string{
		{"syms", "--pid", noPID, "--json"}, {"threads", "--pid", noPID, "--json"}, {"status", "--pid", noPID, "--json"},
	} {
		out, _, code = hotpatch(t, args...)
		require.Equal(t, 1, code)
		var e struct{ Error, Code string }
		require.NoError(t, json.Unmarshal([]byte(out), &e), out)
		require.Equal(t, "no_process", e.Code)
		require.NotEmpty(t, e.Error)
	}
}

// TestCLIGoThreadsJSON: threads --json --goroutines lists parked goroutines
// with their frames.
func TestCLIGoThreadsJSON(t *testing.T) {
	p := fixture.Start(t, fixture.BuildGo(t, "gotasks", ""))
	out, errOut, code := hotpatch(t, "threads", "--pid", fmt.Sprint(p.Pid), "--json", "--goroutines")
	require.Equal(t, 0, code, errOut)
	var threads struct {
		Tasks []struct {
			Kind   string `json:"kind"`
			ID     int    `json:"id"`
			Frames []struct {
				Function string `json:"function"`
			} `json:"frames"`
		} `json:"tasks"`
	}
	require.NoError(t, json.Unmarshal([]byte(out), &threads), out)
	found := false
	for _, task := range threads.Tasks {
		if task.Kind == "goroutine" && task.ID == 1 {
			found = true
			var fs []string
			for _, f := range task.Frames {
				fs = append(fs, f.Function)
			}
			require.Contains(t, fs, "main.main")
		}
	}
	require.True(t, found, "goroutine 1 listed:\n%s", out)
}

// TestCLISuggestions: an unknown function suggests the names a typo away.
func TestCLISuggestions(t *testing.T) {
	p := fixture.Start(t, fixture.BuildC(t, "cservice", "-O2"))
	pid := fmt.Sprint(p.Pid)
	tests := []struct{ typo, want string }{
		{"compte", ":compute"},
		{"comptue_fixed", ":compute_fixed"},
	}
	for _, tt := range tests {
		t.Run(tt.typo, func(t *testing.T) {
			out, errOut, code := hotpatch(t, "apply", "--pid", pid, "--replace", tt.typo+"=compute_fixed", "--json")
			require.Equal(t, 1, code, errOut)
			require.Contains(t, out, `"code": "unknown_symbol"`)
			require.Regexp(t, `similar: [^ ]+`+regexp.QuoteMeta(tt.want), errOut)
			require.Contains(t, errOut, "hotpatch syms --pid "+pid)
		})
	}
}

// TestCLIExitTransition: a gradual apply that stays in transition at
// --timeout (--on-timeout stay) exits 3, as does a revert left reverting;
// off a terminal, progress is at most a line a second.
func TestCLIExitTransition(t *testing.T) {
	p := fixture.Start(t, fixture.BuildGo(t, "gouniverse", ""))
	pid := fmt.Sprint(p.Pid)
	m := p.Mark()
	fmt.Fprintln(p.Stdin, "start 3")
	p.ExpectAfter(t, m, regexp.MustCompile(`^batch 0 started 3$`), 30*time.Second)
	replace := []string{"--replace", "main.serve=main.serveFixed", "--replace", "main.verA=main.verAFixed", "--replace", "main.verB=main.verBFixed"}

	start := time.Now()
	out, errOut, code := hotpatch(t, append([]string{"apply", "--pid", pid, "--mode", "gradual", "--on-timeout", "stay",
		"--timeout", "2500ms", "--interval", "10ms"}, replace...)...)
	elapsed := time.Since(start)
	require.Equal(t, 3, code, "stdout:\n%s\nstderr:\n%s", out, errOut)
	require.Contains(t, out, "transition: 3 task(s) still pending")
	// Some 250 pauses; at most one routine line a second, plus the
	// transition and timeout events.
	lines := strings.Count(errOut, " task(s) pending")
	require.LessOrEqual(t, lines, int(elapsed/time.Second)+3, errOut)
	require.GreaterOrEqual(t, lines, 2, errOut)
	require.Regexp(t, `transition \d+(\.\d+)?m?s/2\.5s: 3 task\(s\) pending, 0 moved so far \(pause \d+ us\), oldest goroutine \d+ \[[^\]]*\] in main\.(serve|verA|verB)\b`, errOut)

	out, errOut, code = hotpatch(t, "apply", "--pid", pid, "--resume", "--on-timeout", "stay", "--timeout", "200ms", "--json")
	require.Equal(t, 3, code, "stdout:\n%s\nstderr:\n%s", out, errOut)
	require.Contains(t, out, `"state":"transition"`)
	require.Contains(t, out, `{"event":"result","id":"hp-`, "the last line is the result event")

	out, errOut, code = hotpatch(t, "revert", "--pid", pid, "--all", "--timeout", "200ms", "--json")
	require.Equal(t, 0, code, "a transition nobody entered reverts at once\nstdout:\n%s\nstderr:\n%s", out, errOut)
}

// TestDemoSignals: the demo stopped by Ctrl-C, SIGTERM or a closed output
// pipe leaves no service process and no temporary directory behind.
func TestDemoSignals(t *testing.T) {
	tests := []struct {
		name string
		stop func(cmd *exec.Cmd, out *os.File)
	}{
		{"SIGINT", func(cmd *exec.Cmd, _ *os.File) { cmd.Process.Signal(os.Interrupt) }},
		{"SIGTERM", func(cmd *exec.Cmd, _ *os.File) { cmd.Process.Signal(syscall.SIGTERM) }},
		{"closed pipe", func(_ *exec.Cmd, out *os.File) { out.Close() }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tmp := t.TempDir()
			cmd := exec.Command(hotpatchBin, "demo")
			cmd.Env = append(os.Environ(), "TMPDIR="+tmp)
			r, w, err := os.Pipe()
			require.NoError(t, err)
			cmd.Stdout = w
			require.NoError(t, cmd.Start())
			w.Close()
			svc := 0
			sc := bufio.NewScanner(r)
			for svc == 0 && sc.Scan() {
				if m := regexp.MustCompile(`started: pid (\d+)`).FindStringSubmatch(sc.Text()); m != nil {
					svc, _ = strconv.Atoi(m[1])
				}
			}
			require.NotZero(t, svc, "the demo started its service")
			tt.stop(cmd, r)
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()
			go func() {
				for sc.Scan() { // keep the pipe drained when it is open
				}
			}()
			select {
			case err = <-done:
			case <-time.After(30 * time.Second):
				cmd.Process.Kill()
				t.Fatal("the demo did not stop")
			}
			var ee *exec.ExitError
			require.ErrorAs(t, err, &ee)
			require.Equal(t, 1, ee.ExitCode(), "stopped, not killed by a signal: %v", err)
			r.Close()
			require.Eventually(t, func() bool {
				_, err := os.Stat(fmt.Sprintf("/proc/%d", svc))
				return os.IsNotExist(err)
			}, 5*time.Second, 20*time.Millisecond, "service pid %d is gone", svc)
			left, err := filepath.Glob(filepath.Join(tmp, "*"))
			require.NoError(t, err)
			require.Empty(t, left, "no temporary files left")
		})
	}
}

// TestCLINames: in a Go target, a function that exists only inlined is
// named with its callers (code "inlined"), a replacement the linker
// dropped is explained with how to keep it, a typo gets the near names.
func TestCLINames(t *testing.T) {
	p := fixture.Start(t, fixture.BuildGo(t, "gotasks", ""))
	pid := fmt.Sprint(p.Pid)
	tests := []struct {
		name, replace, code string
		inStderr            []string
		notInStderr         []string
	}{
		{"only inlined", "runtime.isNaN=main.computeFixed", "inlined",
			[]string{`"runtime.isNaN" has no out-of-line copy: it was inlined into runtime.`, "hotpatch syms --pid " + pid + " CALLER"},
			[]string{"unknown symbol", "--allow-inlined"}},
		{"dropped by the linker", "main.compute=main.computeGone", "unknown_symbol",
			[]string{"main.computeGone is not in the binary. The Go linker drops a function nothing references", "var fixes = []any{computeGone}"}, nil},
		{"typo", "main.compte=main.computeFixed", "unknown_symbol",
			[]string{":main.compute"}, []string{"Go linker"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, errOut, code := hotpatch(t, "apply", "--pid", pid, "--replace", tt.replace, "--json")
			require.Equal(t, 1, code, errOut)
			require.Contains(t, out, `"code": "`+tt.code+`"`)
			for _, s := range tt.inStderr {
				require.Contains(t, errOut, s)
			}
			for _, s := range tt.notInStderr {
				require.NotContains(t, errOut, s)
			}
		})
	}
}

// TestCLIStopRetryProgress: a stop-mode apply that keeps finding tasks in
// the functions reports its retries (off a terminal, at most a line a
// second) with the oldest blocker, and its refusal suggests --mode
// gradual; a gradual one that times out does not suggest gradual again.
func TestCLIStopRetryProgress(t *testing.T) {
	p := fixture.Start(t, fixture.BuildGo(t, "gouniverse", ""))
	pid := fmt.Sprint(p.Pid)
	m := p.Mark()
	fmt.Fprintln(p.Stdin, "start 2")
	p.ExpectAfter(t, m, regexp.MustCompile(`^batch 0 started 2$`), 30*time.Second)
	replace := []string{"--replace", "main.serve=main.serveFixed", "--replace", "main.verA=main.verAFixed", "--replace", "main.verB=main.verBFixed"}

	out, errOut, code := hotpatch(t, append([]string{"apply", "--pid", pid, "--timeout", "2500ms"}, replace...)...)
	require.Equal(t, 1, code, "stdout:\n%s\nstderr:\n%s", out, errOut)
	require.Regexp(t, `retry \d+(\.\d+)?m?s/2\.5s: 2 task\(s\) pending, 0 moved so far \(pause \d+ us\), oldest goroutine \d+ \[[^\]]*\] in main\.(serve|verA|verB)\b`, errOut)
	require.LessOrEqual(t, strings.Count(errOut, " retry "), 4, errOut)
	require.Contains(t, errOut, "--mode gradual keeps the busy tasks on the old code")

	_, errOut, code = hotpatch(t, append([]string{"apply", "--pid", pid, "--mode", "gradual", "--timeout", "300ms"}, replace...)...)
	require.Equal(t, 1, code, errOut)
	require.Contains(t, errOut, "blocking task(s)")
	require.NotContains(t, errOut, "--mode gradual keeps")
}

// TestBuildVersion: the commit comes from the VCS stamp, else from a
// pseudo-version (go install MODULE@VERSION stamps none).
func TestBuildVersion(t *testing.T) {
	tests := []struct {
		name                   string
		bi                     debug.BuildInfo
		version, goVer, commit string
	}{
		{"checkout", debug.BuildInfo{GoVersion: "go1.26.0", Main: debug.Module{Version: "(devel)"},
			Settings: []debug.BuildSetting{{Key: "vcs.revision", Value: "3a9341d0c0de1234"}}}, "(devel)", "go1.26.0", "3a9341d0c0de1234"},
		{"modified", debug.BuildInfo{GoVersion: "go1.26.0", Main: debug.Module{Version: "(devel)"},
			Settings: []debug.BuildSetting{{Key: "vcs.revision", Value: "abc"}, {Key: "vcs.modified", Value: "true"}}}, "(devel)", "go1.26.0", "abc (modified)"},
		{"pseudo-version", debug.BuildInfo{GoVersion: "go1.26.1", Main: debug.Module{Version: "v0.0.0-20261201163500-3a9341d0c0de"}},
			"v0.0.0-20261201163500-3a9341d0c0de", "go1.26.1", "3a9341d0c0de"},
		{"pre-release pseudo-version", debug.BuildInfo{GoVersion: "go1.26.1", Main: debug.Module{Version: "v1.2.4-0.20261201163500-3a9341d0c0de"}},
			"v1.2.4-0.20261201163500-3a9341d0c0de", "go1.26.1", "3a9341d0c0de"},
		{"release", debug.BuildInfo{GoVersion: "go1.26.1", Main: debug.Module{Version: "v1.2.3"}}, "v1.2.3", "go1.26.1", "(unknown)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v, g, c := buildVersion(&tt.bi)
			require.Equal(t, []string{tt.version, tt.goVer, tt.commit}, []string{v, g, c})
		})
	}
}
