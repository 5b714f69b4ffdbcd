package consistency_test

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/hotpatch-dev/hotpatch/elfsym"
	"github.com/hotpatch-dev/hotpatch/internal/consistency"
	"github.com/hotpatch-dev/hotpatch/internal/fixture"
	"github.com/hotpatch-dev/hotpatch/internal/tracee"
	"github.com/hotpatch-dev/hotpatch/internal/unwind"
)

// gdbFrames is the gdb Python script that prints every thread's frames,
// innermost first, one line each: "T tid", then "F kind pc start name"
// (kind is gdb's frame type; start is the entry of the function gdb's
// debug information names, 0 when it only has a minimal symbol or
// none), then "S reason" where the walk ended (or "E error" when gdb's
// unwinder failed). It is gdb's `thread apply all bt`, made exact: the
// text form hides which frames are inlined and where gdb gave up.
const gdbFrames = `
import gdb
kinds = {gdb.NORMAL_FRAME: "normal", gdb.INLINE_FRAME: "inline", gdb.TAILCALL_FRAME: "tailcall",
         gdb.SIGTRAMP_FRAME: "sigtramp", gdb.DUMMY_FRAME: "dummy", gdb.ARCH_FRAME: "arch"}
def start(f):
    fn = f.function()
    if fn is None:
        return 0
    try:
        return int(fn.value().address)
    except Exception:
        return 0
for inf in gdb.inferiors():
    for th in sorted(inf.threads(), key=lambda t: t.ptid[1]):
        th.switch()
        print("T %d" % th.ptid[1])
        f = gdb.newest_frame()
        while f is not None:
            print("F %s %#x %#x %s" % (kinds.get(f.type(), "other"), f.pc(), start(f), f.name() or "??"))
            try:
                older = f.older()
            except gdb.error as e:
                print("E %s" % e)
                break
            if older is None:
                print("S %s" % gdb.frame_stop_reason_string(f.unwind_stop_reason()))
            f = older
`

// gdbFrame is one frame as gdb sees it.
type gdbFrame struct {
	Kind  string // "normal", "inline", "tailcall", "sigtramp", ...
	PC    uint64 // for callers: the return address, as in unwind.Frame
	Start uint64 // entry of the function named by gdb's debug info (0: unknown)
	Name  string // "??" when gdb has no name
}

// gdbThread is one thread's backtrace by gdb.
type gdbThread struct {
	Frames []gdbFrame
	End    string // gdb's stop reason ("outermost"), or its unwind error
}

// real drops gdb's frames that have no stack frame of their own (inlined
// calls, tail calls gdb rebuilt from call-site information): what is left
// corresponds frame for frame to a CFI walk.
func (g gdbThread) real() []gdbFrame {
	var out []gdbFrame
	for _, f := range g.Frames {
		if f.Kind != "inline" && f.Kind != "tailcall" {
			out = append(out, f)
		}
	}
	return out
}

// lookGDB returns gdb's path, or skips: the arm64 VM lane has no gdb,
// and a gdb without Python cannot run gdbFrames.
func lookGDB(t *testing.T) string {
	gdb, err := exec.LookPath("gdb")
	if err != nil {
		t.Skip("gdb is not installed (the arm64 VM lane has none; make deps installs it on the host)")
	}
	if out, err := exec.Command(gdb, "-nx", "-batch", "-ex", "python print('py-ok')").CombinedOutput(); err != nil || !bytes.Contains(out, []byte("py-ok")) {
		t.Skipf("%s has no Python support (gdb-minimal?): %v %s", gdb, err, out)
	}
	return gdb
}

