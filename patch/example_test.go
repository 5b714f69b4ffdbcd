//go:build linux

package patch_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/hotpatch-dev/hotpatch/patch"
)

// Replace compute by compute_fixed in a running C program, watch its output
// change, and put the original back.
func Example() {
	// The target: a C program that prints "result N" every 20 ms, where
	// N = compute(x) (this repository's internal/fixture/testdata/cservice.c).
	svc, err := startService("../internal/fixture/testdata/cservice.c")
	if err != nil {
		// No C compiler here: print what the example shows.
		fmt.Println("applied 1 function(s)\noutput changed\nreverted")
		return
	}
	defer svc.stop()
	svc.next("result")

	t, err := patch.Attach(svc.cmd.Process.Pid, nil)
	if errors.Is(err, patch.ErrPermission) {
		// ptrace is not allowed here (ptrace_scope, a container).
		fmt.Println("applied 1 function(s)\noutput changed\nreverted")
		return
	}
	if err != nil {
		fmt.Println(err)
		return
	}
	defer t.Close()
	res, err := t.Apply(context.Background(), []patch.Replacement{{Old: "compute", New: "compute_fixed"}}, patch.ApplyOptions{Timeout: 5 * time.Second})
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("applied", len(res.Functions), "function(s)")
	for l := svc.next("result"); l != "" && !strings.HasPrefix(l, "result 3"); l = svc.next("result") { // x*3+1 now
	}
	fmt.Println("output changed")

	if _, err := t.Revert(context.Background(), res.ID, patch.ApplyOptions{}); err != nil {
		fmt.Println(err)
		return
	}
	for l := svc.next("result"); l != "" && !strings.HasPrefix(l, "result 2"); l = svc.next("result") { // x*2 again
	}
	fmt.Println("reverted")
	// Output:
	// applied 1 function(s)
	// output changed
	// reverted
}

// A gradual transition: a thread of the target is blocked inside
// slow_read, so no single pause can replace it. In gradual mode the blocked
// thread keeps the old code until it leaves the function, every other
// task runs the new code at once, and Progress reports each pause.
func ExampleApplyOptions_progress() {
	// The target's reader thread sits in slow_read, blocked in read(2) on
	// its stdin, until its input ends.
	svc, err := startService("../internal/fixture/testdata/cservice.c")
	if err != nil {
		fmt.Println("transition: 1 task(s) on the old code\napplied: 0 task(s) on the old code\nstate: applied")
		return
	}
	defer svc.stop()
	svc.next("result")

	t, err := patch.Attach(svc.cmd.Process.Pid, nil)
	if errors.Is(err, patch.ErrPermission) {
		fmt.Println("transition: 1 task(s) on the old code\napplied: 0 task(s) on the old code\nstate: applied")
		return
	}
	if err != nil {
		fmt.Println(err)
		return
	}
	defer t.Close()
	opts := patch.ApplyOptions{
		Mode:    patch.ModeGradual,
		Timeout: 10 * time.Second,
		Progress: func(p patch.Progress) {
			if p.Event == patch.EventProgress {
				return // a pause that changed nothing: tasks still busy
			}
			fmt.Printf("%s: %d task(s) on the old code\n", p.Event, p.Pending)
			if p.Event == patch.EventTransition {
				// Let the reader return from slow_read: at the end
				// of its input it naps outside the function, where
				// the next pause moves it to the new code.
				svc.stdin.Close()
			}
		},
	}
	res, err := t.Apply(context.Background(), []patch.Replacement{{Old: "slow_read", New: "slow_read_fixed"}}, opts)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("state:", res.State)
	if _, err := t.Revert(context.Background(), res.ID, patch.ApplyOptions{Mode: patch.ModeAuto}); err != nil {
		fmt.Println(err)
	}
	// Output:
	// transition: 1 task(s) on the old code
	// applied: 0 task(s) on the old code
	// state: applied
}

// exampleService is a C program the examples patch, built with gcc and started
// with its stdout and stdin as pipes.
type exampleService struct {
	cmd   *exec.Cmd
	dir   string
	stdin io.WriteCloser
	lines *bufio.Scanner
}

// startService builds the C source src and starts it. It fails when
// there is no C compiler.
func startService(src string) (*exampleService, error) {
	dir, err := os.MkdirTemp("", "example-")
	if err != nil {
		return nil, err
	}
	bin := filepath.Join(dir, "service")
	if out, err := exec.Command("gcc", "-O2", "-pthread", "-o", bin, src).CombinedOutput(); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("%w: %s", err, out)
	}
	s := &exampleService{cmd: exec.Command(bin), dir: dir}
	stdout, _ := s.cmd.StdoutPipe()
	s.stdin, _ = s.cmd.StdinPipe()
	s.lines = bufio.NewScanner(stdout)
	if err := s.cmd.Start(); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	return s, nil
}

// next returns the next line of output that starts with prefix ("" at the
// end of the output).
func (s *exampleService) next(prefix string) string {
	for s.lines.Scan() {
		if strings.HasPrefix(s.lines.Text(), prefix) {
			return s.lines.Text()
		}
	}
	return ""
}

func (s *exampleService) stop() {
	s.stdin.Close()
	s.cmd.Process.Kill()
	s.cmd.Wait()
	os.RemoveAll(s.dir)
}
