//go:build linux

package patch

import (
	"context"
	"encoding/gob"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hotpatch-dev/hotpatch/elfsym"
)

// A process cannot ptrace its own threads, so the tracer of the calling
// process is a helper process: this very binary, re-executed with selfEnv
// set to the parent's PID and the request socket as descriptor 3. The
// package's init recognises it and serves requests instead of returning, so
// the program's main (and the init functions of packages that import this
// one) never run in the helper. Init functions of packages this one does not
// depend on may run before it, as Go orders them: they must not assume they
// run in the real program only.
//
// The helper attaches to its parent with the same Attach, Apply and Revert
// as any other tracer (one path, one safety check), keeps the Target open
// between requests that follow each other (the symbols are loaded once; it
// holds the process's lock meanwhile, so another tool waits) and closes it
// after selfIdle without one, stays running for the next request, and dies
// with its parent (PR_SET_PDEATHSIG, and the socket's end of file).
const selfEnv = "HOTPATCH_SELF_HELPER"

// selfFD is the helper's end of the socket.
const selfFD = 3

func init() {
	if v, ok := os.LookupEnv(selfEnv); ok {
		os.Exit(runHelper(v))
	}
}

// selfRequest is one request to the helper.
type selfRequest struct {
	Op   string // "hello", "apply", "revert", "resume"
	Reps []selfRep
	ID   string
	Opts selfOpts
	// Progress asks for the transition's progress reports: each comes as
	// a response of its own before the answer.
	Progress bool
}

type selfRep struct {
	Old, New                  string
	OldAddr, NewAddr, Closure uint64
	OriginalSlot              uint64
	// Plugin: New is Go code of a plugin the Go runtime of the process
	// loaded (plugin.Open): another module, the same runtime.
	Plugin bool
	// Near, in a lookup: a name defined in several modules is looked up
	// in the module of this address (the program's own, where a Go
	// plugin also holds copies of the packages it was built with).
	Near uint64
}

type selfOpts struct {
	Mode              Mode
	OnTimeout         OnTimeout
	Timeout, Interval time.Duration
	Force             bool
	AllowInlined      bool
	Supersede         string
}

func (o selfOpts) apply() ApplyOptions {
	return ApplyOptions{Mode: o.Mode, OnTimeout: o.OnTimeout, Timeout: o.Timeout, Interval: o.Interval, Force: o.Force, AllowInlined: o.AllowInlined,
		Supersede: o.Supersede}
}

type selfResponse struct {
	Pid    int
	Result *Result
	Err    *wireError
	// Progress is a progress report of the request, not its answer.
	Progress *Progress
}

// wireError carries an error across the socket: an *Error's fields, the
// text of its cause, the sentinels it matches (by their index in
// wireSentinels) and the typed errors a caller may look for with errors.As.
type wireError struct {
	Op, Func, ID, Hint string
	Pid                int
	Msg                string
	Codes              []int
	Inlined            *InlinedError
	Signature          *SignatureError
	ABI                *ABIError
}

// wireSentinels are the errors errors.Is finds across the socket. Append
// only: parent and helper are the same binary, but keep the order stable.
var wireSentinels = []error{
	ErrNoProcess, ErrPIDReused, ErrKernelThread, ErrBusy, ErrPermission,
	ErrUnknownSymbol, ErrAmbiguous, ErrTooShort, ErrBranchIntoPatch, ErrCannotRelocate,
	ErrBlocked, ErrAlreadyApplied, ErrNotApplied, ErrCodeChanged, ErrBadRequest,
	ErrInTransition, ErrNoTransition, ErrInlined, ErrABI, ErrSignature,
	ErrGradualNotGo, ErrNoTaskKey, context.DeadlineExceeded, context.Canceled,
	ErrNotSupported, ErrSelfHelper, ErrNotPatchable,
	ErrGradualSupersede,
}

