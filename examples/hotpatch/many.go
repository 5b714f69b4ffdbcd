package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/hotpatch-dev/hotpatch/elfsym"
	"github.com/hotpatch-dev/hotpatch/patch"
)

// Many processes: apply, revert and status take --exe PATH or --build-id ID
// instead of --pid, and act on every running process of that executable
// (a pre-fork server, a worker pool), one process at a time. Each process
// is all-or-nothing, as with --pid; one refused leaves the others as they
// end up (patched), and the report names every process.

// errNoMatch: --exe or --build-id selected no process (code "no_process").
var errNoMatch = errors.New("no process selected")

// procMatch is a process --exe or --build-id selected. err is set when its
// executable may not be read (another user's process, or one that is not
// dumpable): the tool may not trace it either, and reports it so.
type procMatch struct {
	pid int
	err error
}

// fileID is a file as the kernel knows it: two paths, or a path and a
// process's /proc/PID/exe, are the same file when their fileIDs are equal.
type fileID struct{ dev, ino uint64 }

func statFile(path string) (fileID, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return fileID{}, err
	}
	return fileID{uint64(st.Dev), st.Ino}, nil
}

// selector is the flag that selected the processes, as the user gave it.
func (c *common) selector() string {
	if c.exe != "" {
		return "--exe " + c.exe
	}
	return "--build-id " + c.buildID
}

// selection collects what selectProcesses finds.
type selection struct {
	matches    []procMatch
	names      map[string]bool // executable names of the matches (or --exe's)
	unreadable []int           // processes whose executable may not be read
	replaced   []int           // processes of a deleted or replaced --exe file
}

// selectProcesses lists the processes --exe or --build-id selects, in PID
// order (never this tool itself). --exe compares files by device and inode:
// a process whose binary was deleted or replaced on disk since it started
// runs another file than the one now at the path, and is not selected (a
// note on stderr names it; --exe /proc/PID/exe or --build-id selects it).
// A process whose executable may not be read is selected, with a
// permission error, when its name is the executable's; the others are
// counted on stderr.
func (c *common) selectProcesses(stderr io.Writer) ([]procMatch, error) {
	sel := &selection{names: map[string]bool{}}
	var want fileID
	var path string
	if c.exe != "" {
		var err error
		if want, err = statFile(c.exe); err != nil {
			return nil, fmt.Errorf("hotpatch: --exe %s: %w", c.exe, err)
		}
		path = c.exe
		if p, err := filepath.EvalSymlinks(c.exe); err == nil {
			path, _ = filepath.Abs(p)
		}
		sel.names[filepath.Base(path)] = true
	}
	pids, err := listPIDs()
	if err != nil {
		return nil, err
	}
	ids := map[fileID]string{} // build IDs read, by file
	for _, pid := range pids {
		exe := fmt.Sprintf("/proc/%d/exe", pid)
		f, err := statFile(exe)
		if errors.Is(err, unix.EACCES) || errors.Is(err, unix.EPERM) {
			sel.unreadable = append(sel.unreadable, pid)
			continue
		}
		if err != nil {
			continue // exited, a zombie or a kernel thread: no executable
		}
		var ok bool
		if c.exe != "" {
			ok = f == want
		} else {
			id, seen := ids[f]
			if !seen {
				id, err = elfsym.ReadBuildID(exe)
				if errors.Is(err, os.ErrPermission) {
					sel.unreadable = append(sel.unreadable, pid)
					continue
				}
				ids[f] = id
			}
			ok = id == c.buildID
		}
		link, _ := os.Readlink(exe)
		link = strings.TrimSuffix(link, " (deleted)")
		switch {
		case ok:
			sel.matches = append(sel.matches, procMatch{pid: pid})
			sel.names[filepath.Base(link)] = true
		case c.exe != "" && link == path:
			sel.replaced = append(sel.replaced, pid)
		}
	}
	return c.finishSelection(stderr, sel, path)
}

