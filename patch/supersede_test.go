//go:build linux

package patch_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/hotpatch-dev/hotpatch/internal/fixture"
	"github.com/hotpatch-dev/hotpatch/patch"
)

// pricesFrom returns the prices of cserve's lines.
func pricesFrom(lines []string) []string {
	var out []string
	for _, l := range lines {
		if m := served.FindStringSubmatch(l); m != nil {
			out = append(out, m[2])
		}
	}
	return out
}

// A C service under load gets fix v1 from one library, then v2 from
// another superseding it: from the first answer of v1 to the first of v2,
// every answer is v1's or v2's, never the original's; v1's record is gone
// and v2's holds the original bytes, so that reverting v2 brings the
// original back. Twice, so that the second v1 goes where the first was.
func TestSupersedeLib(t *testing.T) {
	p, bin := serve(t, 4)
	id := buildID(t, bin)
	v1Lib, v2Lib := fixLib(t, pin(id)), fixLib(t, pin(id), "-DV2")
	tg := attach(t, p.Pid)
	ctx := context.Background()
	reps := []patch.Replacement{{Old: "price", New: "price_fixed"}}
	for round := 0; round < 2; round++ {
		m := p.Mark()
		r1, err := tg.Apply(ctx, reps, patch.ApplyOptions{Lib: v1Lib})
		require.NoError(t, err)
		_, first := p.WaitLine(t, m, "price=145", func(l string) bool { return strings.HasSuffix(l, "price=145") }, 5*time.Second)
		r2, err := tg.Apply(ctx, reps, patch.ApplyOptions{Lib: v2Lib, Supersede: r1.ID})
		require.NoError(t, err)
		require.Equal(t, r1.ID, r2.Superseded)
		require.Equal(t, patch.StateApplied, r2.State)
		require.Empty(t, r2.LibLoaded, "v1's library is unloaded")
		maps, err := os.ReadFile(fmt.Sprintf("/proc/%d/maps", p.Pid))
		require.NoError(t, err)
		require.NotContains(t, string(maps), "/memfd:hotpatch:"+r1.ID+":", "v1's library is unmapped")
		require.Contains(t, string(maps), "/memfd:hotpatch:"+r2.ID+":", "v2's library is mapped")
		_, last := p.WaitLine(t, first, "price=212", func(l string) bool { return strings.HasSuffix(l, "price=212") }, 5*time.Second)
		m = p.Mark()
		for _, price := range pricesFrom(p.Lines()[first : last+1]) {
			require.Contains(t, []string{"145", "212"}, price, "round %d: an answer between fix v1 and fix v2 is neither's", round)
		}
		recs, err := tg.Status()
		require.NoError(t, err)
		require.Len(t, recs, 1, "v1's record is gone")
		require.Equal(t, r2.ID, recs[0].ID)
		require.Equal(t, r1.ID, recs[0].Supersedes)
		require.Equal(t, r1.Functions[0].Original, recs[0].Functions[0].Original, "v2 records the original bytes")
		_, err = tg.Revert(ctx, r2.ID, patch.ApplyOptions{})
		require.NoError(t, err)
		p.ExpectAfter(t, m, regexp.MustCompile(`^served \d+ price=71$`), 5*time.Second)
		recs, err = tg.Status()
		require.NoError(t, err)
		require.Empty(t, recs)
		maps, err = os.ReadFile(fmt.Sprintf("/proc/%d/maps", p.Pid))
		require.NoError(t, err)
		require.NotContains(t, string(maps), "/memfd:hotpatch:", "no patch library is left after the revert")
	}
	textMatchesFiles(t, p.Pid, "after the reverts")
	p.ExpectAfter(t, p.Mark(), served, 5*time.Second)
	checkServedPrices(t, p, "71", "145", "212")
}

