//go:build linux

package patch

import (
	"errors"
	"fmt"
	"os"
	"reflect"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
)

// Func replaces the function target with replacement in this process, for
// every goroutine, until Handle.Revert. The two have the same type, so their
// signatures match at compile time. target is a top-level function (also of
// another package, such as time.Now); replacement may be any func value of
// that type, including a closure that captures variables: it is kept
// reachable while applied.
//
// The patch goes through the same resolve, prepare, pause and transition
// path as any Target.Apply, with the same check that no goroutine is inside
// target: a tracer process (this binary, re-executed once and kept; see
// the package documentation of self-patching) attaches to this process and
// applies it. A call from inside target (target on the calling goroutine's
// stack) is refused at once. A function the compiler inlined into callers is
// refused with the callers named: mark it //go:noinline, or build with
// -gcflags=all=-l.
func Func[F any](target, replacement F) (*Handle, error) {
	return FuncWith(target, replacement, FuncOptions{})
}

// FuncWith is Func with options.
func FuncWith[F any](target, replacement F, o FuncOptions) (*Handle, error) {
	old, err := funcOf("target", target)
	if err != nil {
		return nil, err
	}
	if err := patchable(old); err != nil {
		return nil, err
	}
	nw, err := funcOf("replacement", replacement)
	if err != nil {
		return nil, err
	}
	return applyFunc(old, nw, replacement, o, nil)
}

// Wrap replaces target with the function wrap returns, which it builds from
// original: a function of target's type that runs target's original code,
// so that the replacement can log, count or adjust around it. original may
// be called any number of times, also recursively and from other
// goroutines; a call of original that must grow its stack (deep recursion)
// or yield to the scheduler resumes in the original code, never in the
// replacement again. Before the patch and after Revert, original is target
// itself. Until Wrap returns, call original only from the replacement: the
// helper rewrites it while the patch is prepared.
func Wrap[F any](target F, wrap func(original F) F) (*Handle, error) {
	return WrapWith(target, wrap, FuncOptions{})
}

// WrapWith is Wrap with options.
func WrapWith[F any](target F, wrap func(original F) F, o FuncOptions) (*Handle, error) {
	old, err := funcOf("target", target)
	if err != nil {
		return nil, err
	}
	if err := patchable(old); err != nil {
		return nil, err
	}
	fv := &origFuncval{fn: old.entry}
	replacement := wrap(funcFromFuncval[F](fv))
	nw, err := funcOf("replacement", replacement)
	if err != nil {
		return nil, err
	}
	h, err := applyFunc(old, nw, replacement, o, fv)
	if h == nil {
		atomic.StoreUintptr(&fv.fn, old.entry)
	}
	return h, err
}

// goFunc is a Go function of this process.
type goFunc struct {
	name    string
	entry   uintptr // the code (ABIInternal entry)
	funcval uintptr // the func value's funcval
}

// funcOf resolves a func value to its code and name.
func funcOf(role string, f any) (goFunc, error) {
	v := reflect.ValueOf(f)
	if v.Kind() != reflect.Func {
		return goFunc{}, &Error{Op: "apply", Pid: os.Getpid(), Err: ErrBadRequest,
			Hint: fmt.Sprintf("the %s is a %T, not a function", role, f)}
	}
	if v.IsNil() {
		return goFunc{}, &Error{Op: "apply", Pid: os.Getpid(), Err: ErrBadRequest, Hint: fmt.Sprintf("the %s is a nil function", role)}
	}
	entry := v.Pointer()
	rf := runtime.FuncForPC(entry)
	if rf == nil || rf.Entry() != entry {
		return goFunc{}, &Error{Op: "apply", Pid: os.Getpid(), Err: ErrUnknownSymbol,
			Hint: fmt.Sprintf("the %s's code at %#x is not the entry of a function in the Go function table", role, entry)}
	}
	return goFunc{name: rf.Name(), entry: entry, funcval: funcvalOf(f)}, nil
}

