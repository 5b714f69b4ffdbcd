package main

import (
	"bufio"
	"context"
	_ "embed"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hotpatch-dev/hotpatch/patch"
)

//go:embed demosvc/main.go
var demoSource []byte

// cmdDemo builds the bundled greeter service, starts it, fixes its typo live
// while clients keep calling it, shows the patch from a second process, and
// reverts it.
//
// It aborts cleanly on Ctrl-C, SIGTERM and a closed output pipe: the
// service is killed and the temporary directory removed.
func cmdDemo(ctx context.Context, args []string, stdout, stderr io.Writer) (err error) {
	c := newFlags("demo", stdout, false, false, false)
	goFix := c.fs.Bool("go-fix", false, "fix the Go service of examples/pluginfix with a Go plugin through its agent (hotpatch apply --plugin), from a hotpatch source checkout")
	if err := c.parse(args); err != nil {
		return err
	}
	if *goFix {
		return demoGoFix(ctx, stdout, stderr)
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	// A write to a closed pipe returns EPIPE instead of killing the demo
	// before it cleans up; the failed write ends the demo.
	sigpipe := make(chan os.Signal, 1)
	signal.Notify(sigpipe, syscall.SIGPIPE)
	defer signal.Stop(sigpipe)
	say := func(format string, a ...any) {
		if _, err := fmt.Fprintf(stdout, format+"\n", a...); err != nil {
			cancel(fmt.Errorf("demo: output closed: %w", err))
		}
	}
	defer func() {
		if ctx.Err() != nil {
			err = fmt.Errorf("demo: stopped (%w); the service was killed and its files removed", context.Cause(ctx))
		}
	}()
	dir, err := os.MkdirTemp("", "hotpatch-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	say("== hotpatch demo: fix a live Go service without restarting it ==")
	say("")
	say("1. Building the demo service (examples/hotpatch/demosvc): an HTTP greeter that")
	say("   shipped with a typo in main.greeting; main.greetingFixed is the fix.")
	bin, err := buildDemo(ctx, dir)
	if err != nil {
		return err
	}
	svc := exec.Command(bin)
	svc.Stderr = stderr
	// No PR_SET_PDEATHSIG here: it fires when the *thread* that forked
	// exits, and the tracer's thread (runtime.LockOSThread, which exits
	// with its Target) may be that thread: the service would die as soon
	// as the apply's Target is closed. Every way the demo ends but SIGKILL
	// kills the service below.
	out, err := svc.StdoutPipe()
	if err != nil {
		return err
	}
	if err := svc.Start(); err != nil {
		return fmt.Errorf("demo: start service: %w", err)
	}
	defer func() { svc.Process.Kill(); svc.Wait() }()
	line, err := bufio.NewReader(out).ReadString('\n')
	m := regexp.MustCompile(`ready pid=(\d+) addr=(\S+)`).FindStringSubmatch(line)
	if err != nil || m == nil {
		return fmt.Errorf("demo: service did not start (%v): %q", err, line)
	}
	pid, url := svc.Process.Pid, "http://"+m[2]+"/hello?name=operator"
	say("   started: pid %d, serving %s", pid, url)
	hello := func() string { return demoGet(ctx, url) }
	say("   GET -> %q   <- the bug", hello())
	say("")

	say("2. Load: 4 clients call the service continuously for the rest of the demo.")
	load := startDemoLoad(ctx, url, "Hello,")
	defer load.stop()
	ok, failed, fixed := &load.ok, &load.failed, &load.fixed
	stopLoad := load.stop
	sleep(ctx, 300*time.Millisecond)
	say("   %d requests served so far, %d failed", ok.Load(), failed.Load())
	say("")

	say("3. hotpatch apply --pid %d --replace main.greeting=main.greetingFixed", pid)
	t, err := patch.Attach(pid, nil)
	if err != nil {
		stopLoad()
		return err
	}
	res, err := t.Apply(ctx, []patch.Replacement{{Old: "main.greeting", New: "main.greetingFixed"}}, patch.ApplyOptions{Timeout: 10 * time.Second})
	t.Close() // as the apply command exits: one tool holds a target at a time
	if err != nil {
		stopLoad()
		return err
	}
	f := res.Functions[0]
	say("   applied %s: the service was stopped for %d us (%d attempt(s)),", res.ID, res.PauseMicros, res.Attempts)
	say("   every thread's and every goroutine's stack was checked (none was in main.greeting), then %d bytes (a jump to the fix) were written at %#x.", len(f.Jump), f.PatchAddr)
	say("   GET -> %q   <- fixed, same process, no restart", hello())
	say("")

	say("4. hotpatch status --pid %d   (a second process reads the record from the target)", pid)
	self, err := os.Executable()
	if err == nil {
		var buf strings.Builder
		st := exec.CommandContext(ctx, self, "status", "--pid", fmt.Sprint(pid))
		st.Stdout, st.Stderr = &buf, stderr
		err = st.Run()
		for _, l := range strings.Split(strings.TrimRight(buf.String(), "\n"), "\n") {
			say("   %s", l)
		}
	}
	if err != nil {
		stopLoad()
		return fmt.Errorf("demo: status: %w", err)
	}
	sleep(ctx, 300*time.Millisecond)
	say("")
	if ctx.Err() != nil {
		return ctx.Err()
	}

	say("5. hotpatch revert --pid %d --id %s", pid, res.ID)
	if t, err = patch.Attach(pid, nil); err != nil {
		stopLoad()
		return err
	}
	defer t.Close()
	rr, err := t.Revert(ctx, res.ID, patch.ApplyOptions{Timeout: 10 * time.Second})
	if err != nil {
		stopLoad()
		return err
	}
	say("   reverted %s in a pause of %d us; the original bytes are back.", rr.ID, rr.PauseMicros)
	say("   GET -> %q   <- the original code again", hello())
	sleep(ctx, 200*time.Millisecond)
	stopLoad()
	say("")
	say("6. Under load throughout: %d requests served (%d of them by the fix), %d failed.", ok.Load(), fixed.Load(), failed.Load())
	if svc.Process.Signal(syscall.Signal(0)) != nil {
		return fmt.Errorf("demo: the service died")
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if failed.Load() > 0 {
		return fmt.Errorf("demo: %d requests failed", failed.Load())
	}
	say("   The service never restarted: pid %d is still serving.", pid)
	return nil
}

// envDemoService names a prebuilt demo service (examples/hotpatch/demosvc)
// for a machine without a Go toolchain (the arm64 VM lane).
const envDemoService = "HOTPATCH_DEMO_SERVICE"

// sleep waits for d or until ctx is done.
func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

func buildDemo(ctx context.Context, dir string) (string, error) {
	if bin := os.Getenv(envDemoService); bin != "" {
		return bin, nil
	}
	src := filepath.Join(dir, "src")
	if err := os.MkdirAll(src, 0o755); err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(src, "main.go"), demoSource, 0o644); err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(src, "go.mod"), []byte("module demosvc\n\ngo 1.22\n"), 0o644); err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "demosvc")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, ".")
	cmd.Dir = src
	cmd.Env = append(os.Environ(), "GOWORK=off", "GOFLAGS=-mod=mod")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("demo: go build the service: %v\n%s", err, out)
	}
	return bin, nil
}

