//go:build linux

package patch_test

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/hotpatch-dev/hotpatch/internal/fixture"
	"github.com/hotpatch-dev/hotpatch/patch"
)

// TestUnknownOptionValues: a Mode or OnTimeout that is none of the
// constants is refused by Apply, Revert, RevertAll, Resume and FuncWith
// before anything is done, with an *OptionError that names the option and
// its valid values (and matches ErrBadRequest); the target runs on.
func TestUnknownOptionValues(t *testing.T) {
	p := fixture.Start(t, fixture.BuildC(t, "cservice", "-O2"))
	tg := attach(t, p.Pid)
	reps := []patch.Replacement{{Old: "compute", New: "compute_fixed"}}
	refused := func(t *testing.T, err error, option string, valid ...string) {
		t.Helper()
		require.ErrorIs(t, err, patch.ErrBadRequest)
		var oe *patch.OptionError
		require.ErrorAs(t, err, &oe)
		require.Equal(t, option, oe.Option)
		require.Equal(t, valid, oe.Valid)
		for _, v := range valid {
			require.ErrorContains(t, err, `"`+v+`"`)
		}
	}
	modes := []string{"stop", "gradual", "auto"}
	ontimeouts := []string{"revert", "stay"}
	ctx := context.Background()
	_, err := tg.Apply(ctx, reps, patch.ApplyOptions{Mode: "fast"})
	refused(t, err, "Mode", modes...)
	_, err = tg.Apply(ctx, reps, patch.ApplyOptions{Mode: patch.ModeGradual, OnTimeout: "later"})
	refused(t, err, "OnTimeout", ontimeouts...)
	_, err = tg.Revert(ctx, "p1", patch.ApplyOptions{Mode: "Stop"})
	refused(t, err, "Mode", modes...)
	_, err = tg.RevertAll(ctx, patch.ApplyOptions{OnTimeout: "wait"})
	refused(t, err, "OnTimeout", ontimeouts...)
	_, err = tg.Resume(ctx, "", patch.ApplyOptions{Mode: "slow"})
	refused(t, err, "Mode", modes...)
	_, err = patch.FuncWith(unknownOptionTarget, func() int { return 2 }, patch.FuncOptions{Mode: "fast"})
	if !errors.Is(err, patch.ErrNotSupported) {
		refused(t, err, "Mode", modes...)
	}

	recs, err := tg.Status()
	require.NoError(t, err)
	require.Empty(t, recs, "nothing was applied")
	p.ExpectAfter(t, p.Mark(), resultOld, 5*time.Second)
}

//go:noinline
func unknownOptionTarget() int { return 1 }

// TestEnumText: the named types keep the text scripts read.
func TestEnumText(t *testing.T) {
	for v, want := range map[any]string{
		patch.ModeStop: "stop", patch.ModeGradual: "gradual", patch.ModeAuto: "auto",
		patch.OnTimeoutRevert: "revert", patch.OnTimeoutStay: "stay",
		patch.StatePrepared: "prepared", patch.StateApplied: "applied", patch.StatePartial: "partial",
		patch.StateTransition: "transition", patch.StateReverting: "reverting", patch.StateReverted: "reverted", patch.StateUnknown: "unknown",
		patch.EventTransition: "transition", patch.EventProgress: "progress", patch.EventForced: "forced", patch.EventApplied: "applied",
		patch.EventReverting: "reverting", patch.EventReverted: "reverted", patch.EventTimeout: "timeout", patch.EventRetry: "retry",
		patch.TaskThread: "thread", patch.TaskGoroutine: "goroutine",
		patch.LeftoverScratch: "scratch",
	} {
		b, err := json.Marshal(v)
		require.NoError(t, err)
		require.Equal(t, `"`+want+`"`, string(b), "%T", v)
		require.Equal(t, want, v.(interface{ String() string }).String())
	}
	b, err := json.Marshal(patch.Result{State: patch.StateApplied})
	require.NoError(t, err)
	require.Contains(t, string(b), `"state":"applied"`)
}
