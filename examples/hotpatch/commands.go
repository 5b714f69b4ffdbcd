package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/hotpatch-dev/hotpatch/patch"
	"github.com/hotpatch-dev/hotpatch/patch/agent"
)

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

// modes and onTimeouts are the values of --mode and --on-timeout.
var (
	modes      = names(patch.Modes())
	onTimeouts = names(patch.OnTimeouts())
)

// names returns the text of named string values.
func names[T ~string](vs []T) []string {
	out := make([]string, len(vs))
	for i, v := range vs {
		out[i] = string(v)
	}
	return out
}

func cmdApply(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	c := newFlags("apply", stdout, true, true, true).withSelectors()
	var reps replaceFlags
	c.fs.Var(&reps, "replace", "redirect function OLD to function NEW (`OLD=NEW`, repeatable)")
	lib := c.fs.String("lib", "", "shared object `FILE` holding the NEW functions, loaded into the target with dlopen")
	unpinned := c.fs.Bool("unpinned", false, "accept a --lib that declares no HOTPATCH_PIN build ID")
	allowInlined := c.fs.Bool("allow-inlined", false, "patch only the out-of-line copy of a function the compiler also inlined into callers, or may have (those copies keep the old code)")
	skipSig := c.fs.Bool("skip-signature-check", false, "apply a NEW whose parameters or results differ from OLD's as DWARF or the Go function table record them")
	mode := c.choice("mode", string(patch.ModeStop), "stop: one pause in which no task may be in the functions; gradual: tasks busy in them keep the old code until they leave (per-task universes); auto: stop, then gradual if tasks stay busy", modes...)
	onTimeout := c.choice("on-timeout", string(patch.OnTimeoutRevert), "what a gradual transition does when --timeout passes with tasks pending: revert, or stay in transition (exit status 3)", onTimeouts...)
	force := c.fs.Bool("force", false, "at --timeout, move the pending tasks to the new code anyway (each is reported)")
	interval := c.fs.Duration("interval", 20*time.Millisecond, "time between the short pauses of a gradual transition")
	resume := c.fs.Bool("resume", false, "drive a transition left by an earlier apply or revert (--id, or the one in transition) to its end")
	id := c.fs.String("id", "", "with --resume: the `ID` of the patch to drive")
	supersede := c.fs.String("supersede", "", "replace the applied patch `ID` by this one in the same pause (stop mode): no call runs the original code between the two; functions of ID not in this patch get their original code back, and reverting this patch restores the original")
	plugin := c.fs.String("plugin", "", "Go plugin `FILE` (go build -buildmode=plugin) whose manifest says what it fixes, handed to the service's agent (patch/agent)")
	if err := c.parse(args); err != nil {
		return err
	}
	if *plugin != "" {
		if len(reps) > 0 || *lib != "" || *resume || *unpinned || *allowInlined || *skipSig || c.many() {
			return fmt.Errorf("%w: --plugin takes no --replace, --lib, --unpinned, --resume, --allow-inlined, --skip-signature-check, --exe or --build-id (its manifest names the functions, and their checks apply; one service at a time)", errUsage)
		}
		if *supersede != "" && patch.Mode(*mode) == patch.ModeGradual {
			return fmt.Errorf("%w: --supersede switches in one pause: use --mode stop (or auto), not gradual", errUsage)
		}
		c.mode, c.plugin = patch.Mode(*mode), true
		streaming := c.json && patch.Mode(*mode) != patch.ModeStop
		req := agent.Request{Mode: patch.Mode(*mode), Timeout: c.timeout, OnTimeout: patch.OnTimeout(*onTimeout), Force: *force, Interval: *interval,
			Supersede: *supersede, Progress: newProgress(stdout, stderr, streaming, c.timeout).report}
		return c.applyPlugin(ctx, *plugin, req, streaming, stderr)
	}
	c.mode, c.supersede = patch.Mode(*mode), *supersede
	if *resume {
		c.mode = patch.ModeGradual // a transition already runs
	}
	switch {
	case *resume && len(reps) > 0:
		return fmt.Errorf("%w: --resume takes no --replace", errUsage)
	case !*resume && len(reps) == 0:
		return fmt.Errorf("%w: at least one --replace OLD=NEW is required", errUsage)
	case *id != "" && !*resume:
		return fmt.Errorf("%w: --id goes with --resume", errUsage)
	case *supersede != "" && *resume:
		return fmt.Errorf("%w: --supersede replaces a patch by a new one; --resume applies none", errUsage)
	case *supersede != "" && patch.Mode(*mode) == patch.ModeGradual:
		return fmt.Errorf("%w: --supersede switches in one pause: use --mode stop (or auto), not gradual", errUsage)
	case *interval <= 0:
		return fmt.Errorf("%w: --interval must be above 0, got %v", errUsage, *interval)
	case *resume && c.many():
		return fmt.Errorf("%w: --resume drives one process's transition: give its --pid (the report of apply %s names each)", errUsage, c.selector())
	case *supersede != "" && c.many():
		return fmt.Errorf("%w: --supersede names a patch of one process: give its --pid", errUsage)
	}
	opts := patch.ApplyOptions{Timeout: c.timeout, AllowInlined: *allowInlined, Mode: patch.Mode(*mode),
		OnTimeout: patch.OnTimeout(*onTimeout), Force: *force, Interval: *interval, Lib: *lib, Unpinned: *unpinned,
		SkipSignatureCheck: *skipSig, Supersede: *supersede}
	if c.many() {
		opts.Progress = newProgress(stdout, stderr, false, c.timeout).report
		return c.applyMany(ctx, stdout, stderr, reps, opts)
	}
	t, err := patch.Attach(c.pid, nil)
	if err != nil {
		return c.fail(stdout, err)
	}
	defer t.Close()
	streaming := c.json && (patch.Mode(*mode) != patch.ModeStop || *resume)
	opts.Progress = newProgress(stdout, stderr, streaming, c.timeout).report
	var res *patch.Result
	if *resume {
		res, err = t.Resume(ctx, *id, opts)
	} else {
		res, err = t.Apply(ctx, reps, opts)
	}
	if err != nil {
		if hint := droppedGo(t, reps, *lib, err); hint != "" {
			return fmt.Errorf("%w\n%s", c.applyFailed(stdout, err, res, streaming), hint)
		}
		return c.applyFailed(stdout, err, res, streaming)
	}
	warnApplied(stderr, res)
	switch {
	case streaming:
		writeLine(stdout, leading{"event", "result", res})
	case c.json:
		writeJSON(stdout, res)
	default:
		printApplied(stdout, c.pid, res)
	}
	if inTransition(res) {
		return quietError{exitTransition}
	}
	return nil
}

