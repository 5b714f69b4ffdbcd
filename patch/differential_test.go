package patch_test

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/hotpatch-dev/hotpatch/consistency"
	"github.com/hotpatch-dev/hotpatch/internal/fixture"
	"github.com/hotpatch-dev/hotpatch/patch"
)

// The differential tests compare our snapshot of a Go target with the Go
// runtime's own traceback of the same goroutines (runtime.Stack of every
// goroutine, printed by the target on demand).
//
// The runtime cannot print the very moment our tracer froze: the target
// must run to print. So the target prints twice, once before and once
// after the snapshot (taken while every thread is stopped), and only the
// goroutines the two dumps show identically (state, every frame, argument
// and pc offset) and parked (not running or runnable) are compared: they
// sat where both dumps saw them — a goroutine that woke up and went back
// to the same place in between is seen by us elsewhere or in another
// state, and that only passes for the states that wake by themselves
// (periodicStates). Per goroutine: its state and wait reason, the
// runtime's functions in order among our frames, each at the same pc
// (entry + the "+0x" offset the runtime prints, by our symbol table), and
// our frames outside the runtime exactly the runtime's.

// rtFrame is one frame of the runtime's traceback.
type rtFrame struct {
	name    string
	inlined bool   // printed with "(...)": no frame of its own, no pc
	off     uint64 // pc - entry, the "+0x" of its file line
	hasOff  bool
}

// goStack is one goroutine of a runtime.Stack dump.
type goStack struct {
	state  string // the wait reason, "syscall", "running", ...
	frames []rtFrame
	text   string // every line of it, to tell whether two dumps agree
}

// funcs is the stack's function names, innermost first.
func (s goStack) funcs() []string {
	var out []string
	for _, f := range s.frames {
		out = append(out, f.name)
	}
	return out
}

var (
	rtHeader = regexp.MustCompile(`^goroutine (\d+) \[([^\]]*)\]:$`)
	rtFrameL = regexp.MustCompile(`^(\S+)\((.*)\)$`)
	rtFileL  = regexp.MustCompile(`^\t.*:\d+(?: \+0x([0-9a-f]+))?`)
)

// runtimeStacks parses a runtime.Stack(all) dump: goroutine ID → its
// state and frames, innermost first.
func runtimeStacks(lines []string) map[int]goStack {
	out := map[int]goStack{}
	cur, created := -1, false
	for _, l := range lines {
		if m := rtHeader.FindStringSubmatch(l); m != nil {
			cur, _ = strconv.Atoi(m[1])
			// "chan receive, 2 minutes, locked to thread": the reason.
			state, _, _ := strings.Cut(m[2], ", ")
			out[cur], created = goStack{state: state}, false
			continue
		}
		if cur < 0 {
			continue
		}
		s := out[cur]
		s.text += l + "\n"
		switch m := rtFileL.FindStringSubmatch(l); {
		case strings.HasPrefix(l, "created by "):
			created = true
		case m != nil && !created && len(s.frames) > 0:
			last := &s.frames[len(s.frames)-1]
			if m[1] != "" {
				last.off, _ = strconv.ParseUint(m[1], 16, 64)
				last.hasOff = true
			}
		case m == nil && !created:
			if f := rtFrameL.FindStringSubmatch(l); f != nil {
				s.frames = append(s.frames, rtFrame{name: f[1], inlined: f[2] == "..."})
			}
		}
		out[cur] = s
	}
	return out
}

// ourFrame is one frame of our stack: its function and pc - entry.
type ourFrame struct {
	name string
	off  uint64
}

func ourFrames(tg *patch.Target, task consistency.Task) []ourFrame {
	var out []ourFrame
	for i, f := range task.Stack.Frames {
		pc := f.PC
		if i > 0 {
			pc-- // a return address: the call is before it
		}
		if s, ok := tg.Symbols().SymbolAt(pc); ok {
			out = append(out, ourFrame{name: s.Name, off: f.PC - s.Addr})
		} else {
			out = append(out, ourFrame{name: fmt.Sprintf("%#x", f.PC)})
		}
	}
	return out
}

// elided: wrappers the runtime's traceback leaves out (a go statement's
// closure, prints "created by" instead; a method value's or a deferred
// call's).
var elided = regexp.MustCompile(`\.(gowrap|deferwrap)\d+$|-fm$`)

// outsideRuntime: a Go function of the program, not the runtime's (whose
// frames the traceback shows only in part), nor C (no "." in its name).
func outsideRuntime(name string) bool {
	return strings.Contains(name, ".") && !strings.HasPrefix(name, "runtime.") &&
		!strings.HasPrefix(name, "internal/runtime/") && !strings.HasPrefix(name, "runtime/internal/") &&
		!elided.MatchString(name)
}