// runGDB attaches gdb to the (group-stopped) process and returns its
// backtrace of every thread. gdb leaves the process stopped when it
// detaches: it was stopped when gdb attached. With debugFiles, gdb reads
// the separate debug files installed (libc6-dbg: libc's own names and
// inlined frames); without, it names what the binaries' own symbols do,
// as on a machine without them, three times faster.
func runGDB(t *testing.T, gdb, script string, pid int, debugFiles bool) map[int]gdbThread {
	args := []string{"-nx", "-batch", "-iex", "set debuginfod enabled off"}
	if !debugFiles {
		args = append(args, "-iex", "set debug-file-directory "+t.TempDir())
	}
	cmd := exec.Command(gdb, append(args, "-ex", "set pagination off",
		// By default gdb hides the frames beyond main and the entry point.
		"-ex", "set backtrace past-main on", "-ex", "set backtrace past-entry on",
		"-p", strconv.Itoa(pid), "-ex", "source "+script)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	require.NoError(t, err, "gdb: %s", stderr.String())
	threads, err := parseGDB(out)
	require.NoError(t, err, "gdb output:\n%s\n%s", out, stderr.String())
	require.NotEmpty(t, threads, "gdb listed no thread:\n%s\n%s", out, stderr.String())
	return threads
}

// parseGDB reads gdbFrames' output.
func parseGDB(out []byte) (map[int]gdbThread, error) {
	threads := map[int]gdbThread{}
	tid := 0
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		line := sc.Text()
		tag, rest, _ := strings.Cut(line, " ")
		th := threads[tid]
		switch tag {
		case "T":
			n, err := strconv.Atoi(rest)
			if err != nil {
				return nil, fmt.Errorf("bad thread line %q", line)
			}
			tid = n
			threads[tid] = gdbThread{}
			continue
		case "F":
			f := strings.SplitN(rest, " ", 4)
			if len(f) != 4 || tid == 0 {
				return nil, fmt.Errorf("bad frame line %q", line)
			}
			pc, err1 := strconv.ParseUint(f[1], 0, 64)
			start, err2 := strconv.ParseUint(f[2], 0, 64)
			if err1 != nil || err2 != nil {
				return nil, fmt.Errorf("bad frame line %q", line)
			}
			th.Frames = append(th.Frames, gdbFrame{Kind: f[0], PC: pc, Start: start, Name: f[3]})
		case "S", "E":
			if tid == 0 {
				return nil, fmt.Errorf("end line %q outside a thread", line)
			}
			th.End = line
		default:
			continue // gdb's own chatter
		}
		threads[tid] = th
	}
	return threads, sc.Err()
}

// taskStates returns the scheduler state letter of every thread of pid.
func taskStates(pid int) (map[int]byte, error) {
	dir := fmt.Sprintf("/proc/%d/task", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	out := map[int]byte{}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(dir, e.Name(), "stat"))
		if err != nil {
			continue // exited meanwhile
		}
		i := bytes.LastIndexByte(b, ')')
		if i < 0 || i+2 >= len(b) {
			return nil, fmt.Errorf("%s/%s/stat: %q", dir, e.Name(), b)
		}
		tid, _ := strconv.Atoi(e.Name())
		out[tid] = b[i+2]
	}
	return out, nil
}

// frozen reports whether every thread of pid is in a group-stop.
func frozen(pid int) bool {
	st, err := taskStates(pid)
	if err != nil || len(st) == 0 {
		return false
	}
	for _, s := range st {
		if s != 'T' {
			return false
		}
	}
	return true
}

// freeze stops pid with SIGSTOP and waits until every thread is stopped.
func freeze(t *testing.T, pid int) {
	require.NoError(t, syscall.Kill(pid, syscall.SIGSTOP))
	waitFrozen(t, pid, "did not stop on SIGSTOP")
}

// waitFrozen waits until every thread of pid is in its group-stop: a
// tracer that detaches wakes the threads, which go back to it at once.
func waitFrozen(t *testing.T, pid int, why string) {
	deadline := time.Now().Add(5 * time.Second)
	for !frozen(pid) {
		require.True(t, time.Now().Before(deadline), "pid %d %s: %v", pid, why, must(taskStates(pid)))
		time.Sleep(time.Millisecond)
	}
}

func must[T any](v T, _ error) T { return v }

// ourSnapshot stops the frozen process with our tracer, takes the
// snapshot and every thread's registers, and detaches, leaving the
// process in its group-stop.
func ourSnapshot(t *testing.T, p *tracee.Process, u *unwind.Unwinder) (consistency.Snapshot, map[int]tracee.Regs) {
	require.NoError(t, p.Stop())
	regs, err := p.AllRegs()
	var snap consistency.Snapshot
	if err == nil {
		snap, err = consistency.Source{Proc: p, Unwinder: u}.Take()
	}
	require.NoError(t, p.Resume())
	require.NoError(t, err)
	return snap, regs
}

// diffStats counts what the comparison found.
type diffStats struct {
	samples, tasks, frames, matched, named int
	// inlined counts gdb's frames without a stack frame of their own
	// (inlined calls, rebuilt tail calls), signal the signal frames
	// both found.
	inlined, signal int
	// classes counts the tasks whose stacks differ in a documented, safe
	// way, by class.
	classes map[string]int
	// bugs lists the differences that are not safe.
	bugs []string
}