// applyPlugin hands a Go plugin to the agent of the target, and reports
// the apply as any other.
func (c *common) applyPlugin(ctx context.Context, path string, req agent.Request, streaming bool, stderr io.Writer) error {
	f, err := os.Open(path)
	if err != nil {
		return c.fail(c.stdout, fmt.Errorf("hotpatch: plugin: %w", err))
	}
	defer f.Close()
	res, err := agent.Apply(ctx, c.pid, f, req)
	if err != nil {
		if errors.Is(err, agent.ErrNoAgent) {
			err = fmt.Errorf("%w\nhotpatch: a plugin is loaded by the agent inside the service; without one, --replace OLD=NEW redirects to Go code already compiled in", err)
		}
		return c.applyFailed(c.stdout, err, res, streaming)
	}
	warnApplied(stderr, res)
	switch {
	case streaming:
		writeLine(c.stdout, struct {
			Event string `json:"event"`
			*patch.Result
		}{"result", res})
	case c.json:
		writeJSON(c.stdout, res)
	default:
		printApplied(c.stdout, c.pid, res)
	}
	if inTransition(res) {
		return quietError{exitTransition}
	}
	return nil
}

// applyFailed reports a failed apply or resume: as the last JSON event
// when streaming.
func (c *common) applyFailed(stdout io.Writer, err error, res *patch.Result, streaming bool) error {
	if !streaming {
		return c.failAt(stdout, err, res)
	}
	err = c.withHint(err)
	ev := errorFields(err, res)
	ev["event"] = "error"
	writeLine(stdout, ev)
	return leftIn(c.pid, err, res)
}

