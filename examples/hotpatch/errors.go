package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/hotpatch-dev/hotpatch/elfsym"
	"github.com/hotpatch-dev/hotpatch/patch"
	"github.com/hotpatch-dev/hotpatch/patch/agent"
)

// fail reports err; with --json it also prints it as a JSON object.
func (c *common) fail(stdout io.Writer, err error) error {
	return c.failAt(stdout, err, nil)
}

// failAt reports err and, when the library read it back (res), the state
// the target was left in: as "id", "state" and "pending" with --json, and
// in words with what to do when a transition is left unfinished.
func (c *common) failAt(stdout io.Writer, err error, res *patch.Result) error {
	err = c.withHint(err)
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

// inTransition reports whether res leaves its patch in a transition.
func inTransition(res *patch.Result) bool {
	return res != nil && (res.State == patch.StateTransition || res.State == patch.StateReverting)
}

// leftIn adds to err where the target was left when that is unfinished
// (and marks it errTransition: exit status 3), or which command lists the
// patches when the one named is not there.
func leftIn(pid int, err error, res *patch.Result) error {
	if errors.Is(err, patch.ErrNotApplied) || errors.Is(err, patch.ErrNoTransition) {
		return fmt.Errorf("%w\nhotpatch: hotpatch status --pid %d lists the patches", err, pid)
	}
	if !inTransition(res) {
		return err
	}
	return fmt.Errorf("%w\nhotpatch: %s is %s, %d task(s) pending; the target is consistent (%w). hotpatch apply --pid %d --resume --id %s finishes it once they leave, hotpatch status --pid %d lists them",
		err, res.ID, res.State, res.Pending, errTransition, pid, res.ID, pid)
}

// errorCode names an error for scripts (the README lists the codes).
func errorCode(err error) string {
	for _, e := range []struct {
		err  error
		code string
	}{
		// A cancelled wait also wraps what it waited for: it goes first.
		{context.Canceled, "canceled"},
		{patch.ErrPIDReused, "pid_reused"}, {patch.ErrKernelThread, "kernel_thread"}, {patch.ErrBusy, "busy"},
		{patch.ErrNoProcess, "no_process"}, {errNoMatch, "no_process"}, {patch.ErrPermission, "permission"},
		// A function that exists only inlined is also an unknown symbol.
		{elfsym.ErrOnlyInlined, "inlined"},
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
		// What the agent of a Go service refuses (apply --plugin).
		{agent.ErrNoAgent, "no_agent"}, {agent.ErrNoCgo, "no_cgo"}, {agent.ErrToolchain, "toolchain"},
		{agent.ErrModuleVersion, "module_version"}, {agent.ErrBuildSetting, "build_setting"}, {agent.ErrPackage, "package"},
		{agent.ErrLoadedTwice, "loaded_twice"}, {agent.ErrManifest, "manifest"}, {agent.ErrNotPlugin, "not_plugin"},
		{agent.ErrPluginOpen, "plugin_open"}, {agent.ErrPeer, "peer"},
	} {
		if errors.Is(err, e.err) {
			return e.code
		}
	}
	return "error"
}

// withHint adds the flag or command that helps with a refusal, when one
// does (the library's errors name its options, never the CLI's).
func (c *common) withHint(err error) error {
	pid := c.pid
	var hint string
	switch {
	case errors.Is(err, elfsym.ErrOnlyInlined):
		hint = fmt.Sprintf("hotpatch syms --pid %d CALLER shows each caller", pid)
	case errors.Is(err, patch.ErrSignature) && c.plugin:
		hint = "change the plugin's fix to the target's signature"
	case errors.Is(err, patch.ErrSignature):
		hint = "--skip-signature-check applies it anyway"
	case errors.Is(err, patch.ErrInlined):
		hint = "--allow-inlined patches the out-of-line copy anyway"
	case errors.Is(err, patch.ErrUnpinned):
		hint = "--unpinned accepts it"
	case errors.Is(err, patch.ErrBlocked) && !errors.Is(err, context.Canceled) && c.supersede != "":
		hint = "raise --timeout; a --supersede switches in one pause, when no task is in the functions or in the old patch's code"
	case errors.Is(err, patch.ErrBlocked) && !errors.Is(err, context.Canceled) && c.mode == patch.ModeStop:
		hint = "raise --timeout, or --mode gradual keeps the busy tasks on the old code"
	case errors.Is(err, patch.ErrBlocked) && !errors.Is(err, context.Canceled):
		hint = "raise --timeout, or --on-timeout stay leaves the transition running, consistent, for apply --resume"
	case errors.Is(err, patch.ErrUnknownSymbol):
		hint = fmt.Sprintf("hotpatch syms --pid %d SUBSTRING lists the functions", pid)
	case errors.Is(err, patch.ErrAlreadyApplied):
		hint = fmt.Sprintf("hotpatch status --pid %d lists the patches, hotpatch revert --pid %d --id ID reverts one; --supersede ID replaces it by this patch in one pause", pid, pid)
	case errors.Is(err, patch.ErrInTransition) && c.supersede != "":
		hint = fmt.Sprintf("hotpatch apply --pid %d --resume --id %s finishes it, hotpatch revert --pid %d --id %s reverts it", pid, c.supersede, pid, c.supersede)
	case errors.Is(err, patch.ErrInTransition):
		hint = fmt.Sprintf("hotpatch apply --pid %d --resume finishes it", pid)
	case errors.Is(err, patch.ErrNotApplied) && c.supersede != "":
		hint = fmt.Sprintf("hotpatch status --pid %d lists the applied patches; without --supersede the patch applies on its own", pid)
	default:
		return err
	}
	return fmt.Errorf("%w (%s)", err, hint)
}

// writeJSON prints v indented.
func writeJSON(w io.Writer, v any) {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

// writeLine prints v as one line of JSON.
func writeLine(w io.Writer, v any) {
	b, _ := json.Marshal(v)
	fmt.Fprintf(w, "%s\n", b)
}

// droppedGo explains an unknown NEW in a Go target: the linker drops a
// function nothing references, so a fix compiled in "for later" is not in
// the binary unless something keeps it reachable.
func droppedGo(t *patch.Target, reps []patch.Replacement, lib string, err error) string {
	if lib != "" || !errors.Is(err, patch.ErrUnknownSymbol) || errors.Is(err, elfsym.ErrOnlyInlined) {
		return ""
	}
	for _, r := range reps {
		old, oerr := t.Symbols().Lookup(r.Old)
		if _, nerr := t.Symbols().Lookup(r.New); oerr != nil || nerr == nil || !old.Module.IsGo {
			continue
		}
		return fmt.Sprintf("hotpatch: %s is not in the binary. The Go linker drops a function nothing references: "+
			"keep the fix reachable, e.g. var fixes = []any{%s} and a use of fixes the compiler cannot prove dead "+
			"(README, pitfalls), then rebuild and redeploy", r.New, shortName(r.New))
	}
	return ""
}

// shortName is a Go function name without its package path ("main.f" → "f").
func shortName(name string) string {
	if i := strings.LastIndexByte(name, '.'); i >= 0 && !strings.Contains(name[i:], ")") {
		return name[i+1:]
	}
	return name
}

// leading is v (a JSON object) with one more field first: embedding v in a
// struct would not do, as v's own MarshalJSON would drop the field.
type leading struct {
	key string
	val any
	v   any
}

func (l leading) MarshalJSON() ([]byte, error) {
	k, err := json.Marshal(l.key)
	if err != nil {
		return nil, err
	}
	val, err := json.Marshal(l.val)
	if err != nil {
		return nil, err
	}
	b, err := json.Marshal(l.v)
	if err != nil {
		return nil, err
	}
	if len(b) < 2 || b[0] != '{' {
		return nil, fmt.Errorf("hotpatch: %T is not a JSON object", l.v)
	}
	out := append(append(append([]byte{'{'}, k...), ':'), val...)
	if len(b) > 2 {
		out = append(out, ',')
	}
	return append(out, b[1:]...), nil
}
