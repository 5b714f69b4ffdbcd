//go:build linux

package patch_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/hotpatch-dev/hotpatch/elfsym"
	"github.com/hotpatch-dev/hotpatch/internal/fixture"
	"github.com/hotpatch-dev/hotpatch/internal/tracee"
	"github.com/hotpatch-dev/hotpatch/patch"
)

// The torture tests run the patcher as a process of its own (this test
// binary, re-executed with tortureEnv set) and SIGKILL it — or the target —
// at a numbered step (patch.OnStep). See docs/reliability.md.

const tortureEnv = "HOTPATCH_TORTURE"

func TestMain(m *testing.M) {
	if os.Getenv(tortureEnv) != "" {
		torturePatcher()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// torturePatcher applies the scenario HOTPATCH_TORTURE names ("c": the
// fixprice library into cserve, stop mode; "c-supersede": the same, then
// its V2 build superseding it; "go": the universe set into gouniverse,
// gradual) to TORTURE_PID, then reverts everything. It prints
// "step NAME#K" at the K-th pass of each step; at TORTURE_AT it SIGKILLs
// itself (TORTURE_KILL=self) or the target (=target). It ends with "done"
// or "error: ..." and "exited: BOOL" (the error says the target exited).
func torturePatcher() {
	pid, _ := strconv.Atoi(os.Getenv("TORTURE_PID"))
	at, kill := os.Getenv("TORTURE_AT"), os.Getenv("TORTURE_KILL")
	seen := map[string]int{}
	patch.OnStep(func(s string) {
		seen[s]++
		name := fmt.Sprintf("%s#%d", s, seen[s])
		fmt.Println("step", name)
		if name != at {
			return
		}
		if kill == "target" {
			syscall.Kill(pid, syscall.SIGKILL)
			return
		}
		syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {}
	})
	fmt.Println("ready")
	err := tortureScenario(pid)
	if err == nil {
		fmt.Println("done")
		return
	}
	fmt.Println("error:", strings.ReplaceAll(err.Error(), "\n", " "))
	fmt.Println("exited:", errors.Is(err, tracee.ErrExited) || errors.Is(err, patch.ErrNoProcess))
}

func tortureScenario(pid int) error {
	tg, err := patch.Attach(pid, nil)
	if err != nil {
		return err
	}
	defer tg.Close()
	ctx := context.Background()
	switch os.Getenv(tortureEnv) {
	case "c":
		_, err = tg.Apply(ctx, []patch.Replacement{{Old: "price", New: "price_fixed"}}, patch.ApplyOptions{Lib: os.Getenv("TORTURE_LIB"), Timeout: 5 * time.Second})
	case "c-supersede":
		reps := []patch.Replacement{{Old: "price", New: "price_fixed"}}
		var r1 *patch.Result
		if r1, err = tg.Apply(ctx, reps, patch.ApplyOptions{Lib: os.Getenv("TORTURE_LIB"), Timeout: 5 * time.Second}); err != nil {
			return err
		}
		fmt.Println(supersedingLine)
		_, err = tg.Apply(ctx, reps, patch.ApplyOptions{Lib: os.Getenv("TORTURE_LIB2"), Supersede: r1.ID, Timeout: 5 * time.Second})
	default:
		_, err = tg.Apply(ctx, universeSet("main."), patch.ApplyOptions{Mode: patch.ModeGradual, Timeout: 10 * time.Second, Interval: 5 * time.Millisecond,
			Progress: func(pr patch.Progress) {
				if pr.Event == "transition" {
					fmt.Println("transition")
				}
			}})
	}
	if err != nil {
		return err
	}
	_, err = tg.RevertAll(ctx, patch.ApplyOptions{Mode: patch.ModeAuto, Timeout: 5 * time.Second, Interval: 5 * time.Millisecond})
	return err
}

// supersedingLine is what the c-supersede scenario prints between its two
// applies: the steps after it are the supersede's.
const supersedingLine = "superseding"

// tortureTarget is one fixture under load for the torture tests.
type tortureTarget struct {
	t    *testing.T
	kind string // "c", "c-supersede" or "go"
	lib  string
	lib2 string // c-supersede: the fix that supersedes lib's
	p    *fixture.Proc
	// go: the busy batch held in the old serve during the apply, released
	// when the transition starts.
	batch, busy int
}

func startTortureTarget(t *testing.T, kind string) *tortureTarget {
	tt := &tortureTarget{t: t, kind: kind, batch: -1, busy: -1}
	if kind == "c" || kind == "c-supersede" {
		p, bin := serve(t, 2)
		tt.p, tt.lib = p, fixLib(t, pin(buildID(t, bin)))
		if kind == "c-supersede" {
			tt.lib2 = fixLib(t, pin(buildID(t, bin)), "-DV2")
		}
		return tt
	}
	tt.p = fixture.Start(t, fixture.BuildGo(t, "gouniverse", ""))
	return tt
}

// patcher runs the patcher process against the target, killing at at with
// kill, and waits (bounded) until it ends; it returns its output.
func (tt *tortureTarget) patcher(at, kill string, limit time.Duration) ([]string, *fixture.Proc) {
	t := tt.t
	t.Helper()
	if tt.kind == "go" {
		tt.batch++
		tt.busy = tt.batch
		command(t, tt.p, "start 3", regexp.MustCompile(fmt.Sprintf(`^batch %d started 3$`, tt.batch)))
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), tortureEnv+"="+tt.kind, "TORTURE_PID="+strconv.Itoa(tt.p.Pid),
		"TORTURE_LIB="+tt.lib, "TORTURE_LIB2="+tt.lib2, "TORTURE_AT="+at, "TORTURE_KILL="+kill)
	h := fixture.StartCmd(t, cmd)
	deadline := time.Now().Add(limit)
	for {
		if done, _ := h.Exited(); done {
			break
		}
		if time.Now().After(deadline) {
			h.Cmd.Process.Signal(syscall.SIGQUIT) // its goroutines, for the report
			time.Sleep(500 * time.Millisecond)
			h.Kill()
			t.Fatalf("kill %s at %s: the patcher did not end within %v:\n%s", kill, at, limit, strings.Join(h.Lines(), "\n"))
		}
		if tt.busy >= 0 && hasLine(h.Lines(), "transition") {
			tt.release()
		}
		time.Sleep(5 * time.Millisecond)
	}
	if kill == "self" {
		tt.release()
	}
	return h.Lines(), h
}

// release lets the busy batch of the go target return.
func (tt *tortureTarget) release() {
	if tt.busy < 0 {
		return
	}
	// The target may be killed meanwhile (TestTortureKillTarget kills it
	// at the patcher's steps): then nobody answers, and that is fine.
	mark := tt.p.Mark()
	fmt.Fprintln(tt.p.Stdin, fmt.Sprintf("stop %d", tt.busy))
	want := fmt.Sprintf("batch %d stopped 3", tt.busy)
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if slices.Contains(tt.p.Lines()[mark:], want) {
			break
		}
		if ex, _ := tt.p.Exited(); ex {
			break
		}
		if time.Now().After(deadline) {
			tt.t.Fatalf("the target did not say %q within 60s", want)
		}
	}
	tt.busy = -1
}