// FuncByName replaces the function of this program named name (as the Go
// function table spells it: "net/http.(*conn).serve", "time.now"), which
// need not be exported, with replacement. The replacement's signature is
// checked against the function's, from the Go function table (argument
// and result sizes) and from DWARF when the binary has it.
func FuncByName[F any](name string, replacement F) (*Handle, error) {
	return FuncByNameWith(name, replacement, FuncOptions{})
}

// FuncByNameWith is FuncByName with options.
func FuncByNameWith[F any](name string, replacement F, o FuncOptions) (*Handle, error) {
	nw, err := funcOf("replacement", replacement)
	if err != nil {
		return nil, err
	}
	res, err := selfCall(selfRequest{Op: "lookup", Reps: []selfRep{{Old: name}}})
	if err != nil {
		return nil, err
	}
	if res == nil || len(res.Functions) != 1 {
		return nil, &Error{Op: "apply", Pid: os.Getpid(), Func: name, Err: ErrSelfHelper, Hint: "the helper's lookup answered nothing"}
	}
	old := goFunc{name: name, entry: uintptr(res.Functions[0].OldAddr)}
	if err := patchable(old); err != nil {
		return nil, err
	}
	return applyFunc(old, nw, replacement, o, nil)
}

// patchable refuses the function values whose code is not what callers
// of the function run.
func patchable(fn goFunc) error {
	refuse := func(why string) error {
		return &Error{Op: "apply", Pid: os.Getpid(), Func: fn.name, Err: fmt.Errorf("%w: %s", ErrNotPatchable, why)}
	}
	switch {
	case strings.Contains(fn.name, "[...]") || strings.Contains(fn.name, "[go.shape."):
		return refuse("it is (an instantiation of) a generic function or a method of a generic type; its code is a shape function shared by every instantiation of the same shape and called with a dictionary, which a replacement of the instantiated type cannot take. Call it from a non-generic //go:noinline function and patch that")
	case strings.HasSuffix(fn.name, "-fm"):
		return refuse("it is a method value (x.M), a closure bound to one receiver that direct calls do not go through; patch the method expression ((*T).M or T.M)")
	}
	if f := runtime.FuncForPC(fn.entry); f != nil {
		if file, _ := f.FileLine(fn.entry); file == "<autogenerated>" {
			return refuse("it is code the compiler generated (the pointer-receiver wrapper of a value-receiver method, or another wrapper) that direct calls do not go through; for func (T) M patch the method expression T.M, with a replacement of type func(T, ...)")
		}
	}
	return nil
}

// Handle is a patch applied by Func. Revert puts the original back.
type Handle struct {
	mu       sync.Mutex
	old, new goFunc
	keep     any // the replacement, reachable while applied
	orig     *origFuncval
	opts     FuncOptions
	res      *Result
	done     bool
	// more are the other functions of a patch set (ApplyPlugin).
	more []funcPair
}

// live holds every applied Handle, so that its replacement stays reachable
// even when the caller drops the Handle.
var live = struct {
	sync.Mutex
	m map[string]*Handle
}{m: map[string]*Handle{}}

func applyFunc(old, nw goFunc, keep any, o FuncOptions, orig *origFuncval) (*Handle, error) {
	if old.entry == nw.entry {
		return nil, &Error{Op: "apply", Pid: os.Getpid(), Func: old.name, Err: ErrBadRequest, Hint: "the target and the replacement are the same function"}
	}
	if err := notOnOwnStack("apply", old); err != nil {
		return nil, err
	}
	if err := o.check(); err != nil {
		return nil, &Error{Op: "apply", Pid: os.Getpid(), Func: old.name, Err: err}
	}
	if o.Mode == "" {
		o.Mode = ModeAuto
	}
	req := selfRequest{Op: "apply", Opts: selfOpts{Mode: o.Mode, Timeout: o.Timeout, OnTimeout: o.OnTimeout},
		Reps: []selfRep{{Old: old.name, New: nw.name, OldAddr: uint64(old.entry), NewAddr: uint64(nw.entry), Closure: uint64(nw.funcval)}}}
	if orig != nil {
		req.Reps[0].OriginalSlot = uint64(fnSlot(orig))
	}
	h := &Handle{old: old, new: nw, keep: keep, opts: o, orig: orig}
	return h.applyReq(req, nil)
}

