package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/hotpatch-dev/hotpatch/internal/fixture"
	"github.com/hotpatch-dev/hotpatch/patch"
)

// Go plugins need cgo, so these tests build the service and its plugins
// with the go toolchain and gcc at run time on the host, and skip where
// those are missing; the arm64 VM lane, which has neither, runs them on
// builds prebuilt for it (fixture.Catalog).
func needPluginTools(t testing.TB) {
	t.Helper()
	if os.Getenv(fixture.EnvPrebuilt) != "" {
		return
	}
	for _, tool := range []string{"go", "gcc"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("Go plugins are built here with cgo: %s is not installed", tool)
		}
	}
}

// slowed is d, or five times d in the arm64 VM lane (HOTPATCH_VM), where
// an apply takes seconds (qemu emulates the CPU; loading a plugin alone
// takes seconds): the time a request stays parked in the old code must
// outlast the apply, or the apply finds no goroutine to wait for.
func slowed(d time.Duration) time.Duration {
	if os.Getenv("HOTPATCH_VM") != "" {
		return 5 * d
	}
	return d
}

// loadClients is how many clients load a service in the plugin tests: 4,
// or 1 in the arm64 VM lane, whose two emulated CPUs one client calling
// without pause already keeps busy (with 4, the CLI and the agent waited
// for a CPU behind them: TestPluginSupersede took 88 s there, 50 with 1).
func loadClients() int {
	if os.Getenv("HOTPATCH_VM") != "" {
		return 1
	}
	return 4
}

// hp runs the CLI as hotpatch does, killed after two minutes: a hung
// apply fails its test instead of the whole binary's timeout.
func hp(t testing.TB, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, hotpatchBin, args...)
	var o, e strings.Builder
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Errorf("hotpatch %s: killed after 2 minutes\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), o.String(), e.String())
		return o.String(), e.String(), -1
	}
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Errorf("run hotpatch: %v", err)
		return o.String(), e.String(), -1
	}
	return o.String(), e.String(), code
}

// buildPlugin builds package pkg (a directory of the repository,
// slash-separated: a package of its module or a module of its own) with
// cgo and flags, once per test binary; env adds to the environment. The
// build must be listed in fixture.Catalog: the arm64 VM lane runs it
// prebuilt.
func buildPlugin(t testing.TB, pkg string, env []string, flags ...string) string {
	t.Helper()
	return fixture.BuildGoPackage(t, pkg, env, flags...)
}

var (
	trimpath = []string{"-trimpath"}
	asPlugin = []string{"-trimpath", "-buildmode=plugin"}
)

// service is a running HTTP service.
type service struct {
	pid  int
	addr string
	log  *strings.Builder
}

// startService starts bin and waits until it serves.
func startService(t testing.TB, bin string) *service {
	t.Helper()
	cmd := exec.Command(bin)
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	s := &service{log: &strings.Builder{}}
	cmd.Stderr = &lockedWriter{w: s.log}
	require.NoError(t, cmd.Start())
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		// What its agent made (a killed agent removes nothing).
		dir := fmt.Sprintf("/tmp/hotpatch-agent-%d", os.Getuid())
		os.RemoveAll(filepath.Join(dir, fmt.Sprintf("plugins-%d", cmd.Process.Pid)))
		os.Remove(filepath.Join(dir, fmt.Sprintf("%d.sock", cmd.Process.Pid)))
	})
	line, err := bufio.NewReader(stdout).ReadString('\n')
	require.NoError(t, err, "service log:\n%s", s.log)
	s.addr = strings.TrimSpace(strings.TrimPrefix(line, "listening on "))
	s.pid = cmd.Process.Pid
	go io.Copy(io.Discard, stdout)
	return s
}

type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(b)
}

// get returns the body of GET path, or an error.
func (s *service) get(path string) (string, error) {
	r, err := http.Get("http://" + s.addr + path)
	if err != nil {
		return "", err
	}
	defer r.Body.Close()
	b, err := io.ReadAll(r.Body)
	if err == nil && r.StatusCode != http.StatusOK {
		err = fmt.Errorf("status %s", r.Status)
	}
	return strings.TrimSpace(string(b)), err
}