func toWire(err error) *wireError {
	if err == nil {
		return nil
	}
	w := &wireError{Msg: err.Error()}
	var e *Error
	if errors.As(err, &e) {
		w.Op, w.Pid, w.Func, w.ID, w.Hint = e.Op, e.Pid, e.Func, e.ID, e.Hint
		w.Msg = e.Err.Error()
	}
	for i, s := range wireSentinels {
		if errors.Is(err, s) {
			w.Codes = append(w.Codes, i)
		}
	}
	errors.As(err, &w.Inlined)
	errors.As(err, &w.Signature)
	errors.As(err, &w.ABI)
	return w
}

func (w *wireError) err() error {
	if w == nil {
		return nil
	}
	r := &remoteError{msg: w.Msg}
	for _, c := range w.Codes {
		if c >= 0 && c < len(wireSentinels) {
			r.causes = append(r.causes, wireSentinels[c])
		}
	}
	for _, e := range []error{w.Inlined, w.Signature, w.ABI} {
		if e != nil && !isNilPtr(e) {
			r.causes = append(r.causes, e)
		}
	}
	if w.Op == "" {
		return r
	}
	return &Error{Op: w.Op, Pid: w.Pid, Func: w.Func, ID: w.ID, Hint: w.Hint, Err: r}
}

func isNilPtr(e error) bool {
	switch e := e.(type) {
	case *InlinedError:
		return e == nil
	case *SignatureError:
		return e == nil
	case *ABIError:
		return e == nil
	}
	return false
}

// remoteError is an error the helper returned: its text, and the errors it
// matched there.
type remoteError struct {
	msg    string
	causes []error
}

func (e *remoteError) Error() string   { return e.msg }
func (e *remoteError) Unwrap() []error { return e.causes }

// runHelper is the helper process's main: it serves its parent's requests
// until the parent closes the socket or dies.
func runHelper(v string) int {
	ppid, err := strconv.Atoi(v)
	// PID 1 is a parent too: a service may be PID 1 of its PID namespace
	// (a container).
	if err != nil || ppid < 1 {
		fmt.Fprintf(os.Stderr, "hotpatch self-patch helper: %s=%q is not a parent PID\n", selfEnv, v)
		return 2
	}
	// Die with the parent, and make sure it had not died already.
	_ = unix.Prctl(unix.PR_SET_PDEATHSIG, uintptr(unix.SIGKILL), 0, 0, 0)
	if os.Getppid() != ppid {
		return 0
	}
	if d, err := time.ParseDuration(os.Getenv(selfIdleEnv)); err == nil && d > 0 {
		selfIdle = d
	}
	conn := os.NewFile(selfFD, "hotpatch-self")
	dec, enc := gob.NewDecoder(conn), gob.NewEncoder(conn)
	reqs := make(chan selfRequest)
	go func() {
		defer close(reqs)
		for {
			var req selfRequest
			if err := dec.Decode(&req); err != nil {
				return // the parent closed the socket, or died
			}
			reqs <- req
		}
	}()
	var tgt selfTarget
	defer tgt.idle()
	idle := time.NewTimer(selfIdle)
	for {
		select {
		case <-idle.C:
			// Let go of the process (and its lock, which another tool
			// may want) when no patch came for a while; the process
			// itself stays warm.
			tgt.idle()
		case req, ok := <-reqs:
			if !ok {
				return 0
			}
			var progress func(Progress)
			if req.Progress {
				progress = func(p Progress) { enc.Encode(selfResponse{Pid: os.Getpid(), Progress: &p}) }
			}
			resp := serveSelf(&tgt, ppid, req, progress)
			if req.forOperator() {
				// The operator's next step (status, revert) is another
				// tool, which would wait for the process's lock.
				tgt.idle()
			}
			if err := enc.Encode(resp); err != nil {
				return 0
			}
			idle.Reset(selfIdle)
		}
	}
}

// selfIdle is how long the helper keeps its Target (symbols loaded, the
// process's lock held) without a request.
// The helper reads it from selfIdleEnv when set (tests).
var selfIdle = 5 * time.Second

const selfIdleEnv = "HOTPATCH_SELF_IDLE"

// forOperator reports whether req applies a plugin the agent received from
// an operator's hotpatch (whose next command is another process).
func (req selfRequest) forOperator() bool {
	for _, r := range req.Reps {
		if r.Plugin {
			return true
		}
	}
	return false
}

