package tracee

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestOpenLock: a process is held by one Process at a time, across
// programs. A second Open waits as long as it was told, then names the
// holder; the lock goes with its holder, killed or closed.
func TestOpenLock(t *testing.T) {
	tg := startFixture(t, 1)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"=tracer", fmt.Sprintf("TRACEE_TEST_PID=%d", tg.pid))
	startTarget(t, cmd) // holds the target (and keeps it stopped)

	start := time.Now()
	_, err := Open(tg.pid, LockWait(150*time.Millisecond))
	require.ErrorIs(t, err, ErrBusy)
	assert.GreaterOrEqual(t, time.Since(start), 150*time.Millisecond, "it waited")
	var be *BusyError
	require.True(t, errors.As(err, &be))
	assert.Equal(t, cmd.Process.Pid, be.Holder, "the holder is named")
	assert.Contains(t, err.Error(), fmt.Sprintf("process %d", cmd.Process.Pid))

	// Killed, the holder lets go: a waiting Open gets the process.
	go func() {
		time.Sleep(100 * time.Millisecond)
		cmd.Process.Kill()
	}()
	p, err := Open(tg.pid, LockWait(safety))
	require.NoError(t, err)
	_, err = Open(tg.pid)
	require.ErrorIs(t, err, ErrBusy, "no wait: refused at once")
	require.NoError(t, p.Close())
	p2 := openT(t, tg.pid) // closed, it lets go too
	require.NoError(t, p2.Stop())
	require.NoError(t, p2.Resume())
}

// TestOpenPIDReuse: once the process exits and another takes its PID, the
// Process refuses to stop or read it, and leaves the newcomer running.
func TestOpenPIDReuse(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to choose the next PID (/proc/sys/kernel/ns_last_pid)")
	}
	bin := fixtureBin(t)
	for try := 0; try < 20; try++ {
		old := startTarget(t, exec.Command(bin, "1"))
		p := openT(t, old.pid)
		old.Kill()
		old.Wait()
		// The next PID the kernel hands out is old.pid (unless another
		// process of this machine takes it first: then try again).
		if err := os.WriteFile("/proc/sys/kernel/ns_last_pid", []byte(strconv.Itoa(old.pid-1)), 0); err != nil {
			t.Skipf("cannot choose the next PID: %v", err)
		}
		newer := startTarget(t, exec.Command(bin, "1"))
		if newer.pid != old.pid {
			newer.Kill()
			continue
		}
		m := newer.mark()
		err := p.Stop()
		require.ErrorIs(t, err, ErrPIDReused)
		require.ErrorIs(t, err, ErrExited)
		assert.False(t, p.Stopped())
		var b [8]byte
		require.ErrorIs(t, p.ReadMany([]uint64{textMapping(t, newer.pid)}, [][]byte{b[:]}), ErrPIDReused)
		_, err = p.ReadPages([]uint64{textMapping(t, newer.pid)}, [][]byte{b[:]})
		require.ErrorIs(t, err, ErrPIDReused)
		for tid, st := range threadStates(t, newer.pid) {
			assert.NotEqual(t, "t", string(st), "thread %d of the newcomer stopped", tid)
		}
		newer.waitBeats(m, fixtureBeats(1)...)
		return
	}
	t.Skip("another process took the PID 20 times")
}

// TestOpenNotUserProcess: a kernel thread and a zombie are named as what
// they are, not "no such process".
func TestOpenNotUserProcess(t *testing.T) {
	t.Run("kernel thread", func(t *testing.T) {
		pid := kernelThread(t)
		_, err := Open(pid)
		require.ErrorIs(t, err, ErrKernelThread)
		assert.Contains(t, err.Error(), "kernel thread")
	})
	t.Run("zombie", func(t *testing.T) {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		require.NoError(t, cmd.Start()) // exits at once; not reaped until Wait
		t.Cleanup(func() { cmd.Wait() })
		deadline := time.Now().Add(safety)
		for {
			b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", cmd.Process.Pid))
			require.NoError(t, err)
			if fs, _ := statFields(b); len(fs) > 0 && fs[0] == "Z" {
				break
			}
			require.True(t, time.Now().Before(deadline), "no zombie")
			time.Sleep(5 * time.Millisecond)
		}
		_, err := Open(cmd.Process.Pid)
		require.ErrorIs(t, err, ErrExited)
		assert.Contains(t, err.Error(), "zombie")
	})
}

// kernelThread returns the PID of a kernel thread of this machine.
func kernelThread(t *testing.T) int {
	ents, err := os.ReadDir("/proc")
	require.NoError(t, err)
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		fs, err := statFields(b)
		if err != nil || len(fs) < 7 {
			continue
		}
		if flags, err := strconv.ParseUint(fs[6], 10, 64); err == nil && flags&pfKthread != 0 && !strings.HasPrefix(fs[0], "Z") {
			return pid
		}
	}
	t.Skip("no kernel thread is visible in this PID namespace")
	return 0
}
