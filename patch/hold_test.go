//go:build linux

package patch_test

import (
	"context"
	"fmt"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/hotpatch-dev/hotpatch/internal/fixture"
	"github.com/hotpatch-dev/hotpatch/patch"
)

// TestSignalsWhileHeld: a C target keeps getting every signal sent to it,
// thousands a second, while applies and reverts hold its threads (seized
// across their pauses) and release them: the count of real-time signals
// its handler saw equals the count sent, and it never stalls.
func TestSignalsWhileHeld(t *testing.T) {
	const rtsig = unix.Signal(40)                               // cservice counts it
	p := fixture.Start(t, fixture.BuildC(t, "cservice", "-O2")) // 4 sleepers, a reader
	p.Expect(t, regexp.MustCompile(`^result`), 10*time.Second)
	tg := attach(t, p.Pid)
	// Under the arm64 VM's emulation every signal costs a ptrace stop
	// hundreds of times slower: fewer cycles, a slower sender (the same
	// paths run).
	cycles, gap := 200, 20*time.Microsecond
	if os.Getenv("HOTPATCH_VM") != "" {
		cycles, gap = 20, 500*time.Microsecond
	}
	stop, sent := make(chan struct{}), make(chan int)
	go func() {
		n := 0
		for {
			select {
			case <-stop:
				sent <- n
				return
			default:
			}
			if unix.Kill(p.Pid, rtsig) == nil {
				n++
			}
			time.Sleep(gap)
		}
	}()
	for i := 0; i < cycles; i++ {
		res, err := tg.Apply(context.Background(), []patch.Replacement{{Old: "compute", New: "compute_fixed"}}, patch.ApplyOptions{})
		require.NoError(t, err, "apply %d", i)
		_, err = tg.Revert(context.Background(), res.ID, patch.ApplyOptions{})
		require.NoError(t, err, "revert %d", i)
	}
	// An apply that waits for the reader, blocked in slow_read: one hold
	// across its many pauses, the signals arriving between them.
	for i := 0; i < 3; i++ {
		_, err := tg.Apply(context.Background(), []patch.Replacement{{Old: "slow_read", New: "slow_read_fixed"}}, patch.ApplyOptions{Timeout: 300 * time.Millisecond})
		require.ErrorIs(t, err, patch.ErrBlocked)
	}
	close(stop)
	n := <-sent
	require.Greater(t, n, 100, "signals sent")
	t.Logf("%d signals sent", n)
	got := ""
	deadline := time.Now().Add(10 * time.Second)
	for want := fmt.Sprintf("signals %d", n); got != want && time.Now().Before(deadline); {
		m := p.Mark()
		require.NoError(t, unix.Kill(p.Pid, unix.SIGUSR2))
		got, _ = p.WaitLine(t, m, "the signal count", func(s string) bool { return strings.HasPrefix(s, "signals ") }, 5*time.Second)
	}
	require.Equal(t, fmt.Sprintf("signals %d", n), got, "every signal delivered")
	p.ExpectAfter(t, p.Mark(), regexp.MustCompile(`^result 2\d\d\d$`), 5*time.Second)
}
