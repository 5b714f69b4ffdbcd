package main

import (
	"bufio"
	"context"
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

	"github.com/hotpatch-dev/hotpatch/internal/fixture"
)

// docCommand is one "$ hotpatch ..." line of a how-to.
type docCommand struct {
	line string
	args []string
	code int // "# exit N", else 0
}

var exitComment = regexp.MustCompile(`#\s*exit (\d+)\s*$`)

// docCommands reads the "$ " lines of the ```sh blocks of a how-to.
func docCommands(t *testing.T, path string) []docCommand {
	b, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		t.Skipf("%s is not here (the arm64 VM lane ships no docs)", path)
	}
	require.NoError(t, err)
	var cmds []docCommand
	inSh := false
	for _, l := range strings.Split(string(b), "\n") {
		switch {
		case strings.HasPrefix(l, "```"):
			inSh = !inSh && strings.TrimPrefix(l, "```") == "sh"
		case inSh && strings.HasPrefix(l, "$ "):
			c := docCommand{line: l}
			text := strings.TrimPrefix(l, "$ ")
			if m := exitComment.FindStringSubmatch(text); m != nil {
				c.code, _ = strconv.Atoi(m[1])
				text = text[:len(text)-len(m[0])]
			}
			c.args = strings.Fields(text)
			require.Equal(t, "hotpatch", c.args[0], l)
			cmds = append(cmds, c)
		}
	}
	require.NotEmpty(t, cmds, "%s has commands", path)
	return cmds
}

// TestDocs runs the commands of each how-to in docs/, in order, against a
// live target ($PID, its executable $EXE), each with the exit status the
// doc states.
func TestDocs(t *testing.T) {
	tests := []struct {
		doc   string
		start func(t *testing.T) int
	}{
		{"operator.md", startCService},
		{"test-suite.md", startCService},
		{"go-service.md", startDemoService},
	}
	for _, tt := range tests {
		t.Run(tt.doc, func(t *testing.T) {
			cmds := docCommands(t, filepath.Join("..", "..", "docs", tt.doc))
			pid := fmt.Sprint(tt.start(t))
			exe, err := os.Readlink("/proc/" + pid + "/exe") // $EXE: the target's executable
			require.NoError(t, err)
			vars := strings.NewReplacer("$PID", pid, "$EXE", exe)
			for _, c := range cmds {
				args := make([]string, 0, len(c.args)-1)
				for _, a := range c.args[1:] {
					args = append(args, vars.Replace(a))
				}
				out, errOut, code := hotpatch(t, args...)
				require.Equal(t, c.code, code, "%s\nstdout:\n%s\nstderr:\n%s", c.line, out, errOut)
			}
			out, _, _ := hotpatch(t, "status", "--pid", pid)
			require.Contains(t, out, "no patches", "the how-to leaves the target as it found it")
		})
	}
}

func startCService(t *testing.T) int {
	p := fixture.Start(t, fixture.BuildC(t, "cservice", "-O2"))
	p.Expect(t, regexp.MustCompile(`^result 2`), 10*time.Second)
	return p.Pid
}

// startDemoService builds and starts examples/hotpatch/demosvc.
func startDemoService(t *testing.T) int {
	bin, err := buildDemo(context.Background(), t.TempDir())
	require.NoError(t, err)
	cmd := exec.Command(bin)
	out, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	require.NoError(t, err)
	require.Contains(t, line, "ready pid=")
	return cmd.Process.Pid
}
