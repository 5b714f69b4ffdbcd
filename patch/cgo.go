//go:build linux

package patch

// notGo returns the first function of the set that is not Go code in a Go
// target (C code linked in with cgo), "" when there is none or the target
// is not a Go program. Such a function gets no dispatch stub: a Go target's
// stubs key tasks by R14, which C code does not keep g in (and the stub's
// scratch registers R12 and R13 are callee-saved in C).
func (t *Target) notGo(ps []*planned) string {
	src, err := t.source()
	if err != nil || src.Go == nil {
		return ""
	}
	for _, p := range ps {
		if _, ok := t.unw.GoFunc(p.old.Addr); !ok {
			return p.rep.Old
		}
	}
	return ""
}
