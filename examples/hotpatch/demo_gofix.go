package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"time"
)

// modulePath is hotpatch's module: demo --go-fix builds its example from
// a checkout of it.
const modulePath = "github.com/hotpatch-dev/hotpatch"

// demoGoFix is demo --go-fix: the Go service of examples/pluginfix (an
// HTTP greeter with a typo, and the hotpatch agent) is fixed live, under
// load, by the Go plugin examples/pluginfix/fix, through the same commands
// an operator types (apply --plugin, status, revert), then reverted.
func demoGoFix(ctx context.Context, stdout, stderr io.Writer) error {
	say := func(format string, a ...any) { fmt.Fprintf(stdout, format+"\n", a...) }
	root, err := checkoutRoot(ctx)
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "hotpatch-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}

	say("== hotpatch demo --go-fix: new Go code into a live Go service ==")
	say("")
	say("1. Building examples/pluginfix: the service (an HTTP greeter with a typo in")
	say("   main.greeting, and the hotpatch agent) and the fix, a Go plugin, with the same")
	say("   toolchain, modules and -trimpath:")
	svcBin, fix := filepath.Join(dir, "service"), filepath.Join(dir, "fix.so")
	for _, b := range [][]string{
		{"build", "-trimpath", "-o", svcBin, "./examples/pluginfix/service"},
		{"build", "-trimpath", "-buildmode=plugin", "-o", fix, "./examples/pluginfix/fix"},
	} {
		say("   go %s", strings.Join(b, " "))
		cmd := exec.CommandContext(ctx, "go", b...)
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=1") // plugins need cgo
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("demo: go %s: %v (Go plugins need cgo: a C compiler)\n%s", strings.Join(b, " "), err, out)
		}
	}
	svc := exec.Command(svcBin)
	svc.Stderr = stderr
	out, err := svc.StdoutPipe()
	if err != nil {
		return err
	}
	if err := svc.Start(); err != nil {
		return fmt.Errorf("demo: start service: %w", err)
	}
	defer func() { svc.Process.Kill(); svc.Wait() }()
	line, err := bufio.NewReader(out).ReadString('\n')
	m := regexp.MustCompile(`listening on (\S+)`).FindStringSubmatch(line)
	if err != nil || m == nil {
		return fmt.Errorf("demo: service did not start (%v): %q", err, line)
	}
	pid, url := svc.Process.Pid, "http://"+m[1]+"/greet?name=operator"
	say("   started: pid %d, serving %s", pid, url)
	say("   GET -> %q   <- the bug", demoGet(ctx, url))
	say("")

	say("2. Load: 4 clients call the service continuously for the rest of the demo.")
	load := startDemoLoad(ctx, url, "Hello,")
	defer load.stop()
	sleep(ctx, 300*time.Millisecond)
	say("")

	run := func(args ...string) (string, error) {
		say("$ hotpatch %s", strings.Join(args, " "))
		var buf bytes.Buffer
		cmd := exec.CommandContext(ctx, self, args...)
		cmd.Stdout, cmd.Stderr = &buf, &buf
		err := cmd.Run()
		for _, l := range strings.Split(strings.TrimRight(buf.String(), "\n"), "\n") {
			say("   %s", l)
		}
		return buf.String(), err
	}
	say("3. The operator hands the plugin to the service's agent, which checks it (toolchain,")
	say("   module versions, types), loads it, stops the service, checks every goroutine's stack")
	say("   and writes the jump:")
	applied, err := run("apply", "--pid", fmt.Sprint(pid), "--plugin", fix)
	if err != nil {
		return fmt.Errorf("demo: apply --plugin: %w", err)
	}
	id := regexp.MustCompile(`hp-[0-9a-f]{8}`).FindString(applied)
	say("   GET -> %q   <- fixed by Go code that was not in the binary", demoGet(ctx, url))
	say("")
	say("4. A second process reads the record from the service:")
	if _, err := run("status", "--pid", fmt.Sprint(pid)); err != nil {
		return fmt.Errorf("demo: status: %w", err)
	}
	sleep(ctx, 300*time.Millisecond)
	say("")
	say("5. Revert (the plugin stays loaded, unused: Go cannot unload one):")
	if _, err := run("revert", "--pid", fmt.Sprint(pid), "--id", id); err != nil {
		return fmt.Errorf("demo: revert: %w", err)
	}
	say("   GET -> %q   <- the original code again", demoGet(ctx, url))
	sleep(ctx, 200*time.Millisecond)
	load.stop()
	say("")
	say("6. Under load throughout: %d requests served (%d of them by the fix), %d failed.", load.ok.Load(), load.fixed.Load(), load.failed.Load())
	if svc.Process.Signal(syscall.Signal(0)) != nil {
		return fmt.Errorf("demo: the service died")
	}
	if n := load.failed.Load(); n > 0 {
		return fmt.Errorf("demo: %d requests failed", n)
	}
	say("   The service never restarted: pid %d is still serving.", pid)
	return nil
}

// checkoutRoot is the root of the hotpatch checkout the current directory
// is in.
func checkoutRoot(ctx context.Context) (string, error) {
	hint := fmt.Errorf("demo --go-fix builds examples/pluginfix from hotpatch's source: run it inside a checkout (go run ./examples/hotpatch demo --go-fix)")
	out, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("demo: go env GOMOD: %w; %w", err, hint)
	}
	gomod := strings.TrimSpace(string(out))
	data, err := os.ReadFile(gomod)
	if err != nil || !bytes.HasPrefix(data, []byte("module "+modulePath+"\n")) {
		return "", fmt.Errorf("demo: %q is not hotpatch's go.mod; %w", gomod, hint)
	}
	return filepath.Dir(gomod), nil
}