func serveSelf(st *selfTarget, ppid int, req selfRequest, progress func(Progress)) selfResponse {
	resp := selfResponse{Pid: os.Getpid()}
	if req.Op == "hello" || (req.Op == "lookup" && len(req.Reps) != 1) {
		return resp
	}
	t, err := st.get(ppid)
	if err != nil {
		resp.Err = toWire(err)
		return resp
	}
	ctx := context.Background()
	o := req.Opts.apply()
	o.Progress = progress
	switch req.Op {
	case "apply":
		reps := make([]Replacement, len(req.Reps))
		for i, r := range req.Reps {
			reps[i] = Replacement{Old: r.Old, New: r.New, oldAddr: r.OldAddr, newAddr: r.NewAddr, closure: r.Closure, originalSlot: r.OriginalSlot, plugin: r.Plugin}
		}
		if err = t.reloadFor(reps); err != nil {
			break
		}
		resp.Result, err = t.Apply(ctx, reps, o)
	case "lookup":
		if err = t.reloadFor([]Replacement{{newAddr: req.Reps[0].Near}}); err != nil {
			break
		}
		var sym elfsym.Symbol
		if sym, err = t.lookupNear(req.Reps[0].Old, req.Reps[0].Near); err == nil {
			resp.Result = &Result{Functions: []Function{{Old: req.Reps[0].Old, OldAddr: sym.Addr, OldSize: sym.Size}}}
		} else {
			err = &Error{Op: "apply", Pid: ppid, Func: req.Reps[0].Old, Err: err}
		}
	case "revert":
		resp.Result, err = t.Revert(ctx, req.ID, o)
	case "resume":
		resp.Result, err = t.Resume(ctx, req.ID, o)
	default:
		err = &Error{Op: req.Op, Pid: ppid, Err: ErrBadRequest, Hint: "unknown self-patch request"}
	}
	resp.Err = toWire(err)
	return resp
}

// reloadFor reads the process's modules again when a replacement is in
// none of those known (a plugin loaded since the Target was attached).
func (t *Target) reloadFor(reps []Replacement) error {
	for _, r := range reps {
		if _, ok := t.syms.ModuleAt(r.newAddr); r.newAddr != 0 && !ok {
			if err := t.reloadSymbols(); err != nil {
				return &Error{Op: "apply", Pid: t.pid, Func: r.Old, Err: err}
			}
			return nil
		}
	}
	return nil
}

// helper is the parent's side of a running helper process.
type helper struct {
	pid  int
	conn *os.File
	enc  *gob.Encoder
	dec  *gob.Decoder
	done chan struct{} // closed when the helper exited
}

var self struct {
	mu sync.Mutex // one request at a time
	h  *helper
}

// selfCall sends one request to the helper (started, or restarted after it
// died, as needed) and waits for its answer.
func selfCall(req selfRequest) (*Result, error) {
	return selfCallProgress(req, nil)
}

// selfCallProgress is selfCall passing the request's progress reports to
// progress as they come.
func selfCallProgress(req selfRequest, progress func(Progress)) (*Result, error) {
	req.Progress = progress != nil
	self.mu.Lock()
	defer self.mu.Unlock()
	if self.h != nil {
		select {
		case <-self.h.done:
			self.h.conn.Close()
			self.h = nil
		default:
		}
	}
	for try := 0; ; try++ {
		fresh := self.h == nil
		if fresh {
			h, err := startHelper()
			if err != nil {
				return nil, err
			}
			self.h = h
		}
		res, err := self.h.call(req, progress)
		if err == nil {
			return res.Result, res.Err.err()
		}
		self.h.conn.Close()
		self.h = nil
		// A helper that died before it read the request (killed while
		// idle, not yet reaped) refuses it: the request never ran, so a
		// new helper may take it. One that read it and died says EOF.
		if !fresh && try == 0 && (errors.Is(err, unix.EPIPE) || errors.Is(err, unix.ECONNRESET)) {
			continue
		}
		if errors.Is(err, io.EOF) {
			err = errors.New("it exited")
		}
		return nil, &Error{Op: req.Op, Pid: os.Getpid(), Err: fmt.Errorf("%w: %w", ErrSelfHelper, err),
			Hint: "the helper died during the request (killed?); the patch may or may not be applied — Status on this process tells"}
	}
}

