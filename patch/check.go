//go:build linux

package patch

import (
	"fmt"
	"path/filepath"
	"strings"

	"github.com/hotpatch-dev/hotpatch/elfsym"
	"github.com/hotpatch-dev/hotpatch/internal/gopcln"
)

// inlineMaxSize bounds the out-of-line code of a Go function the inliner
// could have copied into every caller: the default budget (80 nodes) gives
// functions of a few hundred bytes; a larger one is not inlined, unless a
// PGO profile raised the budget for hot call sites (no binary records that).
const inlineMaxSize = 1024

// checker refuses replacements whose code cannot run correctly in place of
// the functions they replace: code of another calling convention, another
// signature, or a function that may have been inlined everywhere without a
// trace (which the patch would not change).
type checker struct {
	t    *Target
	o    ApplyOptions
	reps []Replacement
	// refs are the references to the Go functions being replaced, found
	// by one scan of the text and data, on first need.
	refs    map[uint64]elfsym.Reference
	refsErr error
	scanned bool
}

// newChecker makes the checks that need nothing loaded into the target: a
// patch library holding Go code is refused, and so is a Go function whose
// replacement the library defines (C code). The target is not touched.
func (t *Target) newChecker(reps []Replacement, o ApplyOptions) (*checker, error) {
	c := &checker{t: t, o: o, reps: reps}
	if o.Lib == "" {
		return c, nil
	}
	obj, err := elfsym.ReadObject(o.Lib)
	if err != nil {
		return c, nil // not an ELF file: loading it reports why
	}
	if obj.Go != "" {
		return nil, &Error{Op: "apply", Pid: t.pid, Err: &ABIError{Lib: o.Lib, Reason: fmt.Sprintf(
			"it holds Go code (%s): loaded with dlopen, behind the back of the target's Go runtime (or into a C program), its own Go runtime starts uninitialized and crashes the target at its first allocation. "+
				"A patch library must be C code; fix Go functions with Go code already compiled into the target (or, once the in-process agent exists, with a Go plugin the agent loads through the runtime's plugin loader)", obj.Go)}}
	}
	for _, rep := range reps {
		old, err := t.syms.Lookup(rep.Old)
		if err != nil {
			continue // reported by the resolve step
		}
		_, isGo, err := t.syms.GoFunc(old)
		if err != nil {
			return nil, &Error{Op: "apply", Pid: t.pid, Func: rep.Old, Err: err}
		}
		if isGo && obj.Funcs[libName(rep.New, o.Lib)] {
			return nil, &Error{Op: "apply", Pid: t.pid, Func: rep.Old, Err: &ABIError{Func: rep.Old, New: rep.New, Lib: o.Lib,
				Reason: fmt.Sprintf("%s is C code from %s and %s is a Go function. %s", rep.New, o.Lib, rep.Old, goOnlyHint)}}
		}
	}
	return c, nil
}

// goOnlyHint says why only Go code replaces Go code, and where it comes from.
const goOnlyHint = "Go code is called with Go's register ABI and relies on the Go runtime (stack growth, the garbage collector's maps of its frames); other code would read wrong arguments or crash the target. " +
	"Replace a Go function by a Go function already compiled into the target (or, once the in-process agent exists, by one of a Go plugin the agent loads)"

// libName is the name a replacement is looked up by in the patch library
// (lookupNew): unqualified, or qualified by the library's own name.
func libName(name, lib string) string {
	if i := strings.IndexByte(name, ':'); i >= 0 {
		if mod := name[:i]; mod == lib || mod == filepath.Base(lib) {
			return name[i+1:]
		}
		return ""
	}
	return name
}

// check refuses a replacement of old by nw: another calling convention,
// another signature (unless SkipSignatureCheck), or a small Go function
// with no call site that may have been inlined without a trace (unless
// AllowInlined, or inlined sites are already known and accepted).
func (c *checker) check(rep Replacement, old, nw elfsym.Symbol, inlined bool) error {
	og, oldGo, err := c.t.syms.GoFunc(old)
	if err != nil {
		return err
	}
	ng, newGo, err := c.t.syms.GoFunc(nw)
	if err != nil {
		return err
	}
	if err := abi(rep, old, nw, og, ng, oldGo, newGo); err != nil {
		return err
	}
	if !c.o.SkipSignatureCheck {
		if err := c.signature(rep, old, nw, og, ng, oldGo); err != nil {
			return err
		}
	}
	if oldGo && !inlined && !c.o.AllowInlined {
		return c.inlined(rep, old, og)
	}
	return nil
}

