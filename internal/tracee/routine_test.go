package tracee

import (
	"encoding/binary"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/hotpatch-dev/hotpatch/internal/arch"
)

// hostArch is the architecture the tests' targets run on.
func hostArch() *arch.Arch {
	if runtime.GOARCH == "arm64" {
		return arch.ARM64
	}
	return arch.AMD64
}

// TestRoutineCompare runs arch.CompareWords in a stopped C process through
// a Routine: it compares words of its own data and of the target's code
// with expected values, some equal and some not, and must report exactly
// the groups that differ; every thread's registers are the same after the
// run as before it (the borrowed one restored, none ran), the target runs
// on, and Unmap leaves its maps as they were. A routine that faults is a
// *CallError and the target runs on.
func TestRoutineCompare(t *testing.T) {
	c := startCall(t)
	before, err := readMaps(c.Pid)
	require.NoError(t, err)
	r, err := c.p.MapRoutine(hostArch().CompareWords, 1<<20)
	require.NoError(t, err)

	le := binary.LittleEndian
	const (
		wordsAt  = 0
		itemsAt  = 4096
		expectAt = 8192
		outAt    = 12288
	)
	own := make([]byte, 64*8)
	for i := range 64 {
		le.PutUint64(own[8*i:], uint64(i)*0x0101010101010101+7)
	}
	require.NoError(t, r.Write(wordsAt, own))
	word := func(i int) uint64 { return le.Uint64(own[8*i:]) }
	code := c.addr(t, "add6")
	codeWords := make([]byte, 16)
	_, err = c.p.ReadAt(codeWords, int64(code))
	require.NoError(t, err)

	var items, expect []uint64
	item := func(addr uint64, want ...uint64) {
		items = append(items, arch.CompareItem(addr, len(want)))
		expect = append(expect, want...)
	}
	end := func() { items = append(items, 0) }
	data := r.Data + wordsAt
	// Group 0: equal. Group 1: one word of its second item differs.
	// Group 2: the target's own code, equal. Group 3: its last word differs.
	item(data, word(0), word(1), word(2))
	end()
	item(data+4*8, word(4))
	item(data+5*8, word(5), word(6)^1<<40)
	end()
	item(code, le.Uint64(codeWords), le.Uint64(codeWords[8:]))
	end()
	item(data+63*8, word(63)+1)
	end()
	put := func(off uint64, ws []uint64) {
		b := make([]byte, 8*len(ws))
		for i, w := range ws {
			le.PutUint64(b[8*i:], w)
		}
		require.NoError(t, r.Write(off, b))
	}
	put(itemsAt, items)
	put(expectAt, expect)
	require.NoError(t, r.Write(outAt, []byte{9, 9, 9, 9, 9}))

	require.NoError(t, c.p.Stop())
	regsBefore, err := c.p.AllRegs()
	require.NoError(t, err)
	changed, err := r.Run(r.Data+itemsAt, r.Data+expectAt, r.Data+outAt, 4)
	require.NoError(t, err)
	regsAfter, err := c.p.AllRegs()
	require.NoError(t, err)
	require.Equal(t, regsBefore, regsAfter, "every thread as it was stopped")
	out := make([]byte, 5)
	_, err = c.p.ReadAt(out, int64(r.Data+outAt))
	require.NoError(t, err)
	require.NoError(t, c.p.Resume())
	require.Equal(t, uint64(2), changed)
	require.Equal(t, []byte{0, 1, 0, 1, 9}, out, "one flag per group, nothing written past them")

	// The same groups in two halves, side by side on two threads (group 0
	// and 1: 5 item words and 6 expected; 2 and 3 after them).
	require.NoError(t, r.Write(outAt, []byte{9, 9, 9, 9, 9}))
	require.NoError(t, c.p.Stop())
	regsBefore, err = c.p.AllRegs()
	require.NoError(t, err)
	each, err := r.RunEach([][]uint64{
		{r.Data + itemsAt, r.Data + expectAt, r.Data + outAt, 2},
		{r.Data + itemsAt + 5*8, r.Data + expectAt + 6*8, r.Data + outAt + 2, 2},
	})
	require.NoError(t, err)
	regsAfter, err = c.p.AllRegs()
	require.NoError(t, err)
	require.Equal(t, regsBefore, regsAfter, "every thread as it was stopped")
	_, err = c.p.ReadAt(out, int64(r.Data+outAt))
	require.NoError(t, err)
	require.NoError(t, c.p.Resume())
	require.Equal(t, []uint64{1, 1}, each)
	require.Equal(t, []byte{0, 1, 0, 1, 9}, out)
	// The threads borrowed, the leader in nanosleep and "reader" in
	// read(0), go on where they were.
	c.healthy(t)
	m := c.Mark()
	fmt.Fprintln(c.Stdin, "after the routine")
	c.ExpectAfter(t, m, regexp.MustCompile(`^read 18 after the routine$`), 5*time.Second)

	// Aside, on a running process: one thread is borrowed for the call
	// (the others run on), the same result, and the process runs on as
	// before; refused while it is stopped or held.
	require.NoError(t, r.Write(outAt, []byte{9, 9, 9, 9, 9}))
	changed, err = r.RunAside(r.Data+itemsAt, r.Data+expectAt, r.Data+outAt, 4)
	require.NoError(t, err)
	require.Equal(t, uint64(2), changed)
	_, err = c.p.ReadAt(out, int64(r.Data+outAt))
	require.NoError(t, err)
	require.Equal(t, []byte{0, 1, 0, 1, 9}, out)
	require.False(t, c.p.Stopped())
	c.healthy(t)
	m = c.Mark()
	fmt.Fprintln(c.Stdin, "after it ran aside")
	c.ExpectAfter(t, m, regexp.MustCompile(`^read 19 after it ran aside$`), 5*time.Second)
	require.NoError(t, c.p.Stop())
	_, err = r.RunAside(r.Data+itemsAt, r.Data+expectAt, r.Data+outAt, 4)
	require.ErrorIs(t, err, ErrStopped)
	require.NoError(t, c.p.Resume())
	require.NoError(t, c.p.Hold())
	_, err = r.RunAside(r.Data+itemsAt, r.Data+expectAt, r.Data+outAt, 4)
	require.ErrorIs(t, err, ErrStopped)
	require.NoError(t, c.p.Release())

	// A word it cannot read: the routine faults, the thread is put back
	// (aside too).
	put(itemsAt, []uint64{arch.CompareItem(0x1000, 1), 0})
	_, err = r.RunAside(r.Data+itemsAt, r.Data+expectAt, r.Data+outAt, 1)
	require.ErrorIs(t, err, ErrCallCrashed)
	c.healthy(t)
	require.NoError(t, c.p.Stop())
	_, err = r.Run(r.Data+itemsAt, r.Data+expectAt, r.Data+outAt, 1)
	require.ErrorIs(t, err, ErrCallCrashed)
	require.NoError(t, c.p.Resume())
	c.healthy(t)

	// Not stopped: refused.
	_, err = r.Run(r.Data+itemsAt, r.Data+expectAt, r.Data+outAt, 0)
	require.ErrorIs(t, err, ErrNotStopped)

	require.NoError(t, r.Unmap())
	after, err := readMaps(c.Pid)
	require.NoError(t, err)
	require.Equal(t, before, after)
}