// finishSelection adds the unreadable processes named like the
// executable, writes the notes and refuses an empty selection.
func (c *common) finishSelection(stderr io.Writer, sel *selection, path string) ([]procMatch, error) {
	what := "the executable"
	if c.exe != "" {
		what = path
	}
	others := 0
	for _, pid := range sel.unreadable {
		comm, argv0 := procNames(pid)
		if !nameMatches(sel.names, comm, argv0) {
			others++
			continue
		}
		sel.matches = append(sel.matches, procMatch{pid: pid, err: fmt.Errorf(
			"%w: pid %d (%s, uid %s) may run %s, but its executable may not be read: another user's process, or one that is not dumpable; run hotpatch as root or as its user",
			patch.ErrPermission, pid, comm, procUID(pid), what)})
	}
	sort.Slice(sel.matches, func(i, j int) bool { return sel.matches[i].pid < sel.matches[j].pid })
	for _, pid := range sel.replaced {
		fmt.Fprintf(stderr, "hotpatch: pid %d runs a deleted or replaced %s, not the file now at that path: not selected (--exe /proc/%d/exe or --build-id selects the processes of that file)\n", pid, path, pid)
	}
	switch {
	case others > 0 && os.Geteuid() == 0:
		fmt.Fprintf(stderr, "hotpatch: %d other process(es) could not be checked: their executables may not be read, even by root (processes of another sandbox)\n", others)
	case others > 0:
		fmt.Fprintf(stderr, "hotpatch: %d other process(es) could not be checked: their executables may not be read (other users' processes, or not dumpable); run hotpatch as root to include them\n", others)
	}
	if len(sel.matches) > 0 {
		return sel.matches, nil
	}
	if c.exe != "" {
		return nil, fmt.Errorf("hotpatch: %w: no running process runs %s (the same file: device and inode)", errNoMatch, c.exe)
	}
	return nil, fmt.Errorf("hotpatch: %w: no running process has build ID %s", errNoMatch, c.buildID)
}

// listPIDs lists the processes in /proc, but this one.
func listPIDs() ([]int, error) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("hotpatch: listing processes: %w", err)
	}
	var pids []int
	for _, e := range ents {
		if pid, err := strconv.Atoi(e.Name()); err == nil && pid > 0 && pid != os.Getpid() {
			pids = append(pids, pid)
		}
	}
	sort.Ints(pids)
	return pids, nil
}

// procNames reads what anyone may read of a process's name: its comm and
// the base name of its argv[0].
func procNames(pid int) (comm, argv0 string) {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	comm = strings.TrimSpace(string(b))
	b, _ = os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if a, _, _ := bytes.Cut(b, []byte{0}); len(a) > 0 {
		argv0 = filepath.Base(string(a))
	}
	return comm, argv0
}

// nameMatches: comm is the kernel's name, the executable's base name cut
// to 15 bytes.
func nameMatches(names map[string]bool, comm, argv0 string) bool {
	for n := range names {
		if n == argv0 || n[:min(len(n), 15)] == comm {
			return true
		}
	}
	return false
}

// procUID is the real uid of a process, or "?".
func procUID(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return "?"
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) > 1 && f[0] == "Uid:" {
			return f[1]
		}
	}
	return "?"
}

// forPID is c acting on one selected process (its hints name the PID).
func (c *common) forPID(pid int) *common {
	cc := *c
	cc.pid = pid
	return &cc
}

// tally counts the outcomes of a command over many processes and says
// what the exit status means.
type tally struct {
	total, transition int
	failed            []string // "pid N: code"
	inTransition      []int
}

func (t *tally) add(pid int, err error, left bool) {
	t.total++
	switch {
	case left:
		t.transition++
		t.inTransition = append(t.inTransition, pid)
	case err != nil:
		t.failed = append(t.failed, fmt.Sprintf("pid %d: %s", pid, errorCode(err)))
	}
}