func hasLine(lines []string, s string) bool {
	for _, l := range lines {
		if l == s {
			return true
		}
	}
	return false
}

// serving checks the target answers, and correctly: every request of the
// C service served in order at the old or the new price; every task of the
// Go one on one version of serve, verA and verB.
func (tt *tortureTarget) serving(what string) {
	t := tt.t
	t.Helper()
	if tt.kind != "go" {
		m := tt.p.Mark()
		tt.p.ExpectAfter(t, m, served, 10*time.Second)
		checkServedPrices(t, tt.p, "71", "145", "212")
		return
	}
	tt.batch++
	command(t, tt.p, "start 2", regexp.MustCompile(fmt.Sprintf(`^batch %d started 2$`, tt.batch)))
	v1, v2, mix := round(t, tt.p)
	require.Zero(t, mix, "%s: a task saw a mix of versions", what)
	require.Equal(t, 2, v1+v2, what)
	command(t, tt.p, fmt.Sprintf("stop %d", tt.batch), regexp.MustCompile(fmt.Sprintf(`^batch %d stopped 2$`, tt.batch)))
}

// mappingSet is what a patch may add to a target and must take away: the
// executable mappings, the ones named by hotpatch and the patch libraries'
// (/memfd:..., all of them), and the target's descriptors.
func mappingSet(t testing.TB, pid int) []string {
	t.Helper()
	ms, err := elfsym.ReadMappings(pid)
	require.NoError(t, err)
	out := fdsOf(t, pid)
	for _, m := range ms {
		if strings.Contains(m.Perms, "x") || strings.HasPrefix(m.Path, "/memfd:") || strings.HasPrefix(m.Path, "[anon:hotpatch") {
			out = append(out, fmt.Sprintf("%x-%x %s %s", m.Start, m.End, m.Perms, m.Path))
		}
	}
	sort.Strings(out)
	return out
}

