// Command hotpatch replaces functions inside a running process, and puts
// them back, without restarting it.
//
//	hotpatch apply   --pid PID [--lib fix.so [--unpinned]] --replace OLD=NEW [--replace ...] [--timeout 5s] [--json]
//	hotpatch revert  --pid PID (--id ID | --all) [--timeout 5s] [--json]
//	hotpatch status  --pid PID [--json]
//	hotpatch syms    --pid PID [SUBSTRING]
//	hotpatch threads --pid PID
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
  hotpatch apply   --pid PID [--lib fix.so [--unpinned]] --replace OLD=NEW [--replace ...] [--timeout 5s] [--json]
  hotpatch revert  --pid PID (--id ID | --all) [--timeout 5s] [--json]
  hotpatch status  --pid PID [--json]
  hotpatch syms    --pid PID [SUBSTRING]
  hotpatch threads --pid PID
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
	if c.json {
		writeJSON(stdout, map[string]string{"error": err.Error(), "code": errorCode(err)})
	}
	return err
}

// errorCode names an error for scripts.
func errorCode(err error) string {
	for _, e := range []struct {
		err  error
		code string
	}{
		{patch.ErrNoProcess, "no_process"}, {patch.ErrPermission, "permission"},
		{patch.ErrUnknownSymbol, "unknown_symbol"}, {patch.ErrAmbiguous, "ambiguous_symbol"},
		{patch.ErrTooShort, "too_short"}, {patch.ErrBranchIntoPatch, "branch_into_patch"},
		{patch.ErrCannotRelocate, "cannot_relocate"}, {patch.ErrBlocked, "blocked"},
		{patch.ErrAlreadyApplied, "already_applied"}, {patch.ErrNotApplied, "not_applied"},
		{patch.ErrCodeChanged, "code_changed"}, {patch.ErrBadRequest, "bad_request"},
		{patch.ErrBuildIDMismatch, "build_id_mismatch"}, {patch.ErrUnpinned, "unpinned"},
		{patch.ErrLoadLibrary, "load_library"},
	} {
		if errors.Is(err, e.err) {
			return e.code
		}
	}
	return "error"
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
	if err := c.parse(args); err != nil {
		return err
	}
	if len(reps) == 0 {
		return fmt.Errorf("%w: at least one --replace OLD=NEW is required", errUsage)
	}
	t, err := patch.Attach(c.pid, nil)
	if err != nil {
		return c.fail(stdout, err)
	}
	defer t.Close()
	res, err := t.Apply(ctx, reps, patch.ApplyOptions{Timeout: c.timeout, Lib: *lib, Unpinned: *unpinned})
	if err != nil {
		return c.fail(stdout, err)
	}
	if c.json {
		writeJSON(stdout, res)
		return nil
	}
	fmt.Fprintf(stdout, "applied %s: %d function(s), pause %d us (%d attempt(s))\n", res.ID, len(res.Functions), res.PauseMicros, res.Attempts)
	for _, f := range res.Functions {
		fmt.Fprintf(stdout, "  %s (%#x) -> %s (%#x)\n", f.Old, f.OldAddr, f.New, f.NewAddr)
	}
	return nil
}

func cmdRevert(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	c := newFlags("revert", stderr, true, true)
	id := c.fs.String("id", "", "ID of the patch to revert")
	all := c.fs.Bool("all", false, "revert every applied patch, newest first")
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
	if *all {
		results, err = t.RevertAll(ctx, patch.ApplyOptions{Timeout: c.timeout})
	} else {
		var r *patch.Result
		if r, err = t.Revert(ctx, *id, patch.ApplyOptions{Timeout: c.timeout}); err == nil {
			results = append(results, r)
		}
	}
	if err != nil {
		return c.fail(stdout, err)
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
	if c.json {
		if recs == nil {
			recs = []patch.Record{}
		}
		writeJSON(stdout, map[string]any{"pid": c.pid, "patches": recs})
		return nil
	}
	if len(recs) == 0 {
		fmt.Fprintf(stdout, "no patches in pid %d\n", c.pid)
		return nil
	}
	tw := tabwriter.NewWriter(stdout, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tSTATE\tCREATED\tFUNCTIONS")
	for _, r := range recs {
		var fs []string
		for _, f := range r.Functions {
			fs = append(fs, f.Old+" -> "+f.New)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", r.ID, r.State, r.Created.Format(time.RFC3339), strings.Join(fs, ", "))
	}
	return tw.Flush()
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
	tw := tabwriter.NewWriter(stdout, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "ADDRESS\tSIZE\tPAD\tMODULE\tNAME")
	for _, s := range t.Symbols().Search(c.fs.Arg(0)) {
		fmt.Fprintf(tw, "%#x\t%d\t%d\t%s\t%s\n", s.Addr, s.Size, s.Padding, baseName(s.Module.Path), s.Name)
	}
	return tw.Flush()
}

func cmdThreads(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	c := newFlags("threads", stderr, false, false)
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
	for _, task := range snap.Tasks {
		fmt.Fprintf(stdout, "%s%s\n", task, patch.FormatStack(t, task.Stack))
	}
	return nil
}

func baseName(p string) string {
	if i := strings.LastIndexByte(p, '/'); i >= 0 {
		return p[i+1:]
	}
	return p
}