// A Go service under HTTP load: v1 redirects main.compute to
// main.computeFixed (and main.slowReadFixed, which nothing calls, to
// main.computeFixed); v2, superseding it, covers fewer functions —
// main.compute to main.slowReadFixed, which must be its original again in
// the same pause (else the answer would be computeFixed's); v3 superseding
// v2 covers more again. From v1 to the revert of v3 no request is answered
// by the original (2000) or fails; after it, all are.
func TestSupersedeGo(t *testing.T) {
	cmd := exec.Command(fixture.BuildGo(t, "goservice", ""))
	cmd.Env = append(os.Environ(), "GOSERVICE_HTTP=1")
	p := fixture.StartCmd(t, cmd)
	url := "http://" + p.ExpectAfter(t, 0, regexp.MustCompile(`^http (\S+)$`), 10*time.Second)[1]
	newReq := func() loadRequest {
		tr := &http.Transport{MaxIdleConnsPerHost: 1}
		client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
		t.Cleanup(tr.CloseIdleConnections)
		return func() (int, error) {
			resp, err := client.Get(url)
			if err != nil {
				return 0, err
			}
			defer resp.Body.Close()
			b, err := io.ReadAll(resp.Body)
			if err != nil {
				return 0, err
			}
			return strconv.Atoi(strings.TrimPrefix(strings.TrimSpace(string(b)), "result "))
		}
	}
	probe := newReq()
	answer := func(want int, what string) {
		t.Helper()
		v, err := probe()
		require.NoError(t, err)
		require.Equal(t, want, v, what)
	}
	tg := attach(t, p.Pid)
	ctx := context.Background()
	v1 := []patch.Replacement{{Old: "main.compute", New: "main.computeFixed"}, {Old: "main.slowReadFixed", New: "main.computeFixed"}}
	r1, err := tg.Apply(ctx, v1, patch.ApplyOptions{})
	require.NoError(t, err)
	answer(3001, "v1")

	// From here to the revert, only v1's (3001) and v2's (-1001) answers.
	var phase stats
	during := &loadStats{}
	phase.set(during)
	stop := make(chan struct{})
	wg := runLoad(6, newReq, func(v int) bool { return v == 3001 || v == -1001 }, &phase, stop, time.Minute)
	stopped := false
	defer func() {
		if !stopped {
			close(stop)
			wg.Wait()
		}
	}()
	time.Sleep(300 * time.Millisecond)
	v2 := []patch.Replacement{{Old: "main.compute", New: "main.slowReadFixed"}}
	r2, err := tg.Apply(ctx, v2, patch.ApplyOptions{Supersede: r1.ID, Timeout: 10 * time.Second})
	require.NoError(t, err)
	require.Equal(t, r1.ID, r2.Superseded)
	answer(-1001, "v2: main.slowReadFixed is its original again")
	time.Sleep(300 * time.Millisecond)
	r3, err := tg.Apply(ctx, v1, patch.ApplyOptions{Supersede: r2.ID, Timeout: 10 * time.Second})
	require.NoError(t, err)
	answer(3001, "v3")
	time.Sleep(300 * time.Millisecond)
	close(stop)
	wg.Wait()
	stopped = true
	t.Logf("between v1 and the revert of v3: %s", during)
	require.Zero(t, during.failed+during.wrong, "%s (first: %v)", during, during.firstErr)
	require.NotEmpty(t, during.latencies)

	recs, err := tg.Status()
	require.NoError(t, err)
	require.Len(t, recs, 1)
	require.Equal(t, r3.ID, recs[0].ID)
	_, err = tg.Revert(ctx, r3.ID, patch.ApplyOptions{})
	require.NoError(t, err)
	answer(2000, "reverted: the original")
	recs, err = tg.Status()
	require.NoError(t, err)
	require.Empty(t, recs)
	textMatchesFiles(t, p.Pid, "after the revert")
}

// A supersede that cannot be done is refused with a typed error, and the
// target is left as it was: an unknown ID, a gradual transition, and a
// patch in transition (which must be finished or reverted first).
func TestSupersedeRefused(t *testing.T) {
	p, bin := serve(t, 2)
	id := buildID(t, bin)
	v1Lib, v2Lib := fixLib(t, pin(id)), fixLib(t, pin(id), "-DV2")
	tg := attach(t, p.Pid)
	ctx := context.Background()
	reps := []patch.Replacement{{Old: "price", New: "price_fixed"}}
	r1, err := tg.Apply(ctx, reps, patch.ApplyOptions{Lib: v1Lib})
	require.NoError(t, err)
	before := mappingSet(t, p.Pid)
	for _, c := range []struct {
		name string
		o    patch.ApplyOptions
		want error
	}{
		{"unknown", patch.ApplyOptions{Lib: v2Lib, Supersede: "hp-00000000"}, patch.ErrNotApplied},
		{"gradual", patch.ApplyOptions{Lib: v2Lib, Supersede: r1.ID, Mode: patch.ModeGradual}, patch.ErrGradualSupersede},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := tg.Apply(ctx, reps, c.o)
			require.Error(t, err)
			require.True(t, errors.Is(err, c.want), "%v", err)
			var pe *patch.Error
			require.True(t, errors.As(err, &pe))
			require.Equal(t, before, mappingSet(t, p.Pid), "the target is as it was")
			recs, err := tg.Status()
			require.NoError(t, err)
			require.Len(t, recs, 1)
			require.Equal(t, patch.StateApplied, recs[0].State)
			m := p.Mark()
			p.ExpectAfter(t, m, regexp.MustCompile(`^served \d+ price=145$`), 5*time.Second)
		})
	}
	_, err = tg.Apply(ctx, reps, patch.ApplyOptions{Lib: v2Lib})
	require.ErrorIs(t, err, patch.ErrAlreadyApplied, "without --supersede, v1's function is taken")
	_, err = tg.Revert(ctx, r1.ID, patch.ApplyOptions{})
	require.NoError(t, err)
	_, err = tg.Apply(ctx, reps, patch.ApplyOptions{Lib: v2Lib, Supersede: r1.ID})
	require.ErrorIs(t, err, patch.ErrNotApplied, "a reverted patch")
	textMatchesFiles(t, p.Pid, "after the refusals")
}