// textMatchesFiles checks every private executable file mapping (but the
// patch libraries) holds the bytes of its file: no jump, no stub left in
// padding.
func textMatchesFiles(t testing.TB, pid int, what string) {
	t.Helper()
	if d := textDiffs(t, pid); len(d) > 0 {
		t.Fatalf("%s: %s", what, d[0].what)
	}
}

// textDiff is a byte of an executable file mapping that differs from the
// file.
type textDiff struct {
	addr uint64
	what string
}

// textDiffs returns the first differing byte of each run of bytes of the
// target's private executable file mappings (but the patch libraries)
// that differ from their files.
func textDiffs(t testing.TB, pid int) []textDiff {
	t.Helper()
	ms, err := elfsym.ReadMappings(pid)
	require.NoError(t, err)
	mem, err := os.Open(fmt.Sprintf("/proc/%d/mem", pid))
	require.NoError(t, err)
	defer mem.Close()
	var out []textDiff
	for _, m := range ms {
		if !strings.HasPrefix(m.Path, "/") || m.Perms != "r-xp" {
			continue
		}
		f, err := os.Open(fmt.Sprintf("/proc/%d/map_files/%x-%x", pid, m.Start, m.End))
		if err != nil {
			t.Logf("%s: %v: not compared", m.Path, err)
			continue
		}
		want := make([]byte, m.End-m.Start)
		f.ReadAt(want, int64(m.Offset)) // past the end of the file: zeros
		f.Close()
		got := make([]byte, len(want))
		_, err = mem.ReadAt(got, int64(m.Start))
		require.NoError(t, err)
		for off := 0; off < len(got); {
			i := firstDiff(got[off:], want[off:])
			if i < 0 {
				break
			}
			i += off
			out = append(out, textDiff{m.Start + uint64(i), fmt.Sprintf("%s at %#x (offset %#x) differs from its file: % x, file % x",
				m.Path, m.Start+uint64(i), i, got[i:min(i+16, len(got))], want[i:min(i+16, len(want))])})
			for off = i; off < len(got) && got[off] != want[off]; off++ {
			}
			off += 32 // one run: a stub or a jump holds bytes equal to the file's
		}
	}
	return out
}

func firstDiff(a, b []byte) int {
	if bytes.Equal(a, b) {
		return -1
	}
	for i := range a {
		if a[i] != b[i] {
			return i
		}
	}
	return len(a)
}

// tortureSteps runs the patcher once without a kill and returns every
// pass of every step it went through, in order — only the first pass of
// each outside x86-64 (the arm64 lane runs in an emulated VM), or with
// -short. For c-supersede, only the steps of the supersede and the revert
// (the first apply's are c's); a step's pass counts from the start all
// the same.
func tortureSteps(t *testing.T, tt *tortureTarget) []string {
	lines, _ := tt.patcher("", "none", 60*time.Second)
	require.Contains(t, lines, "done", strings.Join(lines, "\n"))
	firstOnly := runtime.GOARCH != "amd64" || testing.Short()
	if tt.kind == "c-supersede" {
		i := slices.Index(lines, supersedingLine)
		require.GreaterOrEqual(t, i, 0, strings.Join(lines, "\n"))
		lines = lines[i:]
	}
	var steps []string
	seen := map[string]bool{}
	for _, l := range lines {
		s, ok := strings.CutPrefix(l, "step ")
		if !ok {
			continue
		}
		name, _, _ := strings.Cut(s, "#")
		if !firstOnly || !seen[name] {
			steps = append(steps, s)
		}
		seen[name] = true
	}
	return steps
}

