package patch_test

import (
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"regexp"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/hotpatch-dev/hotpatch/consistency"
	"github.com/hotpatch-dev/hotpatch/internal/fixture"
	"github.com/hotpatch-dev/hotpatch/internal/goruntime"
	"github.com/hotpatch-dev/hotpatch/patch"
)

// eachCgo runs f on gocgo built by every cgo toolchain and link mode.
func eachCgo(t *testing.T, f func(t *testing.T, p *fixture.Proc)) {
	for _, tc := range fixture.CgoToolchains {
		for _, mode := range []string{"external", "internal"} {
			name := tc
			if name == "" {
				name = "current"
			}
			t.Run(name+"-"+mode, func(t *testing.T) {
				f(t, fixture.Start(t, fixture.BuildGo(t, "gocgo", tc, fixture.CgoLinkModes[mode]...)))
			})
		}
	}
}

// word reads a word of the target's memory.
func word(t *testing.T, pid int, addr uint64) uint64 {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/mem", pid))
	require.NoError(t, err)
	defer f.Close()
	var b [8]byte
	_, err = f.ReadAt(b[:], int64(addr))
	require.NoError(t, err)
	return binary.LittleEndian.Uint64(b[:])
}

// TestCgoThreadKeys: every thread Go created is keyed by the g it runs,
// found where the runtime keeps it (whose m runs on that very thread),
// also when C thread-local variables share the TLS block.
func TestCgoThreadKeys(t *testing.T) {
	eachCgo(t, func(t *testing.T, p *fixture.Proc) {
		command(t, p, "busy 3", regexp.MustCompile(`^busy 3$`))
		tg := attach(t, p.Pid)
		l, err := goruntime.KnownLayout(tg.Symbols().Modules[0].GoVersion)
		require.NoError(t, err)
		snap, err := tg.Threads()
		require.NoError(t, err)
		threads := 0
		for _, task := range snap.Tasks {
			if task.Kind != "thread" {
				continue
			}
			threads++
			require.NotZero(t, task.Key, "%s: no g found", task)
			m := word(t, p.Pid, task.Key+uint64(l.GM))
			require.NotZero(t, m, "%s: key %#x is not a g with an m", task, task.Key)
			require.Equal(t, uint64(task.ID), word(t, p.Pid, m+uint64(l.MProcID)), "%s: key %#x is the g of another thread", task, task.Key)
		}
		require.NotZero(t, threads)
	})
}

// TestCgoGradualCFunction: goroutines' threads sleep inside the C function
// c_busy. A gradual apply must not report it applied with nothing pending
// (their threads could not be told apart by a dispatch stub): it is
// refused, and stop mode waits for them.
func TestCgoGradualCFunction(t *testing.T) {
	eachCgo(t, func(t *testing.T, p *fixture.Proc) {
		command(t, p, "busy 3", regexp.MustCompile(`^busy 3$`))
		tg := attach(t, p.Pid)
		untouched := code(t, tg, p.Pid, "c_busy")
		set := []patch.Replacement{{Old: "c_busy", New: "c_busy_fixed"}}
		res, err := tg.Apply(context.Background(), set, patch.ApplyOptions{Mode: patch.ModeGradual, Timeout: 300 * time.Millisecond, OnTimeout: patch.OnTimeoutStay})
		if err == nil {
			require.NotEqual(t, "applied", res.State, "applied while 3 threads sleep inside c_busy (%d pending)", res.Pending)
			require.NotZero(t, res.Pending)
			_, err = tg.RevertAll(context.Background(), patch.ApplyOptions{Force: true})
			require.NoError(t, err)
			t.Fatalf("gradual transition of a C function started: %+v", res)
		}
		require.ErrorIs(t, err, patch.ErrGradualNotGo)
		require.Contains(t, err.Error(), "stop mode")
		require.Equal(t, untouched, code(t, tg, p.Pid, "c_busy"))

		_, err = tg.Apply(context.Background(), set, patch.ApplyOptions{Timeout: 200 * time.Millisecond})
		require.ErrorIs(t, err, patch.ErrBlocked, "stop mode: the threads are inside c_busy")
		require.Equal(t, untouched, code(t, tg, p.Pid, "c_busy"))
		command(t, p, "release", regexp.MustCompile(`^released$`))
		res, err = tg.Apply(context.Background(), set, patch.ApplyOptions{Mode: patch.ModeAuto, Timeout: 5 * time.Second})
		require.NoError(t, err)
		require.Equal(t, "applied", res.State)
		_, err = tg.Revert(context.Background(), res.ID, patch.ApplyOptions{})
		require.NoError(t, err)
		require.Equal(t, untouched, code(t, tg, p.Pid, "c_busy"))
	})
}

var _ = consistency.Check
