// Command hotpatch replaces functions inside a running process, and puts
// them back, without restarting it.
//
//	hotpatch apply   --pid PID [--lib fix.so [--unpinned]] --replace OLD=NEW [--replace ...] [--timeout 5s] [--allow-inlined]
//	                 [--skip-signature-check] [--mode stop|gradual|auto] [--on-timeout revert|stay] [--force] [--json]
//	hotpatch apply   --pid PID --resume [--id ID] [--timeout 5s] [--json]
//	hotpatch revert  --pid PID (--id ID | --all) [--timeout 5s] [--mode stop|gradual|auto] [--json]
//	hotpatch status  --pid PID [--json]
//	hotpatch syms    --pid PID [SUBSTRING]
//	hotpatch threads --pid PID [--goroutines]
//	hotpatch demo
//
// OLD may be qualified by its module, as in libfoo.so:func. With --lib, the
// shared object fix.so is loaded into the target (dlopen) and each NEW is
// looked up in it first; it must be pinned to the build ID of the module
// holding OLD with HOTPATCH_PIN from patch/include/hotpatch.h, unless
// --unpinned is given.
//
// Exit status: 0 on success, 1 when the operation is refused or fails (the
// reason is on stderr; with --json also as {"error": ...} on stdout), 2 on a
// usage error.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/hotpatch-dev/hotpatch/patch"
)