// TestTortureKillPatcher SIGKILLs the patcher at every step of an apply and
// a revert (the first pass of each), in a C service loading a patch
// library (and, c-supersede, a second one superseding it) and in a Go
// service in a gradual transition under load. After
// each kill the target serves correct answers; a new tool's Status shows
// no "partial" and accounts for every mapping the patch added (records and
// Leftovers); Resume finishes a transition left behind, and cleans up too;
// RevertAll leaves the target's executable and hotpatch
// mappings as before the first patch and every text mapping equal to its
// file (no stub left in padding).
func TestTortureKillPatcher(t *testing.T) {
	for _, kind := range []string{"c", "c-supersede", "go"} {
		t.Run(kind, func(t *testing.T) {
			tt := startTortureTarget(t, kind)
			before := mappingSet(t, tt.p.Pid)
			steps := tortureSteps(t, tt)
			require.Equal(t, before, mappingSet(t, tt.p.Pid), "a full apply and revert")
			must := []string{"apply:mapped#1", "apply:record-written#1", "apply:paused#1", "revert:unmapped#1", "syscall:on-stub#1"}
			switch kind {
			case "c":
				must = append(must, "lib:record-mapped#1", "lib:memfd-created#1", "lib:dlopened#1", "lib:fd-closed#1",
					"lib:unload-checked#1", "lib:dlclosed#1", "lib:unloaded#1", "call:data-mapped#1", "call:set-up#1")
			case "c-supersede":
				must = []string{"lib:dlopened#2", "apply:mapped#2", "apply:record-written#2", "apply:paused#2", "state:superseded#1",
					"supersede:switched#1", "supersede:unmapped#1", "apply:done#2", "revert:unmapped#1"}
			default:
				must = append(must, "transition:table-switched#1", "finalize:jumps#1", "state:reverting#1")
			}
			for _, want := range must {
				require.Contains(t, steps, want)
			}
			start := time.Now()
			resumed := 0
			for _, at := range steps {
				lines := killAt(t, tt, at, "self")
				require.Equal(t, "step "+at, lines[len(lines)-1], "killed at %s:\n%s", at, strings.Join(lines, "\n"))
				tt.serving("killed at " + at)
				resumed += tortureAfterKill(t, tt, before, at)
			}
			t.Logf("%s: killed the patcher at %d steps in %v (%d transitions left, resumed): %s", kind, len(steps), time.Since(start).Round(time.Millisecond), resumed, strings.Join(steps, " "))
		})
	}
}

// killAt runs the patcher to kill itself or the target (kill) at step at
// and returns its lines.
// How many pauses a gradual transition takes depends on when the busy
// goroutines leave, so a pass counted in the run without a kill (say the
// third table written) may not come in another; a run that ends without
// reaching it (its apply and revert done, the target as before) is run
// again, up to three times.
func killAt(t *testing.T, tt *tortureTarget, at, kill string) []string {
	t.Helper()
	timeout := map[string]time.Duration{"self": 30 * time.Second, "target": 15 * time.Second}[kill]
	for try := 1; ; try++ {
		lines, _ := tt.patcher(at, kill, timeout)
		if try == 3 || slices.Contains(lines, "step "+at) || lines[len(lines)-1] != "done" {
			return lines
		}
		t.Logf("%s: not reached in run %d (its steps: %s); again", at, try, strings.Join(lines, " "))
	}
}

