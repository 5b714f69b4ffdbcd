//go:build linux

package patch

import (
	"errors"
	"fmt"

	"github.com/hotpatch-dev/hotpatch/elfsym"
	"github.com/hotpatch-dev/hotpatch/trampoline"
)

// closureEntry builds the code the patched entry of p jumps to (at entry):
// it enters the replacement closure. When the replacement may call the
// original (p.rep.originalSlot), it also builds that original at orig and
// returns its address (the relocated thunk itself for a function without a
// stack check, which never re-enters its entry).
func (t *Target) closureEntry(p *planned, plan *trampoline.Plan, entry, orig, thunk uint64) (entryCode, origCode []byte, origAddr uint64, err error) {
	if p.rep.originalSlot == 0 {
		code, err := trampoline.ClosureEntry(t.arch.Machine(), entry, p.rep.closure, p.new.Addr)
		return code, nil, 0, err
	}
	a, ok := t.arch.(trampoline.GoOriginaler)
	if !ok {
		return nil, nil, 0, fmt.Errorf("%w: calling the original of a patched Go function is not implemented for %v", trampoline.ErrUnsupportedArch, t.arch.Machine())
	}
	ms, err := t.runtimeFunc(p.old.Module, "runtime.morestack")
	if err != nil {
		return nil, nil, 0, err
	}
	msn, err := t.runtimeFunc(p.old.Module, "runtime.morestack_noctxt")
	if err != nil {
		return nil, nil, 0, err
	}
	code, err := a.GoOriginal(p.fn(), orig, orig, ms.Addr, msn.Addr, len(plan.Jump))
	if errors.Is(err, trampoline.ErrNoStackCheck) {
		// No stack check: the relocated thunk never comes back to the
		// entry.
		code, err := trampoline.ClosureEntry(t.arch.Machine(), entry, p.rep.closure, p.new.Addr)
		return code, nil, thunk, err
	}
	if err != nil {
		return nil, nil, 0, err
	}
	return a.GoOriginalEntry(entry, p.rep.closure, p.new.Addr, orig, orig), code, orig, nil
}

// runtimeFunc finds an assembly function of the Go runtime by its name,
// with or without the ".abi0" suffix the linker gives ABI0 symbols: the
// one of module mod (the runtime that runs the function being patched; a
// Go plugin holds a copy of the runtime too, which nothing calls) when it
// has one.
func (t *Target) runtimeFunc(mod *elfsym.Module, name string) (elfsym.Symbol, error) {
	for _, n := range []string{name + ".abi0", name} {
		if s, err := t.syms.LookupIn(mod, n); err == nil {
			return s, nil
		}
	}
	s, err := t.syms.Lookup(name + ".abi0")
	if err == nil {
		return s, nil
	}
	return t.syms.Lookup(name)
}
