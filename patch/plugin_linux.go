//go:build linux

package patch

import (
	"errors"
	"fmt"
	"os"
	"reflect"
	"time"

	"github.com/hotpatch-dev/hotpatch/elfsym"
)

// PluginFix is one replacement whose types are known at run time only: a
// fix of a Go plugin that package patch/agent loaded with the runtime's
// plugin loader. Give the function to replace as Target (a func value of
// this program) or Name (as the Go function table spells it, e.g.
// "main.handler"), and the new code as Replacement (a func value) or Wrap
// (a func(original F) F that builds it from the original, as Wrap does).
type PluginFix struct {
	Target      any
	Name        string
	Replacement any
	Wrap        any
}

// PluginOptions tune ApplyPlugin: FuncOptions, and what an operator may
// also ask of an apply.
type PluginOptions struct {
	FuncOptions
	// Force moves the tasks still on the old code at Timeout to the new
	// code (ApplyOptions.Force).
	Force bool
	// Interval is the time between the short pauses of a transition.
	Interval time.Duration
	// Progress, when set, is called after every pause of a transition
	// (ApplyOptions.Progress).
	Progress func(Progress)
	// Supersede is the ID of an applied patch of this process that the
	// fixes replace in one pause, so that no call runs the original code
	// between the two (ApplyOptions.Supersede).
	Supersede string
}

// ApplyPlugin applies fixes as one patch set (one ID, one pause or one
// gradual transition), through the same path as Func. Each Replacement
// must have its Target's type (a Target given by Name is checked against
// the replacement from the binaries' records, as FuncByName is); a
// mismatch is an *Error wrapping a *SignatureError, and nothing is applied.
// The replacements must be Go code of a plugin loaded by the Go runtime
// (plugin.Open) or of the program itself.
func ApplyPlugin(fixes []PluginFix, o PluginOptions) (*Handle, error) {
	if len(fixes) == 0 {
		return nil, &Error{Op: "apply", Pid: os.Getpid(), Err: ErrBadRequest, Hint: "no fixes given"}
	}
	var pairs []funcPair
	for _, f := range fixes {
		p, err := resolvePluginFix(f)
		if err != nil {
			return nil, err
		}
		pairs = append(pairs, p)
	}
	return applyPairs(pairs, o)
}

// funcPair is one function of a patch set: the target, the replacement
// (kept reachable while applied) and, for a wrap, the original it calls.
type funcPair struct {
	old, new goFunc
	keep     any
	orig     *origFuncval
	plugin   bool
}

// resolvePluginFix finds the target of f, checks the types, and builds the
// replacement of a wrap.
func resolvePluginFix(f PluginFix) (funcPair, error) {
	old, err := pluginTarget(f)
	if err != nil {
		return funcPair{}, err
	}
	var p funcPair
	p.old, p.plugin = old, true
	repl := f.Replacement
	if (repl == nil) == (f.Wrap == nil) {
		return p, &Error{Op: "apply", Pid: os.Getpid(), Func: old.name, Err: ErrBadRequest, Hint: "give exactly one of a replacement and a wrap"}
	}
	if f.Wrap != nil {
		ft, err := wrapType(old.name, f.Wrap)
		if err != nil {
			return p, err
		}
		if f.Target != nil && reflect.TypeOf(f.Target) != ft {
			return p, typeMismatch(old.name, f.Target, ft.String())
		}
		p.orig = &origFuncval{fn: old.entry}
		repl = reflect.ValueOf(f.Wrap).Call([]reflect.Value{funcValueOfType(ft, p.orig)})[0].Interface()
	} else if f.Target != nil && reflect.TypeOf(f.Target) != reflect.TypeOf(repl) {
		return p, typeMismatch(old.name, f.Target, reflect.TypeOf(repl).String())
	}
	if p.new, err = funcOf("replacement", repl); err != nil {
		return p, err
	}
	p.keep = repl
	return p, nil
}

// pluginTarget resolves the function a fix replaces.
func pluginTarget(f PluginFix) (goFunc, error) {
	var old goFunc
	switch {
	case f.Target != nil:
		var err error
		if old, err = funcOf("target", f.Target); err != nil {
			return old, err
		}
		if f.Name != "" && f.Name != old.name {
			return old, &Error{Op: "apply", Pid: os.Getpid(), Func: f.Name, Err: ErrBadRequest,
				Hint: fmt.Sprintf("the fix names %s but its target function value is %s", f.Name, old.name)}
		}
		// A plugin's func value of a package the program also has is
		// the plugin's own copy of it, which the program never calls:
		// the target is the program's function of that name.
		if err := patchable(old); err != nil {
			return old, err
		}
		return lookupProgram(old.name)
	case f.Name != "":
		var err error
		if old, err = lookupProgram(f.Name); err != nil {
			return old, err
		}
	default:
		return old, &Error{Op: "apply", Pid: os.Getpid(), Err: ErrBadRequest, Hint: "a fix names no target (neither a function value nor a name)"}
	}
	return old, patchable(old)
}