// warnApplied names what an applied patch leaves on the old code.
func warnApplied(stderr io.Writer, res *patch.Result) {
	for _, f := range res.Functions {
		if len(f.InlinedInto) > 0 {
			fmt.Fprintf(stderr, "hotpatch: warning: %s stays inlined, with the old code, in: %s\n", f.Old, strings.Join(f.InlinedInto, ", "))
		}
	}
	for _, task := range res.Forced {
		fmt.Fprintf(stderr, "hotpatch: forced: %s moved to the new code with old code on its stack\n", task)
	}
}

// printApplied says what an apply (or a resume) did.
func printApplied(stdout io.Writer, pid int, res *patch.Result) {
	switch res.State {
	case patch.StateTransition, patch.StateReverting:
		fmt.Fprintf(stdout, "%s %s: %d task(s) still pending after --timeout; the target stays in transition, consistent (hotpatch apply --pid %d --resume --id %s continues it)\n",
			res.ID, res.State, res.Pending, pid, res.ID)
		return
	case patch.StateReverted:
		fmt.Fprintf(stdout, "reverted %s\n", res.ID)
		return
	}
	fmt.Fprintf(stdout, "applied %s: %d function(s), pause %d us (%d attempt(s))\n", res.ID, len(res.Functions), res.PauseMicros, res.Attempts)
	for _, f := range res.Functions {
		fmt.Fprintf(stdout, "  %s (%#x) -> %s (%#x)\n", f.Old, f.OldAddr, f.New, f.NewAddr)
	}
	if res.Superseded != "" {
		fmt.Fprintf(stdout, "superseded %s in the same pause; hotpatch revert --pid %d --id %s restores the original code\n", res.Superseded, pid, res.ID)
	}
}

func cmdRevert(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	c := newFlags("revert", stdout, true, true, true).withSelectors()
	id := c.fs.String("id", "", "`ID` of the patch to revert")
	all := c.fs.Bool("all", false, "revert every applied patch, newest first, and remove what a killed hotpatch left")
	mode := c.choice("mode", string(patch.ModeStop), "stop, gradual or auto, as for apply (a patch in transition is always reverted gradually)", modes...)
	onTimeout := c.choice("on-timeout", string(patch.OnTimeoutStay), "what a gradual revert does when --timeout passes with tasks pending (stay: the target stays in a consistent transition, exit status 3)", onTimeouts...)
	if err := c.parse(args); err != nil {
		return err
	}
	c.mode = patch.Mode(*mode)
	if (*id == "") == !*all {
		return fmt.Errorf("%w: give exactly one of --id ID or --all", errUsage)
	}
	opts := patch.ApplyOptions{Timeout: c.timeout, Mode: patch.Mode(*mode), OnTimeout: patch.OnTimeout(*onTimeout), Progress: newProgress(stdout, stderr, false, c.timeout).report}
	if c.many() {
		if !*all {
			return fmt.Errorf("%w: with --exe or --build-id, revert takes --all (a patch ID names a patch of one process)", errUsage)
		}
		return c.revertMany(ctx, stdout, stderr, opts)
	}
	t, err := patch.Attach(c.pid, nil)
	if err != nil {
		return c.fail(stdout, err)
	}
	defer t.Close()
	var results []*patch.Result
	if *all {
		results, err = t.RevertAll(ctx, opts)
	} else {
		var r *patch.Result
		if r, err = t.Revert(ctx, *id, opts); r != nil {
			results = append(results, r)
		}
	}
	if err != nil {
		return c.revertFailed(stdout, err, results, *all)
	}
	if results == nil {
		results = []*patch.Result{}
	}
	switch {
	case c.json && *all:
		writeJSON(stdout, map[string]any{"reverted": results})
	case c.json:
		writeJSON(stdout, results[0])
	default:
		printReverted(stdout, c.pid, results)
	}
	for _, r := range results {
		if inTransition(r) {
			return quietError{exitTransition}
		}
	}
	return nil
}

