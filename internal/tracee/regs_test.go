package tracee

import (
	"encoding/binary"
	"fmt"
	"os"
	"runtime"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/hotpatch-dev/hotpatch/internal/unwind"
)

var unwindArch = map[string]unwind.Arch{"amd64": unwind.AMD64, "arm64": unwind.ARM64}

// DWARF() puts SP and PC where the unwinder of the host's arch reads them.
func TestRegsDWARF(t *testing.T) {
	a, ok := unwindArch[runtime.GOARCH]
	if !ok {
		t.Skipf("no unwinder arch for %s", runtime.GOARCH)
	}
	tg := startFixture(t, 1)
	p := openT(t, tg.pid)
	require.NoError(t, p.Stop())
	for _, tid := range p.Threads() {
		r, err := p.GetRegs(tid)
		require.NoError(t, err)
		d := r.DWARF()
		require.Greater(t, len(d), a.RAReg)
		require.Equal(t, r.SP(), d[a.SPReg], "thread %d sp", tid)
		require.Equal(t, r.PC(), d[a.RAReg], "thread %d pc", tid)
		require.NotZero(t, r.PC())
	}
	require.NoError(t, p.Resume())
	tg.waitBeats(tg.mark(), fixtureBeats(1)...)
}

// G() is the goroutine register of Go's ABIInternal (R14 on amd64, R28 on
// arm64): in a stopped Go target every thread's G points at a g whose
// stack bounds (g.stack.lo, g.stack.hi, its first two words) hold the
// thread's SP. Threads stopped in libc (the target is a cgo binary that
// keeps creating and ending threads) are left out; a thread caught inside
// runtime.clone has no g of its own yet, so the check is retried on a
// fresh stop a few times before failing.
func TestRegsGoG(t *testing.T) {
	tg := startGoTarget(t)
	p := openT(t, tg.pid)
	exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", tg.pid))
	require.NoError(t, err)
	var bad []string
	for try := 0; try < 20; try++ {
		bad = nil
		checked := 0
		require.NoError(t, p.Stop())
		for _, tid := range p.Threads() {
			r, err := p.GetRegs(tid)
			require.NoError(t, err)
			if !strings.HasSuffix(mappingOf(t, tg.pid, r.PC()), " "+exe) {
				// In libc (a cgo binary creating or ending a thread for
				// the churn goroutine): no g register there.
				continue
			}
			checked++
			g, sp := r.G(), r.SP()
			var b [16]byte
			if _, err := p.ReadAt(b[:], int64(g)); err != nil {
				bad = append(bad, fmt.Sprintf("thread %d: g %#x unreadable: %v", tid, g, err))
				continue
			}
			lo, hi := binary.LittleEndian.Uint64(b[:8]), binary.LittleEndian.Uint64(b[8:])
			if sp < lo || sp > hi {
				bad = append(bad, fmt.Sprintf("thread %d: sp %#x outside g %#x's stack [%#x, %#x] (pc %#x in %s)", tid, sp, g, lo, hi, r.PC(), mappingOf(t, tg.pid, r.PC())))
			}
		}
		require.NoError(t, p.Resume())
		// main, three sleepers and the spinner at least run Go code (a
		// stop may catch some of them in libc: then stop again).
		if checked < 4 {
			bad = append(bad, fmt.Sprintf("only %d threads in Go code", checked))
		}
		if len(bad) == 0 {
			break
		}
	}
	require.Empty(t, bad)
	tg.waitBeats(tg.mark(), "main")
}

// mappingOf names the mapping of addr in /proc/PID/maps (for messages).
func mappingOf(t *testing.T, pid int, addr uint64) string {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/maps", pid))
	for _, line := range strings.Split(string(b), "\n") {
		var lo, hi uint64
		if _, err := fmt.Sscanf(line, "%x-%x", &lo, &hi); err == nil && addr >= lo && addr < hi {
			return line
		}
	}
	return "no mapping"
}