// TestSupersedeInTransition: a patch left in a gradual transition cannot be
// superseded until it is finished or reverted.
func TestSupersedeInTransition(t *testing.T) {
	p := fixture.Start(t, fixture.BuildGo(t, "gouniverse", ""))
	command(t, p, "start 2", regexp.MustCompile(`^batch 0 started 2$`))
	tg := attach(t, p.Pid)
	ctx := context.Background()
	r1, err := tg.Apply(ctx, universeSet("main."), patch.ApplyOptions{Mode: patch.ModeGradual, OnTimeout: patch.OnTimeoutStay,
		Timeout: 200 * time.Millisecond, Interval: 5 * time.Millisecond})
	require.NoError(t, err)
	require.Equal(t, patch.StateTransition, r1.State)
	_, err = tg.Apply(ctx, universeSet("main."), patch.ApplyOptions{Supersede: r1.ID})
	require.ErrorIs(t, err, patch.ErrInTransition)
	recs, err := tg.Status()
	require.NoError(t, err)
	require.Len(t, recs, 1)
	require.Equal(t, patch.StateTransition, recs[0].State)
	command(t, p, "stop 0", regexp.MustCompile(`^batch 0 stopped 2$`))
	_, err = tg.RevertAll(ctx, patch.ApplyOptions{Timeout: 10 * time.Second, Interval: 5 * time.Millisecond})
	require.NoError(t, err)
}

// TestSupersedeDeathAtEveryWrite: the patcher "dies" (DieAfterWrites)
// before each write of a supersede that covers fewer functions than the
// patch it replaces (v1: main.compute and main.slowReadFixed to
// main.computeFixed; v2: main.compute to main.slowReadFixed). The target
// answers with v1's or v2's code throughout, never the original's; a new
// tool's Status reads every record (a death between two entry writes
// leaves each function whole on v1 or v2, and the records say "partial");
// RevertAll then restores the original code exactly.
func TestSupersedeDeathAtEveryWrite(t *testing.T) {
	for n := 1; n < 50; n++ {
		if !supersedeDeath(t, n) {
			t.Logf("survived a death before each of %d writes", n-1)
			return
		}
	}
	t.Fatal("more than 50 writes?")
}

func supersedeDeath(t *testing.T, n int) (died bool) {
	cmd := exec.Command(fixture.BuildGo(t, "goservice", ""))
	cmd.Env = append(os.Environ(), "GOSERVICE_HTTP=1")
	p := fixture.StartCmd(t, cmd)
	defer p.Kill()
	url := "http://" + p.ExpectAfter(t, 0, regexp.MustCompile(`^http (\S+)$`), 10*time.Second)[1]
	answer := func() int {
		resp, err := http.Get(url)
		require.NoError(t, err)
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		v, err := strconv.Atoi(strings.TrimPrefix(strings.TrimSpace(string(b)), "result "))
		require.NoError(t, err)
		return v
	}
	tg, err := patch.Attach(p.Pid, nil)
	require.NoError(t, err)
	ctx := context.Background()
	v1 := []patch.Replacement{{Old: "main.compute", New: "main.computeFixed"}, {Old: "main.slowReadFixed", New: "main.computeFixed"}}
	r1, err := tg.Apply(ctx, v1, patch.ApplyOptions{})
	require.NoError(t, err)
	func() {
		defer func() {
			if v := recover(); v != nil {
				if !patch.IsInjectedDeath(v) {
					panic(v)
				}
				died = true
				require.NoError(t, patch.Abandon(tg))
			}
		}()
		patch.DieAfterWrites(n)
		defer patch.DieAfterWrites(0)
		_, err := tg.Apply(ctx, []patch.Replacement{{Old: "main.compute", New: "main.slowReadFixed"}}, patch.ApplyOptions{Supersede: r1.ID})
		require.NoError(t, err)
	}()
	require.Contains(t, []int{3001, -1001}, answer(), "death before write %d", n)
	if !died {
		require.NoError(t, tg.Close())
	}
	tg2, err := patch.Attach(p.Pid, nil)
	require.NoError(t, err)
	defer tg2.Close()
	recs, err := tg2.Status()
	require.NoError(t, err, "death before write %d", n)
	var states []string
	for _, r := range recs {
		states = append(states, r.ID+"="+string(r.State))
	}
	t.Logf("death before write %d (died: %v): %s", n, died, strings.Join(states, " "))
	_, err = tg2.RevertAll(ctx, patch.ApplyOptions{Timeout: 10 * time.Second})
	require.NoError(t, err, "death before write %d", n)
	recs, err = tg2.Status()
	require.NoError(t, err)
	require.Empty(t, recs, "death before write %d", n)
	textMatchesFiles(t, p.Pid, fmt.Sprintf("death before write %d", n))
	require.Equal(t, 2000, answer(), "death before write %d", n)
	return died
}