// revertFailed reports a failed revert: each result says where its patch
// was left, the failed one's last when it has one.
func (c *common) revertFailed(stdout io.Writer, err error, results []*patch.Result, all bool) error {
	var last *patch.Result
	if n := len(results); n > 0 {
		last = results[n-1]
	}
	if !all {
		return c.failAt(stdout, err, last)
	}
	err = c.withHint(err)
	if c.json {
		m := errorFields(err, nil)
		if results == nil {
			results = []*patch.Result{}
		}
		m["reverted"] = results
		writeJSON(stdout, m)
	}
	return leftIn(c.pid, err, last)
}

func printReverted(stdout io.Writer, pid int, results []*patch.Result) {
	if len(results) == 0 {
		fmt.Fprintln(stdout, "nothing to revert")
	}
	for _, r := range results {
		if r.State == patch.StateReverting {
			fmt.Fprintf(stdout, "%s reverting: %d task(s) still on the new code; hotpatch apply --pid %d --resume --id %s finishes it\n", r.ID, r.Pending, pid, r.ID)
			continue
		}
		fmt.Fprintf(stdout, "reverted %s: %d function(s), pause %d us\n", r.ID, len(r.Functions), r.PauseMicros)
		if r.LibLoaded != "" {
			fmt.Fprintf(stdout, "  %s; hotpatch revert --pid %d --all unloads it once no task is in it\n", r.LibLoaded, pid)
		}
	}
}

func cmdStatus(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	c := newFlags("status", stdout, true, true, false).withSelectors()
	if err := c.parse(args); err != nil {
		return err
	}
	if c.many() {
		return c.statusMany(stdout, stderr)
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
		writeJSON(stdout, statusEntry(c.pid, recs, left))
		return nil
	}
	return printStatus(stdout, c.pid, recs, left)
}

// statusEntry is status --json of one process (lists as [], never null).
func statusEntry(pid int, recs []patch.Record, left []patch.Leftover) map[string]any {
	if recs == nil {
		recs = []patch.Record{}
	}
	if left == nil {
		left = []patch.Leftover{}
	}
	return map[string]any{"pid": pid, "patches": recs, "leftovers": left}
}

// printStatus lists the patches of a process as a table, with the tasks a
// transition waits for and what a killed hotpatch left.
func printStatus(stdout io.Writer, pid int, recs []patch.Record, left []patch.Leftover) error {
	for _, l := range left {
		switch {
		case l.Kind == patch.LeftoverLibFd && l.Fd != nil:
			fmt.Fprintf(stdout, "left by a killed hotpatch: %s %d (%s, patch %s); hotpatch revert --pid %d --all closes it\n", l.Kind, *l.Fd, l.Lib, l.ID, pid)
		case l.Kind == patch.LeftoverLib && l.Loaded:
			fmt.Fprintf(stdout, "loaded, no patch uses it: %s %s (patch %s, record at %#x); hotpatch revert --pid %d --all unloads it once no task is in it\n", l.Kind, l.Lib, l.ID, l.Addr, pid)
		case l.Kind == patch.LeftoverLib:
			fmt.Fprintf(stdout, "left by a killed hotpatch: the record of %s %s (patch %s, at %#x), not loaded; hotpatch revert --pid %d --all removes it\n", l.Kind, l.Lib, l.ID, l.Addr, pid)
		default:
			fmt.Fprintf(stdout, "left by a killed hotpatch: %s at %#x (%d bytes); hotpatch revert --pid %d --all removes it\n", l.Kind, l.Addr, l.Size, pid)
		}
	}
	if len(recs) == 0 {
		fmt.Fprintf(stdout, "no patches in pid %d\n", pid)
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
