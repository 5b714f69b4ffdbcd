// Command hotpatch replaces functions inside a running process, and puts
// them back, without restarting it.
//
//	hotpatch apply   --pid PID [--lib fix.so [--unpinned]] --replace OLD=NEW [--replace ...] [--timeout 5s] [--allow-inlined]
//	                 [--skip-signature-check] [--mode stop|gradual|auto] [--on-timeout revert|stay] [--force]
//	                 [--supersede ID] [--json]
//	hotpatch apply   --pid PID --resume [--id ID] [--timeout 5s] [--json]
//	hotpatch apply   --pid PID --plugin fix.so [--mode stop|gradual|auto] [--timeout 5s] [--json]
//	hotpatch revert  --pid PID (--id ID | --all) [--timeout 5s] [--mode stop|gradual|auto] [--json]
//	hotpatch status  --pid PID [--json]
//	hotpatch apply|revert --all|status (--exe PATH | --build-id ID) ...
//	hotpatch syms    --pid PID [--json] [SUBSTRING]
//	hotpatch threads --pid PID [--goroutines] [--json]
//	hotpatch demo [--go-fix]
//	hotpatch version
//	hotpatch help [COMMAND]
//
// OLD may be qualified by its module, as in libfoo.so:func. With --lib, the
// shared object fix.so is loaded into the target (dlopen) and each NEW is
// looked up in it first; it must be pinned to the build ID of the module
// holding OLD with HOTPATCH_PIN from patch/include/hotpatch.h, unless
// --unpinned is given. With --plugin, the Go plugin fix.so is handed (as an
// open file) to the agent inside a Go service (package patch/agent), which
// loads it and applies the fixes its manifest declares.
//
// Instead of --pid, apply, revert (with --all) and status take --exe PATH
// (every process whose executable is that file, by device and inode) or
// --build-id ID (every process whose executable has that GNU build ID):
// each process in turn, all-or-nothing per process, each reported. One
// refused leaves the others patched; the exit status is then 1 (3 if one
// is left in a transition).
//
// Exit status: 0 done; 1 refused or failed (the reason is on stderr; with
// --json also as {"error", "code"} on stdout); 2 usage error (nothing was
// attached); 3 the target was left in a consistent transition that
// apply --resume finishes.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"regexp"
	"runtime"
	"runtime/debug"
	"strings"
	"syscall"
)

// command is one subcommand: its help and what runs it.
type command struct {
	name, summary string
	synopsis      []string // usage lines, after "hotpatch "
	example       string
	run           func(context.Context, []string, io.Writer, io.Writer) error
}

// commands lists the subcommands in the order help shows them (filled in
// init: the run functions refer back to the table for their help).
var commands []*command

