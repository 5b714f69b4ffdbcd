//go:build linux

package patch_test

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/hotpatch-dev/hotpatch/internal/fixture"
	"github.com/hotpatch-dev/hotpatch/patch"
)

// Replace compute by compute_fixed in a running C program, watch its output
// change, and put the original back.
func Example() {
	// A target: the C fixture, which prints "result N" where N = compute(x).
	dir, _ := os.MkdirTemp("", "example-")
	defer os.RemoveAll(dir)
	bin := filepath.Join(dir, "cservice")
	if out, err := exec.Command("gcc", "-O2", "-pthread", "-o", bin, filepath.Join(fixture.Dir(), "cservice.c")).CombinedOutput(); err != nil {
		fmt.Println(err, string(out))
		return
	}
	cmd := exec.Command(bin)
	stdout, _ := cmd.StdoutPipe()
	stdin, _ := cmd.StdinPipe() // keep its reader thread blocked
	defer stdin.Close()
	cmd.Start()
	defer cmd.Process.Kill()
	lines := bufio.NewScanner(stdout)
	next := func(prefix string) string {
		for lines.Scan() {
			if strings.HasPrefix(lines.Text(), prefix) {
				return lines.Text()
			}
		}
		return ""
	}
	next("result")

	t, err := patch.Attach(cmd.Process.Pid, nil)
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
	for l := next("result"); l != "" && !strings.HasPrefix(l, "result 3"); l = next("result") { // x*3+1 now
	}
	fmt.Println("output changed")

	if _, err := t.Revert(context.Background(), res.ID, patch.ApplyOptions{}); err != nil {
		fmt.Println(err)
		return
	}
	for l := next("result"); l != "" && !strings.HasPrefix(l, "result 2"); l = next("result") { // x*2 again
	}
	fmt.Println("reverted")
	// Output:
	// applied 1 function(s)
	// output changed
	// reverted
}