// TestSupersedeBlocked: a supersede whose new function stays busy (a
// goroutine blocked in main.slowRead) is refused at the timeout, naming
// it, and the target is as it was: v1 applied, the new patch's memory
// gone.
func TestSupersedeBlocked(t *testing.T) {
	p := fixture.Start(t, fixture.BuildGo(t, "goservice", ""))
	tg := attach(t, p.Pid)
	ctx := context.Background()
	r1, err := tg.Apply(ctx, []patch.Replacement{{Old: "main.compute", New: "main.computeFixed"}}, patch.ApplyOptions{})
	require.NoError(t, err)
	before := mappingSet(t, p.Pid)
	_, err = tg.Apply(ctx, []patch.Replacement{{Old: "main.compute", New: "main.computeFixed"}, {Old: "main.slowRead", New: "main.slowReadFixed"}},
		patch.ApplyOptions{Supersede: r1.ID, Timeout: 200 * time.Millisecond})
	require.ErrorIs(t, err, patch.ErrBlocked)
	require.Contains(t, err.Error(), "main.slowRead")
	require.Equal(t, before, mappingSet(t, p.Pid), "the new patch's memory is gone")
	recs, err := tg.Status()
	require.NoError(t, err)
	require.Len(t, recs, 1)
	require.Equal(t, r1.ID, recs[0].ID)
	require.Equal(t, patch.StateApplied, recs[0].State)
	p.ExpectAfter(t, p.Mark(), regexp.MustCompile(`^result 3\d\d\d$`), 5*time.Second)
	_, err = tg.Revert(ctx, r1.ID, patch.ApplyOptions{})
	require.NoError(t, err)
	textMatchesFiles(t, p.Pid, "after the revert")
}

// TestSupersedeOtherPatchKept: a supersede replaces one patch; a function
// another applied patch replaces is still refused (ErrAlreadyApplied), and
// that other patch survives the supersede of its neighbour.
func TestSupersedeOtherPatchKept(t *testing.T) {
	p := fixture.Start(t, fixture.BuildGo(t, "goservice", ""))
	tg := attach(t, p.Pid)
	ctx := context.Background()
	r0, err := tg.Apply(ctx, []patch.Replacement{{Old: "main.slowReadFixed", New: "main.computeFixed"}}, patch.ApplyOptions{})
	require.NoError(t, err)
	r1, err := tg.Apply(ctx, []patch.Replacement{{Old: "main.compute", New: "main.computeFixed"}}, patch.ApplyOptions{})
	require.NoError(t, err)
	_, err = tg.Apply(ctx, []patch.Replacement{{Old: "main.compute", New: "main.computeFixed"}, {Old: "main.slowReadFixed", New: "main.compute"}},
		patch.ApplyOptions{Supersede: r1.ID})
	require.ErrorIs(t, err, patch.ErrAlreadyApplied)
	require.Contains(t, err.Error(), r0.ID)
	r2, err := tg.Apply(ctx, []patch.Replacement{{Old: "main.compute", New: "main.slowReadFixed"}}, patch.ApplyOptions{Supersede: r1.ID})
	require.NoError(t, err)
	// compute -> slowReadFixed, which r0 still sends to computeFixed.
	p.ExpectAfter(t, p.Mark(), regexp.MustCompile(`^result 3\d\d\d$`), 5*time.Second)
	recs, err := tg.Status()
	require.NoError(t, err)
	var ids []string
	for _, r := range recs {
		require.Equal(t, patch.StateApplied, r.State)
		ids = append(ids, r.ID)
	}
	require.ElementsMatch(t, []string{r0.ID, r2.ID}, ids)
	_, err = tg.RevertAll(ctx, patch.ApplyOptions{})
	require.NoError(t, err)
	textMatchesFiles(t, p.Pid, "after the revert")
}
