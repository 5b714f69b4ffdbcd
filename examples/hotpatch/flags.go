package main

import (
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/hotpatch-dev/hotpatch/elfsym"
	"github.com/hotpatch-dev/hotpatch/patch"
)

// errUsage marks errors that deserve exit status 2.
var errUsage = errors.New("usage")

// common holds a command's flag set and the flags every target command
// takes.
type common struct {
	cmd     *command
	fs      *flag.FlagSet
	stdout  io.Writer
	pid     int
	json    bool
	timeout time.Duration
	// mode is the --mode given (stop unless the command has another).
	mode patch.Mode
	// supersede is apply's --supersede ID.
	supersede string
	// maxArgs is how many positional words the command takes.
	maxArgs int
	args    []string
	// exe and buildID select every process of an executable instead of
	// --pid (apply, revert, status; see many.go).
	exe, buildID string
	// plugin: the apply hands a Go plugin to the target's agent.
	plugin bool
}

// withSelectors adds --exe and --build-id, the alternatives to --pid.
func (c *common) withSelectors() *common {
	c.fs.StringVar(&c.exe, "exe", "", "instead of --pid: every process whose executable is the file at `PATH` (the same file: device and inode; "+
		"a process whose binary was since deleted or replaced runs another file, is not selected and is named on stderr: --exe /proc/PID/exe selects the processes of its file)")
	c.fs.StringVar(&c.buildID, "build-id", "", "instead of --pid: every process whose executable has the GNU build ID `ID` (hex, as readelf -n prints it)")
	c.fs.Lookup("pid").Usage = "the target's process ID (`PID`; or --exe, or --build-id)"
	return c
}

// many reports whether the command acts on the processes --exe or
// --build-id select.
func (c *common) many() bool { return c.exe != "" || c.buildID != "" }

// newFlags starts the flag set of command name; withPID adds --pid,
// withJSON --json, withTimeout --timeout.
func newFlags(name string, stdout io.Writer, withPID, withJSON, withTimeout bool) *common {
	c := &common{cmd: lookupCommand(name), fs: flag.NewFlagSet("hotpatch "+name, flag.ContinueOnError), stdout: stdout, mode: patch.ModeStop}
	// The flag package would print its own error and the flag list: the
	// error is ours to print, once, and the list is for help.
	c.fs.SetOutput(io.Discard)
	c.fs.Usage = func() {}
	if withPID {
		c.fs.IntVar(&c.pid, "pid", 0, "the target's process ID (`PID`, required)")
	}
	if withJSON {
		c.fs.BoolVar(&c.json, "json", false, "print JSON on stdout (the shapes are in the README)")
	}
	if withTimeout {
		c.fs.DurationVar(&c.timeout, "timeout", 5*time.Second, "how long to retry while tasks are inside the functions")
	}
	return c
}

// parse reads args: flags may come before or after the positional words
// ("syms price --pid P"); "--" ends the flags. -h and --help print the
// command's help and return flag.ErrHelp; every other mistake is a usage
// error found before the target is touched.
func (c *common) parse(args []string) error {
	for {
		err := c.fs.Parse(args)
		if errors.Is(err, flag.ErrHelp) {
			c.cmd.help(c.stdout, c.fs)
			return err
		}
		if err != nil {
			return c.usageError(err)
		}
		rest := c.fs.Args()
		if len(rest) == 0 {
			break
		}
		if n := len(args) - len(rest); n > 0 && args[n-1] == "--" {
			c.args = append(c.args, rest...)
			break
		}
		c.args, args = append(c.args, rest[0]), rest[1:]
	}
	if len(c.args) > c.maxArgs {
		extra := c.args[c.maxArgs:]
		if c.maxArgs == 0 {
			return fmt.Errorf("%w: %s takes no arguments, got %q", errUsage, c.cmd.name, strings.Join(extra, " "))
		}
		return fmt.Errorf("%w: unexpected %q (%s takes at most %d argument)", errUsage, strings.Join(extra, " "), c.cmd.name, c.maxArgs)
	}
	if err := c.checkTarget(); err != nil {
		return err
	}
	if c.fs.Lookup("timeout") != nil && c.timeout <= 0 {
		return fmt.Errorf("%w: --timeout must be above 0, got %v", errUsage, c.timeout)
	}
	return nil
}

