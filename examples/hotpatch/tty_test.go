package main

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/hotpatch-dev/hotpatch/internal/fixture"
)

// openPTY returns the master and slave ends of a new pseudo-terminal.
func openPTY(t *testing.T) (master, slave *os.File) {
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pseudo-terminal: %v", err)
	}
	t.Cleanup(func() { m.Close() })
	require.NoError(t, unix.IoctlSetPointerInt(int(m.Fd()), unix.TIOCSPTLCK, 0))
	n, err := unix.IoctlGetInt(int(m.Fd()), unix.TIOCGPTN)
	require.NoError(t, err)
	s, err := os.OpenFile("/dev/pts/"+strconv.Itoa(n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pseudo-terminal (is devpts mounted?): %v", err)
	}
	return m, s
}

// TestCLIProgressTTY: on a terminal a gradual transition keeps one live
// line, rewritten in place, with the elapsed time against --timeout, the
// pending tasks and the oldest blocker.
func TestCLIProgressTTY(t *testing.T) {
	p := fixture.Start(t, fixture.BuildGo(t, "gouniverse", ""))
	pid := fmt.Sprint(p.Pid)
	m := p.Mark()
	fmt.Fprintln(p.Stdin, "start 2")
	p.ExpectAfter(t, m, regexp.MustCompile(`^batch 0 started 2$`), 30*time.Second)
	master, slave := openPTY(t)

	cmd := exec.Command(hotpatchBin, "apply", "--pid", pid, "--mode", "gradual", "--on-timeout", "stay", "--timeout", "1500ms",
		"--replace", "main.serve=main.serveFixed", "--replace", "main.verA=main.verAFixed", "--replace", "main.verB=main.verBFixed")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, slave
	require.NoError(t, cmd.Start())
	slave.Close()
	var tty bytes.Buffer
	copied := make(chan struct{})
	go func() { io.Copy(&tty, master); close(copied) }()
	err := cmd.Wait()
	var ee *exec.ExitError
	require.ErrorAs(t, err, &ee, out.String())
	require.Equal(t, 3, ee.ExitCode(), "left in transition: %s", tty.String())
	select {
	case <-copied: // the slave closed: EIO ends the copy
	case <-time.After(5 * time.Second):
	}
	require.Regexp(t, `\r\x1b\[Khp-[0-9a-f]{8} progress \d+(\.\d+)?m?s/1\.5s: 2 task\(s\) pending, 0 moved so far \(pause \d+ us\), oldest goroutine \d+ \[[^\]]*\] in main\.(serve|verA|verB)\b`, tty.String())
	require.Greater(t, bytes.Count(tty.Bytes(), []byte("\r\x1b[K")), 10, "the line is rewritten at each pause")
	require.Less(t, bytes.Count(tty.Bytes(), []byte("progress")), bytes.Count(tty.Bytes(), []byte("\r\x1b[K"))+1)
}