// applyReq sends the apply request of h to the helper, keeping the
// replacements reachable meanwhile, and fills h from the answer.
func (h *Handle) applyReq(req selfRequest, progress func(Progress)) (*Handle, error) {
	// Reachable before any code can jump to it.
	live.Lock()
	live.m[fmt.Sprintf("pending %p", h)] = h
	live.Unlock()
	res, err := selfCallProgress(req, progress)
	live.Lock()
	delete(live.m, fmt.Sprintf("pending %p", h))
	if res != nil && res.ID != "" && res.State != StateReverted {
		live.m[res.ID] = h
	}
	live.Unlock()
	if err != nil {
		if res != nil && res.ID != "" && res.State != StateReverted {
			h.res = res // left in transition: the Handle can finish or revert it
			return h, inlineHint(err, h.old.name)
		}
		return nil, inlineHint(err, h.old.name)
	}
	h.res = res
	return h, nil
}

// inlineHint adds to an inlining refusal how to prevent it in Go.
func inlineHint(err error, name string) error {
	var e *Error
	if errors.Is(err, ErrInlined) && errors.As(err, &e) {
		e.Hint = fmt.Sprintf("mark %s //go:noinline in its source, or build without inlining (go build or go test -gcflags=all=-l)", name)
	}
	return err
}

// notOnOwnStack refuses at once an operation the calling goroutine would
// block: it is executing fn (fn is on its own stack), and no pause can
// find it outside.
func notOnOwnStack(op string, fn goFunc) error {
	pcs := make([]uintptr, 256)
	for {
		n := runtime.Callers(2, pcs)
		if n < len(pcs) {
			pcs = pcs[:n]
			break
		}
		pcs = make([]uintptr, 2*len(pcs))
	}
	for _, pc := range pcs {
		if f := runtime.FuncForPC(pc - 1); f != nil && f.Entry() == fn.entry {
			return &Error{Op: op, Pid: os.Getpid(), Func: fn.name,
				Err:  fmt.Errorf("%w: the calling goroutine is executing %s (it is on its own stack), so no pause can find it outside", ErrBlocked, fn.name),
				Hint: "call this from a goroutine that is not inside the function"}
		}
	}
	return nil
}

// ID returns the patch's ID in this process's records (Status).
func (h *Handle) ID() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.res == nil {
		return ""
	}
	return h.res.ID
}

// Result returns what the last operation on the patch left: its state,
// pause and attempts.
func (h *Handle) Result() *Result {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.res
}

// Revert puts the original function back, with the same check as the
// apply: no goroutine may be inside the replacement (in gradual mode those
// that are keep it until they leave). Reverting twice is an error wrapping
// ErrNotApplied.
func (h *Handle) Revert() error {
	return h.op("revert")
}

// Resume finishes a gradual patch that FuncOptions.OnTimeout left in
// transition.
func (h *Handle) Resume() error {
	return h.op("resume")
}

func (h *Handle) op(op string) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.done || h.res == nil {
		return &Error{Op: op, Pid: os.Getpid(), Func: h.old.name, Err: ErrNotApplied, Hint: "this patch was reverted already"}
	}
	if op == "revert" {
		if err := notOnOwnStack(op, h.new); err != nil {
			return err
		}
		for _, p := range h.more {
			if err := notOnOwnStack(op, p.new); err != nil {
				return err
			}
		}
	}
	o := h.opts
	res, err := selfCall(selfRequest{Op: op, ID: h.res.ID, Opts: selfOpts{Mode: o.Mode, Timeout: o.Timeout, OnTimeout: o.OnTimeout}})
	if res != nil {
		h.res = res
	}
	if res != nil && res.State == StateReverted {
		h.done = true
		live.Lock()
		delete(live.m, res.ID)
		live.Unlock()
		h.keep = nil
		if h.orig != nil {
			atomic.StoreUintptr(&h.orig.fn, h.old.entry)
		}
		for i, p := range h.more {
			if p.orig != nil {
				atomic.StoreUintptr(&p.orig.fn, p.old.entry)
			}
			h.more[i].keep = nil
		}
	}
	return err
}