func init() {
	commands = []*command{
		{name: "apply", summary: "replace functions of a running process",
			synopsis: []string{
				"apply --pid PID [--lib fix.so [--unpinned]] --replace OLD=NEW [--replace ...] [--timeout 5s]",
				"      [--mode stop|gradual|auto] [--on-timeout revert|stay] [--force] [--allow-inlined] [--skip-signature-check] [--json]",
				"apply --pid PID [--lib fix2.so] --replace OLD=NEW [--replace ...] --supersede ID [--timeout 5s] [--json]",
				"apply --pid PID --resume [--id ID] [--timeout 5s] [--json]",
				"apply --pid PID --plugin fix.so [--mode stop|gradual|auto] [--timeout 5s] [--json]",
				"apply (--exe PATH | --build-id ID) [--lib fix.so] --replace OLD=NEW ... [flags as above, not --resume or --supersede]",
				"      every process of the executable, one at a time, each all-or-nothing and reported (one line, or one",
				"      --json array element, per PID); one refused leaves the others patched and exits 1 (3: one left in transition)"},
			example: "hotpatch apply --pid 1234 --replace main.handler=main.handlerFixed\n" +
				"  hotpatch apply --pid 1234 --lib fix-v2.so --replace price=price_fixed --supersede hp-1a2b3c4d   # fix v1 -> v2 in one pause\n" +
				"  hotpatch apply --exe /usr/sbin/worker --replace handle=handle_fixed   # every worker of the pool\n" +
				"  hotpatch apply --pid 1234 --plugin fix.so   # a Go fix, through the service's agent (patch/agent)",
			run: cmdApply},
		{name: "revert", summary: "put the original functions back",
			synopsis: []string{"revert --pid PID (--id ID | --all) [--timeout 5s] [--mode stop|gradual|auto] [--json]",
				"revert (--exe PATH | --build-id ID) --all [--timeout 5s] [--mode stop|gradual|auto] [--json]"},
			example: "hotpatch revert --pid 1234 --all\n  hotpatch revert --all --exe /usr/sbin/worker",
			run:     cmdRevert},
		{name: "status", summary: "list the patches of a process, with the tasks a transition waits for",
			synopsis: []string{"status (--pid PID | --exe PATH | --build-id ID) [--json]"},
			example:  "hotpatch status --pid 1234 --json\n  hotpatch status --exe /usr/sbin/worker",
			run:      cmdStatus},
		{name: "syms", summary: "list the functions of a process (and the callers they were inlined into)",
			synopsis: []string{"syms --pid PID [--json] [SUBSTRING]"},
			example:  "hotpatch syms --pid 1234 handler",
			run:      cmdSyms},
		{name: "threads", summary: "list every thread (and goroutine) of a process with its stack",
			synopsis: []string{"threads --pid PID [--goroutines] [--json]"},
			example:  "hotpatch threads --pid 1234 --goroutines",
			run:      cmdThreads},
		{name: "demo", summary: "build a bundled service, patch it live under load, revert it",
			synopsis: []string{"demo", "demo --go-fix   # a Go plugin into a Go service through its agent (run inside a hotpatch checkout)"},
			example:  "hotpatch demo\n  go run ./examples/hotpatch demo --go-fix",
			run:      cmdDemo},
		{name: "version", summary: "print the hotpatch version, its Go release and commit",
			synopsis: []string{"version"},
			example:  "hotpatch version",
			run:      cmdVersion},
		{name: "help", summary: "list the commands, or show one command's usage",
			synopsis: []string{"help [COMMAND]"},
			example:  "hotpatch help apply",
			run:      nil},
	}
}

func lookupCommand(name string) *command {
	for _, c := range commands {
		if c.name == name {
			return c
		}
	}
	return nil
}

// overview lists the commands, one line each.
func overview(w io.Writer) {
	fmt.Fprintln(w, "hotpatch replaces functions inside a running Linux process, and puts them back.")
	fmt.Fprintln(w, "\nusage: hotpatch COMMAND [flags]\n\ncommands:")
	for _, c := range commands {
		fmt.Fprintf(w, "  %-8s %s\n", c.name, c.summary)
	}
	fmt.Fprintln(w, "\nhotpatch help COMMAND (or hotpatch COMMAND --help) shows a command's flags and an example.")
	fmt.Fprintln(w, "Exit status: 0 done, 1 refused or failed, 2 usage error, 3 left in a (consistent) transition.")
}

// help prints the usage of c, its flags and an example.
func (c *command) help(w io.Writer, fs *flag.FlagSet) {
	fmt.Fprintf(w, "hotpatch %s: %s\n\nusage:\n", c.name, c.summary)
	for _, s := range c.synopsis {
		if strings.HasPrefix(s, " ") {
			fmt.Fprintf(w, "           %s\n", s) // continues the line above
			continue
		}
		fmt.Fprintf(w, "  hotpatch %s\n", s)
	}
	if fs != nil {
		var b strings.Builder
		fs.VisitAll(func(f *flag.Flag) {
			arg, usage := flag.UnquoteUsage(f)
			if ch, ok := f.Value.(choice); ok {
				arg = strings.Join(ch.allowed, "|")
			}
			switch arg {
			case "duration", "int", "string":
				arg = strings.ToUpper(arg)
			}
			if arg != "" {
				arg = " " + arg
			}
			fmt.Fprintf(&b, "  --%s%s\n        %s", f.Name, arg, usage)
			if f.DefValue != "" && f.DefValue != "0" && f.DefValue != "false" && f.DefValue != "[]" {
				fmt.Fprintf(&b, " (default %s)", f.DefValue)
			}
			b.WriteString("\n")
		})
		if b.Len() > 0 {
			fmt.Fprintf(w, "\nflags:\n%s", b.String())
		}
	}
	fmt.Fprintf(w, "\nexample:\n  %s\n", c.example)
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// Exit statuses: a script reads the outcome from these, never from text.
const (
	exitOK         = 0 // done
	exitFailed     = 1 // refused or failed; the target is as the message says (as it was, unless stated)
	exitUsage      = 2 // the command line is wrong; nothing was attached
	exitTransition = 3 // the target was left in a transition: consistent, not finished (apply --resume finishes it)
)

// errTransition marks a command that left the target in a transition.
var errTransition = errors.New("left in transition")

// quietError carries an exit status for an outcome already reported.
type quietError struct{ code int }

func (e quietError) Error() string { return fmt.Sprintf("exit status %d", e.code) }

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		overview(stderr)
		return exitUsage
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	name := args[0]
	switch name {
	case "-h", "--help", "help":
		return cmdHelp(args[1:], stdout, stderr)
	case "--version", "-version":
		name = "version"
	}
	cmd := lookupCommand(name)
	if cmd == nil {
		var names []string
		for _, c := range commands {
			names = append(names, c.name)
		}
		fmt.Fprintf(stderr, "hotpatch: unknown command %q%s; hotpatch help lists the commands\n", name, didYouMean("", name, names))
		return exitUsage
	}
	return exitStatus(cmd.run(ctx, args[1:], stdout, stderr), name, stderr)
}