func (s *service) mustGet(t testing.TB, path string) string {
	t.Helper()
	b, err := s.get(path)
	require.NoError(t, err)
	return b
}

// hold sends a request that parks inside main.greeting of the agent
// tests' service (testSvc) until release, and returns once it is parked;
// its answer comes on the channel.
func (s *service) hold(t testing.TB, name string) <-chan string {
	t.Helper()
	done := make(chan string, 1)
	go func() { b, _ := s.get("/greet?hold&name=" + name); done <- b }()
	require.Eventually(t, func() bool { b, _ := s.get("/held"); return b == "1" }, slowed(5*time.Second), 10*time.Millisecond, "the request to hold never reached main.greeting")
	return done
}

// release lets the requests hold parked leave.
func (s *service) release(t testing.TB) {
	t.Helper()
	require.Equal(t, "released", s.mustGet(t, "/release"))
}

// load sends requests from several goroutines until stop, counting
// failures and each answer.
type load struct {
	stop    chan struct{}
	wg      sync.WaitGroup
	failed  atomic.Int64
	mu      sync.Mutex
	answers map[string]int
	errs    []error
}

func startLoad(s *service, path string, workers int) *load {
	l := &load{stop: make(chan struct{}), answers: map[string]int{}}
	for i := 0; i < workers; i++ {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for {
				select {
				case <-l.stop:
					return
				default:
				}
				b, err := s.get(path)
				l.mu.Lock()
				if err != nil {
					l.failed.Add(1)
					l.errs = append(l.errs, err)
				} else {
					l.answers[b]++
				}
				l.mu.Unlock()
			}
		}()
	}
	return l
}

func (l *load) end() map[string]int {
	close(l.stop)
	l.wg.Wait()
	return l.answers
}

// applyJSON is the --json output of a successful apply.
type applyJSON struct {
	ID        string `json:"id"`
	State     string `json:"state"`
	PauseUS   int64  `json:"pause_us"`
	Functions []struct {
		Old string `json:"old"`
		New string `json:"new"`
	} `json:"functions"`
	Error string `json:"error"`
	Code  string `json:"code"`
	// Superseded is the patch an apply --supersede replaced.
	Superseded string `json:"superseded"`
}

func applyPluginJSON(t testing.TB, pid int, plugin string, extra ...string) (applyJSON, string, int) {
	t.Helper()
	out, errOut, code := hp(t, append([]string{"apply", "--pid", fmt.Sprint(pid), "--plugin", plugin, "--json"}, extra...)...)
	return parseApply(t, out, errOut), errOut, code
}

// parseApply reads the result of an apply --json: its output, or the last
// line of a streamed one (gradual mode: progress events first).
func parseApply(t testing.TB, out, errOut string) applyJSON {
	t.Helper()
	var res applyJSON
	last := out
	if lines := strings.Split(strings.TrimSpace(out), "\n"); len(lines) > 1 && strings.HasPrefix(lines[0], "{\"") {
		last = lines[len(lines)-1]
	}
	require.NoError(t, json.Unmarshal([]byte(last), &res), "stdout:\n%s\nstderr:\n%s", out, errOut)
	return res
}

// TestPluginUsage: flags that do not go with --plugin are usage errors,
// found before anything is contacted.
func TestPluginUsage(t *testing.T) {
	for _, extra := range [][]string{{"--replace", "a=b"}, {"--lib", "x.so"}, {"--resume"}, {"--allow-inlined"}, {"--skip-signature-check"}} {
		_, errOut, code := hp(t, append([]string{"apply", "--pid", noPID, "--plugin", "fix.so"}, extra...)...)
		require.Equal(t, 2, code, "%v: %s", extra, errOut)
		require.Contains(t, errOut, "--plugin takes no")
	}
}