func (s *diffStats) String() string {
	var cls []string
	for k, n := range s.classes {
		cls = append(cls, fmt.Sprintf("%s=%d", k, n))
	}
	sort.Strings(cls)
	return fmt.Sprintf("%d samples, %d tasks compared, %d identical to gdb, %d frames compared (%d names, %d signal frames; %d inlined frames of gdb's skipped), safe differences: [%s], bugs: %d",
		s.samples, s.tasks, s.matched, s.frames, s.named, s.signal, s.inlined, strings.Join(cls, " "), len(s.bugs))
}

// sameFunction reports whether our symbol and gdb's name are the same
// function: the same name (gdb may add a version, "@GLIBC_2.2.5"), or
// aliases of one entry address (libc's debug info names clock_nanosleep
// __GI___clock_nanosleep).
func sameFunction(tab *elfsym.Table, ours elfsym.Symbol, g gdbFrame) bool {
	name, _, _ := strings.Cut(g.Name, "@")
	if name == ours.Name || g.Start == ours.Addr {
		return true
	}
	if s, err := tab.Lookup(name); err == nil && s.Addr == ours.Addr {
		return true
	}
	return false
}

// compareTask compares our walk of one thread with gdb's. It returns ""
// when both are the same complete stack, the class of a safe difference,
// or a bug.
func compareTask(tab *elfsym.Table, st *diffStats, s unwind.Stack, g gdbThread) (class string, bug error) {
	gf := g.real()
	st.inlined += len(g.Frames) - len(gf)
	exact := true // frame 0's pc, and one a signal interrupted, are exact; others return addresses
	for i, f := range s.Frames {
		if i >= len(gf) {
			break
		}
		if f.PC != gf[i].PC {
			return "", fmt.Errorf("frame %d: pc %#x, gdb %#x (%s)", i, f.PC, gf[i].PC, gf[i].Name)
		}
		st.frames++
		lookup := f.PC
		if !exact {
			lookup--
		}
		exact = f.Signal
		if sym, ok := tab.SymbolAt(lookup); ok && gf[i].Name != "??" {
			st.named++
			if !sameFunction(tab, sym, gf[i]) {
				return "", fmt.Errorf("frame %d at %#x: we name it %s, gdb %s", i, f.PC, sym.Name, gf[i].Name)
			}
		}
		if f.Signal != (gf[i].Kind == "sigtramp") {
			return "", fmt.Errorf("frame %d at %#x: signal frame %v, gdb's frame is %s", i, f.PC, f.Signal, gf[i].Kind)
		}
		if f.Signal {
			st.signal++
		}
	}
	switch {
	case len(s.Frames) == len(gf) && s.Reliable && strings.HasSuffix(g.End, "outermost"):
		return "", nil
	case len(s.Frames) < len(gf) && !s.Reliable:
		// We stop and say so where gdb went on (with its prologue
		// analyser, or CFI we refuse): never a wrong clean stack.
		return "we are unreliable where gdb goes on", nil
	case len(s.Frames) == len(gf) && !s.Reliable:
		return "both stop at the same frame, we as unreliable", nil
	}
	return "", fmt.Errorf("we found %d frames (reliable %v: %s), gdb %d (%s)", len(s.Frames), s.Reliable, s.Reason, len(gf), g.End)
}

// describe formats both walks of a thread for a failure message.
func describe(tab *elfsym.Table, s unwind.Stack, g gdbThread) string {
	var b strings.Builder
	b.WriteString("ours:" + consistency.FormatStack(s, tab.Symbolize, "\n    "))
	b.WriteString("\n  gdb:")
	for i, f := range g.Frames {
		fmt.Fprintf(&b, "\n    #%-2d %#016x %s [%s]", i, f.PC, f.Name, f.Kind)
	}
	b.WriteString("\n    (" + g.End + ")")
	return b.String()
}