// abi refuses code of another calling convention: only Go code of the
// same module (the same runtime) replaces a Go function, in the same ABI
// (Go or assembly), and Go code replaces no C function.
func abi(rep Replacement, old, nw elfsym.Symbol, og, ng elfsym.GoFunc, oldGo, newGo bool) error {
	e := &ABIError{Func: rep.Old, New: rep.New}
	switch {
	case oldGo && !newGo && nw.Module != old.Module:
		e.Reason = fmt.Sprintf("%s is not Go code (it is in %s) and %s is a Go function. %s", rep.New, nw.Module.Path, rep.Old, goOnlyHint)
	case oldGo && !newGo:
		e.Reason = fmt.Sprintf("%s is not in the Go function table (C code, or assembly outside Go's ABI) and %s is a Go function. %s", rep.New, rep.Old, goOnlyHint)
	case oldGo && nw.Module != old.Module && !(rep.plugin && newGo):
		e.Reason = fmt.Sprintf("%s is Go code of another module (%s), with a Go runtime of its own. %s", rep.New, nw.Module.Path, goOnlyHint)
	case oldGo && og.Asm != ng.Asm:
		e.Reason = fmt.Sprintf("one of %s and %s is assembly (ABI0: arguments on the stack), the other Go (register ABI); replace an assembly function by an assembly function, a Go function by a Go function", rep.Old, rep.New)
	case !oldGo && newGo:
		e.Reason = fmt.Sprintf("%s is C code and %s a Go function, which expects Go's register ABI and a goroutine; called by C code it would read wrong arguments or crash. Replace a C function by C code (a patch library)", rep.Old, rep.New)
	default:
		return nil
	}
	return e
}

// signature compares what the binaries record: the DWARF types of both
// functions when both have DWARF, and for Go functions the argument sizes
// of the Go function table. Where neither says anything (stripped C), the
// replacement is accepted unchecked.
func (c *checker) signature(rep Replacement, old, nw elfsym.Symbol, og, ng elfsym.GoFunc, isGo bool) error {
	oldSig, oerr := c.t.syms.Signature(old)
	newSig, nerr := c.t.syms.Signature(nw)
	for _, err := range []error{oerr, nerr} {
		if err != nil {
			// DWARF we cannot read says nothing: the sizes below still count.
			c.t.log.Warn("signature check without DWARF", "err", err)
			oldSig, newSig = nil, nil
		}
	}
	if oldSig != nil && newSig != nil && !oldSig.SameTypes(newSig) {
		return &SignatureError{Func: rep.Old, New: rep.New, Old: oldSig.String(), NewSig: newSig.String(), Source: "DWARF"}
	}
	if isGo && og.Args != gopcln.ArgsSizeUnknown && ng.Args != gopcln.ArgsSizeUnknown && og.Args != ng.Args {
		return &SignatureError{Func: rep.Old, New: rep.New, Old: sizeSig(oldSig, rep.Old, og), NewSig: sizeSig(newSig, rep.New, ng), Source: "the Go function table"}
	}
	return nil
}

// sizeSig names a Go function with the size of its arguments.
func sizeSig(s *elfsym.Signature, name string, f elfsym.GoFunc) string {
	if s != nil {
		name = s.String()
	}
	return fmt.Sprintf("%s (%d bytes of arguments)", name, f.Args)
}

// inlined refuses a small Go function that nothing in the binary calls or
// takes the address of: its callers may all have inlined it, so completely
// that neither the inline tree nor DWARF recorded it.
func (c *checker) inlined(rep Replacement, old elfsym.Symbol, og elfsym.GoFunc) error {
	if og.Asm || og.Defers || old.Size > inlineMaxSize {
		return nil // never inlined
	}
	c.scan(old)
	if c.refsErr != nil {
		return fmt.Errorf("looking for the call sites of %s (without them it may have been inlined): %w", rep.Old, c.refsErr)
	}
	if r, ok := c.refs[old.Addr]; ok {
		c.t.log.Debug("not inlined everywhere", "func", rep.Old, "reference", r.String())
		return nil
	}
	return &InlinedError{Func: rep.Old, Reason: fmt.Sprintf(
		"it is small enough to inline (%d bytes), and the text has no call site of it and nothing takes its address; it may have been inlined without a trace (a method called only through reflect or an interface built at run time looks the same)", old.Size)}
}

// scan finds the references to every Go function of the patch set, in one
// pass over each module that holds some.
func (c *checker) scan(first elfsym.Symbol) {
	if c.scanned {
		return
	}
	c.scanned = true
	byMod := map[*elfsym.Module][]uint64{first.Module: {first.Addr}}
	for _, rep := range c.reps {
		if s, err := c.t.syms.Lookup(rep.Old); err == nil && s.Module.IsGo && s.Addr != first.Addr {
			byMod[s.Module] = append(byMod[s.Module], s.Addr)
		}
	}
	c.refs = map[uint64]elfsym.Reference{}
	for m, entries := range byMod {
		refs, err := c.t.syms.References(m, entries)
		if err != nil {
			c.refsErr = err
			return
		}
		for a, r := range refs {
			c.refs[a] = r
		}
	}
}