// compareStacks classifies our frames of one goroutine against the
// runtime's: "match" when the runtime's functions are, in order, among
// ours at the same pc, and our frames outside the runtime are exactly its
// non-inlined ones. The innermost pc of a goroutine in a system call (or
// in C) is not compared: the runtime prints where it entered the call
// (its saved syscallpc), we where its thread is: our frames inside the
// runtime's innermost one are not its business either.
func compareStacks(ours []ourFrame, rt goStack) string {
	i, first := 0, -1
	var rtUser []string
	for k, f := range rt.frames {
		if f.inlined {
			continue // no frame of its own
		}
		if outsideRuntime(f.name) {
			rtUser = append(rtUser, f.name)
		}
		for i < len(ours) && ours[i].name != f.name {
			i++
		}
		if i == len(ours) {
			return "missing " + f.name
		}
		if first < 0 {
			first = i
		}
		if f.hasOff && ours[i].off != f.off && !(k == 0 && rt.state == "syscall") {
			return fmt.Sprintf("pc of %s differs (ours +%#x, runtime +%#x)", f.name, ours[i].off, f.off)
		}
		i++
	}
	var ourUser []string
	for _, f := range ours[max(first, 0):] {
		if outsideRuntime(f.name) {
			ourUser = append(ourUser, f.name)
		}
	}
	if !slices.Equal(ourUser, rtUser) {
		return fmt.Sprintf("other frames %v (runtime: %v)", ourUser, rtUser)
	}
	return "match"
}

// periodicStates are the states a goroutine leaves and comes back to by
// itself (a timer, the GC's workers): between two identical dumps, our
// snapshot may have caught it awake.
var periodicStates = map[string]bool{
	"sleep": true, "GC sweep wait": true, "GC scavenge wait": true, "GC worker (idle)": true,
	"finalizer wait": true, "force gc (idle)": true, "cleanup wait": true,
}

// Classes of goroutines the differential tests count but do not compare.
const (
	classChanged = "changed between the dumps"
	classRunning = "running in the dumps"
	classWoke    = "woke up between the dumps (periodic)"
	classMatch   = "match"
)

// classify compares one goroutine both dumps show identically with our
// task of the same ID (nil: none).
func classify(tg *patch.Target, task *consistency.Task, rt goStack) string {
	if task == nil {
		return "missing from our snapshot"
	}
	want := "waiting"
	if rt.state == "syscall" {
		want = "syscall"
	}
	if task.Status != want || (want == "waiting" && task.Wait != rt.state) {
		if periodicStates[rt.state] {
			return classWoke
		}
		return fmt.Sprintf("state %s/%q, runtime %q", task.Status, task.Wait, rt.state)
	}
	class := compareStacks(ourFrames(tg, *task), rt)
	if !task.Stack.Reliable {
		class = "unreliable, " + class
	}
	return class
}

// verdict is one goroutine's class.
type verdict struct {
	id    int
	class string
	rt    goStack
}

// counted reports whether class is a comparison's outcome (not a
// goroutine left out).
func counted(class string) bool {
	return class != classChanged && class != classRunning && class != classWoke
}

// differential takes our snapshot of tg between two runtime dumps (dump
// returns the lines of one) and classifies every goroutine of the first;
// ok says which classes other than a match pass.
func differential(t *testing.T, tg *patch.Target, dump func() []string, ok func(class string) bool) []verdict {
	t.Helper()
	before := runtimeStacks(dump())
	snap, err := tg.Threads()
	require.NoError(t, err)
	after := runtimeStacks(dump())
	tasks := map[int]*consistency.Task{}
	for i, task := range snap.Tasks {
		if task.Kind == "goroutine" {
			tasks[task.ID] = &snap.Tasks[i]
		}
	}
	var out []verdict
	for id, b := range before {
		a, seen := after[id]
		var class string
		switch {
		case !seen || a.text != b.text || a.state != b.state:
			class = classChanged
		case b.state == "running" || b.state == "runnable":
			class = classRunning
		default:
			class = classify(tg, tasks[id], b)
		}
		out = append(out, verdict{id: id, class: class, rt: b})
		if class != classMatch && counted(class) && !ok(class) {
			var ours []string
			if tasks[id] != nil {
				ours = frameNames(tg, *tasks[id])
			}
			t.Errorf("goroutine %d [%s]: %s\n  ours:    %v\n  runtime: %v", id, b.state, class, ours, b.funcs())
		}
	}
	return out
}

// tally counts the goroutines compared and matched, and says it in a line
// with every other class.
func tally(vs []verdict) (compared, matched int, line string) {
	counts := map[string]int{}
	for _, v := range vs {
		counts[v.class]++
		if counted(v.class) {
			compared++
		}
	}
	var rest []string
	for class, n := range counts {
		if class != classMatch {
			rest = append(rest, fmt.Sprintf("%s: %d", class, n))
		}
	}
	sort.Strings(rest)
	matched = counts[classMatch]
	return compared, matched, fmt.Sprintf("%d goroutines, %d compared, %d matched; %s", len(vs), compared, matched, strings.Join(rest, "; "))
}