// TestPluginApplyUnderLoad is the worked example (examples/pluginfix):
// its fix goes in through the CLI and the agent while the service is under
// HTTP load, every request after the apply is answered by the new code,
// status lists the patch, revert brings the old answer back, and no
// request fails.
func TestPluginApplyUnderLoad(t *testing.T) {
	needPluginTools(t)
	svc := startService(t, buildPlugin(t, "examples/pluginfix/service", nil, trimpath...))
	fix := buildPlugin(t, "examples/pluginfix/fix", nil, asPlugin...)
	const path = "/greet?name=Ada"
	require.Equal(t, "Helo, Ada!", svc.mustGet(t, path))

	l := startLoad(svc, path, loadClients())
	time.Sleep(200 * time.Millisecond)
	res, errOut, code := applyPluginJSON(t, svc.pid, fix)
	require.Equal(t, 0, code, errOut)
	require.Equal(t, "applied", res.State)
	require.Len(t, res.Functions, 1)
	require.Equal(t, "main.greeting", res.Functions[0].Old)
	require.Contains(t, res.Functions[0].New, "pluginfix/fix.greeting")
	// The agent's helper lets go of the service after a plugin's apply:
	// the operator's next tool gets it at once, without waiting.
	tg, err := patch.Attach(svc.pid, &patch.Options{LockWait: -1})
	require.NoError(t, err, "the agent's helper still holds the service")
	require.NoError(t, tg.Close())
	for i := 0; i < 20; i++ {
		require.Equal(t, "Hello, Ada!", svc.mustGet(t, path), "a request after the apply")
	}
	time.Sleep(200 * time.Millisecond)

	out, errOut, code := hp(t, "status", "--pid", fmt.Sprint(svc.pid))
	require.Equal(t, 0, code, errOut)
	require.Regexp(t, res.ID+`\s+applied\s+0\s+\S+\s+main\.greeting -> \S+pluginfix/fix\.greeting`, out)

	_, errOut, code = hp(t, "revert", "--pid", fmt.Sprint(svc.pid), "--id", res.ID)
	require.Equal(t, 0, code, errOut)
	for i := 0; i < 20; i++ {
		require.Equal(t, "Helo, Ada!", svc.mustGet(t, path), "a request after the revert")
	}
	time.Sleep(200 * time.Millisecond)
	answers := l.end()
	require.Zero(t, l.failed.Load(), "failed requests: %v", l.errs)
	require.Len(t, answers, 2, "answers: %v", answers)
	require.Positive(t, answers["Hello, Ada!"])
	require.Positive(t, answers["Helo, Ada!"])
	require.Contains(t, svc.log.String(), "plugin applied")
}

// testSvc builds and starts the agent tests' service.
func testSvc(t testing.TB) *service {
	return startService(t, buildPlugin(t, "patch/agent/testdata/svc", nil, trimpath...))
}

// TestPluginWrapAndByValue: a fix that wraps the original (it calls the
// old code), and one that names its target by value (a package the plugin
// imports), applied through the CLI and reverted.
func TestPluginWrapAndByValue(t *testing.T) {
	needPluginTools(t)
	svc := testSvc(t)
	for _, tt := range []struct {
		plugin, path, before, after string
	}{
		{"wrapfix", "/greet?name=Ada", "Helo, Ada!", "Hello, Ada! (wrapped)"},
		{"bytype", "/shout?name=Ada", "ada", "ADA"},
	} {
		t.Run(tt.plugin, func(t *testing.T) {
			so := buildPlugin(t, "patch/agent/testdata/"+tt.plugin, nil, asPlugin...)
			require.Equal(t, tt.before, svc.mustGet(t, tt.path))
			res, errOut, code := applyPluginJSON(t, svc.pid, so)
			require.Equal(t, 0, code, errOut)
			require.Equal(t, tt.after, svc.mustGet(t, tt.path))
			_, errOut, code = hp(t, "revert", "--pid", fmt.Sprint(svc.pid), "--id", res.ID)
			require.Equal(t, 0, code, errOut)
			require.Equal(t, tt.before, svc.mustGet(t, tt.path))
		})
	}
}