// call sends one request and reads the answer.
func (h *helper) call(req selfRequest, progress func(Progress)) (selfResponse, error) {
	err := h.enc.Encode(req)
	for err == nil {
		var resp selfResponse
		if err = h.dec.Decode(&resp); err != nil {
			break
		}
		if resp.Progress == nil {
			return resp, nil
		}
		if progress != nil {
			progress(*resp.Progress)
		}
	}
	return selfResponse{}, err
}

// startHelper starts the helper and checks that it answers as one.
func startHelper() (*helper, error) {
	donatePadding()
	fail := func(err error, hint string) (*helper, error) {
		return nil, &Error{Op: "self", Pid: os.Getpid(), Err: fmt.Errorf("%w: %w", ErrSelfHelper, err), Hint: hint}
	}
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fail(fmt.Errorf("socketpair: %w", err), "")
	}
	parent, child := os.NewFile(uintptr(fds[0]), "hotpatch-self"), os.NewFile(uintptr(fds[1]), "hotpatch-self-helper")
	cmd := exec.Command("/proc/self/exe")
	cmd.Args = []string{os.Args[0]}
	cmd.Env = append(os.Environ(), selfEnv+"="+strconv.Itoa(os.Getpid()))
	cmd.Stderr = os.Stderr
	cmd.ExtraFiles = []*os.File{child} // descriptor 3 == selfFD
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	// PR_SET_PDEATHSIG fires when the forking *thread* exits: fork on a
	// thread that lives as long as the process (a goroutine locked to it
	// that never returns), never on one a goroutine may lock and end.
	err = forkOnLastingThread(cmd)
	// The helper has its own copy now: with this one closed, a helper
	// that exits (or never serves) is an end of file, not a wait forever.
	child.Close()
	if err != nil {
		parent.Close()
		return fail(fmt.Errorf("re-execute /proc/self/exe: %w", err), "")
	}
	// Yama (ptrace_scope 1) lets only ancestors trace a process unless it
	// names its tracer. Without Yama the call fails with EINVAL: nothing to
	// allow.
	if err := unix.Prctl(unix.PR_SET_PTRACER, uintptr(cmd.Process.Pid), 0, 0, 0); err != nil && err != unix.EINVAL {
		cmd.Process.Kill()
		cmd.Wait()
		parent.Close()
		return fail(fmt.Errorf("prctl(PR_SET_PTRACER): %w", err), "")
	}
	h := &helper{pid: cmd.Process.Pid, conn: parent, enc: gob.NewEncoder(parent), dec: gob.NewDecoder(parent), done: make(chan struct{})}
	go func() { cmd.Wait(); close(h.done) }()
	var resp selfResponse
	err = h.enc.Encode(selfRequest{Op: "hello"})
	if err == nil {
		err = h.dec.Decode(&resp)
	}
	if err == nil && resp.Pid != h.pid {
		err = fmt.Errorf("answered as pid %d, started as %d", resp.Pid, h.pid)
	}
	if err != nil {
		cmd.Process.Kill()
		parent.Close()
		return fail(fmt.Errorf("helper pid %d: %w", h.pid, err),
			"the binary re-executed as the helper did not serve requests: its package patch must be initialised before anything that reads stdin or blocks")
	}
	return h, nil
}

var (
	forkOnce sync.Once
	forkReqs chan forkReq
)

type forkReq struct {
	cmd  *exec.Cmd
	done chan error
}

// forkOnLastingThread starts cmd from a thread that never exits, so that a
// PR_SET_PDEATHSIG the child asks for fires only when this process dies.
func forkOnLastingThread(cmd *exec.Cmd) error {
	forkOnce.Do(func() {
		forkReqs = make(chan forkReq)
		go func() {
			runtime.LockOSThread() // never unlocked: the thread lives on
			for r := range forkReqs {
				r.done <- r.cmd.Start()
			}
		}()
	})
	done := make(chan error, 1)
	forkReqs <- forkReq{cmd, done}
	return <-done
}