// stackCommand asks a fixture that speaks the "stack" command (gotasks,
// gocgo) for its dump.
func stackCommand(t *testing.T, p *fixture.Proc) func() []string {
	return func() []string {
		mark := p.Mark()
		command(t, p, "stack", regexp.MustCompile(`^stack end$`))
		var dump []string
		in := false
		for _, l := range p.Lines()[mark:] {
			switch {
			case l == "stack begin":
				in = true
			case l == "stack end":
				return dump
			case in:
				dump = append(dump, l)
			}
		}
		return dump
	}
}

// TestGoDifferential compares our snapshot with the Go runtime's own
// traceback (see differential) for targets built by every supported
// toolchain, with DWARF and stripped, without cgo: gotasks with goroutines
// waiting forever in every state (main.block*: channels, select, locks, a
// wait group, a condition, sleep, the poller, a blocking read(2)) and
// parked in main.hold and main.inner; goservice serving HTTP, its
// keep-alive connections parked in the poller after a burst of requests
// from this test. Every goroutine both dumps agree on is compared, and must
// match, or be a stack we call unreliable (it blocks every patch: we are
// unsure where the runtime is sure, never the reverse).
func TestGoDifferential(t *testing.T) {
	unreliable := func(class string) bool { return strings.HasPrefix(class, "unreliable, ") }
	for _, tc := range Toolchains {
		for _, stripped := range []bool{false, true} {
			name, flags := cmp.Or(tc, "current"), []string(nil)
			if stripped {
				name += "-stripped"
				flags = []string{"-ldflags=-s -w"}
			}
			t.Run("gotasks-"+name, func(t *testing.T) {
				p := startTasks(t, tc, flags...)
				command(t, p, "park 2", regexp.MustCompile(`^parked 2$`))
				command(t, p, "nest 2", regexp.MustCompile(`^parked 2$`))
				command(t, p, "waits", regexp.MustCompile(`^waiting 12$`))
				vs := differential(t, attach(t, p.Pid), stackCommand(t, p), unreliable)
				_, _, line := tally(vs)
				t.Logf("gotasks %s: %s", name, line)
				// The 12 main.block* and 4 main.hold or main.inner.
				require.GreaterOrEqual(t, matchedIn(vs, "main.block", "main.hold", "main.inner"), 16, line)
			})
			t.Run("goservice-"+name, func(t *testing.T) {
				cmd := exec.Command(fixture.BuildGo(t, "goservice", tc, flags...))
				cmd.Env = append(os.Environ(), "GOSERVICE_HTTP=1")
				p := fixture.StartCmd(t, cmd)
				url := "http://" + p.ExpectAfter(t, 0, regexp.MustCompile(`^http (\S+)$`), time.Second)[1]
				conns := httpLoad(t, url, 24, 4)
				vs := differential(t, attach(t, p.Pid), httpStack(t, url+"/stack"), unreliable)
				_, _, line := tally(vs)
				t.Logf("goservice %s: %s", name, line)
				require.GreaterOrEqual(t, matchedIn(vs, "net/http.(*conn).serve"), conns*3/4,
					"%d keep-alive connections parked: %s", conns, line)
			})
		}
	}
}

// matchedIn counts the goroutines that matched with one of funcs on the
// runtime's stack (a name's prefix).
func matchedIn(vs []verdict, funcs ...string) int {
	n := 0
	for _, v := range vs {
		if v.class == classMatch && slices.ContainsFunc(v.rt.funcs(), func(f string) bool {
			return slices.ContainsFunc(funcs, func(p string) bool { return strings.HasPrefix(f, p) })
		}) {
			n++
		}
	}
	return n
}

// httpLoad sends n clients' rounds of requests each to url, concurrently,
// on keep-alive connections it leaves open (idle, their server goroutines
// parked) until the test ends, and returns how many there are.
func httpLoad(t *testing.T, url string, n, rounds int) int {
	var opened atomic.Int64
	tr := &http.Transport{
		MaxIdleConnsPerHost: n,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			opened.Add(1)
			return (&net.Dialer{}).DialContext(ctx, network, addr)
		},
	}
	t.Cleanup(tr.CloseIdleConnections)
	client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		go func() {
			for j := 0; j < rounds; j++ {
				resp, err := client.Get(url)
				if err != nil {
					errs <- err
					return
				}
				_, err = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if err == nil && resp.StatusCode != http.StatusOK {
					err = fmt.Errorf("GET %s: %s", url, resp.Status)
				}
				if err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	for i := 0; i < n; i++ {
		require.NoError(t, <-errs)
	}
	return int(opened.Load())
}

// httpStack asks goservice for its dump, on a connection of its own.
func httpStack(t *testing.T, url string) func() []string {
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 10 * time.Second}
	return func() []string {
		resp, err := client.Get(url)
		require.NoError(t, err)
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		return strings.Split(string(b), "\n")
	}
}