// tortureAfterKill checks what a new tool sees after a kill at step at,
// and that RevertAll ends clean.
func tortureAfterKill(t *testing.T, tt *tortureTarget, before []string, at string) (resumed int) {
	t.Helper()
	tg, err := patch.Attach(tt.p.Pid, nil)
	require.NoError(t, err)
	defer tg.Close()
	recs, err := tg.Status()
	require.NoError(t, err)
	left, err := tg.Leftovers()
	require.NoError(t, err)
	accounted := map[uint64]bool{}
	var changed [][2]uint64 // code a record or a leftover accounts for
	for _, r := range recs {
		require.NotEqual(t, patch.StatePartial, r.State, "killed at %s", at)
		accounted[r.Region] = true
		for _, f := range r.Functions {
			changed = append(changed, [2]uint64{f.PatchAddr, f.PatchAddr + uint64(len(f.Jump))})
		}
	}
	libs := map[string]bool{} // patch IDs whose library a record or a leftover names
	for _, r := range recs {
		if r.Lib != nil {
			libs[r.ID] = true
		}
	}
	fds := map[int]bool{}
	for _, l := range left {
		accounted[l.Addr] = true
		if l.Kind == patch.LeftoverLibFd {
			require.NotNil(t, l.Fd, "killed at %s: %+v", at, l)
			fds[*l.Fd] = true
			continue
		}
		if l.Kind == patch.LeftoverLib {
			libs[l.ID] = true
		}
		changed = append(changed, [2]uint64{l.Addr, l.Addr + l.Size})
	}
	// Every descriptor of a patch library is a leftover Status shows.
	for _, fd := range fdsOf(t, tt.p.Pid) {
		n, link, _ := strings.Cut(fd, " -> ")
		if strings.HasPrefix(link, "/memfd:") {
			k, _ := strconv.Atoi(n)
			require.True(t, fds[k], "killed at %s: descriptor %s is not listed in the Leftovers %+v", at, fd, left)
		}
	}
diffs:
	for _, d := range textDiffs(t, tt.p.Pid) {
		for _, c := range changed {
			if d.addr >= c[0] && d.addr < c[1] {
				continue diffs
			}
		}
		t.Fatalf("killed at %s: %s, and neither a record nor a leftover Status shows says why", at, d.what)
	}
	// A transition left by the kill: Resume finishes it, and cleans up.
	for _, r := range recs {
		if r.State != "transition" && r.State != "reverting" {
			continue
		}
		res, err := tg.Resume(context.Background(), r.ID, patch.ApplyOptions{Timeout: 10 * time.Second, Interval: 5 * time.Millisecond})
		require.NoError(t, err, "killed at %s: resume %s", at, r.ID)
		require.Contains(t, []patch.State{patch.StateApplied, patch.StateReverted}, res.State)
		left, err := tg.Leftovers()
		require.NoError(t, err)
		require.Empty(t, left, "killed at %s: after resume", at)
		tt.serving("resumed after a kill at " + at)
		resumed++
	}
	old := map[string]bool{}
	for _, m := range before {
		old[m] = true
	}
	ms, err := elfsym.ReadMappings(tt.p.Pid)
	require.NoError(t, err)
	for _, m := range ms {
		key := fmt.Sprintf("%x-%x %s %s", m.Start, m.End, m.Perms, m.Path)
		if old[key] {
			continue
		}
		if name, ok := strings.CutPrefix(m.Path, "/memfd:hotpatch:"); ok {
			id, _, _ := strings.Cut(name, ":")
			require.True(t, libs[id], "killed at %s: %s is a copy of a patch library neither a record nor a leftover names", at, key)
			continue
		}
		if !(strings.Contains(m.Perms, "x") || strings.HasPrefix(m.Path, "[anon:hotpatch")) {
			continue
		}
		require.True(t, accounted[m.Start], "killed at %s: %s is neither a patch's memory nor a leftover Status shows", at, key)
	}
	_, err = tg.RevertAll(context.Background(), patch.ApplyOptions{Mode: patch.ModeAuto, Timeout: 10 * time.Second, Interval: 5 * time.Millisecond})
	require.NoError(t, err, "killed at %s", at)
	recs, err = tg.Status()
	require.NoError(t, err)
	require.Empty(t, recs, "killed at %s", at)
	left, err = tg.Leftovers()
	require.NoError(t, err)
	require.Empty(t, left, "killed at %s", at)
	require.Equal(t, before, mappingSet(t, tt.p.Pid), "killed at %s: the mappings are not as before", at)
	textMatchesFiles(t, tt.p.Pid, "killed at "+at)
	tt.serving("reverted after a kill at " + at)
	return resumed
}

// TestTortureKillTarget SIGKILLs the target at every step of an apply and a
// revert: the patcher ends promptly, with an error that says the process
// exited.
func TestTortureKillTarget(t *testing.T) {
	for _, kind := range []string{"c", "c-supersede", "go"} {
		t.Run(kind, func(t *testing.T) {
			steps := tortureSteps(t, startTortureTarget(t, kind))
			start := time.Now()
			var slowest time.Duration
			for _, at := range steps {
				tt := startTortureTarget(t, kind)
				t0 := time.Now()
				lines := killAt(t, tt, at, "target")
				took := time.Since(t0)
				slowest = max(slowest, took)
				if at == steps[len(steps)-1] && hasLine(lines, "done") {
					continue // killed after the last thing the tool did
				}
				require.Contains(t, lines, "exited: true", "target killed at %s:\n%s", at, strings.Join(lines, "\n"))
				require.Less(t, took, 10*time.Second, "target killed at %s", at)
				tt.p.Kill()
			}
			t.Logf("%s: killed the target at %d steps in %v; the slowest patcher ended %v after it started", kind, len(steps), time.Since(start).Round(time.Millisecond), slowest.Round(time.Millisecond))
		})
	}
}