// TestPluginParked: a goroutine parked inside main.greeting (a slow
// request). Stop mode refuses, naming it and the function; gradual mode
// applies: the parked request finishes on the old code, new requests get
// the new code meanwhile, and the apply returns once it left.
func TestPluginParked(t *testing.T) {
	needPluginTools(t)
	fix := buildPlugin(t, "patch/agent/testdata/wrapfix", nil, asPlugin...)
	const fast = "/greet?name=Ada"

	t.Run("stop", func(t *testing.T) {
		svc := testSvc(t)
		done := svc.hold(t, "Slow")
		res, errOut, code := applyPluginJSON(t, svc.pid, fix, "--mode", "stop", "--timeout", "500ms")
		require.Equal(t, 1, code, errOut)
		require.Equal(t, "blocked", res.Code, res.Error)
		require.Contains(t, res.Error, "main.greeting")
		require.Regexp(t, `goroutine \d+`, res.Error)
		require.Equal(t, "Helo, Ada!", svc.mustGet(t, fast), "untouched")
		svc.release(t)
		require.Equal(t, "Helo, Slow!", <-done)
	})
	t.Run("gradual", func(t *testing.T) {
		svc := testSvc(t)
		done := svc.hold(t, "Slow")
		type outcome struct {
			out, err string
			code     int
			at       time.Time
		}
		applied := make(chan outcome, 1)
		go func() {
			out, errOut, code := hp(t, "apply", "--pid", fmt.Sprint(svc.pid), "--plugin", fix, "--mode", "gradual", "--timeout", slowed(30*time.Second).String(), "--json")
			applied <- outcome{out, errOut, code, time.Now()}
		}()
		// While the held request is parked in the old code, new requests
		// run the new code. (The apply's first pause came 10 to 15 s
		// after its start in the arm64 VM: the window is wide, and the
		// held request waits for it whatever its length.)
		require.Eventually(t, func() bool { b, _ := svc.get(fast); return b == "Hello, Ada! (wrapped)" }, slowed(10*time.Second), 20*time.Millisecond)
		time.Sleep(slowed(200 * time.Millisecond))
		select {
		case o := <-applied:
			t.Fatalf("the apply returned while a goroutine was still on the old code: %+v", o)
		default:
		}
		released := time.Now()
		svc.release(t)
		require.Equal(t, "Helo, Slow!", <-done, "the parked request keeps the old code")
		o := <-applied
		require.Equal(t, 0, o.code, o.err)
		require.Equal(t, "applied", parseApply(t, o.out, o.err).State)
		require.True(t, o.at.After(released), "finished only after the parked goroutine left")
		require.Equal(t, "Hello, Ada! (wrapped)", svc.mustGet(t, fast))
	})
}