// BenchmarkRoutineRun is the fixed cost of running a routine in a stopped
// process (arch.CompareWords over no group): borrowing a thread, its
// state saved and restored, the stub parked and stopped.
func BenchmarkRoutineRun(b *testing.B) {
	c := startCall(b)
	r, err := c.p.MapRoutine(hostArch().CompareWords, 4096)
	if err != nil {
		b.Fatal(err)
	}
	defer r.Unmap()
	if err := c.p.Stop(); err != nil {
		b.Fatal(err)
	}
	defer c.p.Resume()
	b.ResetTimer()
	for range b.N {
		if _, err := r.Run(r.Data, r.Data, r.Data, 0); err != nil {
			b.Fatal(err)
		}
	}
}

// A tool killed while its routine runs in the stopped target leaves a
// target that runs on: killed once the routine's thread is set up, about to
// be continued, the tracer's death resumes every thread, the routine ends
// and its stub makes the system call the tracer would have stopped it at,
// then restores the thread itself (what only this test runs); killed at
// that call's entry, its thread is set to stop there (interrupted), and is
// let go in the kernel. The routine's scratch mappings are left, marked
// for a later tool (ScratchAt).
func TestRoutineTracerKilled(t *testing.T) {
	for _, aside := range []bool{false, true} {
		for _, step := range []string{"call:set-up", "call:parked"} {
			name := step
			if aside {
				name += "/aside"
			}
			t.Run(name, func(t *testing.T) { testRoutineTracerKilled(t, step, aside) })
		}
	}
}