// lookupProgram finds the function of this program named name (in the
// program's own module when a plugin has one of that name too).
func lookupProgram(name string) (goFunc, error) {
	res, err := selfCall(selfRequest{Op: "lookup", Reps: []selfRep{{Old: name, Near: programPC()}}})
	if err != nil {
		return goFunc{}, err
	}
	if res == nil || len(res.Functions) != 1 {
		return goFunc{}, &Error{Op: "apply", Pid: os.Getpid(), Func: name, Err: ErrSelfHelper, Hint: "the helper's lookup answered nothing"}
	}
	return goFunc{name: name, entry: uintptr(res.Functions[0].OldAddr)}, nil
}

// wrapType returns F of a wrap of type func(F) F.
func wrapType(name string, wrap any) (reflect.Type, error) {
	t := reflect.TypeOf(wrap)
	if t.Kind() != reflect.Func || t.NumIn() != 1 || t.NumOut() != 1 || t.In(0) != t.Out(0) || t.In(0).Kind() != reflect.Func || t.IsVariadic() {
		return nil, &Error{Op: "apply", Pid: os.Getpid(), Func: name, Err: ErrBadRequest,
			Hint: fmt.Sprintf("a wrap is a func(original F) F for the function type F of the target; got a %s", t)}
	}
	if reflect.ValueOf(wrap).IsNil() {
		return nil, &Error{Op: "apply", Pid: os.Getpid(), Func: name, Err: ErrBadRequest, Hint: "the wrap is a nil function"}
	}
	return t.In(0), nil
}

// typeMismatch refuses a replacement whose Go type is not the target's.
func typeMismatch(name string, target any, got string) error {
	return &Error{Op: "apply", Pid: os.Getpid(), Func: name,
		Err: &SignatureError{Func: name, New: "the replacement", Old: fmt.Sprintf("%s %s", name, reflect.TypeOf(target)), NewSig: got, Source: "Go types"}}
}

// applyPairs applies the pairs as one patch set through the helper.
func applyPairs(pairs []funcPair, o PluginOptions) (*Handle, error) {
	if o.Mode == "" {
		o.Mode = ModeAuto
	}
	req := selfRequest{Op: "apply", Opts: selfOpts{Mode: o.Mode, Timeout: o.Timeout, OnTimeout: o.OnTimeout, Force: o.Force, Interval: o.Interval,
		Supersede: o.Supersede}}
	for _, p := range pairs {
		if p.old.entry == p.new.entry {
			return nil, &Error{Op: "apply", Pid: os.Getpid(), Func: p.old.name, Err: ErrBadRequest, Hint: "the target and the replacement are the same function"}
		}
		if err := notOnOwnStack("apply", p.old); err != nil {
			return nil, err
		}
		r := selfRep{Old: p.old.name, New: p.new.name, OldAddr: uint64(p.old.entry), NewAddr: uint64(p.new.entry), Closure: uint64(p.new.funcval), Plugin: p.plugin}
		if p.orig != nil {
			r.OriginalSlot = uint64(fnSlot(p.orig))
		}
		req.Reps = append(req.Reps, r)
	}
	h := &Handle{old: pairs[0].old, new: pairs[0].new, keep: pairs[0].keep, orig: pairs[0].orig, opts: o.FuncOptions, more: pairs[1:]}
	return h.applyReq(req, o.Progress)
}

// atAddr resolves a name of the self-patching path, which comes with the
// address the caller holds: a name defined in several modules (a Go plugin
// holds its own copies of the packages it was built with, which nothing
// outside it calls) is the symbol at that address.
func (t *Target) atAddr(name string, addr uint64, s elfsym.Symbol, err error) (elfsym.Symbol, error) {
	if addr == 0 || !errors.Is(err, ErrAmbiguous) {
		return s, err
	}
	if at, ok := t.syms.SymbolAt(addr); ok && at.Addr == addr && at.Name == name {
		return at, nil
	}
	return s, err
}

// lookupNear finds a function by name; one defined in several modules is
// taken from the module of near, when given and it has one.
func (t *Target) lookupNear(name string, near uint64) (elfsym.Symbol, error) {
	s, err := t.syms.Lookup(name)
	if near == 0 || !errors.Is(err, ErrAmbiguous) {
		return s, err
	}
	if m, ok := t.syms.ModuleAt(near); ok {
		if in, ierr := t.syms.LookupIn(m, name); ierr == nil {
			return in, nil
		}
	}
	return s, err
}

// programPC is an address in this program's own module (the executable),
// for lookupNear.
func programPC() uint64 { return uint64(reflect.ValueOf(programPC).Pointer()) }