// TestPluginErrors: each mistake a plugin can make is refused with its
// code, the service untouched and still serving the old answer.
func TestPluginErrors(t *testing.T) {
	needPluginTools(t)
	svc := testSvc(t)
	tests := []struct {
		name, code string
		plugin     func(t *testing.T) string
		want       []string
	}{
		{"other package source", "package", func(t *testing.T) string {
			return buildPlugin(t, "patch/agent/testdata/bytype", nil, append(asPlugin, "-overlay", fixture.Source("patch/agent/testdata/greetoverlay/overlay.json"))...)
		}, []string{"patch/agent/testdata/svc/greet", "fingerprint"}},
		{"signature", "signature", func(t *testing.T) string {
			return buildPlugin(t, "patch/agent/testdata/sigfix", nil, asPlugin...)
		}, []string{"main.greeting(string, time.Duration) string", "sigfix.greeting(string) string", "the plugin's fix"}},
		{"unknown name", "unknown_symbol", func(t *testing.T) string {
			return buildPlugin(t, "patch/agent/testdata/unknownfix", nil, asPlugin...)
		}, []string{"main.greetingg", "main.greeting"}},
		{"no manifest", "manifest", func(t *testing.T) string {
			return buildPlugin(t, "patch/agent/testdata/nomanifest", nil, asPlugin...)
		}, []string{"exports no variable Hotpatch"}},
		{"other toolchain", "toolchain", func(t *testing.T) string {
			return buildPlugin(t, "patch/agent/testdata/oldgo", []string{"GOTOOLCHAIN=go1.25.14"}, asPlugin...)
		}, []string{"go1.25.14", runtime.Version()}},
		{"other module version", "module_version", func(t *testing.T) string {
			return buildPlugin(t, "patch/agent/testdata/othermod", nil, asPlugin...)
		}, []string{"golang.org/x/sys", "v0.49.0"}},
		{"no -trimpath", "build_setting", func(t *testing.T) string {
			return buildPlugin(t, "examples/pluginfix/fix", nil, "-buildmode=plugin")
		}, []string{"-trimpath"}},
		{"not a plugin", "not_plugin", func(t *testing.T) string {
			return buildPlugin(t, "patch/agent/testdata/svc", nil, trimpath...)
		}, []string{"-buildmode=exe"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, errOut, code := applyPluginJSON(t, svc.pid, tt.plugin(t))
			require.Equal(t, 1, code, errOut)
			require.Equal(t, tt.code, res.Code, res.Error)
			for _, w := range tt.want {
				require.Contains(t, res.Error, w)
			}
			require.Equal(t, "Helo, Ada!", svc.mustGet(t, "/greet?name=Ada"), "untouched and serving")
		})
	}
	t.Run("loaded twice", func(t *testing.T) {
		fix := buildPlugin(t, "patch/agent/testdata/wrapfix", nil, asPlugin...)
		res, errOut, code := applyPluginJSON(t, svc.pid, fix)
		require.Equal(t, 0, code, errOut)
		_, errOut, code = hp(t, "revert", "--pid", fmt.Sprint(svc.pid), "--id", res.ID)
		require.Equal(t, 0, code, errOut)
		res, errOut, code = applyPluginJSON(t, svc.pid, fix)
		require.Equal(t, 1, code, errOut)
		require.Equal(t, "loaded_twice", res.Code, res.Error)
		require.Equal(t, "Helo, Ada!", svc.mustGet(t, "/greet?name=Ada"))
	})
	t.Run("no cgo", func(t *testing.T) {
		nocgo := startService(t, buildPlugin(t, "patch/agent/testdata/svc", []string{"CGO_ENABLED=0"}, trimpath...))
		fix := buildPlugin(t, "patch/agent/testdata/wrapfix", nil, asPlugin...)
		res, errOut, code := applyPluginJSON(t, nocgo.pid, fix)
		require.Equal(t, 1, code, errOut)
		require.Equal(t, "no_cgo", res.Code, res.Error)
		require.Contains(t, res.Error, "--replace OLD=NEW")
		require.Equal(t, "Helo, Ada!", nocgo.mustGet(t, "/greet?name=Ada"))
	})
	t.Run("no agent", func(t *testing.T) {
		p := fixture.Start(t, fixture.BuildGo(t, "gotasks", ""))
		fix := buildPlugin(t, "patch/agent/testdata/wrapfix", nil, asPlugin...)
		res, errOut, code := applyPluginJSON(t, p.Pid, fix)
		require.Equal(t, 1, code, errOut)
		require.Equal(t, "no_agent", res.Code, res.Error)
		require.Contains(t, errOut, "agent.Start")
	})
}

// TestPluginTransitionResume: a gradual plugin apply streams its progress
// with --json as any apply does; left in transition at its timeout (exit
// 3), status lists the goroutine it waits for, and apply --resume
// finishes it once that goroutine left the old code.
func TestPluginTransitionResume(t *testing.T) {
	needPluginTools(t)
	svc := testSvc(t)
	fix := buildPlugin(t, "patch/agent/testdata/wrapfix", nil, asPlugin...)
	pid := fmt.Sprint(svc.pid)
	done := svc.hold(t, "Slow")

	out, errOut, code := hp(t, "apply", "--pid", pid, "--plugin", fix, "--mode", "gradual", "--timeout", "700ms", "--on-timeout", "stay", "--json")
	require.Equal(t, 3, code, "stdout:\n%s\nstderr:\n%s", out, errOut)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	require.GreaterOrEqual(t, len(lines), 2, out)
	type line struct {
		Event, ID, State string
		Pending          int
	}
	var events []string
	var last line
	for _, l := range lines {
		last = line{}
		require.NoError(t, json.Unmarshal([]byte(l), &last), l)
		events = append(events, last.Event)
	}
	require.Equal(t, "transition", events[0], out)
	require.Equal(t, "timeout", events[len(events)-2], out)
	// The last line is the result (patch.Result's own JSON, as any
	// streaming apply prints it).
	require.Equal(t, "transition", last.State, out)
	require.Equal(t, 1, last.Pending)
	require.Equal(t, "Hello, Ada! (wrapped)", svc.mustGet(t, "/greet?name=Ada"), "new goroutines run the new code")

	out, errOut, code = hp(t, "status", "--pid", pid)
	require.Equal(t, 0, code, errOut)
	require.Regexp(t, last.ID+`\s+transition\s+1\s`, out)
	require.Regexp(t, `(?m)^  goroutine \d+$`, out)

	svc.release(t)
	out, errOut, code = hp(t, "apply", "--pid", pid, "--resume", "--id", last.ID, "--timeout", slowed(10*time.Second).String())
	require.Equal(t, 0, code, "stdout:\n%s\nstderr:\n%s", out, errOut)
	require.Equal(t, "Helo, Slow!", <-done, "the parked request kept the old code")
	out, errOut, code = hp(t, "status", "--pid", pid)
	require.Equal(t, 0, code, errOut)
	require.Regexp(t, last.ID+`\s+applied\s+0\s`, out)
}

