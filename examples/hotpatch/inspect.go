package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/hotpatch-dev/hotpatch/patch"
)

// symJSON is one function in syms --json.
type symJSON struct {
	Name        string   `json:"name"`
	Module      string   `json:"module"`
	Addr        uint64   `json:"addr"`
	Size        uint64   `json:"size"`
	Padding     uint64   `json:"padding"`
	InlinedInto []string `json:"inlined_into"`
	// InlineError says why the inline sites could not be read ("" when
	// they were).
	InlineError string `json:"inline_error,omitempty"`

	inlineText string // the sites, for the table
}

func cmdSyms(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	c := newFlags("syms", stdout, true, true, false)
	c.maxArgs = 1
	if err := c.parse(args); err != nil {
		return err
	}
	t, err := patch.Attach(c.pid, nil)
	if err != nil {
		return c.fail(stdout, err)
	}
	defer t.Close()
	syms := []symJSON{}
	for _, s := range t.Symbols().Search(c.arg(0)) {
		j := symJSON{Name: s.Name, Module: baseName(s.Module.Path), Addr: s.Addr, Size: s.Size, Padding: s.Padding, InlinedInto: []string{}}
		if sites, err := t.Symbols().InlineSites(s); err != nil {
			j.InlineError = err.Error()
		} else {
			for _, site := range sites {
				if !slices.Contains(j.InlinedInto, site.Caller) {
					j.InlinedInto = append(j.InlinedInto, site.Caller)
				}
			}
			if len(sites) > 0 {
				j.inlineText = patch.FormatInlineSites(sites)
			}
		}
		syms = append(syms, j)
	}
	if c.json {
		writeJSON(stdout, map[string]any{"pid": c.pid, "symbols": syms})
		return nil
	}
	var table bytes.Buffer
	tw := tabwriter.NewWriter(&table, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "ADDRESS\tSIZE\tPAD\tMODULE\tNAME\tINLINED INTO")
	for _, s := range syms {
		inl := s.inlineText
		if s.InlineError != "" {
			inl = "? (" + s.InlineError + ")"
		}
		fmt.Fprintf(tw, "%#x\t%d\t%d\t%s\t%s\t%s\n", s.Addr, s.Size, s.Padding, s.Module, s.Name, inl)
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

// taskJSON is one task in threads --json.
type taskJSON struct {
	Kind string `json:"kind"` // "thread" or "goroutine"
	ID   int    `json:"id"`
	// Thread is the thread a goroutine runs on, 0 when parked.
	Thread int    `json:"thread"`
	Status string `json:"status"`
	Wait   string `json:"wait"`
	// Reliable is false when the stack could not be walked to its end;
	// Reason says why.
	Reliable bool        `json:"reliable"`
	Reason   string      `json:"reason"`
	Frames   []frameJSON `json:"frames"`
}

// frameJSON is one frame of a stack: pc is the program counter of the
// innermost frame and the return address of the others.
type frameJSON struct {
	Function string `json:"function"`
	Offset   uint64 `json:"offset"`
	Module   string `json:"module"`
	PC       uint64 `json:"pc"`
}

func cmdThreads(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	c := newFlags("threads", stdout, true, true, false)
	all := c.fs.Bool("goroutines", false, "also list every goroutine of a Go target (parked ones too), not only those running on a thread")
	if err := c.parse(args); err != nil {
		return err
	}
	t, err := patch.Attach(c.pid, nil)
	if err != nil {
		return c.fail(stdout, err)
	}
	defer t.Close()
	snap, err := t.Threads()
	if err != nil {
		return c.fail(stdout, err)
	}
	tasks, hidden := []taskJSON{}, 0
	for _, task := range snap {
		if task.Kind == patch.TaskGoroutine && task.Thread == 0 && !*all {
			hidden++
			continue
		}
		if !c.json {
			fmt.Fprintf(stdout, "%s%s\n", task, indent(task.Stack.String(), "\n    "))
			continue
		}
		j := taskJSON{Kind: string(task.Kind), ID: task.ID, Thread: task.Thread, Status: task.Status, Wait: task.Wait,
			Reliable: task.Stack.Reliable, Reason: task.Stack.Why, Frames: []frameJSON{}}
		for i, f := range task.Stack.Frames {
			j.Frames = append(j.Frames, frameOf(t, f.PC, i > 0))
		}
		tasks = append(tasks, j)
	}
	if c.json {
		writeJSON(stdout, map[string]any{"pid": c.pid, "tasks": tasks, "hidden_goroutines": hidden})
		return nil
	}
	if hidden > 0 {
		fmt.Fprintf(stdout, "(%d goroutines not running on a thread; --goroutines lists them)\n", hidden)
	}
	return nil
}

// frameOf names the function holding pc; a return address (caller) is
// looked up one byte back, inside the call.
func frameOf(t *patch.Target, pc uint64, caller bool) frameJSON {
	look := pc
	if caller {
		look--
	}
	f := frameJSON{PC: pc}
	if s, ok := t.Symbols().SymbolAt(look); ok {
		f.Function, f.Offset, f.Module = s.Name, pc-s.Addr, baseName(s.Module.Path)
	} else if m, ok := t.Symbols().ModuleAt(look); ok {
		f.Offset, f.Module = pc-m.Bias, m.Name()
	}
	return f
}

func baseName(p string) string {
	if i := strings.LastIndexByte(p, '/'); i >= 0 {
		return p[i+1:]
	}
	return p
}

// indent puts prefix before every line of s ("" stays "").
func indent(s, prefix string) string {
	if s == "" {
		return ""
	}
	return prefix + strings.ReplaceAll(s, "\n", prefix)
}