// bothViews freezes the process, takes our snapshot, then gdb's view (by
// gdbView) of the same moment, checks that the registers did not change
// meanwhile, and lets the process go on.
func bothViews(t *testing.T, p *tracee.Process, u *unwind.Unwinder, gdbView func() map[int]gdbThread) (consistency.Snapshot, map[int]gdbThread) {
	pid := p.Pid()
	freeze(t, pid)
	snap, before := ourSnapshot(t, p, u)
	threads := gdbView()
	waitFrozen(t, pid, "runs after gdb detached")
	_, after := ourSnapshot(t, p, u)
	require.Equal(t, before, after, "the registers changed while gdb looked: not the same moment")
	require.NoError(t, syscall.Kill(pid, syscall.SIGCONT))
	require.Len(t, threads, len(snap.Tasks), "gdb and we list different threads")
	return snap, threads
}

// sampleGDB freezes the running process pid n times; each time it takes
// our snapshot and gdb's backtraces of that same frozen moment and
// compares them thread by thread.
func sampleGDB(t *testing.T, gdb string, pid, n int, st *diffStats) {
	script := filepath.Join(t.TempDir(), "frames.py")
	require.NoError(t, os.WriteFile(script, []byte(gdbFrames), 0o644))
	p, err := tracee.Open(pid)
	require.NoError(t, err)
	defer p.Close()
	tab, err := elfsym.Load(pid, p)
	require.NoError(t, err)
	u := unwind.ForTable(tab)
	require.NoError(t, u.Prepare())
	defer syscall.Kill(pid, syscall.SIGCONT)
	for i := 0; i < n; i++ {
		time.Sleep(time.Duration(7+13*i%41) * time.Millisecond) // let it run: catch it elsewhere each time
		snap, threads := bothViews(t, p, u, func() map[int]gdbThread { return runGDB(t, gdb, script, pid, i == 0) })
		st.samples++
		for _, task := range snap.Tasks {
			g, ok := threads[task.ID]
			require.True(t, ok, "gdb does not list thread %d", task.ID)
			st.tasks++
			class, bug := compareTask(tab, st, task.Stack, g)
			switch {
			case bug != nil:
				st.bugs = append(st.bugs, fmt.Sprintf("sample %d, thread %d: %v\n  %s", i, task.ID, bug, describe(tab, task.Stack, g)))
			case class == "":
				st.matched++
			default:
				st.classes[class]++
				t.Logf("sample %d, thread %d: %s\n  %s", i, task.ID, class, describe(tab, task.Stack, g))
			}
		}
	}
}

// gdbTarget is a program the differential test samples.
type gdbTarget struct {
	name    string
	start   func(t *testing.T) int // starts it, returns its pid
	samples int
}

// startFixture starts a C fixture and waits for its line want.
func startFixture(name string, flags []string, want string, args ...string) func(t *testing.T) int {
	return func(t *testing.T) int {
		p := fixture.Start(t, fixture.BuildC(t, name, flags...), args...)
		p.Expect(t, regexp.MustCompile(want), 10*time.Second)
		return p.Pid
	}
}

// startCompressor runs a Debian compressor (xz, zstd) on random bytes
// with two worker threads: a binary and library (liblzma, libzstd) built
// without frame pointers, stripped to .dynsym, caught at arbitrary
// instructions under load.
func startCompressor(name string, args ...string) func(t *testing.T) int {
	return func(t *testing.T) int {
		bin, err := exec.LookPath(name)
		if err != nil {
			t.Skipf("%s is not installed", name)
		}
		in, err := os.Open("/dev/urandom")
		require.NoError(t, err)
		defer in.Close()
		cmd := exec.Command(bin, args...)
		cmd.Stdin = in
		require.NoError(t, cmd.Start())
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		deadline := time.Now().Add(5 * time.Second)
		for {
			st, _ := taskStates(cmd.Process.Pid)
			if len(st) >= 3 {
				return cmd.Process.Pid // main and both workers
			}
			require.True(t, time.Now().Before(deadline), "%s did not start its workers", name)
			time.Sleep(10 * time.Millisecond)
		}
	}
}