// checkTarget checks that the command names its target: --pid, or where
// the command takes them, exactly one of --pid, --exe and --build-id.
func (c *common) checkTarget() error {
	if c.fs.Lookup("pid") == nil {
		return nil
	}
	selectors := c.fs.Lookup("exe") != nil
	n := 0
	for _, set := range []bool{c.pidSet(), c.exe != "", c.buildID != ""} {
		if set {
			n++
		}
	}
	switch {
	case n > 1:
		return fmt.Errorf("%w: give one of --pid, --exe, --build-id", errUsage)
	case n == 0 && selectors:
		return fmt.Errorf("%w: --pid is required (or --exe PATH, or --build-id ID)", errUsage)
	case n == 0:
		return fmt.Errorf("%w: --pid is required", errUsage)
	case c.pidSet() && c.pid <= 0:
		return fmt.Errorf("%w: --pid must be a process ID above 0, got %d", errUsage, c.pid)
	case c.buildID != "":
		id := strings.ToLower(strings.TrimPrefix(c.buildID, "0x"))
		if _, err := hex.DecodeString(id); err != nil || id == "" {
			return fmt.Errorf("%w: --build-id must be hex (as file(1) or readelf -n print it), got %q", errUsage, c.buildID)
		}
		c.buildID = id
	}
	return nil
}

func (c *common) pidSet() bool {
	set := false
	c.fs.Visit(func(f *flag.Flag) { set = set || f.Name == "pid" })
	return set
}

// arg returns positional word i, or "".
func (c *common) arg(i int) string {
	if i < len(c.args) {
		return c.args[i]
	}
	return ""
}

// usageError rewrites an error of the flag package with the long flag
// spelling and, for an unknown flag, the nearest one.
func (c *common) usageError(err error) error {
	msg := err.Error()
	if name, ok := strings.CutPrefix(msg, "flag provided but not defined: "); ok {
		name = strings.TrimLeft(name, "-")
		var names []string
		c.fs.VisitAll(func(f *flag.Flag) { names = append(names, f.Name) })
		msg = fmt.Sprintf("unknown flag --%s%s", name, didYouMean("--", name, names))
	} else {
		msg = strings.Replace(msg, " for flag -", " for flag --", 1)
		msg = strings.Replace(msg, "flag needs an argument: -", "flag needs an argument: --", 1)
	}
	return fmt.Errorf("%w: %s", errUsage, msg)
}

// choice is a string flag that takes one of a fixed set of values.
type choice struct {
	val     *string
	allowed []string
}

func (c *common) choice(name, def, usage string, allowed ...string) *string {
	v := def
	c.fs.Var(choice{&v, allowed}, name, usage)
	return &v
}

func (c choice) String() string {
	if c.val == nil {
		return ""
	}
	return *c.val
}

func (c choice) Set(s string) error {
	for _, a := range c.allowed {
		if s == a {
			*c.val = s
			return nil
		}
	}
	return fmt.Errorf("want %s%s", strings.Join(c.allowed, ", "), didYouMean("", s, c.allowed))
}

// didYouMean names the candidate nearest to s, if one is near enough to
// be a typo: "; did you mean --mode?".
func didYouMean(prefix, s string, candidates []string) string {
	if near := nearest(s, candidates, 3); len(near) > 0 {
		return fmt.Sprintf(" (did you mean %s%s?)", prefix, near[0])
	}
	return ""
}

// nearest returns up to n candidates within a typo's edit distance of s,
// nearest first.
func nearest(s string, candidates []string, n int) []string {
	type cand struct {
		name string
		d    int
	}
	var cs []cand
	for _, c := range candidates {
		max := 2
		if len(s) > 8 {
			max = 3
		}
		if d := elfsym.EditDistance(strings.ToLower(s), strings.ToLower(c), max); d <= max || strings.HasPrefix(c, s) && len(s) >= 3 {
			cs = append(cs, cand{c, d})
		}
	}
	sort.SliceStable(cs, func(i, j int) bool { return cs[i].d < cs[j].d })
	var out []string
	for i := 0; i < len(cs) && i < n; i++ {
		out = append(out, cs[i].name)
	}
	return out
}