// finish reports on stderr what was not done and returns the exit status:
// 3 if any process is left in a transition, else 1 if any was refused or
// failed, else 0. others says what the rest are ("stay patched").
func (t *tally) finish(stderr io.Writer, verb, others string) error {
	if len(t.failed) == 0 && t.transition == 0 {
		return nil
	}
	if n := len(t.failed); n > 0 {
		fmt.Fprintf(stderr, "hotpatch: %d of %d process(es) not %s (%s)", n, t.total, verb, strings.Join(t.failed, ", "))
		if others != "" && t.total > n {
			fmt.Fprintf(stderr, "; the other %d %s", t.total-n, others)
		}
		if verb == "patched" && t.total > n {
			fmt.Fprint(stderr, " (hotpatch status with the same selector lists them, revert --all reverts them)")
		}
		fmt.Fprintln(stderr)
	}
	for _, pid := range t.inTransition {
		fmt.Fprintf(stderr, "hotpatch: pid %d is left in a transition, consistent (hotpatch apply --pid %d --resume finishes it)\n", pid, pid)
	}
	if t.transition > 0 {
		return quietError{exitTransition}
	}
	return quietError{exitFailed}
}

// errorEntry is a process's failure for a --json array: {"pid", "error":
// {"error", "code", and the state it was left in}}.
func errorEntry(pid int, err error, res *patch.Result) map[string]any {
	return map[string]any{"pid": pid, "error": errorFields(err, res)}
}

// oneLine is an error's text on one line of a per-process report.
func oneLine(err error) string {
	return strings.ReplaceAll(err.Error(), "\n", "; ")
}

// prefixLines writes each line of what print writes, after "pid N: ".
func prefixLines(w io.Writer, pid int, print func(io.Writer)) {
	var b bytes.Buffer
	print(&b)
	for _, l := range strings.SplitAfter(b.String(), "\n") {
		if l != "" {
			fmt.Fprintf(w, "pid %d: %s", pid, l)
		}
	}
}

// applyMany applies reps to each selected process in turn.
func (c *common) applyMany(ctx context.Context, stdout, stderr io.Writer, reps []patch.Replacement, opts patch.ApplyOptions) error {
	ms, err := c.selectProcesses(stderr)
	if err != nil {
		return c.fail(stdout, err)
	}
	entries := []any{}
	var t tally
	for _, m := range ms {
		res, err := onProcess(ctx, m, func(t *patch.Target) (*patch.Result, error) { return t.Apply(ctx, reps, opts) })
		t.add(m.pid, err, inTransition(res))
		if err != nil {
			pc := c.forPID(m.pid)
			err = leftIn(m.pid, pc.withHint(err), res)
			if hint := droppedGoPID(m.pid, reps, opts.Lib, err); hint != "" {
				err = fmt.Errorf("%w\n%s", err, hint)
			}
			entries = append(entries, errorEntry(m.pid, err, res))
			if !c.json {
				outcome := "refused (%s), left as it was"
				if inTransition(res) {
					outcome = "left in transition (%s)"
				}
				fmt.Fprintf(stdout, "pid %d: "+outcome+": %s\n", m.pid, errorCode(err), oneLine(err))
			}
			continue
		}
		warnApplied(stderr, res)
		entries = append(entries, leading{"pid", m.pid, res})
		if !c.json {
			// One line per process: printApplied's first (the functions
			// it lists after it are the same in every process).
			var b bytes.Buffer
			printApplied(&b, m.pid, res)
			line, _, _ := strings.Cut(b.String(), "\n")
			fmt.Fprintf(stdout, "pid %d: %s\n", m.pid, line)
		}
	}
	if c.json {
		writeJSON(stdout, entries)
	}
	return t.finish(stderr, "patched", "stay patched")
}