// demoClient is the demo's HTTP client.
var demoClient = &http.Client{Timeout: 5 * time.Second}

// demoGet returns the body of a GET of url, or the error as text.
func demoGet(ctx context.Context, url string) string {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "error: " + err.Error()
	}
	resp, err := demoClient.Do(req)
	if err != nil {
		return "error: " + err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return strings.TrimSpace(string(b))
}

// demoLoad is 4 clients calling url until stop: the requests served, those
// answered with the fix (a body starting with fixedPrefix) and the failed.
type demoLoad struct {
	ok, failed, fixed atomic.Int64
	cancel            context.CancelFunc
	wg                sync.WaitGroup
}

func startDemoLoad(ctx context.Context, url, fixedPrefix string) *demoLoad {
	l := &demoLoad{}
	ctx, l.cancel = context.WithCancel(ctx)
	for i := 0; i < 4; i++ {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for ctx.Err() == nil {
				req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
				resp, err := demoClient.Do(req)
				if err != nil {
					if ctx.Err() == nil {
						l.failed.Add(1)
					}
					continue
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					l.failed.Add(1)
					continue
				}
				l.ok.Add(1)
				if strings.HasPrefix(string(b), fixedPrefix) {
					l.fixed.Add(1)
				}
			}
		}()
	}
	return l
}

// stop ends the load and waits for its clients.
func (l *demoLoad) stop() {
	l.cancel()
	l.wg.Wait()
}