const usage = `usage:
  hotpatch apply   --pid PID [--lib fix.so [--unpinned]] --replace OLD=NEW [--replace ...] [--timeout 5s] [--allow-inlined]
                   [--skip-signature-check]
                   [--mode stop|gradual|auto] [--on-timeout revert|stay] [--force] [--json]
  hotpatch apply   --pid PID --resume [--id ID] [--timeout 5s] [--json]
  hotpatch revert  --pid PID (--id ID | --all) [--timeout 5s] [--mode stop|gradual|auto] [--json]
  hotpatch status  --pid PID [--json]
  hotpatch syms    --pid PID [SUBSTRING]
  hotpatch threads --pid PID [--goroutines]
  hotpatch demo
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// errUsage marks errors that deserve exit status 2.
var errUsage = errors.New("usage")

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	cmds := map[string]func(context.Context, []string, io.Writer, io.Writer) error{
		"apply": cmdApply, "revert": cmdRevert, "status": cmdStatus,
		"syms": cmdSyms, "threads": cmdThreads, "demo": cmdDemo,
	}
	cmd, ok := cmds[args[0]]
	if !ok {
		if args[0] == "help" || args[0] == "-h" || args[0] == "--help" {
			fmt.Fprint(stdout, usage)
			return 0
		}
		fmt.Fprintf(stderr, "hotpatch: unknown command %q\n%s", args[0], usage)
		return 2
	}
	if err := cmd(ctx, args[1:], stdout, stderr); err != nil {
		if errors.Is(err, errUsage) || errors.Is(err, flag.ErrHelp) {
			if !errors.Is(err, flag.ErrHelp) {
				fmt.Fprintf(stderr, "hotpatch %s: %v\n", args[0], err)
			}
			return 2
		}
		fmt.Fprintln(stderr, err)
		return 1
	}
	return 0
}

// common holds the flags every target command takes.
type common struct {
	fs      *flag.FlagSet
	pid     int
	json    bool
	timeout time.Duration
}

func newFlags(name string, stderr io.Writer, withJSON, withTimeout bool) *common {
	c := &common{fs: flag.NewFlagSet("hotpatch "+name, flag.ContinueOnError)}
	c.fs.SetOutput(stderr)
	c.fs.IntVar(&c.pid, "pid", 0, "target process ID (required)")
	if withJSON {
		c.fs.BoolVar(&c.json, "json", false, "print one JSON object")
	}
	if withTimeout {
		c.fs.DurationVar(&c.timeout, "timeout", 5*time.Second, "how long to retry while threads are inside the functions")
	}
	return c
}

func (c *common) parse(args []string) error {
	if err := c.fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	if c.pid <= 0 {
		return fmt.Errorf("%w: --pid is required", errUsage)
	}
	return nil
}

// replaceFlags collects repeated --replace OLD=NEW.
type replaceFlags []patch.Replacement

func (r *replaceFlags) String() string { return fmt.Sprint(*r) }

func (r *replaceFlags) Set(s string) error {
	old, nw, ok := strings.Cut(s, "=")
	if !ok || old == "" || nw == "" {
		return fmt.Errorf("want OLD=NEW, got %q", s)
	}
	*r = append(*r, patch.Replacement{Old: old, New: nw})
	return nil
}

// fail reports err; with --json it also prints it as a JSON object.
func (c *common) fail(stdout io.Writer, err error) error {
	return c.failAt(stdout, err, nil)
}

// failAt reports err and, when the library read it back (res), the state
// the target was left in: as "id", "state" and "pending" with --json, and
// in words with what to do when a transition is left unfinished.
func (c *common) failAt(stdout io.Writer, err error, res *patch.Result) error {
	err = withHint(c.pid, err)
	if c.json {
		writeJSON(stdout, errorFields(err, res))
	}
	return leftIn(c.pid, err, res)
}

// errorFields is an error as JSON fields, with the state it left.
func errorFields(err error, res *patch.Result) map[string]any {
	m := map[string]any{"error": err.Error(), "code": errorCode(err)}
	if res != nil {
		m["id"], m["state"], m["pending"] = res.ID, res.State, res.Pending
	}
	return m
}

// leftIn adds to err where the target was left when that is unfinished,
// or which command lists the patches when the one named is not there.
func leftIn(pid int, err error, res *patch.Result) error {
	if errors.Is(err, patch.ErrNotApplied) || errors.Is(err, patch.ErrNoTransition) {
		return fmt.Errorf("%w\nhotpatch: hotpatch status --pid %d lists the patches", err, pid)
	}
	if res == nil || (res.State != "transition" && res.State != "reverting") {
		return err
	}
	return fmt.Errorf("%w\nhotpatch: %s is %s, %d task(s) pending; the target is consistent. hotpatch apply --pid %d --resume --id %s finishes it once they leave, hotpatch status --pid %d lists them",
		err, res.ID, res.State, res.Pending, pid, res.ID, pid)
}

// errorCode names an error for scripts.
func errorCode(err error) string {
	for _, e := range []struct {
		err  error
		code string
	}{
		// A cancelled wait also wraps what it waited for: it goes first.
		{context.Canceled, "canceled"},
		{patch.ErrPIDReused, "pid_reused"}, {patch.ErrKernelThread, "kernel_thread"}, {patch.ErrBusy, "busy"},
		{patch.ErrNoProcess, "no_process"}, {patch.ErrPermission, "permission"},
		{patch.ErrUnknownSymbol, "unknown_symbol"}, {patch.ErrAmbiguous, "ambiguous_symbol"},
		{patch.ErrTooShort, "too_short"}, {patch.ErrBranchIntoPatch, "branch_into_patch"},
		{patch.ErrCannotRelocate, "cannot_relocate"}, {patch.ErrBlocked, "blocked"},
		{patch.ErrAlreadyApplied, "already_applied"}, {patch.ErrNotApplied, "not_applied"},
		{patch.ErrCodeChanged, "code_changed"}, {patch.ErrBadRequest, "bad_request"},
		{patch.ErrBuildIDMismatch, "build_id_mismatch"}, {patch.ErrUnpinned, "unpinned"},
		{patch.ErrLoadLibrary, "load_library"},
		{patch.ErrInlined, "inlined"}, {patch.ErrInTransition, "in_transition"},
		{patch.ErrNoTransition, "no_transition"},
		{patch.ErrABI, "abi"}, {patch.ErrSignature, "signature"},
	} {
		if errors.Is(err, e.err) {
			return e.code
		}
	}
	return "error"
}

// withHint adds the flag or command that helps with a refusal, when one
// does (the library's errors name its options, never the CLI's).
func withHint(pid int, err error) error {
	var hint string
	switch {
	case errors.Is(err, patch.ErrSignature):
		hint = "--skip-signature-check applies it anyway"
	case errors.Is(err, patch.ErrInlined):
		hint = "--allow-inlined patches the out-of-line copy anyway"
	case errors.Is(err, patch.ErrUnpinned):
		hint = "--unpinned accepts it"
	case errors.Is(err, patch.ErrBlocked) && !errors.Is(err, context.Canceled):
		hint = "raise --timeout, or --mode gradual keeps the busy tasks on the old code"
	case errors.Is(err, patch.ErrUnknownSymbol):
		hint = fmt.Sprintf("hotpatch syms --pid %d SUBSTRING lists the functions", pid)
	case errors.Is(err, patch.ErrAlreadyApplied):
		hint = fmt.Sprintf("hotpatch status --pid %d lists the patches, hotpatch revert --pid %d --id ID reverts one", pid, pid)
	case errors.Is(err, patch.ErrInTransition):
		hint = fmt.Sprintf("hotpatch apply --pid %d --resume finishes it", pid)
	default:
		return err
	}
	return fmt.Errorf("%w (%s)", err, hint)
}

func writeJSON(w io.Writer, v any) {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

func cmdApply(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	c := newFlags("apply", stderr, true, true)
	var reps replaceFlags
	c.fs.Var(&reps, "replace", "OLD=NEW: redirect function OLD to function NEW (repeatable)")
	lib := c.fs.String("lib", "", "shared object holding the NEW functions, loaded into the target with dlopen")
	unpinned := c.fs.Bool("unpinned", false, "accept a --lib that declares no HOTPATCH_PIN build ID")
	allowInlined := c.fs.Bool("allow-inlined", false, "patch only the out-of-line copy of a function the compiler also inlined into callers, or may have (those copies keep the old code)")
	skipSig := c.fs.Bool("skip-signature-check", false, "apply a NEW whose parameters or results differ from OLD's as DWARF or the Go function table record them")
	mode := c.fs.String("mode", patch.ModeStop, "stop: one pause in which no task may be in the functions; gradual: tasks busy in them keep the old code until they leave (per-task universes); auto: stop, then gradual if tasks stay busy")
	onTimeout := c.fs.String("on-timeout", patch.OnTimeoutRevert, "what a gradual transition does when --timeout passes with tasks pending: revert, or stay in transition")
	force := c.fs.Bool("force", false, "at --timeout, move the pending tasks to the new code anyway (each is reported)")
	interval := c.fs.Duration("interval", 20*time.Millisecond, "time between the short pauses of a gradual transition")
	resume := c.fs.Bool("resume", false, "drive a transition left by an earlier apply or revert (--id, or the one in transition) to its end")
	id := c.fs.String("id", "", "with --resume: the patch to drive")
	if err := c.parse(args); err != nil {
		return err
	}
	if *resume && len(reps) > 0 {
		return fmt.Errorf("%w: --resume takes no --replace", errUsage)
	}
	if !*resume && len(reps) == 0 {
		return fmt.Errorf("%w: at least one --replace OLD=NEW is required", errUsage)
	}
	if *id != "" && !*resume {
		return fmt.Errorf("%w: --id goes with --resume", errUsage)
	}
	t, err := patch.Attach(c.pid, nil)
	if err != nil {
		return c.fail(stdout, err)
	}
	defer t.Close()
	opts := patch.ApplyOptions{Timeout: c.timeout, AllowInlined: *allowInlined, Mode: *mode,
		OnTimeout: *onTimeout, Force: *force, Interval: *interval, Lib: *lib, Unpinned: *unpinned,
		SkipSignatureCheck: *skipSig}
	streaming := c.json && (*mode != patch.ModeStop || *resume)
	opts.Progress = progressPrinter(stdout, stderr, streaming)
	var res *patch.Result
	if *resume {
		res, err = t.Resume(ctx, *id, opts)
	} else {
		res, err = t.Apply(ctx, reps, opts)
	}
	if err != nil {
		if streaming {
			err = withHint(c.pid, err)
			ev := errorFields(err, res)
			ev["event"] = "error"
			writeLine(stdout, ev)
			return leftIn(c.pid, err, res)
		}
		return c.failAt(stdout, err, res)
	}
	for _, f := range res.Functions {
		if len(f.InlinedInto) > 0 {
			fmt.Fprintf(stderr, "hotpatch: warning: %s stays inlined, with the old code, in: %s\n", f.Old, strings.Join(f.InlinedInto, ", "))
		}
	}
	for _, task := range res.Forced {
		fmt.Fprintf(stderr, "hotpatch: forced: %s moved to the new code with old code on its stack\n", task)
	}
	if streaming {
		writeLine(stdout, struct {
			Event string `json:"event"`
			*patch.Result
		}{"result", res})
		return nil
	}
	if c.json {
		writeJSON(stdout, res)
		return nil
	}
	switch res.State {
	case "transition", "reverting":
		fmt.Fprintf(stdout, "%s %s: %d task(s) still pending after --timeout; the target stays in transition, consistent (hotpatch apply --pid %d --resume --id %s continues it)\n",
			res.ID, res.State, res.Pending, c.pid, res.ID)
		return nil
	case "reverted":
		fmt.Fprintf(stdout, "reverted %s\n", res.ID)
		return nil
	}
	fmt.Fprintf(stdout, "applied %s: %d function(s), pause %d us (%d attempt(s))\n", res.ID, len(res.Functions), res.PauseMicros, res.Attempts)
	for _, f := range res.Functions {
		fmt.Fprintf(stdout, "  %s (%#x) -> %s (%#x)\n", f.Old, f.OldAddr, f.New, f.NewAddr)
	}
	return nil
}

// progressPrinter reports the pauses of a gradual transition: as JSON lines
// on stdout when streaming, else as text on stderr (rewriting one status
// line when stderr is a terminal).
func progressPrinter(stdout, stderr io.Writer, streaming bool) func(patch.Progress) {
	tty := false
	if f, ok := stderr.(*os.File); ok {
		if st, err := f.Stat(); err == nil && st.Mode()&os.ModeCharDevice != 0 {
			tty = true
		}
	}
	return func(p patch.Progress) {
		if streaming {
			writeLine(stdout, p)
			return
		}
		line := fmt.Sprintf("%s %s: %d task(s) pending, %d moved (pause %d us)", p.ID, p.Event, p.Pending, p.Moved, p.PauseMicros)
		if tty && p.Event == "progress" {
			fmt.Fprintf(stderr, "\r\033[K%s", line)
			return
		}
		if tty {
			fmt.Fprint(stderr, "\r\033[K")
		}
		fmt.Fprintln(stderr, line)
		if p.Event == "transition" || p.Event == "reverting" || p.Event == "timeout" {
			for _, o := range p.Oldest {
				fmt.Fprintf(stderr, "  %s\n", o.Task)
				for i, f := range o.Stack {
					fmt.Fprintf(stderr, "      #%-2d %s\n", i, f)
				}
			}
		}
	}
}

// writeLine prints v as one line of JSON.
func writeLine(w io.Writer, v any) {
	b, _ := json.Marshal(v)
	fmt.Fprintf(w, "%s\n", b)
}

func cmdRevert(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	c := newFlags("revert", stderr, true, true)
	id := c.fs.String("id", "", "ID of the patch to revert")
	all := c.fs.Bool("all", false, "revert every applied patch, newest first, and remove what a killed hotpatch left")
	mode := c.fs.String("mode", patch.ModeStop, "stop, gradual or auto, as for apply (a patch in transition is always reverted gradually)")
	onTimeout := c.fs.String("on-timeout", patch.OnTimeoutStay, "what a gradual revert does when --timeout passes with tasks pending (stay: the target stays in a consistent transition)")
	if err := c.parse(args); err != nil {
		return err
	}
	if (*id == "") == !*all {
		return fmt.Errorf("%w: give exactly one of --id ID or --all", errUsage)
	}
	t, err := patch.Attach(c.pid, nil)
	if err != nil {
		return c.fail(stdout, err)
	}
	defer t.Close()
	var results []*patch.Result
	opts := patch.ApplyOptions{Timeout: c.timeout, Mode: *mode, OnTimeout: *onTimeout, Progress: progressPrinter(stdout, stderr, false)}
	if *all {
		results, err = t.RevertAll(ctx, opts)
	} else {
		var r *patch.Result
		if r, err = t.Revert(ctx, *id, opts); r != nil {
			results = append(results, r)
		}
	}
	if err != nil && *all {
		// Each result says where its patch was left, the failed one's
		// last when it has one.
		if c.json {
			m := errorFields(err, nil)
			m["reverted"] = results
			writeJSON(stdout, m)
		}
		if n := len(results); n > 0 {
			return leftIn(c.pid, err, results[n-1])
		}
		return err
	}
	if err != nil {
		var res *patch.Result
		if len(results) > 0 {
			res = results[0]
		}
		return c.failAt(stdout, err, res)
	}
	if c.json {
		if *all {
			writeJSON(stdout, map[string]any{"reverted": results})
		} else {
			writeJSON(stdout, results[0])
		}
		return nil
	}
	if len(results) == 0 {
		fmt.Fprintln(stdout, "nothing to revert")
	}
	for _, r := range results {
		if r.State == "reverting" {
			fmt.Fprintf(stdout, "%s reverting: %d task(s) still on the new code; hotpatch apply --pid %d --resume --id %s finishes it\n", r.ID, r.Pending, c.pid, r.ID)
			continue
		}
		fmt.Fprintf(stdout, "reverted %s: %d function(s), pause %d us\n", r.ID, len(r.Functions), r.PauseMicros)
	}
	return nil
}

func cmdStatus(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	c := newFlags("status", stderr, true, false)
	if err := c.parse(args); err != nil {
		return err
	}
	t, err := patch.Attach(c.pid, nil)
	if err != nil {
		return c.fail(stdout, err)
	}
	defer t.Close()
	recs, err := t.Status()
	if err != nil {
		return c.fail(stdout, err)
	}
	left, err := t.Leftovers()
	if err != nil {
		return c.fail(stdout, err)
	}
	if c.json {
		if recs == nil {
			recs = []patch.Record{}
		}
		out := map[string]any{"pid": c.pid, "patches": recs}
		if len(left) > 0 {
			out["leftovers"] = left
		}
		writeJSON(stdout, out)
		return nil
	}
	for _, l := range left {
		fmt.Fprintf(stdout, "left by a killed hotpatch: %s at %#x (%d bytes); hotpatch revert --pid %d --all removes it\n", l.Kind, l.Addr, l.Size, c.pid)
	}
	if len(recs) == 0 {
		fmt.Fprintf(stdout, "no patches in pid %d\n", c.pid)
		return nil
	}
	tw := tabwriter.NewWriter(stdout, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tSTATE\tPENDING\tCREATED\tFUNCTIONS")
	for _, r := range recs {
		var fs []string
		for _, f := range r.Functions {
			fs = append(fs, f.Old+" -> "+f.New)
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\n", r.ID, r.State, r.Pending, r.Created.Format(time.RFC3339), strings.Join(fs, ", "))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, r := range recs {
		if len(r.PendingTasks) == 0 {
			continue
		}
		fmt.Fprintf(stdout, "%s is waiting for %d task(s):\n", r.ID, len(r.PendingTasks))
		for i, pt := range r.PendingTasks {
			if i == 50 {
				fmt.Fprintf(stdout, "  ... and %d more\n", len(r.PendingTasks)-50)
				break
			}
			fmt.Fprintf(stdout, "  %s %d\n", pt.Kind, pt.ID)
		}
	}
	return nil
}

func cmdSyms(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	c := newFlags("syms", stderr, false, false)
	if err := c.parse(args); err != nil {
		return err
	}
	if c.fs.NArg() > 1 {
		return fmt.Errorf("%w: at most one SUBSTRING", errUsage)
	}
	t, err := patch.Attach(c.pid, nil)
	if err != nil {
		return err
	}
	defer t.Close()
	var table bytes.Buffer
	tw := tabwriter.NewWriter(&table, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "ADDRESS\tSIZE\tPAD\tMODULE\tNAME\tINLINED INTO")
	for _, s := range t.Symbols().Search(c.fs.Arg(0)) {
		inl := ""
		if sites, err := t.Symbols().InlineSites(s); err != nil {
			inl = "? (" + err.Error() + ")"
		} else if len(sites) > 0 {
			inl = patch.FormatInlineSites(sites)
		}
		fmt.Fprintf(tw, "%#x\t%d\t%d\t%s\t%s\t%s\n", s.Addr, s.Size, s.Padding, baseName(s.Module.Path), s.Name, inl)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, line := range strings.SplitAfter(table.String(), "\n") {
		if line != "" {
			fmt.Fprintln(stdout, strings.TrimRight(line, " \n"))
		}
	}
	return nil
}

func cmdThreads(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	c := newFlags("threads", stderr, false, false)
	all := c.fs.Bool("goroutines", false, "also list every goroutine of a Go target (parked ones too), not only those running on a thread")
	if err := c.parse(args); err != nil {
		return err
	}
	t, err := patch.Attach(c.pid, nil)
	if err != nil {
		return err
	}
	defer t.Close()
	snap, err := t.Threads()
	if err != nil {
		return err
	}
	hidden := 0
	for _, task := range snap.Tasks {
		if task.Kind == "goroutine" && task.Thread == 0 && !*all {
			hidden++
			continue
		}
		fmt.Fprintf(stdout, "%s%s\n", task, patch.FormatStack(t, task.Stack))
	}
	if hidden > 0 {
		fmt.Fprintf(stdout, "(%d goroutines not running on a thread; --goroutines lists them)\n", hidden)
	}
	return nil
}

func baseName(p string) string {
	if i := strings.LastIndexByte(p, '/'); i >= 0 {
		return p[i+1:]
	}
	return p
}