func testRoutineTracerKilled(t *testing.T, step string, aside bool) {
	c := startCall(t)
	require.NoError(t, c.p.Close()) // the helper holds the target
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"=routiner", fmt.Sprintf("TRACEE_TEST_PID=%d", c.Pid), "TRACEE_TEST_STEP="+step, fmt.Sprintf("TRACEE_TEST_ASIDE=%v", aside))
	helper := startTarget(t, cmd)
	helper.ExpectAfter(t, 0, regexp.MustCompile(`^dying$`), 30*time.Second)
	helper.Wait()
	time.Sleep(100 * time.Millisecond) // the thread leaves the stub
	c.healthy(t)
	m := c.Mark()
	fmt.Fprintln(c.Stdin, "after the routine")
	c.ExpectAfter(t, m, regexp.MustCompile(`^read 18 after the routine$`), 5*time.Second)
	require.NoError(t, syscall.Kill(c.Pid, 0))

	p := openT(t, c.Pid)
	maps, err := readMaps(c.Pid)
	require.NoError(t, err)
	var scratch [][2]uint64
	for _, m := range maps {
		if addr, size, ok := p.ScratchAt(m.end); ok {
			scratch = append(scratch, [2]uint64{addr, addr + size})
		}
	}
	require.Len(t, scratch, 2, "the routine's code and data, marked")
	require.NoError(t, p.Stop())
	regs, err := p.AllRegs()
	require.NoError(t, p.Resume())
	require.NoError(t, err)
	for tid, r := range regs {
		for _, s := range scratch {
			require.False(t, r.PC() >= s[0] && r.PC() < s[1], "thread %d still in the routine's pages at %#x", tid, r.PC())
		}
	}
}

// routinerChild maps a routine in TRACEE_TEST_PID, stops it (or, with
// TRACEE_TEST_ASIDE=true, runs it aside), and kills itself at step
// TRACEE_TEST_STEP of the routine's call.
func routinerChild() {
	pid, _ := strconv.Atoi(os.Getenv("TRACEE_TEST_PID"))
	p, err := Open(pid)
	if err != nil {
		fmt.Println("ERR", err)
		os.Exit(1)
	}
	r, err := p.MapRoutine(hostArch().CompareWords, 4096)
	if err == nil {
		item := make([]byte, 16)
		binary.LittleEndian.PutUint64(item, arch.CompareItem(r.Data+1024, 1))
		err = r.Write(0, item)
	}
	aside := os.Getenv("TRACEE_TEST_ASIDE") == "true"
	if err == nil && !aside {
		err = p.Stop()
	}
	if err != nil {
		fmt.Println("ERR", err)
		os.Exit(1)
	}
	fmt.Println("ready running")
	StepHook = func(step string) {
		if step == os.Getenv("TRACEE_TEST_STEP") {
			fmt.Println("dying")
			syscall.Kill(os.Getpid(), syscall.SIGKILL)
			select {}
		}
	}
	if aside {
		_, err = r.RunAside(r.Data, r.Data+2048, r.Data+3072, 1)
	} else {
		_, err = r.Run(r.Data, r.Data+2048, r.Data+3072, 1)
	}
	fmt.Println("returned", err)
	select {}
}