// BenchmarkPluginPause measures the pause of the plugin path (agent,
// helper process) next to the CLI's stop mode on the same service, each
// on an idle service (a new one per iteration: a plugin loads once per
// process): metrics cli-pause-µs and plugin-pause-µs, per apply.
//
//	go test ./examples/hotpatch -run '^$' -bench BenchmarkPluginPause -benchtime 5x
func BenchmarkPluginPause(b *testing.B) {
	needPluginTools(b)
	fix := buildPlugin(b, "examples/pluginfix/fix", nil, asPlugin...)
	var cli, plug int64
	for b.Loop() {
		svc := testSvc(b)
		pid := fmt.Sprint(svc.pid)
		out, errOut, code := hp(b, "apply", "--pid", pid, "--replace", "main.greeting=main.greetingCompiled", "--json")
		require.Equal(b, 0, code, errOut)
		var res applyJSON
		require.NoError(b, json.Unmarshal([]byte(out), &res), out)
		require.Positive(b, res.PauseUS)
		cli += res.PauseUS
		require.Equal(b, "Hello, Ada! (compiled in)", svc.mustGet(b, "/greet?name=Ada"))
		_, errOut, code = hp(b, "revert", "--pid", pid, "--all")
		require.Equal(b, 0, code, errOut)

		res, errOut, code = applyPluginJSON(b, svc.pid, fix, "--mode", "stop")
		require.Equal(b, 0, code, errOut)
		require.Positive(b, res.PauseUS)
		plug += res.PauseUS
		require.Equal(b, "Hello, Ada!", svc.mustGet(b, "/greet?name=Ada"))
	}
	b.ReportMetric(float64(cli)/float64(b.N), "cli-pause-µs")
	b.ReportMetric(float64(plug)/float64(b.N), "plugin-pause-µs")
}

// TestPluginNamespaces: a service in its own PID and mount namespaces (as
// in a container), whose agent directory the host cannot see: the CLI
// finds its socket through /proc/PID/root under the PID the service has
// in its namespace, and hands it the plugin as an open file.
func TestPluginNamespaces(t *testing.T) {
	needPluginTools(t)
	unshare, err := exec.LookPath("unshare")
	if err != nil || os.Getuid() != 0 {
		t.Skip("needs root and unshare (util-linux) to run the service in its own namespaces")
	}
	bin := buildPlugin(t, "patch/agent/testdata/svc", nil, trimpath...)
	fix := buildPlugin(t, "examples/pluginfix/fix", nil, asPlugin...)
	dir := fmt.Sprintf("/tmp/hotpatch-agent-%d", os.Getuid())
	require.NoError(t, os.MkdirAll(dir, 0o700))
	// A private tmpfs over the agents' directory, seen by the service only.
	script := fmt.Sprintf("mount -t tmpfs -o mode=0700 tmpfs %s && exec %s", dir, bin)
	cmd := exec.Command(unshare, "--pid", "--fork", "--mount", "--mount-proc", "--propagation", "private", "sh", "-c", script)
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	var log strings.Builder
	cmd.Stderr = &lockedWriter{w: &log}
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	line, err := bufio.NewReader(stdout).ReadString('\n')
	require.NoError(t, err, "service log:\n%s", log.String())
	svc := &service{addr: strings.TrimSpace(strings.TrimPrefix(line, "listening on ")), log: &log}
	go io.Copy(io.Discard, stdout)
	// The service is the child of unshare's fork: its host PID.
	children, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", cmd.Process.Pid, cmd.Process.Pid))
	require.NoError(t, err)
	svc.pid, err = strconv.Atoi(strings.TrimSpace(string(children)))
	require.NoError(t, err, "children of unshare: %q", children)
	t.Cleanup(func() { syscall.Kill(svc.pid, syscall.SIGKILL) })
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", svc.pid))
	require.NoError(t, err)
	require.Regexp(t, fmt.Sprintf(`NSpid:\s+%d\s+1\n`, svc.pid), string(status), "PID 1 in its namespace")
	_, err = os.Stat(filepath.Join(dir, "1.sock"))
	require.ErrorIs(t, err, os.ErrNotExist, "the host does not see its socket")

	require.Equal(t, "Helo, Ada!", svc.mustGet(t, "/greet?name=Ada"))
	res, errOut, code := applyPluginJSON(t, svc.pid, fix)
	require.Equal(t, 0, code, errOut)
	require.Equal(t, "Hello, Ada!", svc.mustGet(t, "/greet?name=Ada"))
	_, errOut, code = hp(t, "revert", "--pid", fmt.Sprint(svc.pid), "--id", res.ID)
	require.Equal(t, 0, code, errOut)
	require.Equal(t, "Helo, Ada!", svc.mustGet(t, "/greet?name=Ada"))
}