// Issue 10: our unwinder against an oracle we did not write. Each
// target is frozen with SIGSTOP several times; at each freeze our tracer
// takes its snapshot and detaches, gdb prints every thread's backtrace
// of the same moment (the registers are checked unchanged), and the two
// are compared thread by thread: the pc of every real frame (inlined
// frames are gdb's view of one CFI frame), the function both name, and
// where each walk ends. A stack we call reliable must be gdb's, frame
// for frame, to gdb's outermost frame; we may only stop earlier when we
// say the stack is unreliable. Skipped without gdb (the arm64 VM lane
// has none).
func TestGDBStacks(t *testing.T) {
	gdb := lookGDB(t)
	targets := []gdbTarget{
		{"cservice -O2", startFixture("cservice", []string{"-O2"}, `^result`, "4"), 10},
		{"cservice -O2 -fomit-frame-pointer", startFixture("cservice", []string{"-O2", "-fomit-frame-pointer"}, `^result`, "4"), 10},
		{"cblockers vdso", startFixture("cblockers", []string{"-O2", "-fomit-frame-pointer"}, `^ready$`, "vdso"), 10},
		// Caught at arbitrary instructions: more samples.
		{"xz -T2", startCompressor("xz", "-T2", "-1", "-c"), 25},
		{"zstd -T2", startCompressor("zstd", "-T2", "-3", "-c"), 25},
	}
	for _, tg := range targets {
		t.Run(tg.name, func(t *testing.T) {
			st := &diffStats{classes: map[string]int{}}
			sampleGDB(t, gdb, tg.start(t), tg.samples, st)
			t.Logf("gdbdiff %s: %s", tg.name, st)
			for i, b := range st.bugs {
				if i == 5 {
					t.Errorf("... and %d more stacks that differ", len(st.bugs)-i)
					break
				}
				t.Errorf("our stack differs from gdb's: %s", b)
			}
		})
	}
}

// The comparison itself: a stack identical to gdb's matches; we may stop
// earlier than gdb only when we call the stack unreliable; any other
// difference is a bug.
func TestGDBCompareClasses(t *testing.T) {
	walk := func(reliable bool, pcs ...uint64) unwind.Stack {
		s := unwind.Stack{Reliable: reliable}
		for _, pc := range pcs {
			s.Frames = append(s.Frames, unwind.Frame{PC: pc})
		}
		return s
	}
	gdbWalk := func(end string, frames ...gdbFrame) gdbThread { return gdbThread{Frames: frames, End: end} }
	f := func(kind string, pc uint64) gdbFrame { return gdbFrame{Kind: kind, PC: pc, Name: "??"} }
	const outermost, gaveUp = "S outermost", "E Cannot access memory at address 0x8"
	for _, tc := range []struct {
		name  string
		ours  unwind.Stack
		gdb   gdbThread
		class string // "" and !bug: identical
		bug   bool
		// signal marks our innermost frame a signal frame.
		signal bool
	}{
		{"identical", walk(true, 1, 2, 3), gdbWalk(outermost, f("normal", 1), f("normal", 2), f("normal", 3)), "", false, false},
		{"gdb's inlined frames are skipped", walk(true, 1, 2), gdbWalk(outermost, f("normal", 1), f("inline", 2), f("normal", 2)), "", false, false},
		{"we stop early, unreliable", walk(false, 1, 2), gdbWalk(outermost, f("normal", 1), f("normal", 2), f("normal", 3)), "we are unreliable where gdb goes on", false, false},
		{"both stop, we unreliable", walk(false, 1, 2), gdbWalk(gaveUp, f("normal", 1), f("normal", 2)), "both stop at the same frame, we as unreliable", false, false},
		{"we stop early, reliable", walk(true, 1, 2), gdbWalk(outermost, f("normal", 1), f("normal", 2), f("normal", 3)), "", true, false},
		{"we go on where gdb gave up", walk(true, 1, 2, 3), gdbWalk(gaveUp, f("normal", 1), f("normal", 2)), "", true, false},
		{"gdb gave up at our last frame", walk(true, 1, 2), gdbWalk(gaveUp, f("normal", 1), f("normal", 2)), "", true, false},
		{"another caller", walk(true, 1, 2, 3), gdbWalk(outermost, f("normal", 1), f("normal", 5), f("normal", 3)), "", true, false},
		{"another caller, unreliable", walk(false, 1, 2), gdbWalk(outermost, f("normal", 1), f("normal", 5), f("normal", 3)), "", true, false},
		{"a signal frame gdb does not see", walk(true, 1, 2), gdbWalk(outermost, f("normal", 1), f("normal", 2)), "", true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.ours.Frames[0].Signal = tc.signal
			st := &diffStats{classes: map[string]int{}}
			class, bug := compareTask(&elfsym.Table{}, st, tc.ours, tc.gdb)
			require.Equal(t, tc.bug, bug != nil, "bug: %v", bug)
			require.Equal(t, tc.class, class)
		})
	}
}