// onProcess attaches to one selected process and runs op on it (nothing
// when the selection could not read it, or ctx ended before its turn).
func onProcess[T any](ctx context.Context, m procMatch, op func(*patch.Target) (T, error)) (T, error) {
	var zero T
	if m.err != nil {
		return zero, m.err
	}
	if err := ctx.Err(); err != nil {
		return zero, fmt.Errorf("hotpatch: pid %d not attempted: %w", m.pid, err)
	}
	t, err := patch.Attach(m.pid, nil)
	if err != nil {
		return zero, err
	}
	defer t.Close()
	return op(t)
}

// droppedGoPID is droppedGo for a process of a selection (attached again
// only for an unknown symbol, to read its symbols).
func droppedGoPID(pid int, reps []patch.Replacement, lib string, err error) string {
	if lib != "" || !errors.Is(err, patch.ErrUnknownSymbol) {
		return ""
	}
	t, aerr := patch.Attach(pid, nil)
	if aerr != nil {
		return ""
	}
	defer t.Close()
	return droppedGo(t, reps, lib, err)
}

// revertMany reverts every patch of each selected process in turn.
func (c *common) revertMany(ctx context.Context, stdout, stderr io.Writer, opts patch.ApplyOptions) error {
	ms, err := c.selectProcesses(stderr)
	if err != nil {
		return c.fail(stdout, err)
	}
	entries := []any{}
	var t tally
	for _, m := range ms {
		results, err := onProcess(ctx, m, func(t *patch.Target) ([]*patch.Result, error) { return t.RevertAll(ctx, opts) })
		if results == nil {
			results = []*patch.Result{}
		}
		left := slices.ContainsFunc(results, inTransition)
		t.add(m.pid, err, left)
		if err != nil {
			var last *patch.Result
			if n := len(results); n > 0 {
				last = results[n-1]
			}
			err = leftIn(m.pid, c.forPID(m.pid).withHint(err), last)
			e := errorEntry(m.pid, err, nil)
			e["reverted"] = results
			entries = append(entries, e)
		} else {
			entries = append(entries, map[string]any{"pid": m.pid, "reverted": results})
		}
		if c.json {
			continue
		}
		if len(results) > 0 || err == nil {
			prefixLines(stdout, m.pid, func(w io.Writer) { printReverted(w, m.pid, results) })
		}
		if err != nil {
			fmt.Fprintf(stdout, "pid %d: failed (%s): %s\n", m.pid, errorCode(err), oneLine(err))
		}
	}
	if c.json {
		writeJSON(stdout, entries)
	}
	return t.finish(stderr, "reverted", "are reverted")
}

// statusMany shows the patches of each selected process.
func (c *common) statusMany(stdout, stderr io.Writer) error {
	ms, err := c.selectProcesses(stderr)
	if err != nil {
		return c.fail(stdout, err)
	}
	entries := []any{}
	var t tally
	for _, m := range ms {
		st, err := onProcess(context.Background(), m, statusOf)
		recs, left := st.recs, st.left
		t.add(m.pid, err, false)
		switch {
		case err != nil:
			entries = append(entries, errorEntry(m.pid, err, nil))
			if !c.json {
				fmt.Fprintf(stdout, "pid %d: failed (%s): %s\n", m.pid, errorCode(err), oneLine(err))
			}
		case c.json:
			entries = append(entries, statusEntry(m.pid, recs, left))
		default:
			if len(recs) > 0 || len(left) > 0 {
				fmt.Fprintf(stdout, "pid %d:\n", m.pid)
			}
			if err := printStatus(stdout, m.pid, recs, left); err != nil {
				return err
			}
		}
	}
	if c.json {
		writeJSON(stdout, entries)
	}
	return t.finish(stderr, "read", "")
}

// processStatus is what status shows of one process.
type processStatus struct {
	recs []patch.Record
	left []patch.Leftover
}

func statusOf(t *patch.Target) (processStatus, error) {
	recs, err := t.Status()
	if err != nil {
		return processStatus{}, err
	}
	left, err := t.Leftovers()
	return processStatus{recs, left}, err
}