// TestPluginSupersede: fix v1 (a wrap) goes in through the agent, then fix
// v2 (a plain replacement) supersedes it with --supersede under HTTP load.
// No request started after v1's apply returned and before v2's revert
// began is answered by the original; reverting v2 brings the original
// back (not v1); no request fails.
func TestPluginSupersede(t *testing.T) {
	needPluginTools(t)
	svc := testSvc(t)
	v1 := buildPlugin(t, "patch/agent/testdata/wrapfix", nil, asPlugin...)
	v2 := buildPlugin(t, "examples/pluginfix/fix", nil, asPlugin...)
	const path = "/greet?name=Ada"
	const original, fixV1, fixV2 = "Helo, Ada!", "Hello, Ada! (wrapped)", "Hello, Ada!"
	require.Equal(t, original, svc.mustGet(t, path))

	var phase atomic.Int32 // 1 from v1 applied to v2's revert
	var mu sync.Mutex
	inPhase1 := map[string]int{}
	var failed atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range loadClients() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				p := phase.Load()
				b, err := svc.get(path)
				if err != nil {
					failed.Add(1)
					continue
				}
				if p == 1 {
					mu.Lock()
					inPhase1[b]++
					mu.Unlock()
				}
			}
		}()
	}
	time.Sleep(100 * time.Millisecond)
	r1, errOut, code := applyPluginJSON(t, svc.pid, v1)
	require.Equal(t, 0, code, errOut)
	phase.Store(1)
	time.Sleep(200 * time.Millisecond)
	out, errOut, code := hp(t, "apply", "--pid", fmt.Sprint(svc.pid), "--plugin", v2, "--supersede", r1.ID, "--json")
	require.Equal(t, 0, code, errOut)
	r2 := parseApply(t, out, errOut)
	require.Equal(t, r1.ID, r2.Superseded, out)
	time.Sleep(200 * time.Millisecond)
	require.Equal(t, fixV2, svc.mustGet(t, path))

	st, errOut, code := hp(t, "status", "--pid", fmt.Sprint(svc.pid), "--json")
	require.Equal(t, 0, code, errOut)
	require.NotRegexp(t, `"id":\s*"`+r1.ID+`"`, st, "v1's record is gone")
	require.Regexp(t, `"supersedes":\s*"`+r1.ID+`"`, st)

	phase.Store(2)
	_, errOut, code = hp(t, "revert", "--pid", fmt.Sprint(svc.pid), "--id", r2.ID)
	require.Equal(t, 0, code, errOut)
	require.Equal(t, original, svc.mustGet(t, path), "reverting v2 brings the original back")
	close(stop)
	wg.Wait()
	require.Zero(t, failed.Load(), "failed requests")
	require.Zero(t, inPhase1[original], "answers between v1 and v2's revert: %v", inPhase1)
	require.Positive(t, inPhase1[fixV1], "answers: %v", inPhase1)
	require.Positive(t, inPhase1[fixV2], "answers: %v", inPhase1)
}
