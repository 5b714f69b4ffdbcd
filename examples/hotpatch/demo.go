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
	d := &demo{ctx: ctx, stdout: stdout, stderr: stderr, cancel: cancel}
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
	d.say("== hotpatch demo: fix a live Go service without restarting it ==")
	d.say("")
	svc, err := d.start(dir)
	if err != nil {
		return err
	}
	defer func() { svc.Process.Kill(); svc.Wait() }()

	d.say("2. Load: 4 clients call the service continuously for the rest of the demo.")
	d.load = startDemoLoad(ctx, d.url, "Hello,")
	defer d.load.stop()
	sleep(ctx, 300*time.Millisecond)
	d.say("   %d requests served so far, %d failed", d.load.ok.Load(), d.load.failed.Load())
	d.say("")
	id, err := d.apply()
	if err == nil {
		err = d.status()
	}
	if err == nil {
		err = d.revert(id)
	}
	d.load.stop()
	if err != nil {
		return err
	}
	return d.summary(svc)
}

// demo is the state of the demo's steps: the service (pid, url), and the
// load on it.
type demo struct {
	ctx            context.Context
	stdout, stderr io.Writer
	cancel         context.CancelCauseFunc
	pid            int
	url            string
	load           *demoLoad
}

// say prints a line of the demo; a failed write ends it.
func (d *demo) say(format string, a ...any) {
	if _, err := fmt.Fprintf(d.stdout, format+"\n", a...); err != nil {
		d.cancel(fmt.Errorf("demo: output closed: %w", err))
	}
}

func (d *demo) hello() string { return demoGet(d.ctx, d.url) }

// start is step 1: build the service in dir, start it and show the bug.
// The caller kills the service.
func (d *demo) start(dir string) (*exec.Cmd, error) {
	d.say("1. Building the demo service (examples/hotpatch/demosvc): an HTTP greeter that")
	d.say("   shipped with a typo in main.greeting; main.greetingFixed is the fix.")
	bin, err := buildDemo(d.ctx, dir)
	if err != nil {
		return nil, err
	}
	svc := exec.Command(bin)
	svc.Stderr = d.stderr
	// No PR_SET_PDEATHSIG here: it fires when the *thread* that forked
	// exits, and the tracer's thread (runtime.LockOSThread, which exits
	// with its Target) may be that thread: the service would die as soon
	// as the apply's Target is closed. Every way the demo ends but SIGKILL
	// kills the service (cmdDemo).
	out, err := svc.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := svc.Start(); err != nil {
		return nil, fmt.Errorf("demo: start service: %w", err)
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	m := regexp.MustCompile(`ready pid=(\d+) addr=(\S+)`).FindStringSubmatch(line)
	if err != nil || m == nil {
		svc.Process.Kill()
		svc.Wait()
		return nil, fmt.Errorf("demo: service did not start (%v): %q", err, line)
	}
	d.pid, d.url = svc.Process.Pid, "http://"+m[2]+"/hello?name=operator"
	d.say("   started: pid %d, serving %s", d.pid, d.url)
	d.say("   GET -> %q   <- the bug", d.hello())
	d.say("")
	return svc, nil
}

// apply is step 3: the fix applied under load; it returns the patch's ID.
func (d *demo) apply() (string, error) {
	d.say("3. hotpatch apply --pid %d --replace main.greeting=main.greetingFixed", d.pid)
	t, err := patch.Attach(d.pid, nil)
	if err != nil {
		return "", err
	}
	res, err := t.Apply(d.ctx, []patch.Replacement{{Old: "main.greeting", New: "main.greetingFixed"}}, patch.ApplyOptions{Timeout: 10 * time.Second})
	t.Close() // as the apply command exits: one tool holds a target at a time
	if err != nil {
		return "", err
	}
	f := res.Functions[0]
	d.say("   applied %s: the service was stopped for %d us (%d attempt(s)),", res.ID, res.PauseMicros, res.Attempts)
	d.say("   every thread's and every goroutine's stack was checked (none was in main.greeting), then %d bytes (a jump to the fix) were written at %#x.", len(f.Jump), f.PatchAddr)
	d.say("   GET -> %q   <- fixed, same process, no restart", d.hello())
	d.say("")
	return res.ID, nil
}

// status is step 4: a second process (this program's status command)
// reads the record from the target.
func (d *demo) status() error {
	d.say("4. hotpatch status --pid %d   (a second process reads the record from the target)", d.pid)
	self, err := os.Executable()
	if err == nil {
		var buf strings.Builder
		st := exec.CommandContext(d.ctx, self, "status", "--pid", fmt.Sprint(d.pid))
		st.Stdout, st.Stderr = &buf, d.stderr
		err = st.Run()
		for _, l := range strings.Split(strings.TrimRight(buf.String(), "\n"), "\n") {
			d.say("   %s", l)
		}
	}
	if err != nil {
		return fmt.Errorf("demo: status: %w", err)
	}
	sleep(d.ctx, 300*time.Millisecond)
	d.say("")
	return d.ctx.Err()
}

// revert is step 5: the patch reverted under load.
func (d *demo) revert(id string) error {
	d.say("5. hotpatch revert --pid %d --id %s", d.pid, id)
	t, err := patch.Attach(d.pid, nil)
	if err != nil {
		return err
	}
	defer t.Close()
	rr, err := t.Revert(d.ctx, id, patch.ApplyOptions{Timeout: 10 * time.Second})
	if err != nil {
		return err
	}
	d.say("   reverted %s in a pause of %d us; the original bytes are back.", rr.ID, rr.PauseMicros)
	d.say("   GET -> %q   <- the original code again", d.hello())
	sleep(d.ctx, 200*time.Millisecond)
	return nil
}

// summary is step 6, the load stopped: what it saw, and whether the
// service lived through it all.
func (d *demo) summary(svc *exec.Cmd) error {
	ok, failed, fixed := d.load.ok.Load(), d.load.failed.Load(), d.load.fixed.Load()
	d.say("")
	d.say("6. Under load throughout: %d requests served (%d of them by the fix), %d failed.", ok, fixed, failed)
	if svc.Process.Signal(syscall.Signal(0)) != nil {
		return fmt.Errorf("demo: the service died")
	}
	if d.ctx.Err() != nil {
		return d.ctx.Err()
	}
	if failed > 0 {
		return fmt.Errorf("demo: %d requests failed", failed)
	}
	d.say("   The service never restarted: pid %d is still serving.", d.pid)
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