// exitStatus reports err and returns the exit status it means.
func exitStatus(err error, name string, stderr io.Writer) int {
	var q quietError
	switch {
	case err == nil:
		return exitOK
	case errors.Is(err, flag.ErrHelp):
		return exitOK
	case errors.As(err, &q):
		return q.code
	case errors.Is(err, errUsage):
		fmt.Fprintf(stderr, "hotpatch %s: %v\nhotpatch help %s shows the usage\n", name, strings.TrimPrefix(err.Error(), "usage: "), name)
		return exitUsage
	}
	fmt.Fprintln(stderr, err)
	if errors.Is(err, errTransition) {
		return exitTransition
	}
	return exitFailed
}

// cmdHelp lists the commands, or prints one command's help.
func cmdHelp(args []string, stdout, stderr io.Writer) int {
	switch {
	case len(args) == 0:
		overview(stdout)
		return exitOK
	case len(args) > 1:
		fmt.Fprintf(stderr, "hotpatch help: takes one command, got %q\n", strings.Join(args, " "))
		return exitUsage
	case args[0] == "help":
		lookupCommand("help").help(stdout, nil)
		return exitOK
	}
	if lookupCommand(args[0]) == nil {
		return run(args, stdout, stderr) // the unknown-command message
	}
	return run([]string{args[0], "--help"}, stdout, stderr)
}

// cmdVersion prints the module version, the Go release and the commit the
// binary was built from.
func cmdVersion(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	c := newFlags("version", stdout, false, false, false)
	if err := c.parse(args); err != nil {
		return err
	}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		bi = &debug.BuildInfo{GoVersion: runtime.Version()}
	}
	version, goVersion, commit := buildVersion(bi)
	fmt.Fprintf(stdout, "hotpatch %s\ngo %s\ncommit %s\n", version, goVersion, commit)
	return nil
}

// pseudoVersion matches a Go pseudo-version's commit suffix
// (v0.0.0-20261201163500-3a9341d0c0de): a binary installed with go
// install MODULE@VERSION has no VCS stamp, its version names the commit.
var pseudoVersion = regexp.MustCompile(`-(?:0\.)?\d{14}-([0-9a-f]{12})(?:\+incompatible)?$`)

// buildVersion reads the module version, Go release and commit from the
// build information: the VCS stamp of a build in a checkout, else the
// commit of a pseudo-version, else "(unknown)".
func buildVersion(bi *debug.BuildInfo) (version, goVersion, commit string) {
	version, goVersion, commit = bi.Main.Version, bi.GoVersion, ""
	if version == "" {
		version = "(unknown)"
	}
	dirty := false
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			commit = s.Value
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	if m := pseudoVersion.FindStringSubmatch(version); commit == "" && m != nil {
		commit = m[1]
	}
	switch {
	case commit == "":
		commit = "(unknown)"
	case dirty:
		commit += " (modified)"
	}
	return version, goVersion, commit
}
